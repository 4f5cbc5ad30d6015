"""Clusters on demand, end to end: the real `kubernetes` client against the test API server, and a test operator
that turns each RayCluster into a real local Ray cluster. Nothing is mocked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayfleet import Fleet, JobState, NoCapacityError
from rayfleet.ledger import Ledger
from tests.polling import poll

pytestmark = pytest.mark.integration

GPU_TEMPLATE = {
    "name": "gpu",
    "mode": "static",
    "head": {"cpu": 1, "memory": "1GiB", "ray_cpus": 1},
    "workers": [{"name": "a100", "cpu": 1, "gpu": 1, "accelerator": "A100", "memory": "1GiB", "replicas": 1}],
    "idle_ttl_s": 1,
    "ready_timeout_s": 120,
    "labels": {"kind": "gpu"},
}


def fleet_file(tmp_path: Path, k8s_api: Any, **provisioner: Any) -> Path:
    kubeconfig = k8s_api.kubeconfig(tmp_path / "kubeconfig", context="test")
    data = {
        "name": "e2e",
        "provisioners": [
            {
                "name": "k8s",
                "kubeconfig": str(kubeconfig),
                "context": "test",
                "namespace": "default",
                "access": "service_ip",
                "templates": [GPU_TEMPLATE],
                **provisioner,
            }
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_job_that_fits_nowhere_gets_a_new_raycluster_which_is_removed_when_idle(
    k8s_api: Any, k8s_operator: Any, tmp_path: Path
) -> None:
    k8s_api.faults.fail("POST", "*/rayclusters", 409, times=1)  # someone else's cluster holds the first name
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet.from_file(fleet_file(tmp_path, k8s_api), ledger=ledger) as fleet:
        handle = fleet.submit("python -c \"print('ran on demand')\"", {"gpu": 1, "accelerators": ["A100"]})

        [raycluster] = k8s_api.objects("rayclusters", "default")
        name = raycluster["metadata"]["name"]
        # submit returned once the RayCluster was asked for: the job waits for it, the loop (wait) places it there
        assert (handle.record.state, handle.record.awaits, handle.cluster) == (JobState.PROVISIONING, name, None)
        assert raycluster["metadata"]["labels"]["rayfleet.io/fleet"] == "e2e"
        assert raycluster["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rayfleet"
        assert handle.wait(timeout=120) is JobState.SUCCEEDED
        assert handle.cluster == name
        assert "new cluster from template gpu" in ledger.history(handle.submission_id)[0][2]
        assert [c.state for c in ledger.managed(live_only=False)] == ["FAILED", "READY"]  # the 409, then ours

        deleted = poll(lambda: fleet.tick(), timeout=60)

        assert deleted == [name]
        assert k8s_api.objects("rayclusters", "default") == []
        poll(lambda: k8s_operator.cluster(name) is None or k8s_operator.cluster(name).state == "stopped", timeout=60)
        assert "ran on demand" in handle.logs()  # saved before the cluster went
        assert [c.state for c in ledger.managed(live_only=False)] == ["FAILED", "DELETED"]


def test_a_cluster_that_is_not_ready_in_time_is_deleted_and_nothing_is_left(
    k8s_api: Any, k8s_operator: Any, tmp_path: Path
) -> None:
    k8s_operator.never_ready = True
    GPU_SLOW = {**GPU_TEMPLATE, "ready_timeout_s": 2}
    path = fleet_file(tmp_path, k8s_api, templates=[GPU_SLOW])
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet.from_file(path, ledger=ledger) as fleet:
        handle = fleet.submit("true", {"gpu": 1})
        assert handle.record.state is JobState.PROVISIONING
        assert handle.wait(timeout=60) is JobState.FAILED  # no other template or cluster, and it may not wait

    assert "could not be created: not ready within 2 s" in (handle.record.reason or "")
    assert k8s_api.objects("rayclusters", "default") == []
    assert [c.state for c in ledger.managed(live_only=False)] == ["FAILED"]
    assert handle.attempts == ()  # nothing was submitted anywhere


def test_a_forbidden_create_names_the_missing_rbac_rule(k8s_api: Any, k8s_operator: Any, tmp_path: Path) -> None:
    k8s_api.faults.fail("POST", "*/rayclusters", 403)
    with Fleet.from_file(fleet_file(tmp_path, k8s_api), ledger=tmp_path / "l.db") as fleet:
        with pytest.raises(NoCapacityError) as caught:
            fleet.submit("true", {"gpu": 1})
        plan = fleet.plan({"gpu": 1})

    assert "403" in str(caught.value)
    assert k8s_api.objects("rayclusters", "default") == []
    [job] = Ledger(tmp_path / "l.db").jobs()  # recorded before the API was asked, then failed with the reason
    assert job.state is JobState.FAILED and not job.attempts
    assert plan[1][0].fits and plan[1][0].template == "gpu"


def test_transient_api_errors_are_retried(k8s_api: Any, k8s_operator: Any, tmp_path: Path) -> None:
    k8s_api.faults.fail("POST", "*/rayclusters", 503, times=2)
    k8s_api.faults.fail("GET", "*/rayclusters/*", 429, times=1, headers={"Retry-After": "0"})
    with Fleet.from_file(fleet_file(tmp_path, k8s_api), ledger=tmp_path / "l.db") as fleet:
        handle = fleet.submit("true", {"gpu": 1})
        assert handle.wait(timeout=120) is JobState.SUCCEEDED
        for name in list(fleet.managed):
            fleet._dispatcher.retire(name)
    assert k8s_api.objects("rayclusters", "default") == []


def test_gc_from_another_process_removes_a_cluster_its_creator_left_behind(
    k8s_api: Any, k8s_operator: Any, tmp_path: Path
) -> None:
    path = fleet_file(tmp_path, k8s_api)
    with Fleet.from_file(path, ledger=tmp_path / "creator.db") as fleet:
        handle = fleet.submit("true", {"gpu": 1})
        assert handle.wait(timeout=120) is JobState.SUCCEEDED
        name = handle.cluster
        listing = rayfleet_cli("clusters", "--fleet", str(path), "--ledger", str(tmp_path / "creator.db"))
        assert name in listing and "k8s/gpu" in listing  # marked as managed, with its template
    # the creator is gone without deleting it; a process with another ledger (another machine) cleans up
    output = rayfleet_cli("gc", "--fleet", str(path), "--ledger", str(tmp_path / "other.db"))

    assert f"deleted: {name}" in output
    assert k8s_api.objects("rayclusters", "default") == []
    poll(lambda: k8s_operator.cluster(name) is None or k8s_operator.cluster(name).state == "stopped", timeout=60)


def rayfleet_cli(*args: str) -> str:
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "rayfleet", *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "250"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_readiness_survives_dropped_watches_and_expired_resource_versions(
    k8s_api: Any, k8s_operator: Any, tmp_path: Path
) -> None:
    import threading

    from rayfleet.config import KubeRayConfig
    from rayfleet.provisioning.kuberay import KubeRayProvisioner
    from rayfleet.templates import ClusterTemplate

    k8s_operator.ready_delay = 3.0
    template = ClusterTemplate(**GPU_TEMPLATE)
    provisioner = KubeRayProvisioner(
        KubeRayConfig(name="k8s", templates=[template]), fleet="e2e", configuration=k8s_api.configuration()
    )
    name = provisioner.new_name(template)
    managed = provisioner.create(template, name)
    watching = lambda: k8s_api.requests_matching("WATCH", "*/rayclusters*")  # noqa: E731
    stop = threading.Event()

    def disrupt() -> None:  # while the provisioner waits: drop its watch, then make its resourceVersion too old
        poll(watching, timeout=30)
        k8s_api.faults.drop_watches(abrupt=True)
        poll(lambda: len(watching()) >= 2, timeout=30)
        k8s_api.faults.expire_resource_versions()
        k8s_api.faults.drop_watches()
        stop.set()

    disruptor = threading.Thread(target=disrupt, daemon=True)
    disruptor.start()
    try:
        cluster = provisioner.wait_ready(managed, timeout=120)
        assert stop.wait(timeout=30)
        assert cluster.address.startswith("http://127.0.0.1:")
        assert len(watching()) >= 3  # it watched again after each disruption
    finally:
        provisioner.delete(managed)
        provisioner.close()
    assert k8s_api.objects("rayclusters", "default") == []


def test_a_port_forward_listens_on_loopback_and_names_its_url(k8s_api: Any) -> None:
    from rayfleet.provisioning.kuberay import PortForward

    forward = PortForward(k8s_api.api_client(), "rf-gpu-000000", "default")
    try:
        assert forward.url.startswith("http://127.0.0.1:")
        assert int(forward.url.rsplit(":", 1)[1]) > 0
    finally:
        forward.close()


def test_a_slow_api_server_is_cut_off_and_retried(k8s_api: Any, tmp_path: Path) -> None:
    from rayfleet.config import KubeRayConfig
    from rayfleet.errors import ProvisioningError
    from rayfleet.provisioning.kuberay import KubeRayProvisioner

    config = KubeRayConfig(name="k8s", request_timeout_s=0.5)
    provisioner = KubeRayProvisioner(config, fleet="e2e", configuration=k8s_api.configuration())
    try:
        path = "*/namespaces/default/rayclusters"
        k8s_api.faults.delay("GET", path, 3.0, times=2)  # two slow answers, then a quick one
        assert provisioner.owned() == []
        assert len(k8s_api.requests_matching("GET", path)) == 3

        k8s_api.faults.delay("GET", path, 3.0, times=None)  # never quick: bounded, then a clear error
        with pytest.raises(ProvisioningError, match="did not answer"):
            provisioner.owned()
    finally:
        k8s_api.faults.clear()
        provisioner.close()
