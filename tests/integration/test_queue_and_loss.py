"""The queue, cluster loss and exactly-once, on real local Ray clusters.

- Queued jobs start in priority order when capacity frees up.
- A cluster that dies is UNKNOWN while it is away, and proven LOST when it comes back with a new Ray session:
  the retriable job runs again elsewhere, the other FAILS with the reason.
- Two dispatcher processes, each with its own ledger, share a fleet with room for one of their gangs: both jobs
  finish, neither runs twice.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayfleet import Cluster, Fleet, LocalClusterSpec, LocalFleet
from rayfleet.errors import NoCapacityError, RayfleetError
from rayfleet.ledger import Ledger
from rayfleet.states import JobState
from tests.integration.conftest import ray_job, wait_idle
from tests.polling import poll

pytestmark = pytest.mark.integration


def _until_file(path: Path) -> str:
    """A command that runs until ``path`` exists (the test decides when it ends; no timing involved)."""
    return f"python -c \"import os, time\nwhile not os.path.exists('{path}'): time.sleep(0.1)\""


def _mark(path: Path, then: str = "") -> str:
    """A command that appends a line to ``path`` when it starts (proof that the user's command ran)."""
    code = f"import os; open('{path}', 'a').write(os.environ.get('RAYFLEET_JOB_ID', '?') + '\\n')"
    return f'python -c "{code}"' + (f" && {then}" if then else "")


def test_queued_jobs_start_in_priority_order_when_capacity_frees_up(fleet: Fleet, tmp_path: Path) -> None:
    wait_idle(fleet)
    release = tmp_path / "release"
    blocker = fleet.submit(_until_file(release), {"cpu": 2}, cluster="cpu")
    poll(lambda: blocker.status() is JobState.RUNNING and "rayfleet: reserved" in blocker.logs(), timeout=60)
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
    blocker = fleet.submit(_until_file(release), {"cpu": 2}, cluster="cpu")
    try:
        poll(lambda: blocker.status() is JobState.RUNNING, timeout=60)
        late = fleet.submit("true", {"cpu": 2}, cluster="cpu", wait=0.5)
        cancelled = fleet.submit(_mark(tmp_path / "ran"), {"cpu": 2}, cluster="cpu", wait=True)
        assert cancelled.stop() is True
        poll(lambda: (fleet.tick(), late.record.state)[1] is JobState.FAILED, timeout=30)
        assert "deadline" in (late.record.reason or "")
        assert cancelled.record.state is JobState.STOPPED and cancelled.attempts == ()
    finally:
        release.touch()
        blocker.wait(60)
    fleet.tick()
    assert not (tmp_path / "ran").exists()


# ----- cluster loss -----------------------------------------------------------------------------------------------


@pytest.fixture()
def lossy(tmp_path: Path) -> Iterator[LocalFleet]:
    """A cluster of its own that the test kills and restarts at the same address."""
    running = LocalFleet([LocalClusterSpec("lossy", cpus=2, memory="1GiB")], name=f"lossy-{tmp_path.name}"[:40])
    running.up()
    try:
        yield running
    finally:
        running.down()


def test_a_killed_cluster_makes_its_jobs_unknown_then_lost_retried_or_failed(
    lossy: LocalFleet, addresses: dict[str, str], tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.db"
    address, base = lossy.running[0].address, lossy.running[0].port_base
    # the submitting process sees only the lossy cluster; the dispatcher process sees it and the "cpu" one
    submitter = Fleet([Cluster(name="lossy", address=address)], ledger=ledger)
    dispatcher = Fleet(
        [Cluster(name="lossy", address=address), Cluster(name="cpu", address=addresses["cpu"])],
        ledger=ledger,
        unknown_after_s=1.0,
        probe_timeout_s=1.0,
    )
    ran = tmp_path / "ran"
    retriable = submitter.submit(_mark(ran, "sleep 600"), {"cpu": 0.5}, max_retries=1)
    single = submitter.submit(_mark(ran, "sleep 600"), {"cpu": 0.5})
    try:
        poll(lambda: ran.exists() and len(ran.read_text().split()) == 2, timeout=90)
        first_session = Ledger(ledger).job(retriable.id).attempts[0].session
        assert first_session

        lossy.down()  # the head and its jobs are gone; nothing answers at its address
        jobs = [dispatcher.job(retriable.id), dispatcher.job(single.id)]
        poll(lambda: (dispatcher.tick(), all(j.record.state is JobState.UNKNOWN for j in jobs))[1], timeout=60)
        assert all(len(j.attempts) == 1 for j in jobs)  # unknown is not lost: nothing placed again

        restarted = LocalFleet([LocalClusterSpec("lossy", cpus=2, memory="1GiB")], name=lossy.name, port_base=base)
        restarted.up()
        lossy.running = restarted.running  # so the fixture stops the new one
        lossy._processes.update(restarted._processes)
        assert restarted.running[0].address == address

        def settled() -> bool:
            dispatcher.tick()
            return jobs[1].record.state is JobState.FAILED and jobs[0].record.state is JobState.RUNNING

        poll(settled, timeout=120, interval=0.5)
        first, second = jobs[0].attempts
        assert first.state is JobState.LOST and "restarted" in (first.detail or "")
        assert (first.cluster, second.cluster) == ("lossy", "cpu")
        failed = jobs[1].record
        assert failed.attempts[0].state is JobState.LOST
        assert failed.reason and "lost on lossy" in failed.reason and "max_retries=0" in failed.reason
        poll(lambda: len(ran.read_text().split()) == 3, timeout=60)  # the retriable one started again, once
        assert sorted(ran.read_text().split()) == sorted([retriable.id, retriable.id, single.id])
    finally:
        for handle in (retriable, single):
            if not dispatcher.job(handle.id).record.state.is_terminal():
                with contextlib.suppress(RayfleetError):  # its cluster may be the one that is down
                    dispatcher.job(handle.id).stop()
        submitter.close()
        dispatcher.close()


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
