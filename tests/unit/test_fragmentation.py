"""Unit tests for `rayfleet.placement.fragmentation`: shapes, the typical mix, the FGD measure, and the live policy."""

from __future__ import annotations

import numpy as np
import pytest

from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster, FleetConfig
from rayfleet.placement import PlacementRequest, place
from rayfleet.placement.fragmentation import (
    MILLI,
    Fragmentation,
    NodeState,
    RequestMix,
    Shape,
    fgd_score,
    learn_mix,
    leftover,
    live_growth,
    mix_from_config,
    mix_from_requests,
    rank,
)
from rayfleet.resources import Gang, Resources

SHARE_500 = Shape(cpu_milli=1000, gpu_milli=500, gpus=1)
WHOLE_1 = Shape(cpu_milli=1000, gpu_milli=MILLI, gpus=1)
CPU_ONLY = Shape(cpu_milli=1000)


def state_of(rows: list[list[int]], cpu: list[int], models: list[str | None] | None = None) -> NodeState:
    """Nodes whose GPUs have the given free milli (one list per node), with ``cpu`` milli-CPUs free."""
    models = models or ["T4"] * len(rows)
    state = NodeState.empty(cpu, [0] * len(rows), [len(r) for r in rows], models)
    for i, row in enumerate(rows):
        state.gpus[i, : len(row)] = sorted(row, reverse=True)
    return state


# ----- shapes and mixes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (Resources(cpu=2), Shape(2000)),
        (Resources(cpu=1, gpu=0.46), Shape(1000, 460, 1)),
        (Resources(cpu=1, gpu=1), Shape(1000, 1000, 1)),
        (Resources(cpu=8, gpu=4, memory=1024), Shape(8000, 1000, 4, 1024)),
        (
            Resources(gpu=1, accelerators={"V100M16", "V100M32"}),
            Shape(0, 1000, 1, 0, frozenset({"V100M16", "V100M32"})),
        ),
    ],
)
def test_a_fractional_gpu_shares_one_gpu_and_a_whole_number_takes_whole_gpus(resources, expected):
    assert Shape.of(resources) == expected


def test_a_sharing_shape_cannot_ask_for_several_gpus():
    with pytest.raises(ValueError, match="ONE GPU"):
        Shape(1000, 500, 2)


def test_the_typical_mix_keeps_the_most_frequent_shapes_until_they_cover_the_share_and_renormalises():
    requests = [SHARE_500] * 6 + [WHOLE_1] * 3 + [CPU_ONLY]
    mix = RequestMix.typical(requests, coverage=0.85)
    assert mix.shapes == (SHARE_500, WHOLE_1)  # 90% covered; the CPU-only 10% is left out
    assert mix.weights == pytest.approx((6 / 9, 3 / 9))


def test_the_typical_mix_ignores_memory_and_breaks_frequency_ties_by_shape():
    a, b = Shape(2000, 500, 1, memory=1), Shape(1000, 500, 1, memory=2)
    mix = RequestMix.typical([a, b], coverage=0.5)
    assert mix.shapes == (Shape(1000, 500, 1),)  # equal counts: the smaller shape first; memory dropped


def test_a_mix_needs_requests():
    with pytest.raises(ValueError, match="no requests"):
        RequestMix.typical([])
    assert mix_from_requests([]) is None


# ----- the measure ----------------------------------------------------------------------------------------------------


def test_fragmentation_counts_idle_gpu_a_fitting_shape_cannot_use():
    # GPUs free [1000, 300]: a 0.5 share fits (on the 1000) and strands the 300; so does a whole GPU
    state = state_of([[1000, 300]], cpu=[8000])
    frag = Fragmentation(RequestMix.of({SHARE_500: 1, WHOLE_1: 1}), state.models)
    assert frag.of(state)[0] == pytest.approx(300)


def test_fragmentation_counts_all_idle_gpu_when_the_shape_does_not_fit_or_asks_for_no_gpu():
    state = state_of([[1000, 300], [1000, 300]], cpu=[8000, 500])  # node 1 lacks CPU for the 1-CPU shapes
    frag = Fragmentation(RequestMix.of({SHARE_500: 1, CPU_ONLY: 1}), state.models)
    np.testing.assert_allclose(frag.of(state), [0.5 * 300 + 0.5 * 1300, 1300])


def test_a_shape_restricted_to_other_gpu_models_sees_the_whole_node_as_fragment():
    v100 = Shape(1000, 1000, 1, accelerators=frozenset({"V100M16", "V100M32"}))
    state = state_of([[1000, 1000], [1000, 1000]], cpu=[8000, 8000], models=["T4", "V100M32"])
    frag = Fragmentation(RequestMix.of({v100: 1}), state.models)
    np.testing.assert_allclose(frag.of(state), [2000, 0])


