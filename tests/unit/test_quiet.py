"""Quiet by default: Ray's client logging under rayfleet's control, version notes once and at WARNING only when they
matter, the library leaving the root logger alone, and the CLI's words for a turn of the loop and a score."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from rayfleet.backends.ray_jobs import RAY_FLOOR, version_note
from rayfleet.cli.fleet import describe_turn, render_decision
from rayfleet.config import FleetConfig
from rayfleet.dispatch import Dispatcher
from rayfleet.ledger import AttemptRecord, JobRecord, Ledger
from rayfleet.placement import Decision
from rayfleet.placement.place import Option
from rayfleet.resources import Resources
from rayfleet.states import JobState

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result


# ----- versions --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("theirs", "level", "says"),
    [
        ("2.54.0", logging.INFO, "Ray's job API works across these versions"),  # the user's mixed fleet: not a warning
        ("2.61.1", logging.INFO, "rayfleet's launcher runs on the cluster's own Ray"),
        ("2.40.0", logging.INFO, "this process has Ray 2.60.0"),
        ("2.7.2", logging.WARNING, "older than 2.8, the oldest whose job API takes every request rayfleet sends"),
        ("3.0.0", logging.WARNING, "another major version, whose job API rayfleet was not built for"),
        ("?", logging.INFO, "reports Ray version '?'"),
    ],
)
def test_a_version_difference_is_a_warning_only_when_it_matters(theirs: str, level: int, says: str) -> None:
    note = version_note("old", theirs, "2.60.0")

    assert note is not None and note[0] == level and says in note[1]
    assert note[1].startswith(f"cluster old {'reports' if theirs == '?' else 'runs'} Ray")
    assert ("To fix:" in note[1]) is (level == logging.WARNING)


def test_the_same_version_or_no_local_ray_says_nothing() -> None:
    assert version_note("a", "2.60.0", "2.60.0") is None
    assert version_note("a", "2.54.0", None) is None
    assert RAY_FLOOR == (2, 8)  # entrypoint_memory, the newest option rayfleet sends (Ray's submit_job checks it)


def test_a_cluster_on_another_ray_version_is_logged_once_per_process_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"v{uuid.uuid4().hex[:8]}"  # the note is once per process: a name no other test used
    config = FleetConfig.build(clusters=[{"name": name, "address": "http://127.0.0.1:9"}])
    first, second = Dispatcher(config, Ledger(tmp_path / "a.db")), Dispatcher(config, Ledger(tmp_path / "b.db"))
    try:
        with caplog.at_level(logging.INFO, logger="rayfleet.versions"), warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            for dispatcher in (first, second, first):
                dispatcher._check_version(name, "2.54.0", "session_x")  # reconnects re-read the version, too
            first._check_version(name, "2.7.0", "session_y")  # the cluster came back on another Ray: said again
    finally:
        first.close()
        second.close()

    notes = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "rayfleet.versions"]
    assert [level for level, _ in notes] == [logging.INFO, logging.WARNING]
    assert notes[0][1].startswith(f"cluster {name} runs Ray 2.54.0, this process has Ray ")
    assert notes[1][1].startswith(f"cluster {name} runs Ray 2.7.0, older than 2.8")
    assert warned == []  # logged, not warnings.warn


# ----- Ray's client logging and the root logger ------------------------------------------------------------------

SDK = "ray.dashboard.modules.dashboard_sdk"
RAY_SAYS = (
    "import logging\n"
    "from rayfleet.backends.ray_jobs import _import_client\n"
    "_import_client()  # imports Ray's client, as the first job call does\n"
    f"sdk = logging.getLogger({SDK!r})\n"
    "sdk.info('Package gcs://_ray_pkg_1.zip already exists, skipping upload.')\n"
    "logging.getLogger('ray._private.runtime_env.packaging').info('Creating a file package for local module x.')\n"
    "for _ in range(3):\n"
    "    sdk.warning('a warning Ray repeats on every call')\n"
    "print(logging.getLogger().handlers)\n"
)


def test_rays_client_info_lines_are_not_printed_by_a_library_user_and_its_warnings_once() -> None:
    result = run_python(RAY_SAYS)

    assert "already exists" not in result.stderr and "Creating a file package" not in result.stderr
    assert result.stderr.count("a warning Ray repeats on every call") == 1  # Python's last resort: WARNING and up
    assert result.stdout.strip() == "[]"  # rayfleet configured no handler on the root logger


def test_rays_client_records_reach_the_applications_logging_as_rayfleet_ray() -> None:
    code = "import logging, sys\nlogging.basicConfig(level=logging.INFO, format='%(name)s|%(message)s')\n" + RAY_SAYS

    result = run_python(code)

    lines = result.stderr.splitlines()
    assert f"{SDK}|Package gcs://_ray_pkg_1.zip already exists, skipping upload." in lines
    assert "ray._private.runtime_env.packaging|Creating a file package for local module x." in lines
    assert lines.count(f"{SDK}|a warning Ray repeats on every call") == 1
    assert not any("INFO dashboard_sdk.py" in line for line in lines)  # Ray's own handler and format: bypassed


def test_importing_rayfleet_and_making_a_fleet_configures_no_logging() -> None:
    code = (
        "import logging\n"
        "import rayfleet\n"
        "from rayfleet.capacity import Prober\n"
        "from rayfleet.config import Cluster\n"
        "Prober([Cluster(name='a', address='http://127.0.0.1:9')], timeout=1).snapshots(max_age=0)\n"
        "root = logging.getLogger()\n"
        "print(root.handlers, logging.getLevelName(root.level), logging.getLogger('rayfleet').level)\n"
    )
    result = run_python(code)

    assert result.stdout.split() == ["[]", "WARNING", "0"]
    assert "cluster a at http://127.0.0.1:9 did not answer: connection refused" in result.stderr  # the last resort


# ----- the CLI's words ---------------------------------------------------------------------------------------------


def job(job_id: str, state: JobState, *clusters: str, detail: str | None = None) -> JobRecord:
    attempts = tuple(
        AttemptRecord(f"{job_id}-{n}", job_id, n, c, None, None, 0.0, state if n == len(clusters) else JobState.LOST,
                      0.0, detail if n == len(clusters) else None, seq=10 + n)
        for n, c in enumerate(clusters, start=1)
    )  # fmt: skip
    return JobRecord(job_id, 0.0, "x", {}, None, None, None, attempts, job_state=JobState.QUEUED, job_seq=1)


def test_one_turn_says_what_it_did_to_each_job_and_to_clusters() -> None:
    before = {
        "rf-q": job("rf-q", JobState.QUEUED),
        "rf-run": job("rf-run", JobState.RUNNING, "cpu"),
        "rf-lost": job("rf-lost", JobState.UNKNOWN, "gpu-a"),
        "rf-same": job("rf-same", JobState.RUNNING, "cpu"),
    }
    after = {
        "rf-q": job("rf-q", JobState.SUBMITTED, "gpu"),
        "rf-run": job("rf-run", JobState.FAILED, "cpu", detail="exit code 1"),
        "rf-lost": job("rf-lost", JobState.SUBMITTED, "gpu-a", "cpu"),
        "rf-same": before["rf-same"],
    }

    lines = describe_turn(before, after, deleted=["spot-1"])

    assert lines == [
        "one turn: 3 active and 1 queued job(s) looked at; 3 changed (2 placed, 1 ended)",
        "  rf-q: QUEUED -> SUBMITTED, placed on gpu",
        "  rf-run: RUNNING -> FAILED on cpu: exit code 1",
        "  rf-lost: UNKNOWN -> SUBMITTED, placed again (attempt 2) on cpu",
        "deleted idle managed clusters: spot-1",
    ]
    assert describe_turn({}, {}, []) == [
        "one turn: no active or queued job to follow",
        "no idle managed cluster deleted",
    ]


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        ("binpack", "the node's capacity left free after placing, as fractions of each resource, summed"),
        ("cost", "the cluster part is the price per hour of the request there"),
        ("spread", "minus the mean fraction of the node left free after placing"),
        ("fragmentation", "grows the fragmentation for the typical request mix"),
    ],
)
def test_explains_score_column_says_what_its_two_numbers_are(policy: str, says: str) -> None:
    decision = Decision((Option("cpu", True, score=(0.0, 1.5), node_id="n1"),))
    console = Console(width=400, record=True)

    console.print(render_decision(decision, Resources(cpu=1), policy))

    text = " ".join(console.export_text().split())
    assert "score (cluster/node)" in text and "0/1.500" in text and f"(policy {policy})" in text
    assert "score = cluster/node, lower first" in text and says in text
