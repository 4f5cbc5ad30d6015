"""Error classes met on real servers on 127.0.0.1: a port nothing listens on, next to the session's real local
clusters; through the prober, the job API and the CLI (exit codes as a user gets them). Credentials refused (401/403)
by a token-authenticated cluster are tested with those clusters (issue 15); their translation is pure logic, tested
in tests/unit/test_error_classes.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.capacity import UNREACHABLE, Prober
from rayfleet.cli import EXIT_CLUSTER
from rayfleet.config import Cluster
from rayfleet.errors import ClusterUnreachableError

pytestmark = pytest.mark.integration


def rayfleet(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, with a wide terminal so that tables and hints do not wrap."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAYFLEET_FLEET")}
    command = [sys.executable, "-m", "rayfleet", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env={**clean, "COLUMNS": "250"})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_nothing_listens_on_is_unreachable_with_its_address() -> None:
    address = f"http://127.0.0.1:{closed_port()}"
    cluster = Cluster(name="down", address=address)

    snap = Prober([cluster], timeout=5).snapshots(max_age=0)["down"]
    with pytest.raises(ClusterUnreachableError) as caught:
        RayJobs(cluster).status("rf-down-1")

    assert (
        snap.error_kind == UNREACHABLE and snap.error == f"cluster down at {address} did not answer: connection refused"
    )
    assert caught.value.message == snap.error and caught.value.hint == snap.error_hint
    assert f"check that cluster down is up ('rayfleet local status' for a local fleet) and that {address}" in (
        snap.error_hint or ""
    )


# ----- the CLI -----------------------------------------------------------------------------------------------------


def test_clusters_exits_0_while_one_cluster_answers_and_4_when_none_does(fleet_file: Path, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    definition = yaml.safe_load(fleet_file.read_text())
    partial = tmp_path / "partial.yaml"
    partial.write_text(
        yaml.safe_dump({**definition, "clusters": [*definition["clusters"], {"name": "down", "address": down}]})
    )
    dead = tmp_path / "dead.yaml"
    dead.write_text(
        yaml.safe_dump({"clusters": [{"name": "down", "address": down}, {"name": "gone", "address": down}]})
    )
    ledger = str(tmp_path / "x.db")

    partly = rayfleet("clusters", "--fleet", str(partial), "--ledger", ledger)
    none = rayfleet("clusters", "--fleet", str(dead), "--ledger", ledger)

    assert partly.returncode == 0, partly.stdout + partly.stderr
    assert "│ unreachable" in partly.stdout and "│ ok" in partly.stdout and partly.stderr == ""
    assert f"cluster down at {down} did not answer: connection refused" in partly.stdout
    assert none.returncode == EXIT_CLUSTER, none.stdout + none.stderr
    assert none.stdout.count("│ unreachable") == 2
    assert "error: no cluster answered (all 2 clusters of the fleet)" in none.stderr