def test_the_incremental_growth_of_every_candidate_equals_a_full_recount():
    rng = np.random.default_rng(1)
    rows = [list(rng.choice([0, 120, 300, 470, 500, 880, 1000], size=rng.integers(1, 9))) for _ in range(60)]
    state = state_of(rows, cpu=list(rng.integers(0, 16, size=60) * 1000))
    mix = RequestMix.of({SHARE_500: 3, WHOLE_1: 2, CPU_ONLY: 1, Shape(4000, 1000, 2): 1, Shape(2000, 300, 1): 2})
    frag = Fragmentation(mix, state.models)
    frag.prepare(state)
    before = frag.of(state)
    for shape in (SHARE_500, WHOLE_1, CPU_ONLY, Shape(4000, 1000, 2), Shape(500, 120, 1)):
        fits = np.flatnonzero(state.fits(shape))
        c = frag.candidates(state, shape, fits)
        assert len(c.node) >= len(fits)
        for node, value, growth in zip(c.node, c.gpu_value, c.growth, strict=True):
            after = NodeState(state.cpu.copy(), state.memory.copy(), state.gpus.copy(), state.model, state.models)
            after.take(int(node), shape, int(value))
            assert growth == pytest.approx(frag.of(after)[node] - before[node]), (shape, node, value)


def test_the_cache_follows_placements():
    state = state_of([[1000, 1000], [1000, 500]], cpu=[8000, 8000])
    frag = Fragmentation(RequestMix.of({SHARE_500: 1, WHOLE_1: 1}), state.models)
    frag.prepare(state)
    state.take(0, Shape(1000, 700, 1), 1000)
    frag.refresh(state, 0)
    np.testing.assert_allclose(frag.cache["frag"], frag.of(state))


def test_a_sharing_request_fills_the_fragment_that_fits_it_exactly():
    state = state_of([[1000, 1000], [1000, 400]], cpu=[8000, 8000])
    frag = Fragmentation(RequestMix.of({SHARE_500: 1, WHOLE_1: 1}), state.models)
    choice = frag.best(state, Shape(1000, 400, 1), np.array([0, 1]))
    assert (choice.node, choice.gpu_value) == (1, 400)
    assert choice.growth < 0  # the stranded 0.4 is gone


def test_a_whole_gpu_request_keeps_the_untouched_node_whole_for_multi_gpu_requests():
    state = state_of([[1000, 1000], [1000, 1000], [1000, 1000]], cpu=[8000, 8000, 8000])
    state.take(2, WHOLE_1, MILLI)  # node 2 has one whole GPU left
    frag = Fragmentation(RequestMix.of({Shape(1000, 1000, 2): 1, WHOLE_1: 1}), state.models)
    assert frag.best(state, WHOLE_1, np.array([0, 1, 2])).node == 2


def test_sharing_requests_follow_the_packing_plan_into_fewer_gpus():
    # the plan pairs 470 with 470 and 650 with 320; best fit alone puts the first 470 beside the 320 (its least free
    # GPU that holds it) and needs a third GPU for the 650
    mix = RequestMix.of({Shape(1000, 470, 1): 2, Shape(1000, 650, 1): 1, Shape(1000, 320, 1): 1, WHOLE_1: 2})
    used = {}
    for planned in (True, False):
        state = NodeState.empty([32000], [0], [4], ["T4"])
        frag = Fragmentation(mix, state.models)
        if not planned:
            frag.plan = None
        for milli in (320, 470, 470, 650):
            shape = Shape(1000, milli, 1)
            choice = frag.best(state, shape, np.flatnonzero(state.fits(shape)))
            state.take(choice.node, shape, choice.gpu_value)
        used[planned] = sorted(state.gpus[0].tolist())
    assert used[True] == [30, 60, 1000, 1000]  # 650 + 320 and 470 + 470
    assert used[False] == [210, 350, 530, 1000]


def test_the_plan_ranks_before_the_measure_and_fullness():
    growth, left = np.array([900.0, 0.0, -900.0]), np.array([0.9, 0.5, 0.0])
    assert np.argsort(rank(growth, left, np.array([0, 1, 2]))).tolist() == [0, 1, 2]
    assert np.argsort(rank(growth, left)).tolist() == [2, 1, 0]


def test_candidates_carry_the_plan_kind_of_the_gpu_they_take():
    mix = RequestMix.of({Shape(1000, 470, 1): 2, Shape(1000, 650, 1): 1, Shape(1000, 320, 1): 1})
    state = NodeState.empty([8000] * 3, [0] * 3, [1] * 3, ["T4"] * 3)
    state.gpus[:, 0] = [350, 530, 1000]  # a 650 waits for its 320; a 470 waits for a 470; a whole GPU
    c = Fragmentation(mix, state.models).candidates(state, Shape(1000, 320, 1), np.arange(3))
    np.testing.assert_array_equal(c.plan, [0, 2, 1])  # planned, off plan, whole
    c = Fragmentation(mix, state.models).candidates(state, WHOLE_1, np.array([2]))
    np.testing.assert_array_equal(c.plan, [0])  # whole-GPU requests are not planned


