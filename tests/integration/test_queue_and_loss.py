"""The queue, cluster loss and exactly-once, on real local Ray clusters.

- Queued jobs start in priority order when capacity frees up.
- (A cluster that dies, comes back with a new Ray session, and what happens to retriable and other jobs:
  tests/reliability/test_cluster_faults.py.)
- Two dispatcher processes, each with its own ledger, share a fleet with room for one of their gangs: both jobs
  finish, neither runs twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayfleet import Fleet
from rayfleet.errors import NoCapacityError
from rayfleet.ledger import Ledger
from rayfleet.states import JobState
from tests.integration.conftest import ray_job, wait_idle
from tests.polling import poll, until_file

pytestmark = pytest.mark.integration


def _mark(path: Path, then: str = "") -> str:
    """A command that appends a line to ``path`` when it starts (proof that the user's command ran)."""
    code = f"import os; open('{path}', 'a').write(os.environ.get('RAYFLEET_JOB_ID', '?') + '\\n')"
    return f'python -c "{code}"' + (f" && {then}" if then else "")


def test_queued_jobs_start_in_priority_order_when_capacity_frees_up(fleet: Fleet, tmp_path: Path) -> None:
    wait_idle(fleet)
    release = tmp_path / "release"
    blocker = fleet.submit(until_file(release), {"cpu": 2}, cluster="cpu")
    poll(lambda: blocker.status() is JobState.RUNNING and "rayfleet: reserved" in blocker.logs(), timeout=60)
    poll(lambda: fleet.snapshots(max_age=0)["cpu"].sum("CPU", "free") == 0, timeout=30)  # the reading shows it
    with pytest.raises(NoCapacityError):  # without wait, a full cluster is an error, as before
        fleet.submit("true", {"cpu": 2}, cluster="cpu")
    low = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=True, priority=0)
    high = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=True, priority=10)
    mid = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=True, priority=5)
    assert [h.record.state for h in (low, high, mid)] == [JobState.QUEUED] * 3
    assert {h.id for h in fleet.queued()} >= {low.id, high.id, mid.id}
    assert fleet.tick() == [] and all(h.record.state is JobState.QUEUED for h in (low, high, mid))  # still full

    release.touch()
    blocker.wait(60)

    def all_done() -> bool:
        fleet.tick()
        return all(h.record.state.is_terminal() for h in (low, high, mid))

    poll(all_done, timeout=180, interval=0.5)
    assert [h.record.state for h in (high, mid, low)] == [JobState.SUCCEEDED] * 3
    started = {h.id: h.attempts[0].created_at for h in (low, high, mid)}
    assert started[high.id] < started[mid.id] < started[low.id]


def test_a_queued_job_past_its_deadline_fails_and_a_stopped_one_never_runs(fleet: Fleet, tmp_path: Path) -> None:
    wait_idle(fleet)
    release = tmp_path / "release"
    blocker = fleet.submit(until_file(release), {"cpu": 2}, cluster="cpu")
    try:
        poll(lambda: blocker.status() is JobState.RUNNING, timeout=60)
        late = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=0.5)
        cancelled = fleet.submit(_mark(tmp_path / "ran"), {"cpu": 2}, cluster="cpu", wait=True)
        assert cancelled.stop() is True
        poll(lambda: (fleet.tick(), late.record.state)[1] is JobState.FAILED, timeout=30)
        assert "past its queue timeout of 0.5 s" in (late.record.reason or "")
        assert cancelled.record.state is JobState.STOPPED and cancelled.attempts == ()
    finally:
        release.touch()
        blocker.wait(60)
    fleet.tick()
    assert not (tmp_path / "ran").exists()


# ----- two dispatchers --------------------------------------------------------------------------------------------

DISPATCHER = textwrap.dedent(
    """
    import json, sys
    from rayfleet import Fleet
    fleet_file, ledger, command = sys.argv[1:4]
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        handle = fleet.submit(command, gang={"bundles": [{"gpu": 1}, {"gpu": 1}], "strategy": "PACK"}, wait=True)
        state = handle.wait(timeout=240)
        print(json.dumps({"id": handle.id, "state": state.value,
                          "attempts": [[a.cluster, a.state.value, a.submission_id] for a in handle.attempts]}))
    """
)


def test_two_dispatchers_with_room_for_one_gang_run_both_once(
    fleet: Fleet, fleet_file: Path, addresses: dict[str, str], tmp_path: Path
) -> None:
    wait_idle(fleet)
    script = tmp_path / "dispatcher.py"
    script.write_text(DISPATCHER)
    ran = tmp_path / "ran"
    command = _mark(ran, "sleep 4")  # long enough that the other gang's launcher gives up at least once
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(fleet_file), str(tmp_path / f"ledger-{i}.db"), command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=280)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["state"] for r in results] == ["SUCCEEDED", "SUCCEEDED"]
    assert sorted(ran.read_text().split()) == sorted(r["id"] for r in results)  # each command ran exactly once
    for result, i in zip(results, range(2), strict=True):
        ledger = Ledger(tmp_path / f"ledger-{i}.db")
        job = ledger.job(result["id"])
        assert [a.state for a in job.attempts][-1] is JobState.SUCCEEDED
        assert all(a.state is JobState.FAILED for a in job.attempts[:-1])  # earlier ones never reserved
        for attempt in job.attempts:  # Ray agrees with each ledger, attempt by attempt
            seen = ray_job(addresses[attempt.cluster], attempt.submission_id)
            assert seen is not None and seen["status"] == attempt.state.value
        ledger.close()
