"""Property-based tests (hypothesis) of the resource model and of placement (issue 7, part 4).

- Any input to `Resources`, `Gang` or `Cluster` gives a valid object or rayfleet's typed error, never another
  exception; valid requests obey their arithmetic and fit their own vector.
- A placement never exceeds free capacity (after pending demand and holds), and finds a fit whenever one exists.
- A burst of placements with holds never over-commits a node.
- A gang is never split against its strategy (STRICT_PACK: one node; STRICT_SPREAD: distinct nodes), its bundles fit
  together, and a strict gang that fits is always found.
- The decision is deterministic: the same inputs, in any cluster order, give the same decision.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import POLICIES, Cluster
from rayfleet.errors import ConfigError, InvalidResourcesError
from rayfleet.placement import Hold, PlacementRequest, effective_free, fit_gang, place
from rayfleet.placement.bundles import bundle_vectors
from rayfleet.placement.fit import request_vector
from rayfleet.resources import EPSILON, Gang, Resources

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----- anything at all in, typed errors out ------------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.floats(allow_nan=True), max_size=3),
)
fields = st.sampled_from(["cpu", "gpu", "memory", "custom", "accelerators", "gpus", "CPU"])


@SETTINGS
@given(st.dictionaries(fields, junk, max_size=4))
def test_any_resources_input_is_valid_or_an_invalid_resources_error(data: dict[str, Any]) -> None:
    try:
        r = Resources(**data)
    except InvalidResourcesError as e:
        assert e.hint
        return
    assert all(math.isfinite(v) and v >= 0 for v in (r.cpu, r.gpu, r.memory, *r.custom.values()))
    assert r.gpu <= 1 or float(r.gpu).is_integer()
    assert not r.accelerators or r.gpu > 0


@SETTINGS
@given(st.lists(st.dictionaries(fields, junk, max_size=3), max_size=4), junk)
def test_any_gang_input_is_valid_or_an_invalid_resources_error(bundles: list[dict[str, Any]], strategy: Any) -> None:
    try:
        gang = Gang(bundles=bundles, strategy=strategy)
    except InvalidResourcesError as e:
        assert e.hint
        return
    assert gang.bundles and all(not b.is_empty for b in gang.bundles)
    assert len({b.accelerators for b in gang.bundles if b.gpu > 0}) <= 1


@SETTINGS
@given(
    st.text(max_size=20),
    st.one_of(st.text(max_size=40), st.from_regex(r"https?://[a-z0-9.@: /?#\-]{0,30}", fullmatch=True)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=12), st.integers()), max_size=2),
)
def test_any_cluster_input_is_valid_or_a_config_error(name: str, address: str, headers: dict[str, Any]) -> None:
    try:
        c = Cluster(name=name, address=address, headers=headers)
    except ConfigError as e:
        assert e.hint
        return
    assert c.address.startswith(("http://", "https://")) and "@" not in c.address.split("/")[2]


# ----- valid requests ------------------------------------------------------------------------------------------------

amount = st.floats(min_value=0, max_value=64, allow_nan=False).map(lambda x: round(x, 3))
gpu_amount = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.integers(min_value=0, max_value=8).map(float))
requests_ = st.builds(
    lambda cpu, gpu, mem, tpu, model: Resources(
        cpu=cpu, gpu=gpu, memory=mem, custom={"TPU": tpu} if tpu else {}, accelerators={model} if model and gpu else ()
    ),
    amount,
    gpu_amount,
    st.integers(min_value=0, max_value=64 * 1024**3),
    st.sampled_from([0.0, 0.0, 1.0, 2.0]),
    st.sampled_from([None, None, "A100", "H100"]),
)


@SETTINGS
@given(requests_, requests_)
def test_valid_requests_add_componentwise_and_fit_their_own_vector(a: Resources, b: Resources) -> None:
    try:
        total = a + b
    except InvalidResourcesError:  # 0.5 + 1 GPUs: fractional above 1 is not a valid single request (Ray's rule)
        assert not float(a.gpu + b.gpu).is_integer() and a.gpu + b.gpu > 1
        return
    assert (total.cpu, total.gpu, total.memory) == (a.cpu + b.cpu, a.gpu + b.gpu, a.memory + b.memory)
    model = next(iter(sorted(a.accelerators)), None)
    assert a.fits(a.to_ray(model), model)
    assert Resources(**a.model_dump()) == a and hash(Resources(**a.model_dump())) == hash(a)


# ----- snapshots and placement ---------------------------------------------------------------------------------------

KEYS = ("CPU", "GPU", "memory", "accelerator_type:A100", "accelerator_type:H100", "TPU")


@st.composite
def nodes(draw: Any, cluster: str) -> ClusterSnapshot:
    rows = []
    for i in range(draw(st.integers(min_value=1, max_value=4))):
        cpu = float(draw(st.integers(min_value=1, max_value=16)))
        gpus = float(draw(st.sampled_from([0, 0, 1, 2, 4])))
        total = {"CPU": cpu, "memory": float(draw(st.integers(min_value=1, max_value=64)) * 1024**3)}
        if gpus:
            total["GPU"] = gpus
            total[f"accelerator_type:{draw(st.sampled_from(['A100', 'H100']))}"] = 1.0
        if draw(st.booleans()):
            total["TPU"] = float(draw(st.integers(min_value=1, max_value=4)))
        used = {k: round(v * draw(st.sampled_from([0, 0, 0.25, 0.5, 1])), 3) for k, v in total.items()}
        rows.append((f"{cluster}-n{i}", total, used))
    pending = draw(st.lists(st.tuples(st.fixed_dictionaries({"CPU": amount}), st.integers(1, 3)), max_size=2))
    return ClusterSnapshot.from_nodes(cluster, rows, pending=pending, taken_at=1000.0, report_time=1000.0)


@st.composite
def fleets(draw: Any) -> tuple[list[Cluster], dict[str, ClusterSnapshot]]:
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True))
    clusters = [
        Cluster(
            name=n,
            address=f"http://127.0.0.1:{8265 + i}",
            labels={"zone": draw(st.sampled_from(["x", "y"]))},
            cost_per_cpu_hour=draw(st.sampled_from([None, 0.05, 0.1])),
            cost_per_gpu_hour=draw(st.sampled_from([None, 1.0, 2.5])),
        )
        for i, n in enumerate(names)
    ]
    return clusters, {n: draw(nodes(n)) for n in names}


def free_row(snapshot: ClusterSnapshot, node_id: str, holds: list[Hold] = ()) -> dict[str, float]:
    free = effective_free(snapshot, holds)
    return dict(zip(snapshot.keys, free[snapshot.node_ids.index(node_id)], strict=True))


def fits_somewhere(request: Resources, clusters: list[Cluster], snaps: dict[str, ClusterSnapshot], labels) -> bool:
    for c in clusters:
        if any(c.labels.get(k) != v for k, v in labels.items()):
            continue
        snap = snaps[c.name]
        for node in snap.node_ids:
            if request.fits(free_row(snap, node)):
                return True
    return False


@SETTINGS
@given(fleets(), requests_, st.sampled_from(POLICIES), st.sampled_from([{}, {"zone": "x"}]))
def test_a_placement_never_exceeds_free_capacity_and_finds_a_fit_when_one_exists(
    fleet: Any, request: Resources, policy: str, labels: dict[str, str]
) -> None:
    clusters, snaps = fleet
    decision = place(PlacementRequest(request, labels, policy=policy), clusters, snaps)

    chosen = decision.chosen
    assert (chosen is not None) == fits_somewhere(request, clusters, snaps, labels)
    if chosen is not None:
        free = free_row(snaps[chosen.cluster], chosen.node_id)
        want = request.to_ray(chosen.accelerator)
        assert all(free.get(k, 0.0) + EPSILON >= v for k, v in want.items()), (want, free)
        assert not request.accelerators or chosen.accelerator in request.accelerators
        cluster = next(c for c in clusters if c.name == chosen.cluster)
        assert all(cluster.labels.get(k) == v for k, v in labels.items())


@SETTINGS
@given(fleets(), requests_, st.sampled_from(POLICIES), st.randoms(use_true_random=False))
def test_the_decision_is_deterministic_and_ignores_the_order_of_clusters(
    fleet: Any, request: Resources, policy: str, rng: Any
) -> None:
    clusters, snaps = fleet
    shuffled = list(clusters)
    rng.shuffle(shuffled)
    first = place(PlacementRequest(request, policy=policy), clusters, snaps)

    assert place(PlacementRequest(request, policy=policy), clusters, snaps) == first
    assert place(PlacementRequest(request, policy=policy), shuffled, snaps) == first


@SETTINGS
@given(fleets(), requests_, st.sampled_from(POLICIES))
def test_a_burst_with_holds_never_overcommits_a_node(fleet: Any, request: Resources, policy: str) -> None:
    clusters, snaps = fleet
    if request.is_empty:
        request = Resources(cpu=1)
    holds: list[Hold] = []
    placed: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(40):
        chosen = place(PlacementRequest(request, policy=policy), clusters, snaps, holds).chosen
        if chosen is None:
            break
        want = request.to_ray(chosen.accelerator)
        holds.append(Hold.on(snaps[chosen.cluster], chosen.node_id, want, 1001.0))
        placed.setdefault((chosen.cluster, chosen.node_id), []).append(want)

    for (cluster, node), taken in placed.items():
        free = free_row(snaps[cluster], node)  # before any hold
        for key in {k for t in taken for k in t}:
            assert sum(t.get(key, 0.0) for t in taken) <= free.get(key, 0.0) + len(taken) * EPSILON, (key, taken)


# ----- gangs ---------------------------------------------------------------------------------------------------------

bundle = st.builds(
    lambda cpu, gpu: Resources(cpu=cpu, gpu=gpu) if cpu or gpu else Resources(cpu=1),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]),
    st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0]),
)
gangs = st.builds(
    lambda bundles, strategy: Gang(bundles=bundles, strategy=strategy),
    st.lists(bundle, min_size=1, max_size=3),
    st.sampled_from(["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]),
)


def brute_force(free: np.ndarray, vecs: np.ndarray, strategy: str) -> bool:
    """Whether any assignment of bundles to nodes fits together and obeys a strict strategy (small inputs only)."""
    for assignment in itertools.product(range(free.shape[0]), repeat=len(vecs)):
        if strategy == "STRICT_PACK" and len(set(assignment)) > 1:
            continue
        if strategy == "STRICT_SPREAD" and len(set(assignment)) < len(assignment):
            continue
        load = np.zeros_like(free)
        for row, vec in zip(assignment, vecs, strict=True):
            load[row] += vec
        if np.all(load <= free + EPSILON):
            return True
    return False


@SETTINGS
@given(nodes("g"), gangs)
def test_a_gang_is_never_split_against_its_strategy_and_always_fits_together(snap: ClusterSnapshot, gang: Gang) -> None:
    free = effective_free(snap)
    vecs = bundle_vectors(snap.keys, gang)
    assignment = fit_gang(free, snap.keys, gang)

    if assignment is not None:
        assert vecs is not None and len(assignment) == len(gang.bundles)
        if gang.strategy == "STRICT_PACK":
            assert len(set(assignment)) == 1
        if gang.strategy == "STRICT_SPREAD":
            assert len(set(assignment)) == len(assignment)
        load = np.zeros_like(free)
        for row, vec in zip(assignment, vecs, strict=True):
            load[row] += vec
        assert np.all(load <= free + 2 * EPSILON)
    if gang.strategy.startswith("STRICT") and vecs is not None:  # exact for the strict strategies
        assert (assignment is not None) == brute_force(free, vecs, gang.strategy)


@SETTINGS
@given(fleets(), gangs, st.sampled_from(POLICIES))
def test_a_placed_gang_lands_on_one_cluster_per_its_strategy_deterministically(
    fleet: Any, gang: Gang, policy: str
) -> None:
    clusters, snaps = fleet
    decision = place(PlacementRequest(gang=gang, policy=policy), clusters, snaps)

    assert place(PlacementRequest(gang=gang, policy=policy), list(reversed(clusters)), snaps) == decision
    chosen = decision.chosen
    if chosen is None:
        return
    snap = snaps[chosen.cluster]
    assert chosen.bundle_nodes is not None and set(chosen.bundle_nodes) <= set(snap.node_ids)
    if gang.strategy == "STRICT_PACK":
        assert len(set(chosen.bundle_nodes)) == 1
    if gang.strategy == "STRICT_SPREAD":
        assert len(set(chosen.bundle_nodes)) == len(gang.bundles)
    free = effective_free(snap)
    load = np.zeros_like(free)
    for node, b in zip(chosen.bundle_nodes, gang.to_ray(chosen.accelerator), strict=True):
        vec = request_vector(snap.keys, b)
        assert vec is not None
        load[snap.node_ids.index(node)] += vec
    assert np.all(load <= free + 2 * EPSILON)