def test_fgd_score_is_the_papers_integer_sigmoid():
    np.testing.assert_array_equal(fgd_score(np.array([0.0, -1000.0, 1000.0, -1e6])), [50, 73, 26, 100])


def test_take_refuses_what_does_not_fit():
    state = state_of([[300]], cpu=[8000])
    with pytest.raises(ValueError, match="cannot take"):
        state.take(0, SHARE_500, 300)
    with pytest.raises(ValueError, match="whole GPUs"):
        state.take(0, WHOLE_1, MILLI)


# ----- accelerator constraint (gpu_spec) ------------------------------------------------------------------------------


def test_a_gpu_spec_request_fits_only_nodes_of_its_models():
    state = state_of([[1000], [1000], [1000]], cpu=[8000] * 3, models=["T4", "V100M16", None])
    spec = Shape(1000, 500, 1, accelerators=frozenset({"V100M16", "V100M32"}))
    np.testing.assert_array_equal(state.fits(spec), [False, True, False])
    np.testing.assert_array_equal(state.fits(SHARE_500), [True, True, True])


# ----- the live policy ------------------------------------------------------------------------------------------------


def gpu_node(gpus: float, model: str = "T4", cpus: float = 16) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, "memory": 64 * 2**30, f"accelerator_type:{model}": 1}


def test_snapshot_rows_become_packed_gpus():
    snap = ClusterSnapshot.from_nodes("a", [("n1", gpu_node(2), {"GPU": 0.7, "CPU": 2}), ("n2", gpu_node(4), {})])
    state = NodeState.from_rows(snap.free, snap.total, snap.keys)
    np.testing.assert_array_equal(state.gpus, [[1000, 300, 0, 0], [1000, 1000, 1000, 1000]])
    assert state.cpu.tolist() == [14000, 16000]
    assert state.models == ("T4",)
    assert not state.per_gpu  # n1's 0.7 free could be 0.35 on each GPU


def test_the_live_policy_follows_the_packing_plan_only_where_each_gpus_share_is_known():
    mix = RequestMix.of({Shape(1000, 470, 1): 2, Shape(1000, 650, 1): 1, Shape(1000, 320, 1): 1})
    request = Shape(1000, 320, 1)
    used = [{"GPU": 0.65}, {"GPU": 0.47}, {}]  # a 650 waits for its 320; a 470 for a 470; idle
    one = [(f"n{i}", gpu_node(1), u) for i, u in enumerate(used)]
    snap = ClusterSnapshot.from_nodes("a", one)
    state = NodeState.from_rows(snap.free, snap.total, snap.keys)
    assert state.per_gpu
    c = Fragmentation(mix, state.models).candidates(state, request, np.arange(3))
    np.testing.assert_array_equal(c.plan, [0, 2, 1])  # beside its planned 650, off the plan, a whole GPU
    two = [(f"n{i}", gpu_node(2), u) for i, u in enumerate(used[:2])]
    snap = ClusterSnapshot.from_nodes("b", two)
    state = NodeState.from_rows(snap.free, snap.total, snap.keys)
    c = Fragmentation(mix, state.models).candidates(state, request, np.arange(2))
    assert not state.per_gpu  # 1.35 free might be 0.675 on each GPU: no plan, every choice neutral (as a whole GPU)
    assert len(c.plan) == 4 and (c.plan == 1).all()


def test_the_live_policy_picks_the_cluster_whose_best_node_it_fragments_least():
    clusters = [Cluster(name="a", address="http://a:8265"), Cluster(name="b", address="http://b:8265")]
    snapshots = {
        "a": ClusterSnapshot.from_nodes("a", [("a1", gpu_node(1), {})]),
        "b": ClusterSnapshot.from_nodes("b", [("b1", gpu_node(1), {"GPU": 0.5})]),
    }
    request = Resources(cpu=1, gpu=0.25)
    assert place(PlacementRequest(request, policy="binpack"), clusters, snapshots).chosen.node_id == "b1"
    # measured against its own shape, 0.25 more on b1 strands nothing: b1, the fuller node, as binpack
    assert place(PlacementRequest(request, policy="fragmentation"), clusters, snapshots).chosen.node_id == "b1"
    # when the typical request is half a GPU, b1's last 0.5 must stay whole: the share goes to cluster a
    mix = RequestMix.of({Shape(1000, 500, 1): 1.0})
    decision = place(PlacementRequest(request, policy="fragmentation"), clusters, snapshots, mix=mix)
    assert decision.chosen.node_id == "a1"
    assert [o.cluster for o in decision.options] == ["a", "b"]
    # the mix is an argument, not state: a call without it is measured against the request's own shape again
    assert place(PlacementRequest(request, policy="fragmentation"), clusters, snapshots).chosen.node_id == "b1"


