"""Why did my job fail, and what is the fleet doing: `rayfleet job`, `jobs` filters and reasons, `logs` of any
attempt with a message for every case with none, a maximum run time, cordon, drain, and stopping a whole group.

Against the session's real clusters ("cpu", "gpu"); the CLI runs as a user runs it, in its own process. Timing rules
(queue deadlines, run timeouts) are moved by an injected clock, not waited for.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest

from rayfleet import Fleet, JobState, LogsUnavailableError, NoCapacityError
from rayfleet.cli import EXIT_ERROR, EXIT_USAGE
from rayfleet.dispatch.submission import Submission
from rayfleet.ledger import Ledger
from tests.clock import ManualClock
from tests.integration.conftest import ray_job
from tests.integration.test_cli import rayfleet
from tests.polling import poll, until_file

pytestmark = pytest.mark.integration


def cli(ledger: Path, fleet_file: Path, *args: str, check: bool = True):
    return rayfleet(*args, "--fleet", str(fleet_file), "--ledger", str(ledger), check=check)


def test_a_failed_job_says_why_in_jobs_job_and_logs(fleet_file: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        failing = fleet.submit("python -c \"print('step 1'); print('step 2'); raise SystemExit(3)\"", {"cpu": 0.5})
        assert failing.wait(120) is JobState.FAILED
        gang = fleet.submit("true", gang={"bundles": [{"cpu": 0.25}, {"cpu": 0.25}], "strategy": "PACK"})
        assert gang.wait(120) is JobState.SUCCEEDED

    listing = cli(ledger, fleet_file, "jobs", "--state", "failed").stdout
    assert failing.id in listing and gang.id not in listing  # the filter
    assert "exit code 3" in listing  # the reason column
    gangs = cli(ledger, fleet_file, "jobs", "--state", "SUCCEEDED").stdout
    assert "PACK gang of 2 x (0.25 CPU)" in gangs  # not "nothing"

    one = cli(ledger, fleet_file, "job", failing.id).stdout
    assert re.search(rf"job\s+{failing.id}\s+FAILED", one)
    assert re.search(r"why\s+Job entrypoint command failed with exit code 3; its log ends: .*step 2", one)
    assert re.search(rf"1 │ \w+ *│ {failing.id}-1 *│ FAILED *│ 3 ", one)  # the attempt with its exit code
    assert "PLACED" in one and "policy binpack" in one  # every state, with the placement's reason
    assert "log (last 20 lines" in one and "step 1" in one
    assert len(failing.record.reason or "") < 400  # not 20,000 characters of log in the reason

    assert "step 2" in cli(ledger, fleet_file, "logs", failing.id, "--attempt", "1").stdout
    wrong = cli(ledger, fleet_file, "logs", failing.id, "--attempt", "2", check=False)
    assert wrong.returncode == EXIT_USAGE
    assert f"job {failing.id} has no attempt 2: it has attempts 1 to 1" in wrong.stderr


def test_a_job_never_placed_says_so_in_logs_and_job(fleet_file: Path, tmp_path: Path) -> None:
    ledger, clock = tmp_path / "ledger.db", ManualClock()
    with Fleet.from_file(fleet_file, ledger=ledger, clock=clock) as fleet:
        hog = fleet.submit(until_file(tmp_path / "release"), {"cpu": 2}, cluster="cpu")  # all of it
        try:
            poll(lambda: hog.status() is JobState.RUNNING, timeout=120)
            # until a reading shows it: the clock that stands still dates the hold, not the cluster's reports
            poll(lambda: fleet.snapshots(max_age=0)["cpu"].sum("CPU", "free") == 0, timeout=60)
            waiting = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=5)
            assert waiting.record.state is JobState.QUEUED
            clock.advance(10)
            fleet.tick()
            assert waiting.record.state is JobState.FAILED
        finally:  # the shared cluster's CPUs back for the next tests, whatever happened
            (tmp_path / "release").touch()
            assert hog.wait(120) is JobState.SUCCEEDED
        with pytest.raises(LogsUnavailableError) as info:
            waiting.logs()

    assert "was never placed on a cluster, so it has no log" in info.value.message
    assert re.search(
        r"waited 10 s in the queue, past its queue timeout of 5.0 s; it was waiting: no cluster can take 2 CPU now$",
        info.value.message,
    )
    logs = cli(ledger, fleet_file, "logs", waiting.id, check=False)
    assert logs.returncode == EXIT_ERROR and "never placed" in logs.stderr and "rayfleet job" in logs.stderr
    one = cli(ledger, fleet_file, "job", waiting.id).stdout
    assert "past its queue timeout of 5.0 s" in one and "QUEUED" in one


def test_a_job_past_its_timeout_is_stopped_and_failed_with_that_reason(fleet_file: Path, tmp_path: Path) -> None:
    clock = ManualClock()
    with Fleet.from_file(fleet_file, ledger=tmp_path / "ledger.db", clock=clock) as fleet:
        job = fleet.submit(until_file(tmp_path / "never"), {"cpu": 0.5}, timeout_s=30)
        poll(lambda: job.status() is JobState.RUNNING, timeout=120)
        clock.advance(29)
        assert job.status() is JobState.RUNNING
        clock.advance(2)
        assert job.status() is JobState.FAILED
        assert job.record.reason == "ran past its timeout_s=30 (stopped after 31 s running)"
        address = next(c.address for c in fleet.clusters if c.name == job.cluster)
        poll(lambda: ray_job(address, job.submission_id)["status"] == "STOPPED", timeout=60)
        with pytest.raises(ValueError, match="timeout_s"):
            fleet.submit("true", {}, timeout_s=0)
    args = ("--fleet", str(fleet_file), "--ledger", str(tmp_path / "ledger.db"))
    said = rayfleet("submit", "--timeout", "600", "--cpu", "0.5", *args, "--", "true").stdout
    assert Submission.from_job(Ledger(tmp_path / "ledger.db").job(said.split()[0])).timeout_s == 600


def test_a_cordoned_cluster_takes_no_new_job_until_uncordoned(fleet_file: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    said = cli(ledger, fleet_file, "cordon", "gpu", "--reason", "driver upgrade").stdout
    assert "gpu: cordoned" in said
    try:
        shown = cli(ledger, fleet_file, "clusters").stdout
        assert re.search(r"│ gpu +│ ok, cordoned ", shown) and re.search(r"│ cpu +│ ok +│", shown)
        assert re.search(r"^gpu: cordoned by \S+ at [\d-]+ [\d:]+: driver upgrade$", shown, re.MULTILINE)
        explained = cli(ledger, fleet_file, "explain", "--gpu", "1").stdout
        assert re.search(r"gpu .*cordoned by \S+ at \d\d:\d\d:\d\d: driver upgrade", explained)
        with Fleet.from_file(fleet_file, ledger=ledger) as fleet, pytest.raises(NoCapacityError) as info:
            fleet.submit("true", {"gpu": 1})
        assert "cordoned by" in str(info.value)
        typo = cli(ledger, fleet_file, "cordon", "gpuu", check=False)
        assert typo.returncode == EXIT_USAGE and "did you mean 'gpu'?" in typo.stderr
    finally:
        assert "gpu: uncordoned" in cli(ledger, fleet_file, "uncordon", "gpu").stdout
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        assert fleet.explain({"gpu": 1}).chosen.cluster == "gpu"


def test_drain_moves_a_retriable_job_and_waits_for_the_rest(fleet_file: Path, tmp_path: Path) -> None:
    ledger, release = tmp_path / "ledger.db", tmp_path / "release"
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        movable = fleet.submit(until_file(release), {"cpu": 0.5}, max_retries=1)
        poll(lambda: movable.status() is JobState.RUNNING, timeout=120)
        where = movable.cluster
        staying = fleet.submit(until_file(release), {"cpu": 0.5}, cluster=where)
        poll(lambda: staying.status() is JobState.RUNNING, timeout=120)
        try:
            drained = cli(ledger, fleet_file, "drain", where, "--move", "--no-wait").stdout
            assert f"moved {movable.id}" in drained
            first, second = movable.attempts
            assert (first.cluster, first.state) == (where, JobState.LOST)
            assert first.detail == f"moved off cluster {where}, which is being drained"
            assert second.cluster != where  # placed elsewhere
            assert [h.id for h in fleet.active_on(where)] == [staying.id]  # not retriable: it runs on
            release.touch()
            assert staying.wait(120) is JobState.SUCCEEDED and movable.wait(120) is JobState.SUCCEEDED
            assert "drained, no job runs there" in cli(ledger, fleet_file, "drain", where).stdout
        finally:  # leave the shared clusters as found: both jobs ended (they hold CPUs the next tests need)
            release.touch()
            for handle in (movable, staying):
                with contextlib.suppress(Exception):
                    if handle.status() is JobState.QUEUED:  # nowhere to go: withdrawn, not waited for
                        handle.stop()
                    handle.wait(120)
            cli(ledger, fleet_file, "uncordon", where, check=False)


def test_stopping_a_group_stops_every_member_on_every_cluster(fleet_file: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        command = until_file(tmp_path / "never")
        group = fleet.submit_group([{"entrypoint": command, "resources": {"cpu": 0.5}, "cluster": "cpu"},
                                    {"entrypoint": command, "resources": {"cpu": 0.5}, "cluster": "gpu"}])  # fmt: skip
        poll(lambda: all(m.status() is JobState.RUNNING for m in group.members), timeout=120)
        said = cli(ledger, fleet_file, "stop", "--group", group.id).stdout
        assert f"group {group.id}: stopped 2 job(s)" in said
        poll(lambda: all(m.status() is JobState.STOPPED for m in group.members), timeout=60)
        none = cli(ledger, fleet_file, "stop", "--group", "no-such-group", check=False)
        assert none.returncode == EXIT_ERROR and "no job of group 'no-such-group' is active" in none.stderr
