"""Part 2 of issue 7: the dispatching process dies (SIGKILL) mid-burst; a fresh `Fleet` on the same ledger reattaches.

Real local clusters ("a", "b"), a real child process, a real SIGKILL. The two precise crash windows are built
deterministically: the ledger state the dispatcher writes (through the `Ledger` API) plus, for the second window, the
very submission it would have made (Ray's own `JobSubmissionClient`, same submission id).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from rayfleet import Cluster, Fleet
from rayfleet.faults import FAULT_ENV
from rayfleet.ledger import Ledger
from rayfleet.states import JobState
from tests.clock import ManualClock
from tests.polling import poll
from tests.reliability.conftest import drive, dump, fences, ledger_matches_ray, marker, ray_jobs, started

pytestmark = pytest.mark.integration

GRACE_S = 5.0  # placed_grace_s, its default: then a PLACED attempt its cluster does not have is fenced

BURST = textwrap.dedent(
    """
    import json, sys
    from rayfleet import Cluster, Fleet
    ledger, clusters, command, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    fleet = Fleet([Cluster(name=k, address=v) for k, v in clusters.items()], ledger=ledger, start_timeout_s=60.0)
    print("ready", flush=True)
    for i in range(n):
        resources = {"cpu": 0.5} if i % 4 == 3 else {}  # every fourth job goes through the launcher
        print(fleet.submit(command, resources, wait=True).id, flush=True)
    """
)


def test_a_dispatcher_killed_mid_burst_is_reattached_and_every_job_runs_exactly_once(
    stable_clusters: list[Cluster], tmp_path: Path
) -> None:
    ledger_path, ran = tmp_path / "ledger.db", tmp_path / "ran"
    addresses = {c.name: c.address for c in stable_clusters}
    script = tmp_path / "burst.py"
    script.write_text(BURST)
    errors = (tmp_path / "burst.err").open("w")
    child = subprocess.Popen(
        [sys.executable, str(script), str(ledger_path), json.dumps(addresses), marker(ran), "40"],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", (tmp_path / "burst.err").read_text()[-3000:]
        watch = Ledger(ledger_path)
        # mid-burst: the moment the 9th job is recorded, its submission is on its way (or about to be)
        poll(lambda: child.poll() is not None or len(watch.jobs(limit=100)) >= 9, timeout=120, interval=0.002)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        errors.close()
    printed = out.split()
    assert child.returncode == -signal.SIGKILL

    fleet = Fleet(stable_clusters, ledger=ledger_path, placed_grace_s=GRACE_S, start_timeout_s=60.0)
    try:
        ledger = Ledger(ledger_path)
        ids = {j.id for j in ledger.jobs(limit=1000)}
        assert set(printed) <= ids and len(ids) - len(printed) <= 1, (printed, ids)  # at most one was in flight
        in_flight = ids - set(printed)
        windows = {j: [(a.state.value, a.cluster) for a in ledger.job(j).attempts] for j in in_flight}
        drive(fleet, lambda: all(ledger.job(j).state.is_terminal() for j in ids), timeout=120 + GRACE_S)

        report = dump(ledger, ids)
        assert all(ledger.job(j).state is JobState.SUCCEEDED for j in ids), report
        runs = collections.Counter(started(ran))
        for j in ids:  # exactly once: the command of each job started once, in its final attempt
            job = ledger.job(j)
            assert [a.submission_id for a in job.attempts if runs[a.submission_id]] == [f"{j}-{len(job.attempts)}"]
            assert all("never submitted" in (a.detail or "") for a in job.attempts[:-1]), report
        assert sum(runs.values()) == len(ids), runs
        assert ledger_matches_ray(ledger, addresses, ids) == []  # no submission id twice, none unknown to the ledger
        on_ray = {sid for address in addresses.values() for sid, _, _ in ray_jobs(address, ids)}
        fenced = {sid for address in addresses.values() for sid in fences(address, ids)}
        for j in ids:  # every attempt the ledger says was submitted is on its cluster; one never submitted is fenced
            for a in ledger.job(j).attempts:
                never = "never submitted" in (a.detail or "")
                assert (a.submission_id in on_ray and a.submission_id not in fenced) == (not never), report
                assert (a.submission_id in fenced) == never, report
        print(f"\ndispatcher crash: {len(ids)} jobs in the ledger, {len(printed)} returned before SIGKILL, "
              f"in flight at the kill: {windows}")  # fmt: skip
    finally:
        fleet.close()


def _placed(ledger: Ledger, fleet: Fleet, command: str) -> tuple[str, str]:
    """Write what a dispatcher writes before it submits: the job with attempt 1 PLACED on "a"."""
    job_id = f"rf-{uuid.uuid4().hex[:12]}"
    session = fleet.snapshots(max_age=0)["a"].session_name
    ledger.add_job(
        job_id,
        entrypoint=command,
        request={"resources": {}, "policy": "binpack"},
        attempt={"submission_id": f"{job_id}-1", "n": 1, "cluster": "a", "session": session},
    )
    return job_id, f"{job_id}-1"


def test_a_crash_between_recorded_placed_and_submitted_fences_the_attempt_after_the_grace_and_places_again(
    stable_clusters: list[Cluster], tmp_path: Path
) -> None:
    ledger_path, ran = tmp_path / "ledger.db", tmp_path / "ran"
    clock = ManualClock()
    fleet = Fleet(stable_clusters, ledger=ledger_path, placed_grace_s=GRACE_S, clock=clock)
    try:
        ledger = fleet.ledger
        job_id, sid = _placed(ledger, fleet, marker(ran))  # ... and the process died before submitting
        clock.advance(GRACE_S - 0.5)
        fleet.tick()
        # within the grace, the placing process may still be submitting: nothing is done
        assert [a.state for a in ledger.job(job_id).attempts] == [JobState.PLACED], dump(ledger, {job_id})
        assert ray_jobs(stable_clusters[0].address, {job_id}) == []
        clock.advance(1.0)
        drive(fleet, lambda: ledger.job(job_id).state is JobState.SUCCEEDED, timeout=60)
        first, second = ledger.job(job_id).attempts
        assert first.state is JobState.FAILED and "never submitted" in (first.detail or "")
        assert "fenced" in (first.detail or "")
        assert second.cluster == "b"  # its cluster is tried last
        # on "a", attempt 1's id is taken by the fence (a no-op), so its submitter could never start it there
        assert fences(stable_clusters[0].address, {job_id}) == {sid}
        assert [s for s, _, _ in ray_jobs(stable_clusters[0].address, {job_id})] == [sid]
        fence = JobSubmissionClient(stable_clusters[0].address).get_job_info(sid)
        assert fence.entrypoint == "true" and fence.metadata.get("rayfleet.fence") == "1"
        assert [s for s, _, _ in ray_jobs(stable_clusters[1].address, {job_id})] == [f"{job_id}-2"]
        assert started(ran) == [f"{job_id}-2"]
    finally:
        fleet.close()


STOPPED_SUBMITTER = textwrap.dedent(
    """
    import json, sys
    from rayfleet import Cluster, Fleet
    ledger, clusters, command = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    fleet = Fleet([Cluster(name=k, address=v) for k, v in clusters.items()], ledger=ledger)
    print(fleet.submit(command).id, flush=True)
    """
)


def test_a_submitter_paused_between_record_and_submit_is_fenced_and_the_command_runs_once(
    stable_clusters: list[Cluster], tmp_path: Path
) -> None:
    """A laptop closed at the worst moment: the attempt is recorded PLACED, nothing is sent. Another loop fences it
    and runs the job; when the first process goes on, its submission meets the fence and it backs off."""
    ledger_path, ran = tmp_path / "ledger.db", tmp_path / "ran"
    script = tmp_path / "submit.py"
    script.write_text(STOPPED_SUBMITTER)
    addresses = {c.name: c.address for c in stable_clusters}
    child = subprocess.Popen(
        [sys.executable, str(script), str(ledger_path), json.dumps(addresses), marker(ran)],
        env={**os.environ, FAULT_ENV: "attempt.recorded:stop"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        poll(lambda: _process_state(child.pid) in ("T", None), timeout=60, interval=0.05)  # stopped itself
        assert child.poll() is None, child.communicate()[1][-3000:]
        clock = ManualClock()
        with Fleet(stable_clusters, ledger=ledger_path, placed_grace_s=GRACE_S, clock=clock) as fleet:
            [job] = fleet.ledger.jobs()
            [placed] = job.attempts
            assert placed.state is JobState.PLACED
            clock.advance(GRACE_S + 1)
            drive(fleet, lambda: fleet.ledger.job(job.id).state is JobState.SUCCEEDED, timeout=60)
            os.kill(child.pid, signal.SIGCONT)  # the laptop opens: the first process sends its submission now
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err[-3000:]
            assert out.split() == [job.id]  # it returned the job, which another loop carries
            first, second = fleet.ledger.job(job.id).attempts
            assert first.state is JobState.FAILED and "fenced" in (first.detail or "")
            assert second.state is JobState.SUCCEEDED
        # every cluster's job list: attempt 2, and attempt 1's id held by the fence only
        everywhere = sorted(s for c in stable_clusters for s, _, _ in ray_jobs(c.address, {job.id}))
        assert everywhere == sorted([first.submission_id, second.submission_id])
        assert {s for c in stable_clusters for s in fences(c.address, {job.id})} == {first.submission_id}
        assert started(ran) == [second.submission_id]  # the user's command ran once
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate(timeout=30)


def _process_state(pid: int) -> str | None:
    """The state letter of a process (R, S, T for stopped ...), None once it has exited."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state = text[text.rindex(")") + 2]
    return None if state in "ZX" else state


