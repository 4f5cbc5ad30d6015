"""Unit tests for gangs: the `Gang` value, node-level fit of all bundles at once (`fit_gang`), `place` with gangs."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rayfleet
from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster
from rayfleet.errors import InvalidResourcesError
from rayfleet.placement import Decision, Hold, PlacementRequest, effective_free, fit_gang, place
from rayfleet.placement.bundles import bundle_vectors, fits_together
from rayfleet.resources import STRATEGIES, Gang, Resources

GiB = 1024**3
NOW = 1_000.0
GPU1 = Resources(cpu=1, gpu=1)


# ----- the Gang value ----------------------------------------------------------------------------------------------


def test_gang_is_exported_from_the_package():
    assert rayfleet.Gang is Gang


@pytest.mark.parametrize(
    ("gang", "strategy", "bundles", "total"),
    [
        pytest.param(Gang(bundles=[Resources(cpu=1)]), "PACK", 1, Resources(cpu=1), id="default-strategy-is-pack"),
        pytest.param(
            Gang(bundles=[{"cpu": 2}, {"gpu": 1, "memory": "1GiB"}], strategy="spread"),
            "SPREAD",
            2,
            Resources(cpu=2, gpu=1, memory=GiB),
            id="mappings-as-bundles-lowercase-strategy",
        ),
        pytest.param(Gang.of(4, GPU1, "strict_pack"), "STRICT_PACK", 4, Resources(cpu=4, gpu=4), id="short-form"),
        pytest.param(
            Gang.of(2, {"cpu": 1, "custom": {"TPU": 4}}, strategy="STRICT_SPREAD"),
            "STRICT_SPREAD",
            2,
            Resources(cpu=2, custom={"TPU": 8}),
            id="short-form-from-a-mapping-with-custom-keys",
        ),
        pytest.param(
            Gang(bundles=[Resources(cpu=1), Resources(cpu=1, gpu=1, accelerators={"A100", "H100"})] * 2),
            "PACK",
            4,
            Resources(cpu=4, gpu=2, accelerators={"A100", "H100"}),
            id="cpu-and-gpu-bundles-total-keeps-the-models",
        ),
    ],
)
def test_a_valid_gang_keeps_its_bundles_strategy_and_total(gang, strategy, bundles, total):
    assert gang.strategy == strategy
    assert len(gang.bundles) == bundles
    assert all(isinstance(b, Resources) for b in gang.bundles)
    assert gang.total == total


@pytest.mark.parametrize(
    ("make", "message", "hint"),
    [
        pytest.param(lambda: Gang(bundles=[]), "at least one bundle", "bundles=[Resources(cpu=1)", id="no-bundles"),
        pytest.param(lambda: Gang(bundles=[{"cpu": 1}, {}]), "bundle 1 asks for nothing", "some CPU", id="empty"),
        pytest.param(lambda: Gang(bundles=[Resources()]), "bundle 0 asks for nothing", "some CPU", id="zero-bundle"),
        pytest.param(
            lambda: Gang(bundles=[{"cpu": 1}], strategy="pack_tight"),
            "unknown gang strategy 'pack_tight'",
            "PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",
            id="unknown-strategy",
        ),
        pytest.param(lambda: Gang(bundles=[{"cpu": 1}], strategy=None), "unknown gang strategy", "PACK", id="none"),
        pytest.param(
            lambda: Gang(bundles=[{"gpu": 1, "accelerators": {"A100"}}, {"gpu": 1, "accelerators": {"H100"}}]),
            "allow different GPU models ({A100}, {H100})",
            "same accelerators",
            id="gpu-bundles-with-different-models",
        ),
        pytest.param(
            lambda: Gang(bundles=[{"gpu": 1, "accelerators": {"A100"}}, {"gpu": 1}]),
            "allow different GPU models (any model, {A100})",
            "same accelerators",
            id="a-gpu-bundle-with-any-model-and-one-with-a-model",
        ),
        pytest.param(lambda: Gang(bundles=[{"cpu": -1}]), "bundle 0: invalid resources", ">= 0", id="bad-bundle"),
        pytest.param(lambda: Gang(bundles={"cpu": 1}), "is not a list of bundles", "bundles=[", id="one-mapping"),
        pytest.param(lambda: Gang(bundles=GPU1), "is not a list of bundles", "bundles=[", id="one-resources"),
        pytest.param(lambda: Gang(bundles=[1]), "bundle 0: resources=1", "Resources(cpu=1)", id="not-resources"),
        pytest.param(lambda: Gang(), "invalid gang: bundles", "Gang.of", id="missing-bundles"),
        pytest.param(lambda: Gang(bundles=[GPU1], size=2), "invalid gang: size", "Gang.of", id="unknown-field"),
        pytest.param(lambda: Gang.of(0, GPU1), "a gang of 0 bundles", "whole number", id="short-form-zero"),
        pytest.param(lambda: Gang.of(True, GPU1), "a gang of True bundles", "whole number", id="short-form-bool"),
        pytest.param(lambda: Gang.of(2.0, GPU1), "a gang of 2.0 bundles", "whole number", id="short-form-float"),
    ],
)
def test_an_invalid_gang_says_what_and_how_to_fix_it(make, message, hint):
    with pytest.raises(InvalidResourcesError) as info:
        make()
    assert message in info.value.message
    assert hint in info.value.hint
    assert "To fix:" in str(info.value)


def test_a_gang_is_frozen_and_hashable():
    gang = Gang.of(2, GPU1)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        gang.strategy = "SPREAD"  # type: ignore[misc]
    assert hash(gang) == hash(Gang.of(2, GPU1))
    assert gang == Gang(bundles=[GPU1, GPU1], strategy="pack")
    assert gang != Gang.of(2, GPU1, "SPREAD")


@pytest.mark.parametrize(
    ("gang", "model", "expected"),
    [
        pytest.param(Gang.of(2, Resources(cpu=2)), None, [{"CPU": 2.0}, {"CPU": 2.0}], id="cpu-only"),
        pytest.param(
            Gang(bundles=[Resources(cpu=1), Resources(gpu=1, memory="1GiB", accelerators={"A100", "H100"})]),
            "H100",
            [{"CPU": 1.0}, {"GPU": 1.0, "memory": float(GiB), "accelerator_type:H100": 0.001}],
            id="the-model-goes-only-on-bundles-that-allow-models",
        ),
        pytest.param(
            Gang.of(1, Resources(gpu=1, accelerators={"A100"})), None, [{"GPU": 1.0}], id="no-model-chosen-no-key"
        ),
        pytest.param(Gang.of(1, Resources(gpu=1)), "L4", [{"GPU": 1.0}], id="a-gang-allowing-any-model-ignores-it"),
        pytest.param(
            Gang.of(1, Resources(cpu=1, custom={"TPU": 4})), None, [{"CPU": 1.0, "TPU": 4.0}], id="custom-keys"
        ),
    ],
)
def test_to_ray_gives_one_bundle_dict_per_bundle_by_ray_names(gang, model, expected):
    assert gang.to_ray(model) == expected


def test_to_ray_refuses_a_model_the_gang_does_not_allow():
    with pytest.raises(InvalidResourcesError, match="'L4' is not one of the gang's allowed models"):
        Gang.of(2, Resources(gpu=1, accelerators={"A100"})).to_ray("L4")


@pytest.mark.parametrize(
    ("gang", "text"),
    [
        pytest.param(Gang.of(2, GPU1, "STRICT_SPREAD"), "STRICT_SPREAD gang of 2 x (1 CPU, 1 GPU)", id="identical"),
        pytest.param(
            Gang(bundles=[Resources(cpu=2), GPU1, GPU1]),
            "PACK gang of 3: 1 x (2 CPU), 2 x (1 CPU, 1 GPU)",
            id="mixed-counts-equal-bundles",
        ),
        pytest.param(
            Gang.of(1, Resources(gpu=1, accelerators={"H100", "A100"})), "PACK gang of 1 x (1 GPU (A100|H100))", id="m"
        ),
    ],
)
def test_describe(gang, text):
    assert gang.describe() == text


def test_the_total_of_fractional_gpu_bundles_may_be_fractional_above_one():
    gang = Gang(bundles=[Resources(gpu=0.5, custom={"TPU": 1}), Resources(cpu=1, gpu=1, custom={"TPU": 2})])
    assert (gang.total.cpu, gang.total.gpu, dict(gang.total.custom)) == (1.0, 1.5, {"TPU": 3.0})
    assert gang.total.describe() == "1 CPU, 1.5 GPU, 3 TPU"


def test_gang_accelerators_are_those_of_its_gpu_bundles():
    gang = Gang(bundles=[Resources(cpu=1), Resources(gpu=1, accelerators={"A100", "H100"})])
    assert gang.accelerators == {"A100", "H100"}
    assert Gang.of(2, Resources(cpu=1)).accelerators == frozenset()


# ----- fit_gang ----------------------------------------------------------------------------------------------------

KEYS = ["CPU", "GPU", "X", "accelerator_type:A100", "accelerator_type:H100", "memory"]


def node(cpu: float = 0, gpu: float = 0, model: str | None = None, x: float = 0, memory: float = 0) -> list[float]:
    return [cpu, gpu, x, float(model == "A100"), float(model == "H100"), memory]


def matrix(*nodes: list[float]) -> np.ndarray:
    return np.array(nodes, dtype=float).reshape(len(nodes), len(KEYS))


@dataclass
class FitCase:
    free: np.ndarray
    gang: Gang
    expected: list[int] | None
    accelerator: str | None = None


FIT_CASES = [
    # ----- STRICT_SPREAD -----
    pytest.param(
        FitCase(matrix(node(8, 1), node(8, 1)), Gang.of(2, GPU1, "STRICT_SPREAD"), [0, 1]),
        id="strict-spread-2x1gpu-fits-two-gpu-nodes",
    ),
    pytest.param(
        FitCase(matrix(node(8, 2), node(8)), Gang.of(2, GPU1, "STRICT_SPREAD"), None),
        id="strict-spread-2x1gpu-does-not-fit-one-node-with-two-gpus",
    ),
    pytest.param(
        FitCase(matrix(node(8, 4)), Gang.of(2, Resources(cpu=1), "STRICT_SPREAD"), None),
        id="strict-spread-more-bundles-than-nodes",
    ),
    pytest.param(
        # the GPU bundle, placed first, prefers node 0 (its best fit); the X bundle fits only node 0, so the
        # matching moves the GPU bundle to node 1: a greedy pass would have missed this spread
        FitCase(
            matrix(node(4, 1, x=10), node(16, 4)),
            Gang(bundles=[Resources(gpu=1), Resources(cpu=1, custom={"X": 0.1})], strategy="STRICT_SPREAD"),
            [1, 0],
        ),
        id="strict-spread-moves-an-earlier-bundle-to-free-the-only-node-of-another",
    ),
    pytest.param(
        FitCase(matrix(node(8), node(2), node(4)), Gang.of(2, Resources(cpu=2), "STRICT_SPREAD"), [1, 2]),
        id="strict-spread-takes-the-best-fitting-nodes",
    ),
    # ----- STRICT_PACK -----
    pytest.param(
        FitCase(matrix(node(4), node(4)), Gang.of(2, Resources(cpu=3), "STRICT_PACK"), None),
        id="strict-pack-fits-in-total-but-not-on-one-node",
    ),
    pytest.param(
        FitCase(matrix(node(4), node(16), node(8)), Gang.of(2, Resources(cpu=3), "STRICT_PACK"), [2, 2]),
        id="strict-pack-picks-the-best-fitting-single-node",
    ),
    pytest.param(
        FitCase(matrix(node(8, 1), node(8)), Gang.of(2, Resources(cpu=2), "STRICT_PACK"), [1, 1]),
        id="strict-pack-cpu-gang-keeps-off-a-gpu-node",
    ),
    # ----- PACK -----
    pytest.param(
        FitCase(matrix(node(4), node(8)), Gang.of(2, Resources(cpu=3), "PACK"), [1, 1]),
        id="pack-prefers-one-node",
    ),
    pytest.param(
        FitCase(matrix(node(4), node(4)), Gang.of(2, Resources(cpu=3), "PACK"), [0, 1]),
        id="pack-falls-back-to-several-nodes",
    ),
    pytest.param(
        FitCase(matrix(node(4, 1), node(4, 1), node(8)), Gang.of(3, Resources(cpu=3), "PACK"), [2, 2, 0]),
        id="pack-uses-as-few-nodes-as-it-can",
    ),
    pytest.param(
        FitCase(matrix(node(2), node(2), node(2)), Gang.of(2, Resources(cpu=3), "PACK"), None),
        id="pack-fits-in-total-but-not-per-node",
    ),
    pytest.param(
        FitCase(
            matrix(node(6), node(3)),
            Gang(bundles=[Resources(cpu=2), Resources(cpu=4), Resources(cpu=3)], strategy="PACK"),
            [0, 0, 1],
        ),
        id="pack-places-the-largest-bundles-first",
    ),
    # ----- SPREAD -----
    pytest.param(
        FitCase(matrix(node(8), node(8)), Gang.of(2, Resources(cpu=1), "SPREAD"), [0, 1]),
        id="spread-prefers-distinct-nodes",
    ),
    pytest.param(
        FitCase(matrix(node(8)), Gang.of(2, Resources(cpu=1), "SPREAD"), [0, 0]),
        id="spread-shares-a-node-when-it-must",
    ),
    pytest.param(
        FitCase(matrix(node(8), node(2)), Gang.of(3, Resources(cpu=2), "SPREAD"), [0, 1, 0]),
        id="spread-uses-every-node-it-can-then-shares",
    ),
    pytest.param(
        FitCase(matrix(node(3), node(3)), Gang.of(3, Resources(cpu=2), "SPREAD"), None),
        id="spread-does-not-over-commit-when-sharing",
    ),
    # ----- keys and models -----
    pytest.param(
        FitCase(matrix(node(8), node(8)), Gang.of(1, Resources(cpu=1, custom={"TPU": 1})), None),
        id="a-key-the-cluster-lacks",
    ),
    pytest.param(
        FitCase(
            matrix(node(8, 1, "A100"), node(8, 1, "H100")),
            Gang.of(1, Resources(gpu=1, accelerators={"A100", "H100"})),
            [1],
            accelerator="H100",
        ),
        id="the-chosen-model-decides-the-node",
    ),
    pytest.param(
        FitCase(
            matrix(node(8, 2, "A100"), node(8, 2, "H100")),
            Gang.of(2, Resources(gpu=1, accelerators={"A100"}), "STRICT_PACK"),
            [0, 0],
            accelerator="A100",
        ),
        id="bundles-of-one-model-share-its-node",
    ),
    pytest.param(FitCase(matrix(), Gang.of(1, Resources(cpu=1)), None), id="no-nodes"),
]


@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_gang(case: FitCase):
    before = case.free.copy()
    assignment = fit_gang(case.free, KEYS, case.gang, case.accelerator)
    assert assignment == case.expected
    assert np.array_equal(case.free, before)  # pure


@pytest.mark.parametrize("case", FIT_CASES)
def test_fit_gang_never_over_commits_a_node(case: FitCase):
    assignment = fit_gang(case.free, KEYS, case.gang, case.accelerator)
    if assignment is not None:
        vecs = bundle_vectors(KEYS, case.gang, case.accelerator)
        assert vecs is not None
        load = np.zeros_like(case.free)
        np.add.at(load, assignment, vecs)
        assert np.all(load <= case.free + 1e-6)


# ----- place() with gangs ------------------------------------------------------------------------------------------


def snap(name: str, nodes, pending=()) -> ClusterSnapshot:
    """Nodes as ``(id, total, used)`` or ``(id, total)`` for an idle node."""
    rows = [(n[0], n[1], n[2] if len(n) > 2 else {}) for n in nodes]
    return ClusterSnapshot.from_nodes(name, rows, pending=pending, taken_at=NOW)


def gpu_node(gpus: float = 1, cpus: float = 8, model: str = "A100") -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, "memory": 4 * cpus * GiB, f"accelerator_type:{model}": 1}


def cpu_node(cpus: float = 8) -> dict[str, float]:
    return {"CPU": cpus, "memory": 4 * cpus * GiB}


def used(cpus: float = 0, gpus: float = 0) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus}


def cluster(name: str, cpu_price=None, gpu_price=None) -> Cluster:
    return Cluster(name=name, address="http://h:8265", cost_per_cpu_hour=cpu_price, cost_per_gpu_hour=gpu_price)


def greq(gang: Gang, policy: str = "binpack", **kwargs) -> PlacementRequest:
    return PlacementRequest(gang=gang, policy=policy, **kwargs)


@dataclass
class PlaceCase:
    request: PlacementRequest
    snapshots: Sequence[ClusterSnapshot]
    chosen: tuple[str, tuple[str, ...], str | None] | None  # (cluster, bundle nodes, accelerator)
    rejects: Mapping[str, str] = field(default_factory=dict)  # cluster -> a part of the reason
    too_large: frozenset[str] = frozenset()
    clusters: Sequence[Cluster] | None = None
    holds: Sequence[Hold] = ()


def run(case: PlaceCase) -> Decision:
    clusters = case.clusters if case.clusters is not None else [cluster(s.cluster) for s in case.snapshots]
    return place(case.request, clusters, {s.cluster: s for s in case.snapshots}, case.holds)


SPREAD2 = Gang.of(2, GPU1, "STRICT_SPREAD")

PLACE_CASES = [
    pytest.param(
        PlaceCase(
            greq(SPREAD2),
            [
                snap("a-one-node", [("n0", gpu_node(2), used())]),
                snap("b-two-nodes", [("g0", gpu_node()), ("g1", gpu_node())]),
            ],
            chosen=("b-two-nodes", ("g0", "g1"), None),
            rejects={"a-one-node": "too large: a STRICT_SPREAD gang of 2 needs 2 nodes with 1 CPU, 1 GPU; 1 has"},
            too_large=frozenset({"a-one-node"}),
        ),
        id="strict-spread-2x1gpu-goes-only-to-the-cluster-with-two-gpu-nodes",
    ),
    pytest.param(
        PlaceCase(
            greq(SPREAD2),
            [snap("a", [("g0", gpu_node(), used()), ("g1", gpu_node(), used(0, 1))])],
            chosen=None,
            rejects={"a": "busy: a STRICT_SPREAD gang of 2 needs 2 nodes with 1 CPU, 1 GPU free; 1 has"},
        ),
        id="strict-spread-busy-when-a-gpu-node-is-in-use",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang(bundles=[Resources(gpu=1), Resources(cpu=6)], strategy="STRICT_SPREAD")),
            [snap("a", [("g0", gpu_node(1, 8)), ("c0", cpu_node(4))])],
            chosen=None,
            rejects={"a": "too large: a STRICT_SPREAD gang of 2 needs a distinct node for each bundle; only 1 of"},
            too_large=frozenset({"a"}),
        ),
        id="strict-spread-mixed-bundles-reason-counts-what-can-be-matched",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, Resources(cpu=6))),
            [snap("a", [(f"n{i}", cpu_node(4), used()) for i in range(3)]), snap("b", [("n0", cpu_node(8), used())])],
            chosen=None,
            rejects={
                "a": "too large: a PACK gang of 2 (12 CPU) fits the cluster's total but not its nodes one by one",
                "b": "too large: a PACK gang of 2 (12 CPU) is more than the cluster's total",
            },
            too_large=frozenset({"a", "b"}),
        ),
        id="a-gang-that-fits-in-total-but-not-per-node-is-rejected",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, Resources(cpu=3), "SPREAD")),
            [snap("a", [("n0", cpu_node(4), used(2)), ("n1", cpu_node(4), used(2)), ("n2", cpu_node(4), used(2))])],
            chosen=None,
            rejects={"a": "busy: a SPREAD gang of 2 (6 CPU) fits the cluster's free total but not its nodes one by"},
        ),
        id="busy-when-free-capacity-is-there-in-total-but-fragmented",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(4, GPU1, "STRICT_PACK")),
            [
                snap("a", [("n0", gpu_node(4), used(0, 1)), ("n1", gpu_node(2), used())]),
                snap("b", [("n0", gpu_node(2)), ("n1", gpu_node(2))]),
            ],
            chosen=None,
            rejects={
                "a": "busy: a STRICT_PACK gang of 4 needs one node with 4 CPU, 4 GPU free; none has (most free",
                "b": "too large: a STRICT_PACK gang of 4 needs one node with 4 CPU, 4 GPU; none has (largest node",
            },
            too_large=frozenset({"b"}),
        ),
        id="strict-pack-needs-one-node-busy-versus-too-large",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, GPU1, "STRICT_PACK")),
            [snap("a-big", [("n0", gpu_node(8, 16))]), snap("b-small", [("n0", gpu_node(2, 4))])],
            chosen=("b-small", ("n0", "n0"), None),
        ),
        id="binpack-prefers-the-cluster-the-gang-leaves-least-stranded",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, GPU1, "STRICT_PACK"), policy="spread"),
            [snap("a-big", [("n0", gpu_node(8, 16))]), snap("b-small", [("n0", gpu_node(2, 4))])],
            chosen=("a-big", ("n0", "n0"), None),
        ),
        id="spread-policy-prefers-the-emptiest-cluster",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, Resources(cpu=2), "PACK")),
            [snap("a-gpu", [("n0", gpu_node(1, 8))]), snap("b-cpu", [("n0", cpu_node(16))])],
            chosen=("b-cpu", ("n0", "n0"), None),
        ),
        id="binpack-cpu-gang-avoids-a-gpu-cluster",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, GPU1, "STRICT_PACK"), policy="cost"),
            [snap("a", [("n0", gpu_node(2, 4))]), snap("b", [("n0", gpu_node(8, 16))])],
            clusters=[cluster("a", gpu_price=3.0), cluster("b", gpu_price=2.0)],
            chosen=("b", ("n0", "n0"), None),
        ),
        id="cost-prices-the-gangs-total",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(2, Resources(cpu=1, gpu=1, accelerators={"A100", "H100"}), "STRICT_SPREAD")),
            [
                snap("a", [("a0", gpu_node(model="A100")), ("h0", gpu_node(model="H100"))]),
                snap("b", [("h0", gpu_node(model="H100")), ("h1", gpu_node(model="H100"))]),
                snap("c", [("l0", gpu_node(model="L4")), ("l1", gpu_node(model="L4"))]),
            ],
            chosen=("b", ("h0", "h1"), "H100"),
            rejects={
                "a": "too large: a STRICT_SPREAD gang of 2 needs 2 nodes with 1 CPU, 1 GPU (A100|H100); 1 has",
                "c": "no node has a GPU of model A100 or H100",
            },
            too_large=frozenset({"a", "c"}),
        ),
        id="one-model-for-the-whole-gang",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang.of(1, GPU1)),
            [snap("a", [("n0", cpu_node())]), snap("b", [("n0", gpu_node())])],
            chosen=("b", ("n0",), None),
            rejects={"a": "no node has GPU"},
            too_large=frozenset({"a"}),
        ),
        id="a-key-no-node-has",
    ),
    pytest.param(
        PlaceCase(
            greq(SPREAD2),
            [snap("a", [("g0", gpu_node()), ("g1", gpu_node())]), snap("b", [("g0", gpu_node()), ("g1", gpu_node())])],
            holds=[Hold("a", "g1", {"GPU": 1}, NOW)],
            chosen=("b", ("g0", "g1"), None),
            rejects={"a": "busy"},
        ),
        id="holds-count-against-a-gang",
    ),
    pytest.param(
        PlaceCase(
            PlacementRequest(Resources(cpu=512), gang=Gang.of(2, Resources(cpu=1))),
            [snap("a", [("n0", cpu_node())])],
            chosen=("a", ("n0", "n0"), None),
        ),
        id="resources-are-ignored-when-a-gang-is-given",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang(bundles=[Resources(cpu=1), Resources(cpu=1, gpu=1), Resources(cpu=1, gpu=1)])),
            [snap("a", [("c0", cpu_node(2)), ("g0", gpu_node(1, 2)), ("g1", gpu_node(1, 2))])],
            chosen=("a", ("g0", "g0", "g1"), None),
        ),
        id="pack-puts-the-driver-bundle-beside-a-worker-rather-than-on-a-third-node",
    ),
    pytest.param(
        PlaceCase(
            greq(Gang(bundles=[Resources(cpu=1), Resources(cpu=1, gpu=1), Resources(cpu=1, gpu=1)], strategy="SPREAD")),
            [snap("a", [("c0", cpu_node(2)), ("g0", gpu_node(1, 2)), ("g1", gpu_node(1, 2))])],
            chosen=("a", ("c0", "g0", "g1"), None),
        ),
        id="spread-puts-the-driver-bundle-on-its-own-cpu-node",
    ),
    pytest.param(
        PlaceCase(
            greq(SPREAD2, cluster="b", exclude=frozenset({"a"})),
            [snap("a", [("g0", gpu_node()), ("g1", gpu_node())]), snap("c", [("g0", gpu_node()), ("g1", gpu_node())])],
            chosen=None,
            rejects={"a": "pinned to cluster 'b'", "c": "pinned to cluster 'b'"},
        ),
        id="constraints-apply-to-gangs-too",
    ),
]


@pytest.mark.parametrize("case", PLACE_CASES)
def test_place_gang(case: PlaceCase):
    decision = run(case)

    chosen = decision.chosen
    got = (chosen.cluster, chosen.bundle_nodes, chosen.accelerator) if chosen else None
    assert got == case.chosen, decision.rejects
    assert set(decision.rejects) == set(case.rejects)
    for name, reason in case.rejects.items():
        assert reason in decision.rejects[name]
    assert {o.cluster for o in decision.options if o.too_large} == case.too_large


@pytest.mark.parametrize("case", PLACE_CASES)
def test_place_gang_never_exceeds_free_capacity_and_names_every_bundle_node(case: PlaceCase):
    decision = run(case)
    snapshots = {s.cluster: s for s in case.snapshots}
    gang = case.request.gang
    assert gang is not None
    for option in decision.options:
        if not option.fits:
            assert option.bundle_nodes is None and option.score is None
            continue
        assert option.bundle_nodes is not None and len(option.bundle_nodes) == len(gang.bundles)
        assert option.node_id == option.bundle_nodes[0]
        s = snapshots[option.cluster]
        free = effective_free(s, [h for h in case.holds if h.cluster == option.cluster])
        vecs = bundle_vectors(s.keys, gang, option.accelerator)
        assert vecs is not None
        assert fits_together(free, vecs, [s.node_ids.index(n) for n in option.bundle_nodes])


@pytest.mark.parametrize("case", PLACE_CASES)
def test_place_gang_is_the_same_when_made_twice(case: PlaceCase):
    assert run(case) == run(case)


def test_a_request_without_a_gang_is_placed_as_a_gang_of_one_bundle():
    decision = place(PlacementRequest(Resources(cpu=1)), [cluster("a")], {"a": snap("a", [("n0", cpu_node())])})
    assert decision.chosen is not None
    assert decision.chosen.bundle_nodes == ("n0",)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("policy", ["binpack", "spread", "fragmentation"])
def test_a_gang_of_one_bundle_is_placed_as_the_plain_job_of_that_bundle(strategy: str, policy: str):
    snaps = {
        "a": snap("a", [("n0", cpu_node(16), used(12)), ("n1", cpu_node(16)), ("n2", cpu_node(16), used(6))]),
        "busy": snap("busy", [("b0", cpu_node(4), used(3))]),
        "small": snap("small", [("s0", cpu_node(1))]),
    }
    clusters = [cluster(name) for name in snaps]
    plain = place(PlacementRequest(Resources(cpu=2), policy=policy), clusters, snaps)
    assert place(greq(Gang.of(1, Resources(cpu=2), strategy=strategy), policy), clusters, snaps) == plain
    assert plain.rejects == {
        "busy": "busy: no node has 2 CPU free now (most free: 1 CPU, 16.0 GiB)",
        "small": "too large for every node (largest: 1 CPU, 4.0 GiB)",
    }


# ----- properties --------------------------------------------------------------------------------------------------

PROP_KEYS = ["CPU", "GPU", "memory"]


@st.composite
def nodes_and_gang(draw):
    n_nodes = draw(st.integers(0, 5))
    free = np.array(
        [
            [draw(st.integers(0, 8)), draw(st.sampled_from([0, 0, 1, 2, 4])), draw(st.integers(0, 4)) * GiB]
            for _ in range(n_nodes)
        ],
        dtype=float,
    ).reshape(n_nodes, 3)
    shape = st.builds(
        Resources,
        cpu=st.sampled_from([0, 0.5, 1, 2, 3]),
        gpu=st.sampled_from([0, 0, 0.5, 1, 2]),
        memory=st.sampled_from([0, GiB, 2 * GiB]),
    ).filter(lambda r: not r.is_empty)
    bundles = draw(st.lists(shape, min_size=1, max_size=5))
    return free, Gang(bundles=bundles, strategy=draw(st.sampled_from(STRATEGIES)))


def _perfect_spread_exists(free: np.ndarray, vecs: np.ndarray) -> bool:
    return any(
        all(np.all(free[n] + 1e-9 >= vecs[b]) for b, n in enumerate(rows))
        for rows in itertools.permutations(range(free.shape[0]), len(vecs))
    )


@settings(max_examples=300, deadline=None)
@given(nodes_and_gang())
def test_property_fit_gang_never_over_commits_and_respects_strict_strategies(case):
    free, gang = case
    assignment = fit_gang(free, PROP_KEYS, gang)
    vecs = bundle_vectors(PROP_KEYS, gang)
    assert vecs is not None
    one_node = free.shape[0] > 0 and bool(np.any(np.all(free + 1e-9 >= vecs.sum(axis=0), axis=1)))
    spread = _perfect_spread_exists(free, vecs)
    if assignment is not None:
        assert len(assignment) == len(gang.bundles)
        assert all(0 <= r < free.shape[0] for r in assignment)
        load = np.zeros_like(free)
        np.add.at(load, assignment, vecs)
        assert np.all(load <= free + 1e-6), (free, gang, assignment)
    # the strict strategies are exact; the best-effort ones find at least what the strict ones find
    if gang.strategy == "STRICT_PACK":
        assert (assignment is not None) == one_node
        assert assignment is None or len(set(assignment)) == 1
    elif gang.strategy == "STRICT_SPREAD":
        assert (assignment is not None) == spread
        assert assignment is None or len(set(assignment)) == len(assignment)
    else:
        assert assignment is not None or not (one_node or spread)
        if gang.strategy == "PACK" and one_node:
            assert assignment is not None and len(set(assignment)) == 1
        if gang.strategy == "SPREAD" and spread:
            assert assignment is not None and len(set(assignment)) == len(assignment)


@settings(max_examples=100, deadline=None)
@given(st.lists(nodes_and_gang(), min_size=1, max_size=3), st.sampled_from(["binpack", "spread", "cost"]))
def test_property_place_with_a_gang_is_deterministic_and_within_free_capacity(fleet, policy):
    gang = fleet[0][1]
    snapshots, clusters = {}, []
    for i, (free, _) in enumerate(fleet):
        name = f"c{i}"
        rows = [(f"n{j}", dict(zip(PROP_KEYS, row, strict=True)), {}) for j, row in enumerate(free.tolist())]
        snapshots[name] = snap(name, rows)
        clusters.append(cluster(name, cpu_price=0.1 * (i % 2), gpu_price=1.0))
    request = greq(gang, policy)

    decision = place(request, clusters, snapshots)

    assert decision == place(request, list(reversed(clusters)), dict(reversed(snapshots.items())))
    chosen = decision.chosen
    if chosen is not None:
        s = snapshots[chosen.cluster]
        assert chosen.bundle_nodes is not None
        rows = [s.node_ids.index(n) for n in chosen.bundle_nodes]
        vecs = bundle_vectors(s.keys, gang, chosen.accelerator)
        assert vecs is not None
        assert fits_together(s.free, vecs, rows)
