"""Holds follow the attempt: what a placed attempt holds counts against its cluster until a reading shows its
reservation, or it ends, or it passes its start timeout -- read from the ledger, so every dispatcher sharing the
ledger counts it. The ledger is a real SQLite file; the clusters' readings are built by hand; time is a ManualClock."""

from __future__ import annotations

import pytest

from rayfleet.capacity import ClusterSnapshot
from rayfleet.dispatch import Dispatcher
from rayfleet.placement import place
from rayfleet.states import JobState
from tests.clock import ManualClock
from tests.dispatchers import two_dispatchers

T0 = 1_000_000.0
GPU = {"CPU": 1.0, "GPU": 1.0}
WINDOW = 3.0 + 15.0  # the default start timeout and hold_ttl_s


def reading(cluster: str, *, at: float, used_gpu: float = 0.0) -> ClusterSnapshot:
    """One node with 4 CPUs and 1 GPU, as its cluster reported it at ``at``."""
    nodes = [(f"{cluster}-n1", {"CPU": 4.0, "GPU": 1.0}, {"CPU": used_gpu, "GPU": used_gpu})]
    return ClusterSnapshot.from_nodes(cluster, nodes, taken_at=at, report_time=at)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def fleet(tmp_path, clock):
    """Two dispatchers (think: two processes) on one ledger file, over clusters a and b."""
    with two_dispatchers(tmp_path / "ledger.db", clock) as both:
        yield both


def place_on_a(dispatcher: Dispatcher, job_id: str = "rf-1") -> str:
    """Record a 1-GPU job's attempt on a's only node, as placing does (PLACED, with what it holds)."""
    sub = dispatcher.validate("python train.py", {"cpu": 1, "gpu": 1})
    attempt = {
        "submission_id": f"{job_id}-1",
        "n": 1,
        "cluster": "a",
        "node_id": "a-n1",
        "bundles": [{"node": "a-n1", "resources": GPU, "baseline": {"CPU": 0.0, "GPU": 0.0}}],
        "hold_window_s": WINDOW,
    }
    dispatcher.ledger.add_job(job_id, entrypoint=sub.entrypoint, request=sub.to_json(), attempt=attempt)
    return attempt["submission_id"]


def chosen(dispatcher: Dispatcher, snapshots: dict[str, ClusterSnapshot]) -> str | None:
    sub = dispatcher.validate("python train.py", {"cpu": 1, "gpu": 1})
    decision = place(sub.request(), dispatcher.clusters, snapshots, dispatcher._live_holds(snapshots))
    return decision.chosen.cluster if decision.chosen else None


def test_a_slow_launcher_keeps_its_hold_and_every_process_on_the_ledger_counts_it(fleet, clock):
    one, two = fleet
    sid = place_on_a(one)
    # 12 s on: the launcher is still setting up (this machine is slow); a reading of that time does not show it
    clock.advance(12)
    snaps = {"a": reading("a", at=clock.now), "b": reading("b", at=clock.now, used_gpu=0.0)}
    assert chosen(one, snaps) == "b"
    assert chosen(two, snaps) == "b"  # another process sharing the ledger sees the hold too
    # Ray runs the launcher (STARTING): the bound is renewed, the hold still counts past the first window
    one.ledger.record(sid, JobState.SUBMITTED)
    clock.advance(10)
    one.ledger.record(sid, JobState.STARTING)
    clock.advance(WINDOW - 1)
    snaps = {"a": reading("a", at=clock.now), "b": reading("b", at=clock.now, used_gpu=1.0)}
    assert [h.cluster for h in two._live_holds(snaps)] == ["a"]
    assert chosen(two, snaps) is None  # a's GPU is held, b's is used


def test_a_hold_ends_with_the_first_reading_after_the_reservation(fleet, clock):
    one, two = fleet
    sid = place_on_a(one)
    one.ledger.record(sid, JobState.STARTING)
    clock.advance(5)
    assert one.ledger.record_reservation(sid, ["a-n1"], at=clock.now)
    assert not one.ledger.record_reservation(sid, ["a-n1"], at=clock.now + 1)  # the first report only
    assert one.ledger.job("rf-1").last_attempt.reserved_at == clock.now
    before = {"a": reading("a", at=clock.now - 0.5), "b": reading("b", at=clock.now)}
    assert [h.cluster for h in two._live_holds(before)] == ["a"]  # computed before the reservation
    after = {"a": reading("a", at=clock.now + 0.5, used_gpu=1.0), "b": reading("b", at=clock.now)}
    assert two._live_holds(after) == []  # the reading shows it: counted once, as used
    assert chosen(two, after) == "b"


def test_a_reading_that_shows_the_usage_ends_the_hold_without_a_report(fleet, clock):
    one, _ = fleet
    place_on_a(one)
    clock.advance(2)
    assert one._live_holds({"a": reading("a", at=clock.now, used_gpu=1.0)}) == []


@pytest.mark.parametrize("end", [JobState.FAILED, JobState.SUCCEEDED, JobState.STOPPED])
def test_an_attempt_that_ended_holds_nothing(fleet, clock, end):
    one, _ = fleet
    sid = place_on_a(one)
    one.ledger.record(sid, end)
    assert one._live_holds({"a": reading("a", at=clock.now)}) == []


def test_an_attempt_nobody_follows_holds_at_most_its_window(fleet, clock):
    one, _ = fleet
    place_on_a(one)
    clock.advance(WINDOW - 0.01)
    assert len(one._live_holds({"a": reading("a", at=clock.now)})) == 1
    clock.advance(0.02)
    assert one._live_holds({"a": reading("a", at=clock.now)}) == []


def test_the_hold_is_on_the_node_the_reservation_landed_on(fleet, clock):
    one, _ = fleet
    sid = place_on_a(one)
    one.ledger.record(sid, JobState.STARTING)
    one.ledger.record_reservation(sid, ["a-n2"], at=clock.now + 100)  # a report still to come counts it
    (hold,) = one._live_holds({"a": reading("a", at=clock.now)})
    assert hold.node_id == "a-n2"