def test_a_gang_is_measured_against_the_mix_it_is_given():
    clusters = [Cluster(name="a", address="http://a:8265"), Cluster(name="b", address="http://b:8265")]
    snapshots = {
        "a": ClusterSnapshot.from_nodes("a", [("a1", gpu_node(1), {})]),
        "b": ClusterSnapshot.from_nodes("b", [("b1", gpu_node(1), {"GPU": 0.5})]),
    }
    request = PlacementRequest(policy="fragmentation", gang=Gang.of(1, Resources(cpu=1, gpu=0.25)))
    assert place(request, clusters, snapshots).chosen.node_id == "b1"
    half = RequestMix.of({Shape(1000, 500, 1): 1.0})
    assert place(request, clusters, snapshots, mix=half).chosen.node_id == "a1"


def test_a_row_the_packing_assumption_cannot_serve_ranks_last():
    free = np.array([[16.0, 1.0], [16.0, 0.0]])
    total = np.array([[16.0, 1.0], [16.0, 1.0]])
    scores = live_growth(free, total, np.array([1.0, 0.5]), ["CPU", "GPU"], Resources(cpu=1, gpu=0.5))
    assert scores[1] > scores[0]


def test_the_fleet_accepts_the_policy_and_its_mix():
    config = FleetConfig(
        clusters=[Cluster(name="a", address="http://127.0.0.1:8265")],
        policy="fragmentation",
        fragmentation_mix=[{"cpu": 4, "gpu": 0.5, "weight": 3}, {"cpu": 8, "gpu": 1, "accelerators": ["A100"]}],
    )
    mix = mix_from_config(config.fragmentation_mix)
    assert mix is not None
    assert mix.shapes == (Shape(4000, 500, 1), Shape(8000, 1000, 1, accelerators=frozenset({"A100"})))
    assert mix.weights == pytest.approx((0.75, 0.25))
    assert mix_from_config([]) is None


def test_the_mix_learned_from_recent_requests_is_the_typical_one():
    mix = mix_from_requests([Resources(cpu=1, gpu=0.5)] * 19 + [Resources(cpu=2)] + [Resources()])
    assert mix is not None
    assert mix.shapes == (Shape(1000, 500, 1),)  # 95% coverage keeps the 19 of 20; the empty request is ignored


def test_with_memory_in_the_mix_a_node_short_of_memory_strands_its_gpus():
    shape = Shape(1000, 1000, 1, memory=32 * 2**30)
    state = NodeState.empty([8000, 8000], [64 * 2**30, 16 * 2**30], [2, 2], ["T4", "T4"])
    np.testing.assert_allclose(Fragmentation(RequestMix.of({shape: 1}), state.models).of(state), [0, 0])
    with_memory = Fragmentation(RequestMix.of({shape: 1}, memory=True), state.models)
    np.testing.assert_allclose(with_memory.of(state), [0, 2000])
    assert RequestMix.typical([shape, shape], memory=True).shapes == (shape,)


def test_a_cpu_hungry_request_avoids_the_node_whose_gpus_it_would_strand():
    # node 0: 8 GPUs, 64 CPUs (8 per GPU, as the mix needs); node 1: 2 GPUs, 200 CPUs
    state = NodeState.empty([64000, 200000], [0, 0], [8, 2], ["G2", "T4"])
    frag = Fragmentation(RequestMix.of({Shape(8000, 1000, 1): 1.0}), state.models)
    assert frag.cpu_per_gpu == 8.0
    request = Shape(40000)  # CPU only
    c = frag.candidates(state, request, np.array([0, 1]))
    np.testing.assert_allclose(c.growth, [0, 0])  # FGD sees no difference: a 1-GPU, 8-CPU request still fits both
    np.testing.assert_allclose(c.stranding, [5000, 0])  # but 24 CPUs left can feed only 3 of node 0's 8 GPUs
    assert frag.best(state, request, np.array([0, 1])).node == 1
    fgd_pick = np.lexsort((c.node, leftover(state, c.node, request), -fgd_score(c.growth)))[0]
    assert c.node[fgd_pick] == 0  # the paper's score, with the best-fit tie-break, strands them


def test_the_configured_mix_wins_over_the_ledger_and_the_ledger_over_nothing():
    recent = [Resources(cpu=2, gpu=0.25)] * 3
    assert learn_mix([{"cpu": 4, "gpu": 1}], recent).shapes == (Shape(4000, 1000, 1),)
    assert learn_mix([], recent).shapes == (Shape(2000, 250, 1),)
    assert learn_mix([], []) is None
