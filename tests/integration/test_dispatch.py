"""fleet.submit against real local Ray clusters: placement, state, logs, ledger, RAY_ADDRESS, nested dispatch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayfleet import (
    Cluster,
    ClusterUnreachableError,
    Fleet,
    InvalidRequestError,
    InvalidResourcesError,
    JobState,
    NoCapacityError,
    Resources,
    UnknownClusterError,
)
from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.ledger import Ledger
from tests.integration.conftest import ray_job, wait_idle
from tests.polling import poll

pytestmark = pytest.mark.integration

PRINT_GPUS = "python -c \"import os; print('visible', os.environ.get('CUDA_VISIBLE_DEVICES'))\""


def test_cpu_job_lands_on_the_cpu_cluster_under_binpack(fleet: Fleet, addresses: dict[str, str]) -> None:
    handle = fleet.submit("python -c 'print(6 * 7)'", Resources(cpu=1))

    assert handle.cluster == "cpu"
    assert handle.wait(timeout=120) is JobState.SUCCEEDED
    assert "42" in handle.logs()
    assert ray_job(addresses["cpu"], handle.submission_id)["status"] == "SUCCEEDED"


def test_gpu_job_lands_on_the_gpu_cluster_and_gets_a_gpu(fleet: Fleet, addresses: dict[str, str]) -> None:
    handle = fleet.submit(PRINT_GPUS, {"gpu": 1, "accelerators": {"A100", "H100"}})

    assert handle.cluster == "gpu"
    assert handle.attempts[0].accelerator == "A100"
    assert handle.wait(timeout=120) is JobState.SUCCEEDED
    assert "visible 0" in handle.logs() or "visible 1" in handle.logs()
    info = ray_job(addresses["gpu"], handle.submission_id)
    assert info["metadata"]["rayfleet.job_id"] == handle.id
    assert json.loads(info["metadata"]["rayfleet.resources"])["gpu"] == 1.0


def test_the_fragmentation_policy_pins_the_node_it_chose_through_ray(
    fleet: Fleet, ledger: Ledger, addresses: dict[str, str]
) -> None:
    from ray.util.state import list_placement_groups

    handle = fleet.submit("python -c 'print(6 * 7)'", {"gpu": 0.5}, policy="fragmentation")

    assert handle.cluster == "gpu"
    placed = ledger.history(handle.submission_id)[0]
    assert placed[0] is JobState.PLACED and "pinned to node:127.0.0.1" in (placed[2] or ""), placed
    name = f"rayfleet:{handle.submission_id}"
    # the launcher's reservation asks Ray for the node's own resource: Ray itself holds the job to that node
    groups = poll(
        lambda: list_placement_groups(address=addresses["gpu"], filters=[("name", "=", name)], detail=True),
        timeout=60,
        describe=lambda: f"no placement group {name} on the gpu cluster",
    )
    assert groups[0].bundles[0]["unit_resources"]["node:127.0.0.1"] == 0.001, groups[0].bundles
    assert handle.wait(timeout=120) is JobState.SUCCEEDED
    assert "42" in handle.logs()
    plain = fleet.submit("true", {"cpu": 0.25})  # binpack: Ray picks the node inside the cluster, nothing pinned
    assert "pinned" not in (ledger.history(plain.submission_id)[0][2] or "")
    assert plain.wait(timeout=120) is JobState.SUCCEEDED


def test_request_that_fits_nowhere_raises_with_a_reason_per_cluster_and_records_nothing(
    fleet: Fleet, ledger: Ledger
) -> None:
    before = len(ledger.jobs(limit=10_000))

    with pytest.raises(NoCapacityError) as caught:
        fleet.submit("python -c 'print(1)'", {"cpu": 64})

    assert set(caught.value.rejects) == {"cpu", "gpu"}
    assert all("too large" in why for why in caught.value.rejects.values())
    assert "largest: 2 CPU" in str(caught.value)
    assert "To fix:" in str(caught.value)
    assert len(ledger.jobs(limit=10_000)) == before


@pytest.mark.parametrize(
    ("entrypoint", "resources", "kwargs", "error"),
    [
        ("true", {"cpu": -1}, {}, InvalidResourcesError),
        ("true", {"cpu": float("nan")}, {}, InvalidResourcesError),
        ("true", {"gpu": 1.5}, {}, InvalidResourcesError),
        ("true", {"custom": {"bad key!": 1}}, {}, InvalidResourcesError),
        ("   ", {"cpu": 1}, {}, InvalidRequestError),
        ("true", {"cpu": 1}, {"cluster": "nope"}, UnknownClusterError),
        ("true", {"cpu": 1}, {"policy": "random"}, InvalidRequestError),
    ],
    ids=["negative", "nan", "fractional-gpu", "bad-key", "empty-entrypoint", "unknown-pin", "unknown-policy"],
)
def test_bad_input_is_a_typed_error_and_nothing_is_recorded_or_submitted(
    fleet: Fleet, ledger: Ledger, addresses: dict[str, str], entrypoint, resources, kwargs, error
) -> None:
    before = len(ledger.jobs(limit=10_000))
    ray_before = {name: len(RayJobs(c).list()) for name, c in ((c.name, c) for c in fleet.clusters)}

    with pytest.raises(error) as caught:
        fleet.submit(entrypoint, resources, **kwargs)

    assert "To fix:" in str(caught.value)
    assert len(ledger.jobs(limit=10_000)) == before
    assert {c.name: len(RayJobs(c).list()) for c in fleet.clusters} == ray_before


def test_a_failing_job_reports_failed_with_its_logs_and_tail_streams_output(fleet: Fleet) -> None:
    handle = fleet.submit("python -c 'import sys; print(\"about to fail\"); sys.exit(3)'", {"cpu": 0.5})

    assert handle.wait(timeout=120) is JobState.FAILED
    assert "about to fail" in handle.logs()
    assert "about to fail" in "".join(handle.tail())
    assert handle.record.attempts[-1].state is JobState.FAILED


def test_stop_stops_a_running_job(fleet: Fleet) -> None:
    handle = fleet.submit("sleep 300", {"cpu": 0.5})
    poll(lambda: handle.status() is JobState.RUNNING, timeout=60)

    assert handle.stop() is True
    assert handle.wait(timeout=60) is JobState.STOPPED


def test_a_new_process_finds_the_job_in_the_ledger(fleet: Fleet, fleet_file: Path, ledger_path: Path) -> None:
    handle = fleet.submit("python -c 'print(\"from afar\")'", {"cpu": 0.5})
    code = textwrap.dedent(
        f"""
        from rayfleet import Fleet
        fleet = Fleet.from_file({str(fleet_file)!r}, ledger={str(ledger_path)!r})
        job = fleet.job({handle.id!r})
        print(job.cluster, job.wait(timeout=120).value, "from afar" in job.logs())
        print(any(j.id == {handle.id!r} for j in fleet.jobs()))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=True)

    assert result.stdout.split() == ["cpu", "SUCCEEDED", "True", "True"]


