"""Unit tests for the trace replay in `benchmarks.placement_quality`: the protocol, the binning, the policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.placement_quality.replay import Outcome, Replayer, unallocated_by_arrived
from benchmarks.placement_quality.run import cluster_split
from benchmarks.placement_quality.trace import (
    SHARED_DATA,
    SHARED_DATA_ENV,
    Nodes,
    arrival_order,
    data_dir,
    load_pods,
    parse_pod,
)
from rayfleet.placement.fragmentation import MILLI, RequestMix, Shape

HEADER = (
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
)


def nodes(models: list[str], gpus: int = 2, cpu_milli: int = 16000) -> Nodes:
    n = len(models)
    return Nodes(
        tuple(f"n{i}" for i in range(n)),
        np.full(n, cpu_milli, dtype=np.int64),
        np.full(n, 64 * 2**30, dtype=np.int64),
        np.full(n, gpus, dtype=np.int64),
        tuple(models),
    )


def write_trace(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "openb_pod_list_synthetic.csv").write_text(HEADER + "".join(r + "\n" for r in rows))
    return tmp_path


def test_the_curve_is_100_minus_the_mean_allocated_share_of_the_pods_in_each_arrived_bin():
    capacity = 1000
    # arrived 10 -> bin 1, 14 -> 1, 20 -> 2; allocated 10, 10, 10 (the third pod was dropped)
    outcome = Outcome(arrived=np.array([10, 14, 20]), allocated=np.array([10, 10, 10]))
    assert unallocated_by_arrived(outcome, capacity) == {1: 99.0, 2: 99.0}
    outcome = Outcome(arrived=np.array([500, 1000]), allocated=np.array([500, 900]))
    assert unallocated_by_arrived(outcome, capacity) == {50: 50.0, 100: 10.0}


def test_the_order_is_a_seeded_shuffle_then_copies_until_requests_exceed_130_percent(tmp_path):
    rows = [f"p{i},1000,1024,1,1000,,LS,Running,0,1,0" for i in range(10)]
    pods = load_pods("synthetic", write_trace(tmp_path, rows))
    order = arrival_order(pods, capacity_milli=8 * MILLI, seed=42)
    assert sorted(order[:10]) == list(range(10))  # every pod once, shuffled ...
    assert int(pods.gpu_milli[order].sum()) > 1.3 * 8 * MILLI  # ... then sampled copies up to > 130%
    assert int(pods.gpu_milli[order[:-1]].sum()) <= 1.3 * 8 * MILLI  # and no more than needed
    assert np.array_equal(order, arrival_order(pods, 8 * MILLI, seed=42))
    assert not np.array_equal(order, arrival_order(pods, 8 * MILLI, seed=43))


def test_a_gpu_spec_row_becomes_an_accelerator_constraint():
    row = dict(name="p", cpu_milli="4000", memory_mib="1024", num_gpu="1", gpu_milli="500", gpu_spec="V100M16|V100M32")
    assert parse_pod(row) == Shape(4000, 500, 1, 2**30, frozenset({"V100M16", "V100M32"}))
    row["gpu_spec"] = ""
    assert parse_pod(row).accelerators == frozenset()


@pytest.mark.parametrize("policy", ["random", "bestfit", "fgd", "fragmentation", "binpack", "live"])
def test_every_policy_keeps_gpu_spec_pods_on_their_models_and_drops_what_fits_nowhere(tmp_path, policy):
    rows = [f"s{i},1000,1024,1,600,V100M16|V100M32,LS,Running,0,1,0" for i in range(5)]
    rows += [f"t{i},1000,1024,1,1000,,LS,Running,0,1,0" for i in range(3)]
    pods = load_pods("synthetic", write_trace(tmp_path, rows))
    cluster = nodes(["T4", "V100M16", "T4"])  # 2 GPUs each: the V100 node takes two 0.6 shares at most
    mix = RequestMix.typical([pods.shapes[i] for i in pods.shape_of])
    replayer = Replayer(cluster.state(), pods.shapes, policy, mix, seed=1)
    outcome = replayer.run(np.arange(len(rows)), pods.shape_of)
    assert outcome.placed == 5 and outcome.dropped == 3  # 2 shares on the V100 node, 3 whole GPUs on the T4s
    state = replayer.state
    assert state.gpus[1].tolist() == [400, 400]
    assert state.gpus[[0, 2]].sum() == MILLI  # of the T4s' 4 GPUs, 3 taken


def test_bestfit_fills_the_fuller_node_and_fragmentation_keeps_whole_gpus_whole():
    shapes = (Shape(1000, 500, 1), Shape(1000, 1000, 2))
    cluster = nodes(["T4", "T4"])
    mix = RequestMix.of({shapes[0]: 1, shapes[1]: 1})
    # a half GPU, then another half, then a 2-GPU request: the halves must share a GPU or node for it to fit
    shape_of = np.array([0, 1])
    for policy in ("bestfit", "fgd", "fragmentation"):
        replayer = Replayer(cluster.state(), shapes, policy, mix, seed=3)
        outcome = replayer.run(np.array([0, 0, 1]), shape_of)
        assert outcome.dropped == 0, policy
    drops = [
        Replayer(cluster.state(), shapes, "random", mix, seed=s).run(np.array([0, 0, 1]), shape_of).dropped
        for s in range(20)
    ]
    assert max(drops) == 1  # random sometimes splits the halves over both nodes and strands the 2-GPU request


def test_clusters_by_model_and_at_random():
    cluster = nodes(["T4", "V100M16", "T4", "A10", "G2", "G3", "P100", "V100M32"])
    by_model = cluster_split(cluster, "model", seed=42)
    assert by_model is not None and len(set(by_model.tolist())) == 7
    assert by_model[0] == by_model[2]
    random4 = cluster_split(cluster.replicate(400), "random4", seed=42)
    assert random4 is not None and set(random4.tolist()) == {0, 1, 2, 3}
    assert cluster_split(cluster, "none", seed=42) is None


@pytest.mark.parametrize("node_choice", ["dispatcher", "ray"])
def test_the_dispatcher_picks_a_cluster_and_the_node_goes_to_the_dispatcher_or_to_ray(node_choice):
    shapes = (Shape(1000, 1000, 1),)
    cluster = nodes(["T4"] * 4)
    mix = RequestMix.of({shapes[0]: 1})
    split = np.array([0, 0, 1, 1])
    replayer = Replayer(
        cluster.state(), shapes, "fragmentation", mix, seed=5, cluster_of=split, node_choice=node_choice
    )
    outcome = replayer.run(np.zeros(8, dtype=np.int64), np.array([0]))
    assert outcome.placed == 8 and outcome.dropped == 0
    replayer = Replayer(
        cluster.state(), shapes, "fragmentation", mix, seed=5, cluster_of=split, node_choice=node_choice
    )
    replayer.run(np.zeros(1, dtype=np.int64), np.array([0]))
    used = (replayer.state.gpus < MILLI).sum(axis=1)
    assert used[:2].sum() == 1  # ties between the clusters go to the first by name


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        Replayer(nodes(["T4"]).state(), (Shape(1000),), "worstfit", RequestMix.of({Shape(1000): 1}), seed=0)


def test_the_trace_is_found_beside_the_repository_or_where_the_variable_says(tmp_path, monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    assert repo.parent / "shared" / "data" == SHARED_DATA
    (tmp_path / "alibaba-gpu-v2023").mkdir()
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    assert data_dir() == tmp_path / "alibaba-gpu-v2023"


def test_a_missing_trace_says_where_it_looked_and_how_to_point_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as caught:
        data_dir()
    message = str(caught.value)
    assert str(tmp_path / "alibaba-gpu-v2023") in message and f"set {SHARED_DATA_ENV}" in message
