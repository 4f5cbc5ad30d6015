"""Part 1 of issue 7: a cluster killed midway, restarted at the same address, or never coming back.

Three real local clusters ("a", "b" shared by the package, "c" of this module, which the tests kill). Every job's
command writes its submission id to a marker file as its first act, so the tests count what really started, attempt
by attempt, and compare it with the ledger and with each cluster's own job list.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayfleet import Cluster, Fleet, LocalClusterSpec, LocalFleet
from rayfleet.errors import RayfleetError
from rayfleet.ledger import Ledger
from rayfleet.states import JobState
from tests.polling import poll, until_file
from tests.reliability.conftest import drive, dump, ledger_matches_ray, marker, started

pytestmark = pytest.mark.integration

LOSSY = LocalClusterSpec("c", cpus=2, memory="1GiB")


class Lossy:
    """Cluster "c": killed by the tests (``LocalFleet.down()`` on a fleet that owns only it) and restarted at the
    same address, which gives it a new Ray session."""

    def __init__(self) -> None:
        self.local = LocalFleet([LOSSY], name=f"rel-c-{os.getpid()}")
        self.local.up()
        self.address, self.base = self.local.running[0].address, self.local.running[0].port_base

    def kill(self) -> None:
        self.local.down()

    def restart(self) -> None:
        self.local = LocalFleet([LOSSY], name=self.local.name, port_base=self.base)
        self.local.up()
        assert self.local.running[0].address == self.address

    def ensure_up(self) -> None:
        if not (self.local.running and self.local.running[0].alive()):
            self.restart()


@pytest.fixture(scope="module")
def lossy() -> Iterator[Lossy]:
    cluster = Lossy()
    try:
        yield cluster
    finally:
        cluster.local.down()


def _fleet(stable_clusters: list[Cluster], lossy: Lossy, ledger: Path, **settings: float) -> Fleet:
    return Fleet(
        [*stable_clusters, Cluster(name="c", address=lossy.address)],
        ledger=ledger,
        unknown_after_s=1.0,
        probe_timeout_s=1.0,
        start_timeout_s=60.0,  # a loaded 2-core machine: reservation churn is not what these tests are about
        **settings,
    )


def _stop_all(fleet: Fleet, ids: list[str]) -> None:
    for job_id in ids:
        if not fleet.job(job_id).record.state.is_terminal():
            with contextlib.suppress(RayfleetError):
                fleet.job(job_id).stop()


def test_a_cluster_killed_midway_and_restarted_loses_no_job_and_runs_none_twice(
    stable_clusters: list[Cluster], lossy: Lossy, tmp_path: Path
) -> None:
    lossy.ensure_up()
    ledger_path = tmp_path / "ledger.db"
    ran, release = tmp_path / "ran", tmp_path / "release"
    command = marker(ran, until_file(release))  # runs until the test releases it: it is running when "c" dies
    fleet = _fleet(stable_clusters, lossy, ledger_path)
    on_c = Fleet([Cluster(name="c", address=lossy.address)], ledger=ledger_path, start_timeout_s=60.0)
    ids: list[str] = []
    try:
        # wave 1: three jobs on "c" (retriable or not, 0.5 CPU: their start is confirmed by the launcher); six that
        # ask for nothing over the fleet (they go to the clusters in turn, "c" too; no launcher keeps the test cheap)
        retriable = {on_c.submit(command, {"cpu": 0.5}, max_retries=1).id for _ in range(2)}
        single = on_c.submit(command, {"cpu": 0.5}).id
        ids += [*retriable, single]
        ids += [fleet.submit(command, {}, max_retries=1).id for _ in range(6)]
        poll(lambda: len(started(ran)) == 9, timeout=120)
        ledger = Ledger(ledger_path)
        victims = {j for j in ids if ledger.job(j).last_attempt.cluster == "c"}  # type: ignore[union-attr]
        assert victims >= {*retriable, single}
        # the loop saves the log of every running job as it runs (a checkpoint): it outlives the cluster
        drive(fleet, lambda: ledger.saved_logs(f"{single}-1") is not None, timeout=60)

        lossy.kill()
        drive(fleet, lambda: all(ledger.job(j).state is JobState.UNKNOWN for j in victims), timeout=60)
        assert all(len(ledger.job(j).attempts) == 1 for j in victims)  # unknown is not lost: nothing placed again

        # wave 2, while "c" is dead: placed on "a"/"b" where there is room, else queued; never on "c"
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            ids.append(fleet.submit(command, {"cpu": 0.5}, wait=True, max_retries=1).id)
            took.append(time.monotonic() - t0)
        wave2 = [ledger.job(j) for j in ids[-3:]]
        assert all(j.state is JobState.QUEUED or j.last_attempt.cluster != "c" for j in wave2), dump(ledger, set(ids))  # type: ignore[union-attr]
        assert fleet.explain({"cpu": 0.1}).rejects.get("c", "").startswith("unhealthy")

        lossy.restart()  # same address, new Ray session: the jobs it had are provably gone
        drive(
            fleet,
            lambda: (
                ledger.job(single).state is JobState.FAILED
                and all(ledger.job(j).attempts[0].state is JobState.LOST for j in victims)
            ),
            timeout=120,
        )
        release.touch()
        drive(fleet, lambda: all(ledger.job(j).state.is_terminal() for j in ids), timeout=180)

        # rejoin: "c" is healthy again and takes new work
        poll(lambda: fleet.snapshots(max_age=0)["c"].healthy, timeout=30)
        back = fleet.submit(marker(ran), {"cpu": 0.5}, cluster="c")
        ids.append(back.id)
        assert back.wait(120) is JobState.SUCCEEDED and back.cluster == "c"

        jobs = {j: ledger.job(j) for j in ids}
        report = dump(ledger, set(ids))
        # lost = 0: every job has a verdict; the only failure is the one that was not allowed a retry
        assert {j: job.state for j, job in jobs.items()} == {
            j: JobState.FAILED if j == single else JobState.SUCCEEDED for j in ids
        }, report
        failed = jobs[single]
        assert "lost on c" in (failed.reason or "") and "max_retries=0" in (failed.reason or ""), report
        assert "restarted (Ray session" in (failed.attempts[0].detail or ""), report
        saved = fleet.job(single).log()  # what is left of its log: the checkpoint, and a note saying so
        assert "rayfleet: reserved 1 bundles" in saved.text
        assert re.fullmatch(
            r"attempt 1 was lost with cluster c \(cluster c restarted \(Ray session \S+ -> \S+\) and lost the job\); "
            r"its log as saved at \d\d:\d\d:\d\d",
            saved.note or "",
        ), saved.note
        # duplicated = 0: no attempt's command started twice, and a job started again only after a proven loss
        runs = collections.Counter(started(ran))
        assert max(runs.values()) == 1, runs
        for j, job in jobs.items():
            began = [a for a in job.attempts if runs[a.submission_id]]
            assert job.attempts[-1] in began or j == single, report
            assert all(a.state is JobState.LOST for a in began[:-1]), report  # every earlier run was lost with "c"
            assert len(began) == 1 + (j in victims and j != single), report
            assert all(a.cluster == "c" for a in began[:-1]), report
        addresses = {c.name: c.address for c in stable_clusters} | {"c": lossy.address}
        assert ledger_matches_ray(ledger, addresses, set(ids)) == []
        print(
            f"\ncluster faults: {len(ids)} jobs, {len(victims)} on the killed cluster, "
            f"wave-2 submits took {[round(t, 3) for t in took]} s"
        )
    finally:
        release.touch()
        _stop_all(fleet, ids)
        fleet.close()
        on_c.close()


def test_a_cluster_that_never_comes_back_leaves_its_jobs_unknown_or_run_elsewhere_at_least_once(
    stable_clusters: list[Cluster], lossy: Lossy, tmp_path: Path
) -> None:
    lossy.ensure_up()
    ledger_path = tmp_path / "ledger.db"
    ran, release = tmp_path / "ran", tmp_path / "release"
    command = marker(ran, until_file(release))
    fleet = _fleet(stable_clusters, lossy, ledger_path)
    on_c = Fleet([Cluster(name="c", address=lossy.address)], ledger=ledger_path, start_timeout_s=60.0)
    ids: list[str] = []
    try:
        plain = on_c.submit(command, {"cpu": 0.5}, max_retries=1).id  # a retry needs proof of loss: never comes
        eager = on_c.submit(command, {"cpu": 0.5}, at_least_once=True).id
        ids += [plain, eager]
        poll(lambda: len(started(ran)) == 2, timeout=120)
        ledger = Ledger(ledger_path)

        lossy.kill()  # and it stays dead
        drive(
            fleet,
            lambda: ledger.job(plain).state is JobState.UNKNOWN and len(ledger.job(eager).attempts) == 2,
            timeout=60,
        )
        first, second = ledger.job(eager).attempts
        assert first.state is JobState.UNKNOWN and second.cluster in ("a", "b")
        poll(lambda: len(started(ran)) == 3, timeout=60)  # the at-least-once job started again elsewhere
        release.touch()
        drive(fleet, lambda: ledger.job(eager).state is JobState.SUCCEEDED, timeout=60)

        # placement elsewhere does not wait for the dead cluster: its unhealthy reading decides, probes are bounded
        took = []
        for _ in range(5):
            t0 = time.monotonic()
            decision = fleet.explain({"cpu": 0.5})
            took.append(time.monotonic() - t0)
            assert decision.chosen is not None and decision.chosen.cluster in ("a", "b")
            assert decision.rejects["c"].startswith("unhealthy"), decision.rejects
        assert max(took) < 1.0 + 0.5, took  # at most one probe timeout (1 s here), never retries

        for _ in range(5):  # more turns change nothing: unreachable is not lost
            fleet.tick()
        job = ledger.job(plain)
        assert job.state is JobState.UNKNOWN and len(job.attempts) == 1, dump(ledger, set(ids))
        assert "has not answered" in (job.reason or "")
        runs = collections.Counter(started(ran))
        assert runs == {f"{plain}-1": 1, f"{eager}-1": 1, f"{eager}-2": 1}, runs
        print(f"\nnever back: explain took {[round(t, 4) for t in took]} s")
    finally:
        release.touch()
        _stop_all(fleet, ids)
        fleet.close()
        on_c.close()


class _Hung:
    """A loopback listener that accepts connections and never answers: a head that hangs (or a partition that
    drops replies), the case where a probe costs its whole timeout. Counts the connections it was sent."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


