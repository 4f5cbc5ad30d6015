"""`rayfleet local ...` as a user runs it (the CLI in its own process): a fleet shaped by a file, found from shells
with and without ``RAYFLEET_LEDGER``, and stopped completely after its head was killed.

Two small clusters, one after the other: "shaped" (module-scoped, shared by the first tests) and "crash".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from rayfleet.provisioning.local import PORT_BLOCK, LocalFleet
from tests.polling import poll

pytestmark = pytest.mark.integration

FLEET_FILE = """\
clusters:
  - name: shaped
    cpus: 1
    memory: 1GiB
    labels: {zone: a, tier: gold}
"""
# a driver that connects to its cluster (so it holds a worker port of the cluster's block) and then waits until it is
# killed: the test kills the head, and `local down` must find and stop this orphan
DRIVER = "python -c \"import ray, threading; ray.init(); print('connected', flush=True); threading.Event().wait()\""


def environment(data: Path, ledger: Path | None = None, local_dir: Path | None = None) -> dict[str, str]:
    """The CLI's environment: the data directory (XDG_DATA_HOME) is the test's, so are the ledger and local dir if
    given; otherwise those variables are unset, as in a user's fresh shell."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAYFLEET_LEDGER", "RAYFLEET_LOCAL_DIR")}
    env.update(XDG_DATA_HOME=str(data), COLUMNS="200")
    if ledger is not None:
        env["RAYFLEET_LEDGER"] = str(ledger)
    if local_dir is not None:
        env["RAYFLEET_LOCAL_DIR"] = str(local_dir)
    return env


def rayfleet(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rayfleet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def processes_of(temp_dir: str) -> list[tuple[int, str]]:
    """Every process whose command line, environment or open files mention the cluster's temp dir (any file, read
    or written: broader than what `local down` looks for)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue  # exited, not collected yet
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
            fds = []
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):  # closed since
                    fds.append(os.readlink(f"/proc/{entry}/fd/{fd}"))
        except OSError:
            continue
        if temp_dir in cmdline or temp_dir in environ or any(temp_dir in target for target in fds):
            found.append((int(entry), cmdline[:120]))
    return found


def group_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[2])


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-data")


@pytest.fixture(scope="module")
def shaped(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The fleet "default" of the file above, started by `rayfleet local up -f` in a shell without RAYFLEET_LEDGER;
    its state as that command wrote it. Stopped at the end if a test did not."""
    file = tmp_path_factory.mktemp("fleet") / "local-fleet.yaml"
    file.write_text(FLEET_FILE)
    ok(rayfleet(environment(data), "local", "up", "-f", str(file)))
    state_dir = data / "rayfleet" / "local" / "default"
    yield json.loads((state_dir / "state.json").read_text())
    LocalFleet([], name="default", directory=state_dir).down()  # nothing left to do if the last test stopped it


def test_clusters_shows_the_labels_of_the_fleet_file_with_and_without_a_ledger_set(
    shaped: dict, data: Path, tmp_path: Path
) -> None:
    for ledger in (None, tmp_path / "elsewhere" / "ledger.db"):
        table = ok(rayfleet(environment(data, ledger), "clusters"))

        assert re.search(r"shaped\s+│\s+ok\s+│.*│\s+1/1\s+│.*provider=local,tier=gold,zone=a", table), table


def test_status_prints_the_state_directory_whatever_the_ledger(shaped: dict, data: Path, tmp_path: Path) -> None:
    status = ok(rayfleet(environment(data, tmp_path / "ledger.db"), "local", "status"))

    assert f"state directory: {data / 'rayfleet' / 'local' / 'default'}" in status
    assert re.search(r"shaped\s+│.*│\s+up\s+│\s+answers", status), status


def test_down_with_a_ledger_set_stops_the_fleet_started_without_one(shaped: dict, data: Path, tmp_path: Path) -> None:
    """Last of the tests on "shaped": it stops it."""
    (cluster,) = shaped["clusters"]

    assert ok(rayfleet(environment(data, tmp_path / "ledger.db"), "local", "down")).strip() == "stopped: shaped"
    assert processes_of(cluster["temp_dir"]) == []
    assert not (data / "rayfleet" / "local" / "default" / "state.json").exists()


def test_down_after_a_killed_head_stops_its_orphans_and_frees_its_ports(data: Path, tmp_path: Path) -> None:
    env = environment(data, local_dir=tmp_path / "local")  # and RAYFLEET_LOCAL_DIR, when set, is where state goes
    ok(rayfleet(env, "local", "up", "--name", "crash", "--cluster", "crash:cpus=1,memory=1GiB"))
    (cluster,) = json.loads((tmp_path / "local" / "crash" / "state.json").read_text())["clusters"]
    try:
        client = JobSubmissionClient(cluster["address"])
        job = client.submit_job(entrypoint=DRIVER)
        poll(lambda: "connected" in client.get_job_logs(job), timeout=90)

        os.kill(cluster["pid"], signal.SIGKILL)  # the head's `ray start`, as a crash would
        poll(lambda: group_of(cluster["pid"]) is None, timeout=10)
        # orphans: outside the head's process group (the job's driver runs in a session of its own), so stopping
        # that group cannot reach them
        assert [p for p, _ in processes_of(cluster["temp_dir"]) if group_of(p) != cluster["pid"]] != []

        assert ok(rayfleet(env, "local", "down", "--name", "crash")).strip() == "stopped: crash"

        assert processes_of(cluster["temp_dir"]) == []
        block = range(cluster["port_base"], cluster["port_base"] + PORT_BLOCK)
        assert [port for port in block if not bindable(port)] == []
    finally:
        LocalFleet([], name="crash", directory=tmp_path / "local" / "crash").down()
