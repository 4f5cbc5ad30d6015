"""The user's command does not outlive the cluster it was started on: real Ray, on a local cluster each test owns
(and breaks), so that no other test's cluster is disturbed.

Each cluster: a head with 1 CPU (the job's driver, the launcher, runs there) and a worker node with 1 CPU and 1 GPU
(where the command runs: its bundle asks for the GPU). The command's shell records its pid and a background child's,
then waits: PR_SET_PDEATHSIG (all the launcher had before its watcher) kills the shell when its parent dies, never the
child. Both tests fail with that launcher: the child runs on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from rayfleet import LocalClusterSpec, LocalFleet, LocalNodeSpec
from rayfleet.launcher import (
    COMMAND_LOST_EXIT,
    LOST_MARKER,
    ORPHANED_MARKER,
    RESERVED_MARKER,
    merge_runtime_env,
    watcher,
    wrap,
)
from rayfleet.launcher.watcher import ProcessId
from rayfleet.provisioning.local import RunningCluster
from tests.integration.gangs.processes import cmdline, group_command, recorded, wait_gone, watched
from tests.polling import poll

pytestmark = pytest.mark.integration

GPU = {"CPU": 1, "GPU": 1}  # only the worker node has it
SPEC = LocalClusterSpec("fate", cpus=1, memory="768MiB", workers=(LocalNodeSpec(cpus=1, gpus=1, memory="512MiB"),))


@pytest.fixture()
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    """A cluster of this test alone (the test kills parts of it), stopped by its pids afterwards."""
    fleet = LocalFleet([SPEC], name=f"fate-{os.getpid()}-{request.node.name[:40]}", directory=tmp_path / "fleet")
    with fleet:
        try:
            yield fleet.running[0]
        finally:  # the test killed its raylet or head: what is left needs no clean shutdown
            fleet.down(timeout_s=2.0)


def start_command(
    cluster: RunningCluster, tmp_path: Path, survivors: list[ProcessId]
) -> tuple[str, list[ProcessId], int]:
    """Submit the job and wait until its command runs. Returns the job, the command's shell and background child, and
    the raylet of the node the command runs on (this cluster's: its command line names the cluster's temp dir)."""
    pids = tmp_path / "pids"
    wrapped, additions = wrap(group_command(pids), [GPU], "PACK", 60)
    client = JobSubmissionClient(cluster.address)
    job = client.submit_job(entrypoint=wrapped, runtime_env=merge_runtime_env(None, additions), entrypoint_num_cpus=0)
    command = recorded(pids, survivors, timeout=90, describe=lambda: f"no command: {client.get_job_logs(job)}")
    raylet = watched(command[0].pid, "raylet")
    assert cluster.temp_dir in cmdline(raylet), cmdline(raylet)
    return job, command, raylet


def test_the_command_dies_with_the_raylet_of_its_node(
    cluster: RunningCluster, tmp_path: Path, survivors: list[ProcessId]
) -> None:
    """The worker node's raylet is SIGKILLed (its Ray session is gone): the command's whole group goes with it, while
    the launcher (on the head, which lives) reports the command lost."""
    job, command, raylet = start_command(cluster, tmp_path, survivors)
    os.kill(raylet, signal.SIGKILL)
    wait_gone(*command, timeout=20, after="its raylet was killed")
    client = JobSubmissionClient(cluster.address)
    poll(lambda: client.get_job_status(job).is_terminal(), timeout=60)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.FAILED, logs
    assert RESERVED_MARKER in logs and f"{LOST_MARKER}: its watcher stopped the command: the raylet" in logs, logs
    assert f"exit code {COMMAND_LOST_EXIT}" in (client.get_job_info(job).message or "")


def test_the_command_dies_with_the_head(cluster: RunningCluster, tmp_path: Path, survivors: list[ProcessId]) -> None:
    """The head's Ray processes are SIGKILLed (the user's report). The worker node's raylet and the command's worker
    wait a minute for the lost GCS before they give up; the launcher, orphaned on the head, stops the command at once
    (and exits, which the command's watcher sees on this machine too)."""
    _, command, raylet = start_command(cluster, tmp_path, survivors)
    head = watcher.read_stat(cluster.pid)
    assert head is not None and head.pgrp == cluster.pid  # `ray start --head` leads the group of gcs, raylet, ...
    os.killpg(cluster.pid, signal.SIGKILL)
    wait_gone(*command, timeout=30, after="the head was killed")
    assert watcher.command_name(raylet) == "raylet"  # the command's own node is still up: not what stopped it


ORPHAN = """
import os, signal, sys
from rayfleet.launcher import runner

def on_sigterm(signum, frame):
    print("sigterm", flush=True)
    sys.exit(143)

signal.signal(signal.SIGTERM, on_sigterm)
runner._follow_parent(interval=0.05, exit_after=30)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()  # until its SIGTERM handler exits it
"""


def test_an_orphaned_launcher_stops_as_for_stop_job(tmp_path: Path, survivors: list[ProcessId]) -> None:
    """No Ray: a launcher whose parent (the shell Ray's job supervisor starts it in) is SIGKILLed says so and stops as
    on SIGTERM; that is what takes the command down when the head's Ray processes are killed (above)."""
    script, pids, out = tmp_path / "orphan.py", tmp_path / "pid", tmp_path / "out"
    script.write_text(ORPHAN)
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" {script} {pids} > {out} 2>&1; true'],
                             start_new_session=True)  # fmt: skip
    survivors.append(watcher.identify(shell.pid))
    (launcher,) = recorded(pids, survivors, timeout=60)
    shell.kill()
    shell.wait()
    wait_gone(launcher, timeout=10, after="its parent was killed")
    lines = out.read_text().splitlines()
    assert lines[0].startswith(f"{ORPHANED_MARKER}: the launcher's parent (pid {shell.pid}"), lines
    assert lines[1:] == ["sigterm"], lines
