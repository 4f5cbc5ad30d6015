"""Clusters on demand on this machine: an autoscaling local cluster created for a GPU job, reused through its
autoscaler's headroom, and removed when idle. Real Ray, real autoscaler (Ray's fake multi-node provider)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rayfleet import Fleet, JobState
from rayfleet.config import FleetConfig
from rayfleet.ledger import Ledger
from tests.polling import poll

pytestmark = pytest.mark.integration


def test_a_gpu_job_gets_an_autoscaling_cluster_that_scales_from_zero_and_is_deleted_when_idle(tmp_path: Path) -> None:
    config = FleetConfig.build(
        name="local-e2e",
        provisioners=[
            {
                "kind": "local",
                "directory": str(tmp_path / "clusters"),
                "max_clusters": 1,
                "templates": [
                    {
                        "name": "gen",
                        "mode": "autoscaled",
                        "head": {"cpu": 1, "memory": "1GiB"},
                        "workers": [{"name": "a100", "cpu": 1, "gpu": 1, "accelerator": "A100", "max_replicas": 2}],
                        "idle_timeout_s": 5,
                        "idle_ttl_s": 1,
                    }
                ],
            }
        ],
    )
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet(config=config, ledger=ledger) as fleet:
        first = fleet.submit("python -c \"import os; print('gpu', os.environ['CUDA_VISIBLE_DEVICES'])\"", {"gpu": 1})
        # submit returned without waiting for the cluster: the job and the creation are recorded, nothing more
        assert (first.record.state, first.cluster) == (JobState.PROVISIONING, None)
        [record] = ledger.managed()
        name = record.name
        assert (record.state, first.record.awaits) == ("CREATING", name)
        poll(lambda: fleet.tick() == [] and first.cluster, timeout=120)  # the loop places it once the cluster is ready
        assert first.cluster == name
        assert "new cluster from template gen" in ledger.history(first.submission_id)[0][2]
        # a second GPU job while the first may still run: the cluster's autoscaler can add a worker, so no new cluster
        second = fleet.submit("python -c \"print('second')\"", {"gpu": 1, "accelerators": ["A100"]})
        assert second.cluster == name
        how = ledger.history(second.submission_id)[0][2]
        assert how.startswith(("autoscaler headroom", "policy")), how  # free now, or the autoscaler will add one
        assert len(ledger.managed(live_only=False)) == 1

        assert first.wait(timeout=180) is JobState.SUCCEEDED
        assert second.wait(timeout=180) is JobState.SUCCEEDED
        assert "gpu 0" in first.logs()

        deleted = poll(lambda: fleet.tick(), timeout=60)
        assert deleted == [name]
        assert [c.state for c in ledger.managed(live_only=False)] == ["DELETED"]
        assert not (tmp_path / "clusters" / "local-e2e" / "local" / name).exists()
        assert "second" in second.logs()  # saved before the cluster went


def test_a_gang_gets_a_new_cluster_whose_autoscaler_adds_a_worker_per_bundle(tmp_path: Path) -> None:
    config = FleetConfig.build(
        name="local-gang",
        provisioners=[
            {
                "kind": "local",
                "directory": str(tmp_path / "clusters"),
                "max_clusters": 1,
                "templates": [
                    {
                        "name": "pair",
                        "mode": "autoscaled",
                        "head": {"cpu": 1, "memory": "1GiB"},
                        "workers": [{"name": "a100", "cpu": 1, "gpu": 1, "accelerator": "A100", "max_replicas": 2}],
                        "idle_timeout_s": 5,
                        "idle_ttl_s": 1,
                        "scale_up_s": 60,
                    }
                ],
            }
        ],
    )
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet(config=config, ledger=ledger) as fleet:
        show = "python -c \"import rayfleet_launcher as g; print('bundles', len(g.current().bundles))\""
        job = fleet.submit(show, gang={"bundles": [{"gpu": 1}, {"gpu": 1}], "strategy": "STRICT_SPREAD"})
        assert job.record.state is JobState.PROVISIONING
        assert job.wait(timeout=240) is JobState.SUCCEEDED, job.logs()  # wait() carries the creation on
        assert "new cluster from template pair" in (ledger.history(job.submission_id)[0][2] or "")
        assert "bundles 2" in job.logs() and len(job.attempts) == 1  # reserved within start timeout + scale_up_s
        assert poll(lambda: fleet.tick(), timeout=90) == [job.cluster]
