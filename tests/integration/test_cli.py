"""The `rayfleet` command end to end, as a user runs it: a real process against the real local clusters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rayfleet import JobState
from rayfleet.cli import EXIT_ERROR, EXIT_NO_CAPACITY, EXIT_USAGE
from rayfleet.ledger import Ledger
from tests.polling import poll

pytestmark = pytest.mark.integration


def rayfleet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own process, with a wide terminal so tables do not wrap."""
    command = [sys.executable, "-m", "rayfleet", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"})
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture()
def env_fleet(fleet_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAYFLEET_FLEET_FILE", str(fleet_file))
    return fleet_file


def test_clusters_shows_free_and_total_capacity_and_health(env_fleet: Path) -> None:
    result = rayfleet("clusters")

    assert re.search(r"cpu\s+│\s+ok", result.stdout)
    assert re.search(r"gpu\s+│\s+ok.*│\s+\d/2\s+│", result.stdout)  # free/total GPUs of the gpu cluster


def test_submit_wait_prints_where_it_ran_and_its_output(env_fleet: Path, ledger_path: Path) -> None:
    result = rayfleet("submit", "--gpu", "1", "--accelerator", "A100,H100", "--wait", "--",
                      "python", "-c", "print('hello from the cli')")  # fmt: skip

    assert "submitted to gpu" in result.stdout
    assert "hello from the cli" in result.stdout
    job_id = result.stdout.split()[0]
    assert Ledger(ledger_path).job(job_id).state is JobState.SUCCEEDED

    jobs = rayfleet("jobs")
    assert job_id in jobs.stdout and "SUCCEEDED" in jobs.stdout
    logs = rayfleet("logs", job_id)
    assert "hello from the cli" in logs.stdout
    follow = rayfleet("logs", "--follow", job_id)
    assert "hello from the cli" in follow.stdout


def test_explain_lists_every_cluster_with_the_reason_it_was_passed_over(env_fleet: Path) -> None:
    result = rayfleet("explain", "--gpu", "1")

    assert re.search(r"gpu ←", result.stdout)
    assert "no node has GPU" in result.stdout  # the cpu cluster's reason


def test_stop_ends_a_running_job(env_fleet: Path, ledger_path: Path) -> None:
    job_id = rayfleet("submit", "--cpu", "0.5", "--", "sleep", "300").stdout.split()[0]
    ledger = Ledger(ledger_path)
    poll(lambda: "RUNNING" in rayfleet("jobs").stdout and ledger.job(job_id).state is JobState.RUNNING)

    rayfleet("stop", job_id)

    poll(lambda: "STOPPED" in rayfleet("jobs").stdout and ledger.job(job_id).state is JobState.STOPPED)


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["submit", "--cpu", "64", "--", "true"], EXIT_NO_CAPACITY, "larger than any node"),
        (["submit", "--cpu", "-1", "--", "true"], EXIT_USAGE, "must be >= 0"),
        (["submit", "--cpu", "1"], EXIT_USAGE, "entrypoint is empty"),
        (["submit", "--cluster", "nope", "--", "true"], EXIT_USAGE, "no cluster named 'nope'"),
        (["submit", "--resource", "TPU", "--", "true"], EXIT_USAGE, "not KEY=VALUE"),
        (["logs", "rf-000000000000"], EXIT_ERROR, "no job 'rf-000000000000'"),
    ],
    ids=["no-capacity", "negative", "empty-entrypoint", "unknown-pin", "bad-resource-flag", "unknown-job"],
)
def test_errors_have_distinct_exit_codes_and_a_hint(env_fleet: Path, args: list[str], code: int, says: str) -> None:
    result = rayfleet(*args, check=False)

    assert result.returncode == code, result.stderr
    assert says in result.stderr
    assert "To fix:" in result.stderr


def test_a_missing_fleet_file_is_a_usage_error_naming_the_file(tmp_path: Path) -> None:
    result = rayfleet("clusters", "--fleet", str(tmp_path / "absent.yaml"), check=False)

    assert result.returncode == EXIT_USAGE
    assert "absent.yaml" in result.stderr


def test_local_up_status_down_from_separate_processes(tmp_path: Path) -> None:
    name = f"cli-{os.getpid()}"
    try:
        up = rayfleet("local", "up", "--name", name, "--cluster", "solo:cpus=1,memory=512MiB")
        assert "solo: http://127.0.0.1:" in up.stdout
        status = rayfleet("local", "status", "--name", name)
        assert re.search(r"solo .* up .* answers", status.stdout)

        again = rayfleet("local", "up", "--name", name, check=False)
        assert again.returncode == EXIT_ERROR and "already up" in again.stderr
    finally:
        down = rayfleet("local", "down", "--name", name)
    assert "stopped: solo" in down.stdout
    assert rayfleet("local", "status", "--name", name, check=False).returncode == EXIT_ERROR


def test_local_up_on_a_taken_port_is_a_clear_error_and_starts_nothing(local) -> None:
    taken = local.running[0].port_base  # the session cluster's GCS port
    result = rayfleet("local", "up", "--name", f"clash-{os.getpid()}", "--port-base", str(taken), check=False)

    assert result.returncode == EXIT_ERROR
    assert f"port {taken}" in result.stderr and "already in use" in result.stderr


def test_explain_shows_what_would_be_created_when_nothing_fits(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "name: plan\n"
        "provisioners:\n"
        "  - kind: local\n"
        f"    directory: {tmp_path / 'clusters'}\n"
        "    templates:\n"
        "      - {name: small, workers: [{name: w, cpu: 1, replicas: 1}]}\n"
        "      - {name: gpu, mode: autoscaled, workers: [{name: a100, cpu: 1, gpu: 1, accelerator: A100}],"
        " cost_per_gpu_hour: 2}\n"
    )
    result = rayfleet("explain", "--gpu", "1", "--fleet", str(fleet), "--ledger", str(tmp_path / "l.db"))

    assert re.search(r"new local/gpu\s+│\s+yes\s+│\s+a a100 worker can hold it, 2/h", result.stdout)
    assert re.search(r"new local/small\s+│\s+no", result.stdout)
    assert not (tmp_path / "clusters").exists()  # explaining creates nothing
