"""What the CLI prints against the session's real local clusters: nothing of Ray's client logging by default (it is
shown with -v), no warnings, and words for what `dispatch --once` and `explain` did."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayfleet import JobState
from rayfleet.ledger import Ledger
from tests.integration.conftest import ray_job
from tests.polling import poll

pytestmark = pytest.mark.integration

SDK = "[ray.dashboard.modules.dashboard_sdk]"


def rayfleet(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rayfleet", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "250"})
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def test_submit_prints_one_line_and_none_of_rays_client_logging(fleet_file: Path, ledger_path: Path) -> None:
    args = ("submit", "--fleet", str(fleet_file), "--ledger", str(ledger_path), "--cpu", "0.5", "--", "true")
    first, second = rayfleet(*args), rayfleet(*args)  # the second finds the launcher's package already uploaded

    for result in (first, second):
        assert result.stderr == ""  # no "INFO dashboard_sdk.py:423 -- Package ... already exists", no warning
        assert len(result.stdout.splitlines()) == 1 and " submitted to " in result.stdout
    verbose = rayfleet("-v", *args)
    # Ray still says it, where rayfleet's logging puts it: the package the launcher travels in exists by now
    assert f"info: {SDK} Package gcs://" in verbose.stderr and "already exists, skipping upload." in verbose.stderr
    assert "INFO dashboard_sdk.py" not in verbose.stderr  # not through Ray's own handler as well
    ledger = Ledger(ledger_path)
    for result in (first, second, verbose):
        assert ledger.job(result.stdout.split()[0]).state is not JobState.FAILED


def test_a_warning_is_shown_once_by_default_and_not_with_quiet(fleet_file: Path, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: a cluster that is down
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    definition = yaml.safe_load(fleet_file.read_text())
    definition["clusters"].append({"name": "down", "address": down})
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(definition))
    args = ("explain", "--cpu", "1", "--fleet", str(fleet), "--ledger", str(tmp_path / "x.db"))

    default, quiet = rayfleet(*args), rayfleet("-q", *args)

    assert default.stderr.splitlines() == [f"warning: cluster down at {down} did not answer: connection refused"]
    assert quiet.stderr == ""
    assert quiet.stdout.count("│ down ") == 1 and quiet.stdout.count(" ←") == 1  # the same table, a cluster chosen


def test_dispatch_once_says_what_the_turn_did(fleet_file: Path, ledger_path: Path, addresses: dict[str, str]) -> None:
    fleet = ("--fleet", str(fleet_file), "--ledger", str(ledger_path))
    job_id = rayfleet("submit", *fleet, "--", "true").stdout.split()[0]
    attempt = Ledger(ledger_path).job(job_id).last_attempt
    assert attempt is not None
    # until Ray has run it (Ray's own record): the turn then finds it ended
    poll(lambda: (ray_job(addresses[attempt.cluster], attempt.submission_id) or {}).get("status") == "SUCCEEDED")

    result = rayfleet("dispatch", "--once", *fleet)

    lines = result.stdout.splitlines()
    head = r"one turn: \d+ active and \d+ queued job\(s\) looked at; \d+ changed \(\d+ placed, \d+ ended\)"
    assert re.fullmatch(head, lines[0]), lines[0]
    assert re.search(rf"^  {job_id}: \w+ -> SUCCEEDED on {attempt.cluster}", result.stdout, re.MULTILINE)
    assert lines[-1] == "no idle managed cluster deleted" and result.stderr == ""
    assert Ledger(ledger_path).job(job_id).state is JobState.SUCCEEDED


def test_explain_says_what_the_score_is(fleet_file: Path, ledger_path: Path) -> None:
    result = rayfleet("explain", "--cpu", "1", "--fleet", str(fleet_file), "--ledger", str(ledger_path))

    text = " ".join(result.stdout.split())
    assert "score (cluster/node)" in text and re.search(r"│ 0/\d\.\d{3}\s+│", result.stdout)
    assert "score = cluster/node, lower first: the cluster part is 0 (only policy cost prices clusters)" in text
    assert "the node part is the node's capacity left free after placing" in text
