"""Parsing Ray's /api/cluster_status into snapshots, and the dashboard's key renaming (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from rayfleet.capacity import ClusterSnapshot, camel, parse_cluster_status
from rayfleet.config import FleetConfig
from rayfleet.dispatch import Dispatcher
from rayfleet.ledger import Ledger

# The shape Ray 2.60 returns (trimmed): usage keys renamed by the dashboard, nodeTypes and demand not renamed.
PAYLOAD = {
    "data": {
        "clusterStatus": {
            "time": 1795871677.5,
            "autoscalerReport": {"pendingNodes": [], "pendingLaunches": {"gpu_worker": 1}, "failedNodes": []},
            "loadMetricsReport": {
                "usageByNode": {
                    "bb": {"CPU": [1.0, 2.0], "GPU": [1.0, 2.0], "acceleratorType:A100": [0.001, 1.0],
                           "gpuH10080Gb": [0.0, 4.0], "memory": [0.0, 2e9], "node:127.0.0.1": [0.0, 1.0],
                           "objectStoreMemory": [0.0, 1e8]},
                    "aa": {"CPU": [0.0, 4.0], "memory": [1e9, 4e9],
                           "CPUGroup0714Dbfac0835Bef8C9Ba3003Cf6302000000": [0.0, 1.0],  # a placement group's
                           "bundleGroup714Dbfac0835Bef8C9Ba3003Cf6302000000": [0.0, 1000.0]},
                },
                "resourceDemand": [[{"GPU": 3.0}, 2]],
                "pgDemand": [],
                "nodeTypes": [[{"CPU": 2.0, "GPU": 2.0, "accelerator_type:A100": 1.0, "memory": 2e9,
                                "node:__internal_head__": 1.0, "object_store_memory": 1e8}, 1]],
            },
        }
    }
}  # fmt: skip


@pytest.mark.parametrize(
    ("original", "renamed"),
    [("accelerator_type:A100", "acceleratorType:A100"), ("gpu_h100_80gb", "gpuH10080Gb"), ("CPU", "CPU"),
     ("node:__internal_head__", "node:InternalHead"), ("object_store_memory", "objectStoreMemory")],
)  # fmt: skip
def test_camel_matches_the_dashboards_renaming(original: str, renamed: str) -> None:
    assert camel(original) == renamed


def test_parse_maps_renamed_keys_back_and_reports_what_it_could_not() -> None:
    snap, unknown = parse_cluster_status("c", PAYLOAD, {}, taken_at=10.0)

    assert unknown == {"gpuH10080Gb"}  # not in nodeTypes: the prober then asks /api/v0/nodes
    assert snap.node_ids == ("aa", "bb")
    assert "accelerator_type:A100" in snap.keys and "acceleratorType:A100" not in snap.keys
    assert not any(k.startswith("node:") or k in ("object_store_memory", "objectStoreMemory") for k in snap.keys)
    assert snap.sum("CPU") == 6.0 and snap.sum("CPU", "free") == 5.0
    assert snap.sum("GPU", "free") == 1.0
    assert snap.pending == (({"GPU": 3.0}, 2),)
    assert snap.report_time == 1795871677.5 and snap.taken_at == 10.0
    assert snap.autoscaler["pending_launches"] == {"gpu_worker": 1}


def test_each_node_keeps_its_address_and_a_pin_needs_one_of_its_own() -> None:
    snap, _ = parse_cluster_status("c", PAYLOAD, {}, taken_at=0.0)

    assert snap.node_ips == ("", "127.0.0.1")  # "aa" reports no node:<ip>; "node:InternalHead" is no address
    assert (snap.pin("bb"), snap.pin("aa"), snap.pin(None), snap.pin("zz")) == ("node:127.0.0.1", None, None, None)
    shared = ClusterSnapshot("c", 0.0, node_ids=("x", "y"), node_ips=("127.0.0.1", "127.0.0.1"))
    assert shared.pin("x") is None  # two nodes on one machine: node:<ip> would not tell them apart


def test_parse_uses_names_learned_earlier() -> None:
    snap, unknown = parse_cluster_status("c", PAYLOAD, {"gpuH10080Gb": "gpu_h100_80gb"}, taken_at=0.0)

    assert unknown == set()
    assert snap.sum("gpu_h100_80gb") == 4.0


def test_largest_node_prefers_gpus_then_cpus() -> None:
    snap = ClusterSnapshot.from_nodes("c", [("a", {"CPU": 64}, {}), ("b", {"CPU": 8, "GPU": 4, "memory": 2**35}, {})])
    assert snap.largest_node() == "8 CPU, 4 GPU, 32.0 GiB"
    assert ClusterSnapshot.unreachable("c", "timed out").largest_node() == "unknown (unreachable: timed out)"
    np.testing.assert_array_equal(snap.free, snap.total)


def test_pending_placement_groups_count_as_demand_per_bundle_and_do_not_break_placement() -> None:
    import copy

    from rayfleet.placement.fit import effective_free

    payload = copy.deepcopy(PAYLOAD)
    report = payload["data"]["clusterStatus"]["loadMetricsReport"]
    report["resourceDemand"] = []
    report["pgDemand"] = [[{"strategy": "STRICT_PACK", "bundles": [[{"CPU": 1.0}, 2]]}, 1], ["not", "a group"]]
    snapshot, _ = parse_cluster_status("c", payload, {}, taken_at=1.0)
    assert [(dict(shape), count) for shape, count in snapshot.pending] == [({"CPU": 1.0}, 2.0)]
    cpu = snapshot.keys.index("CPU")
    assert effective_free(snapshot)[:, cpu].sum() == pytest.approx(snapshot.free[:, cpu].sum() - 2.0)


@pytest.mark.parametrize(
    ("pin_node", "policy", "resources", "expected"),
    [
        (None, "fragmentation", {"gpu": 0.5}, "node:10.0.0.2"),  # the default: pinned under fragmentation only
        (None, "binpack", {"gpu": 0.5}, None),
        (True, "binpack", {"gpu": 0.5}, "node:10.0.0.2"),
        (False, "fragmentation", {"gpu": 0.5}, None),
        (None, "fragmentation", {}, None),  # asks for nothing: nothing to reserve, nothing to pin
    ],
)
def test_a_job_is_pinned_to_the_chosen_node_only_when_asked_and_able(
    tmp_path, pin_node: bool | None, policy: str, resources: dict, expected: str | None
) -> None:
    config = FleetConfig.build(clusters=[{"name": "a", "address": "http://127.0.0.1:9"}], pin_node=pin_node)
    snap = ClusterSnapshot("a", 0.0, node_ids=("n1", "n2"), node_ips=("10.0.0.1", "10.0.0.2"))
    dispatcher = Dispatcher(config, Ledger(tmp_path / "l.db"))
    try:
        sub = dispatcher.validate("true", resources, policy=policy)
        assert dispatcher._pin(sub, snap, "n2") == expected
    finally:
        dispatcher.close()
