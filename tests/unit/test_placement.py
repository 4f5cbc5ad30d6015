"""Unit tests for `rayfleet.placement`: the pure decision over snapshots, free capacity, pending demand and holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster
from rayfleet.errors import InvalidRequestError
from rayfleet.placement import Decision, Hold, PlacementRequest, effective_free, place
from rayfleet.resources import Resources

GiB = 1024**3
NOW = 1_000.0


def cluster(name: str, labels: Mapping[str, str] | None = None, cpu_price=None, gpu_price=None) -> Cluster:
    return Cluster(
        name=name,
        address="http://h:8265",
        labels=dict(labels or {}),
        cost_per_cpu_hour=cpu_price,
        cost_per_gpu_hour=gpu_price,
    )


def snap(name: str, nodes, pending=()) -> ClusterSnapshot:
    return ClusterSnapshot.from_nodes(name, nodes, pending=pending, taken_at=NOW)


def cpu_node(cpus: float = 8) -> dict[str, float]:
    return {"CPU": cpus, "memory": 4 * cpus * GiB}


def gpu_node(model: str = "A100", gpus: float = 1, cpus: float = 8) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, "memory": 4 * cpus * GiB, f"accelerator_type:{model}": 1}


def used(cpus: float = 0, gpus: float = 0, model: str | None = None) -> dict[str, float]:
    out = {"CPU": cpus, "GPU": gpus}
    if model:
        out[f"accelerator_type:{model}"] = 1
    return out


def req(policy: str = "binpack", labels=None, pin=None, exclude=(), **resources) -> PlacementRequest:
    return PlacementRequest(
        Resources(**resources), labels=dict(labels or {}), cluster=pin, policy=policy, exclude=frozenset(exclude)
    )


def one_idle_cluster(name: str) -> ClusterSnapshot:
    return snap(name, [("n0", cpu_node(8), used())])


@dataclass
class Case:
    request: PlacementRequest
    snapshots: Sequence[ClusterSnapshot | tuple[str, None]]
    chosen: tuple[str, str, str | None] | None  # (cluster, node, accelerator)
    rejects: Mapping[str, str] = field(default_factory=dict)  # cluster -> a part of the reason
    clusters: Sequence[Cluster] | None = None  # default: one plain cluster per snapshot, in that order
    holds: Sequence[Hold] = ()
    too_large: frozenset[str] = frozenset()  # rejected clusters whose Option says too_large


def run(case: Case) -> Decision:
    names = [s[0] if isinstance(s, tuple) else s.cluster for s in case.snapshots]
    clusters = case.clusters if case.clusters is not None else [cluster(n) for n in names]
    snapshots = {s.cluster: s for s in case.snapshots if isinstance(s, ClusterSnapshot)}
    return place(case.request, clusters, snapshots, case.holds)


CASES = [
    # ----- binpack: best fit -----
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a", [("n0", cpu_node(8), used(2)), ("n1", cpu_node(8), used(6)), ("n2", cpu_node(16), used(0))])],
            chosen=("a", "n1", None),
        ),
        id="binpack-picks-the-fullest-node-that-fits",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a", [("n0", cpu_node(8), used(7)), ("n1", cpu_node(8), used(4)), ("n2", cpu_node(8), used(0))])],
            chosen=("a", "n1", None),
        ),
        id="binpack-skips-a-fuller-node-that-cannot-hold-it",
    ),
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("big", cpu_node(16), used(0)), ("small", cpu_node(4), used(0))])],
            chosen=("a", "small", None),
        ),
        id="binpack-keeps-the-big-hole-for-big-jobs",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a", [("n0", cpu_node(8), used(1))]), snap("b", [("n0", cpu_node(8), used(5))])],
            chosen=("b", "n0", None),
        ),
        id="binpack-picks-the-cluster-with-the-fullest-fitting-node",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a", [("gpu", gpu_node(), used(6)), ("cpu", cpu_node(8), used(0))])],
            chosen=("a", "cpu", None),
        ),
        id="binpack-cpu-job-avoids-a-gpu-node-even-when-fuller",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            # with its GPUs in use the GPU node would be the best fit; only the GPU penalty keeps the job off it
            [snap("a", [("gpu", gpu_node(), used(6, 1, "A100")), ("cpu", cpu_node(8), used(0))])],
            chosen=("a", "cpu", None),
        ),
        id="binpack-cpu-job-avoids-a-gpu-node-even-when-its-gpus-are-busy",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a-gpu", [("n0", gpu_node(), used(6))]), snap("b-cpu", [("n0", cpu_node(8), used(0))])],
            chosen=("b-cpu", "n0", None),
        ),
        id="binpack-cpu-job-avoids-a-gpu-only-cluster",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a-gpu", [("n0", gpu_node(), used(6, 1, "A100"))]), snap("b-cpu", [("n0", cpu_node(8), used(0))])],
            chosen=("b-cpu", "n0", None),
        ),
        id="binpack-cpu-job-avoids-a-gpu-only-cluster-with-busy-gpus",
    ),
    pytest.param(
        Case(
            req(cpu=2),
            [snap("a", [("gpu", gpu_node(), used(0))])],
            chosen=("a", "gpu", None),
        ),
        id="binpack-cpu-job-still-uses-a-gpu-node-when-nothing-else-exists",
    ),
    pytest.param(
        Case(
            req(cpu=1, gpu=1),
            [snap("a", [("cpu", cpu_node(8), used(0)), ("gpu", gpu_node(), used(0))])],
            chosen=("a", "gpu", None),
        ),
        id="binpack-gpu-job-goes-to-the-gpu-node",
    ),
    # ----- spread: worst fit -----
    pytest.param(
        Case(
            req("spread", cpu=2),
            [snap("a", [("n0", cpu_node(8), used(2)), ("n1", cpu_node(8), used(6)), ("n2", cpu_node(16), used(0))])],
            chosen=("a", "n2", None),
        ),
        id="spread-picks-the-emptiest-node",
    ),
    pytest.param(
        Case(
            req("spread", cpu=2),
            [snap("a", [("n0", cpu_node(8), used(5))]), snap("b", [("n0", cpu_node(8), used(1))])],
            chosen=("b", "n0", None),
        ),
        id="spread-picks-the-emptiest-cluster",
    ),
    # ----- cost -----
    pytest.param(
        Case(
            req("cost", cpu=2),
            [
                snap("a", [("n0", cpu_node(8), used(6))]),
                snap("b", [("n0", cpu_node(8), used(0))]),
                snap("c", [("n0", cpu_node(8), used(6))]),
            ],
            clusters=[cluster("a", cpu_price=0.10), cluster("b", cpu_price=0.05), cluster("c", cpu_price=0.20)],
            chosen=("b", "n0", None),
        ),
        id="cost-picks-the-cheapest-cluster-over-a-better-fit",
    ),
    pytest.param(
        Case(
            req("cost", cpu=2),
            [snap("a", [("n0", cpu_node(8), used(6))]), snap("b", [("n0", cpu_node(8), used(0))])],
            clusters=[cluster("a", cpu_price=0.01), cluster("b")],
            chosen=("b", "n0", None),
        ),
        id="cost-a-cluster-without-prices-counts-as-free",
    ),
    pytest.param(
        Case(
            req("cost", cpu=1, gpu=1),
            [snap("a", [("n0", gpu_node(), used(0))]), snap("b", [("n0", gpu_node(), used(0))])],
            clusters=[cluster("a", cpu_price=0.01, gpu_price=3.0), cluster("b", cpu_price=0.10, gpu_price=2.0)],
            chosen=("b", "n0", None),
        ),
        id="cost-counts-the-gpu-price-of-gpu-jobs",
    ),
    pytest.param(
        Case(
            req("cost", cpu=2),
            [
                snap("a", [("n0", cpu_node(8), used(0))]),
                snap("b", [("n0", cpu_node(8), used(0)), ("n1", cpu_node(8), used(4))]),
            ],
            clusters=[cluster("a", cpu_price=0.05), cluster("b", cpu_price=0.05)],
            chosen=("b", "n1", None),
        ),
        id="cost-equal-prices-fall-back-to-best-fit",
    ),
    # ----- constraints -----
    pytest.param(
        Case(
            req(labels={"cloud": "gcp"}, cpu=1),
            [one_idle_cluster("a"), one_idle_cluster("b"), one_idle_cluster("c")],
            clusters=[cluster("a", {"cloud": "aws"}), cluster("b", {"cloud": "gcp", "x": "y"}), cluster("c")],
            chosen=("b", "n0", None),
            rejects={
                "a": "label cloud=gcp does not match (cluster has cloud=aws)",
                "c": "label cloud=gcp does not match (cluster has cloud=<unset>)",
            },
        ),
        id="labels-filter-clusters-with-a-reason",
    ),
    pytest.param(
        Case(
            req(pin="b", cpu=1),
            [snap("a", [("n0", cpu_node(8), used(6))]), one_idle_cluster("b")],
            chosen=("b", "n0", None),
            rejects={"a": "the job is pinned to cluster 'b'"},
        ),
        id="pin-to-a-cluster",
    ),
    pytest.param(
        Case(
            req(exclude={"a"}, cpu=1),
            [snap("a", [("n0", cpu_node(8), used(6))]), one_idle_cluster("b")],
            chosen=("b", "n0", None),
            rejects={"a": "excluded (an earlier attempt failed here)"},
        ),
        id="exclude-a-cluster",
    ),
    pytest.param(
        Case(
            req(cpu=1),
            [ClusterSnapshot.unreachable("a", "connection refused"), one_idle_cluster("b")],
            chosen=("b", "n0", None),
            rejects={"a": "unhealthy: connection refused"},
        ),
        id="unhealthy-cluster-rejected-with-its-error",
    ),
    pytest.param(
        Case(req(cpu=1), [("a", None), one_idle_cluster("b")], chosen=("b", "n0", None), rejects={"a": "no capacity"}),
        id="cluster-without-a-reading-rejected",
    ),
    pytest.param(
        Case(
            req(cpu=1),
            [snap("a", []), one_idle_cluster("b")],
            chosen=("b", "n0", None),
            rejects={"a": "the cluster has no alive nodes"},
        ),
        id="cluster-without-nodes-rejected",
    ),
    # ----- does not fit -----
    pytest.param(
        Case(
            req(cpu=6),
            [snap("a", [("n0", cpu_node(4), used(0)), ("n1", cpu_node(4), used(0))])],
            chosen=None,
            rejects={"a": "too large for every node (largest: 4 CPU, 16.0 GiB)"},
            too_large=frozenset({"a"}),
        ),
        id="fits-the-cluster-total-but-no-single-node-is-too-large",
    ),
    pytest.param(
        Case(
            req(cpu=6),
            [snap("a", [("n0", cpu_node(8), used(4)), ("n1", cpu_node(8), used(3))])],
            chosen=None,
            rejects={"a": "busy: no node has 6 CPU free now (most free: 5 CPU, 32.0 GiB)"},
        ),
        id="fits-an-empty-node-but-every-node-is-in-use-is-busy",
    ),
    pytest.param(
        Case(
            req(cpu=1, gpu=1),
            [snap("a", [("n0", cpu_node(8), used(0))])],
            chosen=None,
            rejects={"a": "no node has GPU"},
            too_large=frozenset({"a"}),
        ),
        id="a-key-no-node-has",
    ),
    # ----- accelerators -----
    pytest.param(
        Case(
            req(gpu=1, accelerators={"A100", "H100"}),
            [snap("a", [("n0", gpu_node("L4"), used())]), snap("b", [("n0", gpu_node("H100"), used())])],
            chosen=("b", "n0", "H100"),
            rejects={"a": "no node has a GPU of model A100 or H100"},
            too_large=frozenset({"a"}),
        ),
        id="accelerators-pick-a-cluster-with-an-allowed-model",
    ),
    pytest.param(
        Case(
            req(gpu=1, accelerators={"A100", "H100"}),
            [snap("a", [("n0", gpu_node("A100"), used(0, 1, "A100")), ("n1", gpu_node("H100"), used())])],
            chosen=("a", "n1", "H100"),
        ),
        id="accelerators-use-the-model-that-is-free",
    ),
    pytest.param(
        Case(
            req(gpu=1, accelerators={"H100", "A100"}),
            [snap("a", [("n0", gpu_node("H100"), used()), ("n1", gpu_node("A100"), used())])],
            chosen=("a", "n1", "A100"),
        ),
        id="accelerators-equal-nodes-prefer-the-first-model-alphabetically",
    ),
    pytest.param(
        Case(
            req(gpu=1),
            [snap("a", [("n0", gpu_node("L4"), used())])],
            chosen=("a", "n0", None),
        ),
        id="no-accelerators-means-any-gpu-and-no-model-chosen",
    ),
    # ----- pending demand -----
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("n0", cpu_node(8), used())], pending=[({"CPU": 6}, 1)]), one_idle_cluster("b")],
            chosen=("b", "n0", None),
            rejects={"a": "busy"},
        ),
        id="pending-demand-that-fits-takes-free-capacity",
    ),
    pytest.param(
        Case(
            req(cpu=4),
            [
                snap("a", [("n0", cpu_node(8), used(2))], pending=[({"CPU": 64}, 3), ({"TPU": 1}, 2)]),
                one_idle_cluster("b"),
            ],
            chosen=("a", "n0", None),
        ),
        id="pending-demand-that-fits-nowhere-takes-nothing",
    ),
    # ----- holds -----
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("n0", cpu_node(8), used()), ("n1", cpu_node(8), used())])],
            holds=[Hold("a", "n0", {"CPU": 6}, NOW)],
            chosen=("a", "n1", None),
        ),
        id="a-hold-on-a-node-takes-its-capacity",
    ),
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("n0", cpu_node(8), used())]), snap("b", [("n0", cpu_node(8), used(2))])],
            holds=[Hold("b", "n0", {"CPU": 6}, NOW)],
            chosen=("a", "n0", None),
            rejects={"b": "busy"},
        ),
        id="a-hold-makes-its-cluster-busy",
    ),
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("n0", cpu_node(8), used(2))]), snap("b", [("n0", cpu_node(8), used())])],
            holds=[Hold("b", "n0", {"CPU": 8}, NOW)],
            chosen=("a", "n0", None),
            rejects={"b": "busy"},
        ),
        id="a-hold-only-counts-on-its-own-cluster",
    ),
    pytest.param(
        Case(
            req(cpu=4),
            [snap("a", [("n0", cpu_node(8), used())])],
            holds=[Hold("a", None, {"CPU": 6}, NOW)],
            chosen=None,
            rejects={"a": "busy"},
        ),
        id="a-hold-without-a-node-takes-the-best-fit",
    ),
    # ----- deterministic tie-breaks -----
    pytest.param(
        Case(req(cpu=1), [one_idle_cluster("b"), one_idle_cluster("a"), one_idle_cluster("c")], ("a", "n0", None)),
        id="equal-clusters-alphabetical",
    ),
    pytest.param(
        Case(
            req(cpu=1),
            [snap("a", [("z-node", cpu_node(8), used(2)), ("a-node", cpu_node(8), used(2))])],
            chosen=("a", "z-node", None),
        ),
        id="equal-nodes-lowest-index-not-name",
    ),
    pytest.param(
        Case(
            req("spread", cpu=1),
            [one_idle_cluster("b"), one_idle_cluster("a")],
            chosen=("a", "n0", None),
        ),
        id="equal-clusters-alphabetical-under-spread",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_place(case: Case):
    decision = run(case)

    chosen = decision.chosen
    got = (chosen.cluster, chosen.node_id, chosen.accelerator) if chosen else None
    assert got == case.chosen, decision.rejects
    assert set(decision.rejects) == set(case.rejects)
    for name, reason in case.rejects.items():
        assert reason in decision.rejects[name]
    assert {o.cluster for o in decision.options if o.too_large} == case.too_large


@pytest.mark.parametrize("case", CASES)
def test_every_cluster_appears_once_fitting_first_best_first(case: Case):
    decision = run(case)

    names = [s[0] if isinstance(s, tuple) else s.cluster for s in case.snapshots]
    assert sorted(o.cluster for o in decision.options) == sorted(names)
    fits = [o.fits for o in decision.options]
    assert fits == sorted(fits, reverse=True)
    fitting = [o for o in decision.options if o.fits]
    assert [(o.score, o.cluster) for o in fitting] == sorted((o.score, o.cluster) for o in fitting)
    assert all(o.reason == "" and o.node_id is not None for o in fitting)
    rejected = [o for o in decision.options if not o.fits]
    assert [o.cluster for o in rejected] == sorted(o.cluster for o in rejected)
    assert all(o.reason and o.score is None for o in rejected)


@pytest.mark.parametrize("case", CASES)
def test_the_decision_is_the_same_when_made_twice(case: Case):
    assert run(case) == run(case)


def test_no_fit_anywhere_gives_no_choice_and_a_reason_for_each_cluster():
    decision = place(
        req(cpu=16),
        [cluster("a"), cluster("b")],
        {"a": one_idle_cluster("a"), "b": ClusterSnapshot.unreachable("b", "timed out")},
    )
    assert decision.chosen is None
    assert decision.rejects == {
        "a": "too large for every node (largest: 8 CPU, 32.0 GiB)",
        "b": "unhealthy: timed out",
    }


def test_an_empty_fleet_gives_an_empty_decision():
    decision = place(req(cpu=1), [], {})
    assert (decision.chosen, decision.rejects, decision.options) == (None, {}, ())


def test_pin_to_an_unknown_cluster_rejects_every_cluster():
    decision = place(req(pin="zzz", cpu=1), [cluster("a")], {"a": one_idle_cluster("a")})
    assert decision.chosen is None
    assert decision.rejects == {"a": "the job is pinned to cluster 'zzz'"}


def test_an_unknown_policy_is_rejected_with_the_fix():
    with pytest.raises(InvalidRequestError, match="To fix: use one of binpack, spread, cost"):
        PlacementRequest(Resources(cpu=1), policy="cheapest")


def test_place_does_not_change_its_snapshots():
    snapshot = snap("a", [("n0", cpu_node(8), used(2))], pending=[({"CPU": 2}, 1)])
    before = (snapshot.total.copy(), snapshot.used.copy())
    place(req(cpu=2), [cluster("a")], {"a": snapshot}, [Hold("a", "n0", {"CPU": 1}, NOW)])
    assert np.array_equal(snapshot.total, before[0])
    assert np.array_equal(snapshot.used, before[1])


# ----- effective_free ---------------------------------------------------------------------------------------------


def cpu_free(snapshot: ClusterSnapshot, holds: Sequence[Hold] = ()) -> list[float]:
    return effective_free(snapshot, holds)[:, snapshot.column("CPU")].tolist()


@pytest.mark.parametrize(
    ("nodes", "pending", "holds", "expected"),
    [
        pytest.param([cpu_node(8), cpu_node(8)], [], [], [8, 8], id="nothing-pending"),
        pytest.param([cpu_node(8), cpu_node(4)], [({"CPU": 3}, 1)], [], [8, 1], id="pending-takes-the-best-fit"),
        pytest.param([cpu_node(8), cpu_node(4)], [({"CPU": 3}, 2)], [], [5, 1], id="pending-count-repeats"),
        pytest.param([cpu_node(8), cpu_node(4)], [({"CPU": 9}, 5)], [], [8, 4], id="pending-too-big-takes-nothing"),
        pytest.param([cpu_node(8)], [({"TPU": 1}, 1)], [], [8], id="pending-unknown-key-takes-nothing"),
        pytest.param([cpu_node(8)], [({"CPU": 0, "memory": 0}, 1)], [], [8], id="pending-zero-shape-takes-nothing"),
        pytest.param([cpu_node(8), cpu_node(4)], [], [Hold("a", "n0", {"CPU": 2}, NOW)], [6, 4], id="hold-on-its-node"),
        pytest.param(
            [cpu_node(8), cpu_node(4)], [], [Hold("a", "n1", {"CPU": 6}, NOW)], [8, 0], id="hold-clamps-at-zero"
        ),
        pytest.param([cpu_node(8), cpu_node(4)], [], [Hold("a", None, {"CPU": 3}, NOW)], [8, 1], id="hold-no-node"),
        pytest.param(
            [cpu_node(8), cpu_node(4)], [], [Hold("a", "gone", {"CPU": 3}, NOW)], [8, 1], id="hold-on-a-gone-node"
        ),
        pytest.param(
            [cpu_node(8)],
            [({"CPU": 2}, 1)],
            [Hold("a", "n0", {"CPU": 3}, NOW), Hold("a", "n0", {"CPU": 1}, NOW)],
            [2],
            id="pending-and-holds-add-up",
        ),
    ],
)
def test_effective_free_subtracts_pending_demand_that_fits_and_holds(nodes, pending, holds, expected):
    snapshot = snap("a", [(f"n{i}", total, {}) for i, total in enumerate(nodes)], pending=pending)
    assert cpu_free(snapshot, holds) == expected


def test_effective_free_starts_from_total_minus_used():
    snapshot = snap("a", [("n0", cpu_node(8), used(3)), ("n1", cpu_node(4), used(5))])  # over-used reads as 0
    assert cpu_free(snapshot) == [5, 0]


# ----- Hold.on and reflected_in ------------------------------------------------------------------------------------


def test_hold_on_records_the_node_usage_it_was_placed_on():
    snapshot = snap("a", [("n0", cpu_node(8), used(2)), ("n1", gpu_node(), used(1, 1, "A100"))])
    hold = Hold.on(snapshot, "n1", {"CPU": 2, "GPU": 1}, NOW)
    assert hold == Hold("a", "n1", {"CPU": 2, "GPU": 1}, NOW, {"CPU": 1.0, "GPU": 1.0})


def test_hold_on_an_unknown_node_has_no_baseline():
    hold = Hold.on(snap("a", [("n0", cpu_node(8), used())]), "gone", {"CPU": 2}, NOW)
    assert (hold.cluster, hold.node_id, hold.baseline) == ("a", "gone", {})


@pytest.mark.parametrize(
    ("later_nodes", "pending", "reflected"),
    [
        pytest.param([("n0", cpu_node(8), used(2))], [], False, id="same-usage-not-yet-seen"),
        pytest.param([("n0", cpu_node(8), used(4))], [], False, id="usage-grew-by-less-than-the-hold"),
        pytest.param([("n0", cpu_node(8), used(5))], [], True, id="usage-grew-by-the-hold"),
        pytest.param([("n0", cpu_node(8), used(8))], [], True, id="usage-grew-by-more"),
        pytest.param([("n0", cpu_node(8), used(2))], [({"CPU": 3.0}, 1)], True, id="the-request-is-pending"),
        pytest.param([("n0", cpu_node(8), used(2))], [({"CPU": 1.0}, 1)], False, id="another-shape-is-pending"),
        pytest.param([("n9", cpu_node(8), used(8))], [], False, id="the-node-is-gone"),
    ],
)
def test_hold_is_reflected_once_a_later_reading_shows_it(later_nodes, pending, reflected):
    hold = Hold.on(snap("a", [("n0", cpu_node(8), used(2))]), "n0", {"CPU": 3.0}, NOW)
    assert hold.reflected_in(snap("a", later_nodes, pending=pending)) is reflected


def test_hold_without_a_baseline_is_reflected_only_by_pending_demand():
    hold = Hold("a", "n0", {"CPU": 3.0}, NOW)
    assert not hold.reflected_in(snap("a", [("n0", cpu_node(8), used(8))]))
    assert hold.reflected_in(snap("a", [("n0", cpu_node(8), used(0))], pending=[({"CPU": 3.0}, 1)]))


def test_a_reflected_hold_dropped_by_the_caller_stops_counting():
    before = snap("a", [("n0", cpu_node(8), used(2))])
    hold = Hold.on(before, "n0", {"CPU": 4.0}, NOW)
    after = snap("a", [("n0", cpu_node(8), used(6))])
    holds = [h for h in [hold] if not h.reflected_in(after)]
    assert cpu_free(after, holds) == [2]
    assert cpu_free(after, [hold]) == [0]  # counted twice if kept


@pytest.mark.parametrize("policy", ["binpack", "spread"])
def test_equal_clusters_take_jobs_that_ask_for_nothing_in_turn(policy):
    clusters = [cluster("a"), cluster("b"), cluster("c")]
    snapshots = {c.name: one_idle_cluster(c.name) for c in clusters}
    holds: list[Hold] = []
    chosen = []
    for _ in range(6):
        decision = place(req(policy), clusters, snapshots, holds)
        chosen.append(decision.chosen.cluster)
        holds.append(Hold.on(snapshots[decision.chosen.cluster], decision.chosen.node_id, {}, 0.0))
    assert chosen == ["a", "b", "c", "a", "b", "c"]
