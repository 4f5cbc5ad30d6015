"""The dispatch lease: one loop per ledger acts at a time, another takes over when the holder stops renewing, and a
holder that lost the lease has its writes refused. Two `Ledger` objects on one real SQLite file stand for two
processes; time is a ManualClock."""

from __future__ import annotations

import logging

import pytest

from rayfleet import Cluster, Fleet
from rayfleet.errors import LeaseLostError
from rayfleet.fleet import DISPATCH_LEASE
from rayfleet.ledger import Ledger
from rayfleet.states import JobState
from tests.clock import ManualClock

TTL = 15.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def ledgers(tmp_path, clock):
    one, two = Ledger(tmp_path / "ledger.db", clock=clock), Ledger(tmp_path / "ledger.db", clock=clock)
    yield one, two
    one.close()
    two.close()


def test_one_holder_at_a_time_and_a_new_epoch_for_each_new_holder(ledgers, clock):
    one, two = ledgers
    a = one.acquire_lease("dispatch", "a", TTL)
    assert a is not None and a.epoch == 1
    assert two.acquire_lease("dispatch", "b", TTL) is None  # a holds it
    clock.advance(TTL - 1)
    a = one.renew_lease(a, TTL)  # renewed: good for another TTL from now
    clock.advance(TTL - 1)
    assert two.acquire_lease("dispatch", "b", TTL) is None
    assert one.acquire_lease("dispatch", "a", TTL) == a.__class__("dispatch", "a", 1, clock.now + TTL)  # same epoch
    clock.advance(TTL)
    b = two.acquire_lease("dispatch", "b", TTL)  # a stopped renewing: b takes over
    assert b is not None and b.epoch == 2
    assert two.lease_holder("dispatch") == b


def test_a_holder_that_lost_the_lease_is_refused_and_writes_nothing(ledgers, clock):
    one, two = ledgers
    a = one.acquire_lease("dispatch", "a", TTL)
    assert a is not None
    clock.advance(TTL + 1)  # a was paused past its lease
    b = two.acquire_lease("dispatch", "b", TTL)
    assert b is not None
    with pytest.raises(LeaseLostError, match=r"no longer held: b \(epoch 2\) has it now"):
        one.renew_lease(a, TTL)
    with one.fenced(a), pytest.raises(LeaseLostError):
        one.add_job("rf-stale", entrypoint="true", request={})
    with pytest.raises(Exception, match="no job"):
        two.job("rf-stale")  # refused inside its transaction: nothing of it was written
    with two.fenced(b):
        two.add_job("rf-fresh", entrypoint="true", request={})
    assert two.job("rf-fresh").state is JobState.QUEUED
    one.add_job("rf-unfenced", entrypoint="true", request={})  # outside a fenced block (a submitter): not checked


def test_a_lease_that_expired_unrenewed_is_refused_even_if_nobody_took_it(ledgers, clock):
    one, _ = ledgers
    a = one.acquire_lease("dispatch", "a", TTL)
    clock.advance(TTL)
    with pytest.raises(LeaseLostError, match=r"it expired 0\.0 s ago, unrenewed"):
        one.renew_lease(a, TTL)
    again = one.acquire_lease("dispatch", "a", TTL)
    assert again is not None and again.epoch == 2  # a new epoch: what was done under epoch 1 cannot resume


def test_a_released_lease_can_be_taken_at_once(ledgers, clock):
    one, two = ledgers
    a = one.acquire_lease("dispatch", "a", TTL)
    one.release_lease(a)
    b = two.acquire_lease("dispatch", "b", TTL)
    assert b is not None and b.epoch == 2


def test_only_the_loop_that_holds_the_lease_takes_a_turn(tmp_path, clock, caplog):
    # two fleets (think: two `rayfleet dispatch` processes) on one ledger, no clusters; a queued job past its deadline
    # is failed by a turn: only the holder's turn does it, and a holder paused past its lease stops and stands by
    path = tmp_path / "ledger.db"
    dead = [Cluster(name="dead", address="http://127.0.0.1:9")]  # nothing listens: every job waits in the queue
    with Fleet(dead, ledger=Ledger(path, clock=clock)) as one, Fleet(dead, ledger=Ledger(path, clock=clock)) as two:
        job = one.submit("true", {"cpu": 1}, wait=0.5)
        assert job.record.state is JobState.QUEUED
        clock.advance(1)
        lease = one._turn("one", TTL, None)
        assert lease is not None and lease.holder == "one"
        waiting = two.submit("true", {"cpu": 1}, wait=0.5)
        clock.advance(1)
        assert two._turn("two", TTL, None) is None  # standing by: it did not fail the expired job
        assert waiting.record.state is JobState.QUEUED
        clock.advance(TTL + 1)  # "one" stopped renewing
        taken = two._turn("two", TTL, None)
        assert taken is not None and taken.epoch == lease.epoch + 1
        assert waiting.record.state is JobState.FAILED and job.record.state is JobState.FAILED
        with caplog.at_level(logging.ERROR, logger="rayfleet.fleet"):
            assert one._turn("one", TTL, lease) is None  # back from its pause: refused, it stands by
        assert "standing by" in caplog.text and "two" in caplog.text
        assert one.ledger.lease_holder(DISPATCH_LEASE).holder == "two"
