"""Gangs through the fleet on real multi-node local clusters: node-level placement per strategy, reservation by the
launcher inside the cluster, and failover when the reservation cannot be made."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from rayfleet import Fleet, Gang, JobState, LocalFleet, NoCapacityError, Resources
from tests.polling import poll

pytestmark = pytest.mark.integration

SHOW_GANG = (
    "python -c \"import os, rayfleet.launcher as g; print('bundles', len(g.current().bundles), "
    "'gpu', os.environ.get('CUDA_VISIBLE_DEVICES'))\""
)


@pytest.fixture()
def fleet(gang_fleet: LocalFleet, tmp_path: Path) -> Iterator[Fleet]:
    with Fleet.from_file(gang_fleet.fleet_file, ledger=tmp_path / "ledger.db", probe_ttl_s=3600) as f:
        yield f


def test_a_strict_spread_gang_goes_only_to_the_cluster_with_two_gpu_nodes(fleet: Fleet) -> None:
    gang = Gang.of(2, Resources(cpu=1, gpu=1), strategy="STRICT_SPREAD")

    decision = fleet.explain(gang=gang)
    handle = fleet.submit(SHOW_GANG, gang=gang)

    assert handle.cluster == "spread"
    assert "needs 2 nodes" in decision.rejects["fat"]
    assert handle.wait(timeout=120) is JobState.SUCCEEDED, handle.logs()
    assert "rayfleet: reserved 2" in handle.logs()
    assert "bundles 2 gpu 0" in handle.logs()


def test_a_gang_that_fits_in_total_but_not_per_node_is_not_placed_there(fleet: Fleet) -> None:
    gang = Gang.of(1, Resources(cpu=1, gpu=2), strategy="STRICT_PACK")  # two GPUs on one node: only "fat" has it

    handle = fleet.submit(SHOW_GANG, gang=gang)

    assert handle.cluster == "fat"
    assert handle.wait(timeout=120) is JobState.SUCCEEDED, handle.logs()
    # 3 CPUs and 2 GPUs on one node: "spread" has that much in total, but on three nodes; "fat" has too few CPUs
    with pytest.raises(NoCapacityError, match="needs one node with 3 CPU, 2 GPU; none has"):
        fleet.submit("true", gang=Gang.of(2, Resources(cpu=1.5, gpu=1), strategy="STRICT_PACK"))


def test_a_gang_that_cannot_be_reserved_fails_over_to_another_cluster(fleet: Fleet, gang_fleet: LocalFleet) -> None:
    gang = Gang.of(2, Resources(cpu=1, gpu=1), strategy="PACK")
    # the earlier tests' reservations are released a little after their jobs end: start from idle clusters
    poll(lambda: all(s.sum("GPU", "free") == 2 for s in fleet.snapshots(max_age=0).values()), timeout=60)
    fleet.snapshots(max_age=0)  # one reading, kept (probe_ttl_s=3600): it will be stale on purpose
    assert fleet.explain(gang=gang).chosen.cluster == "fat"  # binpack packs it onto fat's one node ...
    fat = next(c for c in gang_fleet.running if c.name == "fat")
    client = JobSubmissionClient(fat.address)
    blocker = client.submit_job(entrypoint="sleep 120", entrypoint_num_gpus=2)  # ... but another user takes fat's GPUs
    try:
        poll(lambda: client.get_job_status(blocker) == "RUNNING", timeout=60)
        started = time.monotonic()
        handle = fleet.submit(SHOW_GANG, gang=gang, reservation_timeout_s=3)  # placed from the stale reading
        assert handle.cluster == "fat", [(a.cluster, fleet.ledger.history(a.submission_id)) for a in handle.attempts]

        assert handle.wait(timeout=180) is JobState.SUCCEEDED, handle.logs()
        print(f"failover: done elsewhere {time.monotonic() - started:.1f} s after submit")
        first, second = handle.attempts
        assert (first.cluster, first.state, second.cluster) == ("fat", JobState.FAILED, "spread")
        assert "not reserved" in first.detail
        assert "rayfleet: reserved 2" in handle.logs()
    finally:
        client.stop_job(blocker)
