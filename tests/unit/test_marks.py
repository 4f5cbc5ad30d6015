"""Marks on clusters, from the ledger: a cordon or drain keeps every job off a cluster, a launcher mark keeps only
jobs that need the launcher off it, and every dispatcher sharing the ledger honours them. A real SQLite ledger,
hand-built readings, a ManualClock."""

from __future__ import annotations

import pytest

from rayfleet.capacity import ClusterSnapshot
from rayfleet.dispatch import Dispatcher
from rayfleet.ledger import CORDON, DRAIN, LAUNCHER_UNFIT
from rayfleet.lifecycle import LAUNCHER_RECHECK_S
from rayfleet.placement import place
from tests.clock import ManualClock
from tests.dispatchers import two_dispatchers

T0 = 1_000_000.0


def reading(cluster: str, session: str = "s1") -> ClusterSnapshot:
    return ClusterSnapshot.from_nodes(cluster, [(f"{cluster}-n1", {"CPU": 4.0}, {})], session_name=session)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def pair(tmp_path, clock):
    """Two dispatchers (think: two processes) on one ledger file, over clusters a and b."""
    with two_dispatchers(tmp_path / "ledger.db", clock) as both:
        yield both


def decide(dispatcher: Dispatcher, resources: dict, snaps: dict[str, ClusterSnapshot]):
    sub = dispatcher.validate("python x.py", resources)
    return place(sub.request(unavailable=dispatcher.unavailable(sub, snaps)), dispatcher.clusters, snaps)


def test_a_cordon_by_one_dispatcher_keeps_every_job_of_another_off_the_cluster(pair):
    one, two = pair
    snaps = {"a": reading("a"), "b": reading("b")}
    one.ledger.mark("a", CORDON, by="alice", reason="disk swap")
    for resources in ({"cpu": 1}, {}):  # launcher jobs and jobs that ask for nothing alike
        decision = decide(two, resources, snaps)
        assert decision.chosen.cluster == "b"
        assert decision.rejects["a"].startswith("cordoned by alice at ")
        assert decision.rejects["a"].endswith(": disk swap")
    one.ledger.mark("b", DRAIN, by="bob", reason="")
    decision = decide(two, {"cpu": 1}, snaps)
    assert decision.chosen is None and decision.rejects["b"].startswith("draining by bob at ")
    assert one.ledger.unmark("a", [CORDON, DRAIN]) and one.ledger.unmark("b", [CORDON, DRAIN])
    assert decide(two, {"cpu": 1}, snaps).chosen is not None


def test_a_launcher_mark_keeps_launcher_jobs_off_until_the_recheck_or_a_restart(pair, clock):
    one, two = pair
    why = "cluster a cannot run rayfleet's launcher: no Ray in /usr/bin/python3"
    one.ledger.mark("a", LAUNCHER_UNFIT, by="host:1", reason=why, session="s1")
    snaps = {"a": reading("a"), "b": reading("b")}
    launched = decide(two, {"cpu": 1}, snaps)
    assert launched.chosen.cluster == "b" and launched.rejects["a"].startswith(f"{why} (found at ")
    assert "a" not in decide(two, {}, {"a": reading("a")}).rejects  # no launcher, no matter
    clock.advance(LAUNCHER_RECHECK_S - 1)
    assert "a" in decide(two, {"cpu": 1}, snaps).rejects
    assert "a" not in decide(two, {"cpu": 1}, {"a": reading("a", session="s2"), "b": reading("b")}).rejects
    clock.advance(1)
    assert "a" not in decide(two, {"cpu": 1}, snaps).rejects  # the next launcher job checks again
