"""One `Fleet` used from several threads at once: the dispatch loop (`fleet.run()`), submitters, and clusters joining
and leaving (as managed clusters do when they become ready or are deleted). Real clusters, real threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rayfleet import Cluster, Fleet, JobState
from rayfleet.ledger import Ledger

pytestmark = pytest.mark.integration


def test_the_loop_submitters_and_joining_clusters_share_one_fleet_consistently(
    addresses: dict[str, str], tmp_path: Path
) -> None:
    clusters = [Cluster(name=name, address=address, labels={"kind": name}) for name, address in addresses.items()]
    errors: list[BaseException] = []
    submitted: list[str] = []
    lock = threading.Lock()

    def guarded(work):
        def run() -> None:
            try:
                work()
            except BaseException as e:  # reported by the test, not lost in the thread
                errors.append(e)

        return threading.Thread(target=run)

    with Fleet(clusters, ledger=tmp_path / "ledger.db") as fleet:
        fleet.run(interval=0.01)  # the loop ticks all the while

        def submit() -> None:
            for _ in range(4):
                job = fleet.submit("true", labels={"kind": "cpu"})
                with lock:
                    submitted.append(job.id)

        def churn() -> None:  # clusters joining and leaving, as creations become ready and idle ones are deleted
            for i in range(300):
                extra = Cluster(name=f"extra-{i}", address=addresses["cpu"], labels={"kind": "extra"})
                fleet._dispatcher._join(extra, None)
                assert {c.name for c in fleet.clusters} >= set(addresses)
                fleet._dispatcher._leave(extra.name)

        threads = [guarded(submit), guarded(submit), guarded(churn)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert [c.name for c in fleet.clusters] == list(addresses)  # every extra left; the configured ones stayed
        assert sorted(fleet._dispatcher._backends) == sorted(addresses)
        states = {job_id: fleet.job(job_id).wait(timeout=120) for job_id in submitted}

    assert len(submitted) == 8 and set(states.values()) == {JobState.SUCCEEDED}, states
    ledger = Ledger(tmp_path / "ledger.db")
    jobs = ledger.jobs()
    assert sorted(j.id for j in jobs) == sorted(submitted)
    assert all(len(j.attempts) == 1 and j.attempts[0].cluster == "cpu" for j in jobs)  # once each, where it fits
    ledger.close()