def test_a_hung_cluster_costs_placement_one_probe_timeout_then_its_unhealthy_reading_decides(
    stable_clusters: list[Cluster], tmp_path: Path
) -> None:
    hung = _Hung()
    fleet = Fleet(
        [*stable_clusters, Cluster(name="hung", address=hung.address)],
        ledger=tmp_path / "ledger.db",
        probe_timeout_s=1.0,
    )
    try:
        t0 = time.monotonic()
        first = fleet.explain({"cpu": 0.5})
        took = time.monotonic() - t0
        assert first.chosen is not None and first.chosen.cluster in ("a", "b")
        assert first.rejects["hung"].startswith("unhealthy"), first.rejects
        assert took < 1.0 + 0.5 + 2.0, took  # bounded by the probe timeout (plus slack for a loaded machine)
        sent = len(hung.held)
        assert sent >= 1
        later = []
        for _ in range(20):  # within its backoff: the cached unhealthy reading decides, nothing is sent to it
            t0 = time.monotonic()
            decision = fleet.explain({"cpu": 0.5})
            later.append(time.monotonic() - t0)
            assert decision.rejects["hung"].startswith("unhealthy")
        assert sum(later) < 0.9, later  # all within the first backoff (1 s): cached readings, no waiting
        assert len(hung.held) == sent, (sent, len(hung.held))
        print(f"\nhung cluster: first explain {took:.3f} s, then max {max(later):.4f} s")
    finally:
        fleet.close()
        hung.close()


