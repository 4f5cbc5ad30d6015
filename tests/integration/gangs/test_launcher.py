"""The launcher around a job's entrypoint, on a real multi-node local cluster: reserve a gang, then run the command.

The package's "spread" cluster (tests/integration/gangs/conftest.py): a head with 1 CPU, and two worker nodes with
1 CPU and 1 logical A100 each.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_placement_groups

from rayfleet.launcher import (
    PACKAGE,
    RESERVATION_TIMEOUT_EXIT,
    RESERVED_MARKER,
    STOPPED_MARKER,
    TIMEOUT_MARKER,
    merge_runtime_env,
    wrap,
)
from rayfleet.launcher.watcher import ProcessId
from tests.integration.conftest import poll
from tests.integration.gangs.processes import cmdline, group_command, recorded, wait_gone

pytestmark = pytest.mark.integration

A100 = {"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}

# The user's command: prints what it sees, counts its runs, and runs a task on the gang's other bundle.
USER_SCRIPT = """
import os, sys
import ray
from {package} import reservation

with open(sys.argv[1], "a") as f:
    f.write("ran\\n")
g = reservation.current()
print("user: visible", os.environ.get("CUDA_VISIBLE_DEVICES"))
print("user: bundles", len(g.bundles), g.strategy, g.driver_bundle, g.other_bundles())
ray.init()
me = ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1, num_gpus=1)
def other():
    return ray.get_runtime_context().get_node_id(), os.environ.get("CUDA_VISIBLE_DEVICES")