def test_a_crash_between_submitted_and_recorded_submitted_adopts_rays_state_without_a_second_submission(
    stable_clusters: list[Cluster], tmp_path: Path
) -> None:
    ledger_path, ran = tmp_path / "ledger.db", tmp_path / "ran"
    fleet = Fleet(stable_clusters, ledger=ledger_path, placed_grace_s=GRACE_S)
    try:
        ledger = Ledger(ledger_path)
        job_id, sid = _placed(ledger, fleet, marker(ran))
        JobSubmissionClient(stable_clusters[0].address).submit_job(  # what the dispatcher sent before it died
            entrypoint=marker(ran),
            submission_id=sid,
            metadata={"rayfleet.job_id": job_id, "rayfleet.attempt": "1"},
            runtime_env={"env_vars": {"RAYFLEET_JOB_ID": job_id}},
        )
        drive(fleet, lambda: ledger.job(job_id).state is JobState.SUCCEEDED, timeout=60)
        job = ledger.job(job_id)
        assert [a.submission_id for a in job.attempts] == [sid], dump(ledger, {job_id})
        states = [s for s, _, _ in ledger.history(sid)]
        assert states[0] is JobState.PLACED and JobState.FAILED not in states and JobState.LOST not in states
        everywhere = [r for c in stable_clusters for r in ray_jobs(c.address, {job_id})]
        assert everywhere == [(sid, job_id, "SUCCEEDED")]
        poll(lambda: started(ran) == [sid], timeout=10)
        addresses = {c.name: c.address for c in stable_clusters}
        assert ledger_matches_ray(ledger, addresses, {job_id}) == []
        # the comparison can fail: a second Ray job of this rayfleet job, one the ledger never recorded, is caught
        rogue = JobSubmissionClient(stable_clusters[1].address).submit_job(
            entrypoint="true", submission_id=f"{job_id}-rogue", metadata={"rayfleet.job_id": job_id}
        )
        assert ledger_matches_ray(ledger, addresses, {job_id}) == [f"b has {rogue}, which the ledger does not know"]
    finally:
        fleet.close()