def test_attempts_on_a_dead_cluster_do_not_stall_the_dispatch_loop(tmp_path: Path) -> None:
    """A stale attempt (at-least-once placed its job again) and a newest attempt, each on a cluster that refuses
    connections: a turn reads the prober's verdict instead of asking the dead cluster about each job (which waits out
    the job client's retries: about 11 s per attempt per turn before the fix)."""
    fleet = Fleet(
        [Cluster(name="dead", address="http://127.0.0.1:9"), Cluster(name="dead2", address="http://127.0.0.1:7")],
        ledger=tmp_path / "ledger.db",
        unknown_after_s=0.0,
    )
    try:
        ledger = fleet.ledger
        request = {"resources": {}, "at_least_once": True}
        ledger.add_job(
            "rf-stale",
            entrypoint="true",
            request=request,
            attempt={"submission_id": "rf-stale-1", "n": 1, "cluster": "dead"},
        )
        ledger.record("rf-stale-1", JobState.UNKNOWN, "its cluster stopped answering")
        ledger.add_attempt(
            "rf-stale", {"submission_id": "rf-stale-2", "n": 2, "cluster": "dead2"}, replacing_unknown=True
        )
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            fleet.tick()
            took.append(time.monotonic() - t0)
        assert sum(took) < 3.0, took  # each turn probes each dead cluster at most once (refused: milliseconds)
        assert [a.state for a in ledger.job("rf-stale").attempts] == [JobState.UNKNOWN, JobState.UNKNOWN]
    finally:
        fleet.close()