def test_ray_address_in_the_environment_does_not_redirect_a_submission(
    fleet_file: Path, ledger_path: Path, addresses: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A shell (or a Ray job) pointing at the gpu cluster; the job is pinned to the cpu cluster.
    monkeypatch.setenv("RAY_ADDRESS", addresses["gpu"])
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", addresses["gpu"])
    with Fleet.from_file(fleet_file, ledger=ledger_path) as fleet:
        handle = fleet.submit("true", {"cpu": 0.5}, cluster="cpu")

        assert ray_job(addresses["cpu"], handle.submission_id) is not None
        assert ray_job(addresses["gpu"], handle.submission_id) is None
        assert handle.wait(timeout=120) is JobState.SUCCEEDED


def test_a_job_dispatches_a_child_gpu_job_through_the_same_fleet(
    fleet: Fleet, ledger: Ledger, addresses: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "parent.py").write_text(
        textwrap.dedent(
            """
            import os
            import rayfleet

            assert os.environ.get("RAY_ADDRESS"), "Ray sets RAY_ADDRESS inside a job"
            fleet = rayfleet.Fleet.from_env()
            child = fleet.submit("python -c 'print(\\"child ran\\")'", {"gpu": 1, "accelerators": ["A100"]})
            print("CHILD", child.id, child.cluster, child.wait(timeout=120).value)
            """
        )
    )
    parent = fleet.submit("python parent.py", {"cpu": 0.5}, cluster="cpu", runtime_env={"working_dir": str(tmp_path)})

    assert parent.wait(timeout=180) is JobState.SUCCEEDED, parent.logs()
    line = next(x for x in parent.logs().splitlines() if x.startswith("CHILD "))
    _, child_id, child_cluster, child_state = line.split()
    assert (child_cluster, child_state) == ("gpu", "SUCCEEDED")
    child = ledger.job(child_id)
    assert child.parent_id == parent.id
    assert ray_job(addresses["gpu"], child.attempts[-1].submission_id)["metadata"]["rayfleet.parent_id"] == parent.id


def test_a_burst_spreads_over_clusters_before_probes_catch_up(fleet: Fleet) -> None:
    # Both clusters have 2 CPUs. Without holds for placements the probe cannot see yet, all three would aim at the
    # same cluster; with them the first fills "cpu", the second goes to "gpu", the third finds no room.
    wait_idle(fleet)
    first = fleet.submit("sleep 120", {"cpu": 2})
    second = fleet.submit("sleep 120", {"cpu": 2})
    try:
        with pytest.raises(NoCapacityError) as caught:
            fleet.submit("sleep 120", {"cpu": 2})
        assert (first.cluster, second.cluster) == ("cpu", "gpu")
        assert all("busy" in why for why in caught.value.rejects.values())
    finally:
        for handle in (first, second):
            handle.stop()
    for handle in (first, second):
        assert handle.wait(timeout=60) is JobState.STOPPED
    wait_idle(fleet)


def test_unreachable_clusters_are_skipped_and_named(
    fleet_file: Path, ledger_path: Path, addresses: dict[str, str]
) -> None:
    dead = Cluster(name="dead", address="http://127.0.0.1:9")  # discard port: nothing listens
    clusters = [*Fleet.from_file(fleet_file).clusters, dead]
    with Fleet(clusters, ledger=ledger_path) as fleet:
        handle = fleet.submit("true", {"cpu": 0.5})
        assert handle.cluster in ("cpu", "gpu")
        assert "unhealthy" in fleet.explain({"cpu": 0.5}).rejects["dead"]
        with pytest.raises(ClusterUnreachableError, match="pinned cluster dead"):
            fleet.submit("true", {"cpu": 0.5}, cluster="dead")
        handle.wait(timeout=120)
    with Fleet([dead], ledger=ledger_path) as fleet, pytest.raises(ClusterUnreachableError, match="every cluster"):
        fleet.submit("true", {"cpu": 0.5})


def test_a_cluster_that_accepts_connections_but_never_answers_is_cut_off_by_the_probe_timeout(
    fleet_file: Path, ledger_path: Path
) -> None:
    with socket.socket() as silent:  # listens, never answers: a hung dashboard or a black-holed route
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hung = Cluster(name="hung", address=f"http://127.0.0.1:{silent.getsockname()[1]}")
        clusters = [*Fleet.from_file(fleet_file).clusters, hung]
        with Fleet(clusters, ledger=ledger_path, probe_timeout_s=0.5) as fleet:
            handle = fleet.submit("true", {"cpu": 0.5})

            assert handle.cluster in ("cpu", "gpu")
            reason = fleet.explain({"cpu": 0.5}).rejects["hung"]
            assert "unhealthy" in reason and ("timed out" in reason or "no answer" in reason)
            assert handle.wait(timeout=120) is JobState.SUCCEEDED


def test_a_retried_submission_that_already_exists_is_success(fleet: Fleet, addresses: dict[str, str]) -> None:
    backend = RayJobs(fleet.config.cluster("cpu"))
    submission_id = f"rf-retry-{id(backend)}-1"

    assert backend.submit(submission_id, "true") == submission_id
    assert backend.submit(submission_id, "true") == submission_id  # what a retry after a lost answer does
    assert ray_job(addresses["cpu"], submission_id) is not None
    poll(lambda: backend.status(submission_id) == "SUCCEEDED")