node, visible = ray.get(other.options(scheduling_strategy=g.strategy_for(g.other_bundles()[0])).remote())
print("user: other bundle on another node", node != me, "visible", visible)
print("user: placement group", g.placement_group.id.hex() == os.environ["RAYFLEET_PLACEMENT_GROUP_ID"])
"""


@pytest.fixture(scope="module")
def address(spread_address: str) -> str:
    return spread_address


@pytest.fixture(scope="module")
def client(address: str) -> JobSubmissionClient:
    return JobSubmissionClient(address)


def submit(client: JobSubmissionClient, entrypoint: str, bundles: list[dict], strategy: str, timeout_s: float,
           **env: object) -> str:  # fmt: skip
    wrapped, additions = wrap(entrypoint, bundles, strategy, timeout_s)
    runtime_env = merge_runtime_env(env or None, additions)
    return client.submit_job(entrypoint=wrapped, runtime_env=runtime_env, entrypoint_num_cpus=0)


def finish(client: JobSubmissionClient, job_id: str, timeout: float = 90) -> JobStatus:
    poll(lambda: client.get_job_status(job_id).is_terminal(), timeout=timeout, interval=0.1)
    return client.get_job_status(job_id)


def group_states(address: str, job_id: str) -> list[str]:
    groups = list_placement_groups(address=address, filters=[("name", "=", f"rayfleet:{job_id}")], detail=True)
    return [g.state for g in groups]


def test_gang_reserves_and_runs_the_command_once(client: JobSubmissionClient, address: str, tmp_path: Path) -> None:
    script, runs = tmp_path / "user.py", tmp_path / "runs"
    script.write_text(USER_SCRIPT.format(package=PACKAGE))
    start = time.monotonic()
    job = submit(client, f"{sys.executable} {script} {runs}", [A100, A100], "STRICT_SPREAD", 30)
    status = finish(client, job)
    elapsed = time.monotonic() - start
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert f"{RESERVED_MARKER} 2 bundles" in logs
    assert "user: visible 0" in logs
    assert "user: bundles 2 STRICT_SPREAD 0 [1]" in logs
    assert "user: other bundle on another node True visible 0" in logs
    assert "user: placement group True" in logs
    assert runs.read_text() == "ran\n"  # exactly once
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=10)
    print(f"\nreserved gang job: submit -> SUCCEEDED in {elapsed:.2f} s")


def test_unreservable_gang_times_out_and_never_runs(client: JobSubmissionClient, address: str, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    start = time.monotonic()
    job = submit(client, f"touch {ran}", [A100, A100, A100], "STRICT_SPREAD", 3)
    poll(lambda: client.get_job_status(job) == JobStatus.RUNNING, timeout=30, interval=0.05)
    running = time.monotonic()
    status = finish(client, job, timeout=30)
    done = time.monotonic()
    info, logs = client.get_job_info(job), client.get_job_logs(job)
    assert status == JobStatus.FAILED, logs
    assert f"exit code {RESERVATION_TIMEOUT_EXIT}" in (info.message or ""), info.message
    assert TIMEOUT_MARKER in logs and RESERVED_MARKER not in logs
    assert not ran.exists()
    assert 3 <= done - running < 3 + 10
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=10)
    print(f"\ntimeout job: submit -> RUNNING {running - start:.2f} s, RUNNING -> FAILED {done - running:.2f} s")


def test_user_exit_code_is_the_outcome(client: JobSubmissionClient, address: str) -> None:
    job = submit(client, "echo user-output; exit 3", [A100], "PACK", 30)
    status = finish(client, job)
    info, logs = client.get_job_info(job), client.get_job_logs(job)
    assert status == JobStatus.FAILED
    assert "exit code 3" in (info.message or ""), info.message
    assert RESERVED_MARKER in logs and "user-output" in logs
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=10)


def test_launcher_runs_without_rayfleet(client: JobSubmissionClient) -> None:
    """The launcher process cannot import rayfleet at all: the shipped package is all it has."""
    wrapped, additions = wrap("echo plain-ok", [{"CPU": 1}], "PACK", 30)
    blocked = (
        "python -c \"import runpy, sys; sys.modules['rayfleet'] = None; sys.argv[1:] = ['echo plain-ok'];"
        f" runpy.run_module('{PACKAGE}', run_name='__main__')\""
    )
    job = client.submit_job(entrypoint=blocked, runtime_env=additions, entrypoint_num_cpus=0)
    assert finish(client, job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "plain-ok" in client.get_job_logs(job)
    assert wrapped.startswith(f"python -m {PACKAGE} ")


def test_stop_job_stops_the_command_and_frees_the_group(
    client: JobSubmissionClient, address: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    job = submit(client, f"echo $$ > {pid_file}; exec sleep 300", [A100], "PACK", 30)
    poll(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=60)
    pid = int(pid_file.read_text())
    client.stop_job(job)
    assert finish(client, job, timeout=30) == JobStatus.STOPPED
    poll(lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=15)


def test_a_killed_launcher_takes_its_whole_command_down(
    client: JobSubmissionClient, address: str, tmp_path: Path, survivors: list[ProcessId]
) -> None:
    """SIGKILL to the launcher (the job's driver), which cannot clean up: the command's shell and its background child
    go (the command's watcher sees the launcher exit on this machine; Ray also kills a dead driver's workers, and
    their descendants, while the raylet lives), the job fails and its placement group is removed."""
    pids = tmp_path / "pids"
    job = submit(client, group_command(pids), [A100], "PACK", 30)
    command = recorded(pids, survivors, timeout=60)
    launcher = int(client.get_job_info(job).driver_info.pid)
    assert f"-m {PACKAGE} " in cmdline(launcher), cmdline(launcher)
    os.kill(launcher, signal.SIGKILL)
    wait_gone(*command, timeout=20, after="the launcher was killed")
    assert finish(client, job, timeout=30) == JobStatus.FAILED
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=15)


def test_stop_while_reserving_withdraws_at_once(client: JobSubmissionClient, address: str, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    job = submit(client, f"touch {ran}", [A100, A100, A100], "STRICT_SPREAD", 120)
    poll(lambda: group_states(address, job) == ["PENDING"], timeout=30, interval=0.1)
    start = time.monotonic()
    client.stop_job(job)
    assert finish(client, job, timeout=30) == JobStatus.STOPPED
    stopped = time.monotonic() - start
    poll(lambda: group_states(address, job) == ["REMOVED"], timeout=10)
    assert not ran.exists()
    logs = client.get_job_logs(job)
    assert STOPPED_MARKER in logs and RESERVED_MARKER not in logs, logs
    print(f"\nstop while reserving: stop_job -> STOPPED in {stopped:.2f} s")


def test_output_streams_while_the_command_runs(client: JobSubmissionClient, tmp_path: Path) -> None:
    go = tmp_path / "go"
    command = f"echo first-line; while [ ! -e {go} ]; do sleep 0.1; done; echo second-line"
    job = submit(client, command, [{"CPU": 1}], "PACK", 30)
    poll(lambda: "first-line" in client.get_job_logs(job), timeout=60)
    assert client.get_job_status(job) == JobStatus.RUNNING
    go.touch()
    assert finish(client, job) == JobStatus.SUCCEEDED
    assert "second-line" in client.get_job_logs(job)


def test_installed_module_entrypoint(client: JobSubmissionClient) -> None:
    """Where rayfleet is installed on the cluster, ``python -m rayfleet.launcher`` is the launcher too."""
    _, additions = wrap("echo installed-ok", [{"CPU": 1}], "PACK", 30)
    runtime_env = {"env_vars": additions["env_vars"]}
    job = client.submit_job(entrypoint="python -m rayfleet.launcher 'echo installed-ok'", runtime_env=runtime_env,
                            entrypoint_num_cpus=0)  # fmt: skip
    assert finish(client, job) == JobStatus.SUCCEEDED, client.get_job_logs(job)
    assert "installed-ok" in client.get_job_logs(job) and RESERVED_MARKER in client.get_job_logs(job)
