"""Every timing rule and state transition of `rayfleet.lifecycle`, table-driven, with ``now`` given: no real seconds."""

from __future__ import annotations

import pytest

from rayfleet.lifecycle import (
    LAUNCHER_RECHECK_S,
    WAIT,
    AttemptView,
    Creation,
    Observation,
    Rules,
    Seen,
    Step,
    creation_step,
    follow,
    hold_counts,
    launcher_mark_holds,
    launcher_unfit,
    loss_reason,
    not_reserved,
    queue_expired,
    retry_after_loss,
    short_message,
)
from rayfleet.states import JobState as S

RULES = Rules(placed_grace_s=5.0, unknown_after_s=30.0)
T0 = 1000.0  # when the attempt was recorded (and last changed)
STATUS = Seen.STATUS


def view(state: S, session: str | None = "s1") -> AttemptView:
    return AttemptView(state, "a", created_at=T0, updated_at=T0, session=session)


def look(seen: Seen, status: str | None = None, message: str | None = None, **kwargs) -> Observation:
    return Observation(seen, status=status, message=message, **kwargs)


NEVER_SUBMITTED = "never submitted: the process placing it stopped; its id is fenced"
NOT_RESERVED = "Job entrypoint command failed with exit code 75"


@pytest.mark.parametrize(
    ("state", "observation", "now", "expected"),
    [
        # the cluster has no such job: a PLACED attempt may still be on its way, within the grace
        (S.PLACED, look(Seen.ABSENT), T0 + 4.99, WAIT),
        (S.PLACED, look(Seen.ABSENT), T0 + 5.0, Step(S.FAILED, NEVER_SUBMITTED, fence=True, again=True)),
        # ... a submitted one was lost, and the reason names a new Ray session
        (
            S.SUBMITTED,
            look(Seen.ABSENT, session="s1"),
            T0 + 1,
            Step(S.LOST, "cluster a no longer has the job", lost=True),
        ),
        (
            S.RUNNING,
            look(Seen.ABSENT, session="s2"),
            T0 + 1,
            Step(S.LOST, "cluster a restarted (Ray session s1 -> s2) and lost the job", lost=True),
        ),
        (S.UNKNOWN, look(Seen.ABSENT), T0 + 1, Step(S.LOST, "cluster a no longer has the job", lost=True)),
        # unreachable: nothing until unknown_after_s of silence, counted from the last answer or the last change
        (S.RUNNING, look(Seen.UNREACHABLE, message="refused"), T0 + 29.9, WAIT),
        (
            S.RUNNING,
            look(Seen.UNREACHABLE, message="refused"),
            T0 + 30,
            Step(S.UNKNOWN, "cluster a has not answered for 30 s (refused)"),
        ),
        (S.RUNNING, look(Seen.UNREACHABLE, message="refused", last_ok=T0 + 20), T0 + 30, WAIT),
        (S.UNKNOWN, look(Seen.UNREACHABLE), T0 + 31, Step(None, "cluster a has not answered for 31 s (unreachable)")),
        # Ray's status: a change is recorded, with Ray's message; the same state is no move
        (S.SUBMITTED, look(STATUS, "PENDING"), T0 + 1, WAIT),
        (S.SUBMITTED, look(STATUS, "RUNNING", "started"), T0 + 1, Step(S.RUNNING, "started")),
        (S.RUNNING, look(STATUS, "SUCCEEDED", "done"), T0 + 1, Step(S.SUCCEEDED, "done")),
        (S.RUNNING, look(STATUS, "FAILED", "exit code 1"), T0 + 1, Step(S.FAILED, "exit code 1")),
        (S.PLACED, look(STATUS, "RUNNING"), T0 + 1, Step(S.RUNNING)),
        (S.UNKNOWN, look(STATUS, "RUNNING"), T0 + 100, Step(S.RUNNING)),
        (S.RUNNING, look(STATUS, "STOPPED"), T0 + 1, Step(S.STOPPED)),
        # Ray runs the launcher; until it reports the command started, the attempt is STARTING
        (S.SUBMITTED, look(STATUS, "RUNNING", started=False), T0 + 1, Step(S.STARTING)),
        (S.PLACED, look(STATUS, "RUNNING", started=False), T0 + 1, Step(S.STARTING)),
        (S.STARTING, look(STATUS, "RUNNING", started=False), T0 + 1, WAIT),
        (S.STARTING, look(STATUS, "RUNNING", started=True), T0 + 1, Step(S.RUNNING)),
        (S.SUBMITTED, look(STATUS, "RUNNING", started=True), T0 + 1, Step(S.RUNNING)),
        (S.RUNNING, look(STATUS, "RUNNING", started=False), T0 + 1, WAIT),  # a started command never goes back
        (S.STARTING, look(STATUS, "SUCCEEDED", "done"), T0 + 1, Step(S.SUCCEEDED, "done")),
        (S.UNKNOWN, look(STATUS, "RUNNING", started=False), T0 + 100, Step(S.STARTING)),
        # no report could be read (or the job has no launcher): Ray's RUNNING stands
        (S.SUBMITTED, look(STATUS, "RUNNING", started=None), T0 + 1, Step(S.RUNNING)),
        # the launcher could not reserve within the start timeout: the command never ran, so place it again
        (
            S.RUNNING,
            look(STATUS, "FAILED", NOT_RESERVED),
            T0 + 1,
            Step(S.FAILED, f"not reserved within the start timeout: {NOT_RESERVED}", again=True, exclude_tried=True),
        ),
        (
            S.STARTING,
            look(STATUS, "FAILED", NOT_RESERVED),
            T0 + 1,
            Step(S.FAILED, f"not reserved within the start timeout: {NOT_RESERVED}", again=True, exclude_tried=True),
        ),
    ],
)
def test_follow(state, observation, now, expected):
    assert follow(view(state), observation, now, RULES) == expected


def test_an_unknown_attempt_of_an_at_least_once_job_is_placed_again_and_may_still_run():
    step = follow(view(S.RUNNING), look(Seen.UNREACHABLE, message="x"), T0 + 30, RULES, at_least_once=True)
    assert (step.record, step.again, step.replacing_unknown) == (S.UNKNOWN, True, True)
    assert follow(view(S.RUNNING), look(Seen.UNREACHABLE), T0 + 29, RULES, at_least_once=True) is WAIT


RAY_FAILURE = "Job entrypoint command failed with exit code {code}, last available logs (truncated to 20,000 chars):\n"
UNFIT = RAY_FAILURE.format(code=78) + (
    "rayfleet: cluster unfit: the python on this cluster's PATH, /usr/bin/python3 (Python 3.11), cannot import Ray: "
    "No module named 'ray'\n"
)


def test_a_cluster_whose_python_cannot_run_the_launcher_is_marked_and_the_job_placed_elsewhere():
    step = follow(view(S.STARTING), look(STATUS, "FAILED", UNFIT), T0 + 1, RULES)
    why = "the python on this cluster's PATH, /usr/bin/python3 (Python 3.11), cannot import Ray: No module named 'ray'"
    assert step == Step(S.FAILED, f"cluster a cannot run rayfleet's launcher: {why}", again=True, exclude_tried=True,
                        unfit=True)  # fmt: skip
    # a group member is not placed again alone, but its cluster is still marked
    grouped = follow(view(S.STARTING), look(STATUS, "FAILED", UNFIT), T0 + 1, RULES, grouped=True)
    assert (grouped.again, grouped.unfit) == (False, True)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (UNFIT, UNFIT.splitlines()[1].removeprefix("rayfleet: cluster unfit: ")),
        (RAY_FAILURE.format(code=78) + "my own program exits 78\n", None),  # the user's command: no marker line
        (RAY_FAILURE.format(code=1) + "rayfleet: cluster unfit: quoted by the user\n", None),  # not the launcher's code
        (None, None),
    ],
)
def test_only_the_launchers_own_exit_and_marker_say_a_cluster_is_unfit(message, why):
    assert launcher_unfit(message) == why


@pytest.mark.parametrize(
    ("session", "now", "session_now", "holds"),
    [
        ("s1", T0 + LAUNCHER_RECHECK_S - 1, "s1", True),
        ("s1", T0 + LAUNCHER_RECHECK_S, "s1", False),  # checked again by the next launcher job
        ("s1", T0 + 1, "s2", False),  # the cluster restarted: perhaps fixed
        ("s1", T0 + 1, None, True),  # no reading of its session now: the mark stands
        (None, T0 + 1, "s2", True),
    ],
)
def test_a_launcher_mark_lasts_until_the_recheck_or_a_restart(session, now, session_now, holds):
    assert launcher_mark_holds(T0, session, now, session_now) is holds


def test_a_failures_reason_keeps_rays_first_line_and_the_logs_last_lines_not_20000_characters():
    log = "\n".join(f"line {i}" for i in range(5000))
    short = short_message(RAY_FAILURE.format(code=1) + log)
    assert short == "Job entrypoint command failed with exit code 1; its log ends: line 4997 | line 4998 | line 4999"
    assert short_message("Job was intentionally stopped.") == "Job was intentionally stopped."
    assert len(short_message("x" * 5000)) == 400
    assert short_message(None) is None


def test_a_group_member_that_was_not_reserved_is_not_placed_again_alone():
    step = follow(view(S.RUNNING), look(STATUS, "FAILED", NOT_RESERVED), T0 + 1, RULES, grouped=True)
    assert step.record is S.FAILED and not step.again


def test_the_grace_periods_are_the_fleets():
    quick = Rules(placed_grace_s=0.5, unknown_after_s=2.0)
    assert follow(view(S.PLACED), look(Seen.ABSENT), T0 + 0.5, quick).fence
    assert follow(view(S.RUNNING), look(Seen.UNREACHABLE), T0 + 2, quick).record is S.UNKNOWN


@pytest.mark.parametrize(
    ("recorded", "now", "reason"),
    [
        ("s1", "s2", "cluster c restarted (Ray session s1 -> s2) and lost the job"),
        ("s1", "s1", "cluster c no longer has the job"),
        (None, "s2", "cluster c no longer has the job"),
        ("s1", None, "cluster c no longer has the job"),
    ],
)
def test_loss_reason(recorded, now, reason):
    assert loss_reason("c", recorded, now) == reason


@pytest.mark.parametrize(
    ("message", "expected"),
    [(NOT_RESERVED, True), ("Job entrypoint command failed with exit code 1", False), (None, False), ("", False)],
)
def test_not_reserved(message, expected):
    assert not_reserved(message) is expected


@pytest.mark.parametrize(("lost", "allowed", "again"), [(1, 0, False), (1, 1, True), (2, 1, False), (2, 3, True)])
def test_retry_after_loss(lost, allowed, again):
    assert retry_after_loss(lost, allowed) is again


@pytest.mark.parametrize(("deadline", "now", "expired"), [(None, 1e12, False), (10.0, 9.99, False), (10.0, 10.0, True)])
def test_queue_expired(deadline, now, expired):
    assert queue_expired(deadline, now) is expired


@pytest.mark.parametrize(
    ("ready", "exists", "asked_at", "now", "step"),
    [
        (True, True, T0, T0 + 1, Creation.JOIN),
        (False, True, T0, T0 + 60, Creation.WAIT),  # within its ready timeout
        (False, True, T0, T0 + 60.01, Creation.FAIL),  # past it
        (False, False, None, T0 + 4.99, Creation.WAIT),  # recorded; its creator is about to ask
        (False, False, None, T0 + 5, Creation.ASK),  # recorded, never asked: its creator stopped in between
        (False, False, T0, T0 + 1, Creation.FAIL),  # asked for, and gone: deleted while it started
    ],
)
def test_creation_step(ready, exists, asked_at, now, step):
    assert (
        creation_step(
            ready=ready, exists=exists, asked_at=asked_at, created_at=T0, now=now, ready_timeout_s=60, ask_grace_s=5
        )
        is step
    )


@pytest.mark.parametrize(
    ("state", "reserves", "reflected", "reserved_at", "report_time", "counts"),
    [
        # not yet reserved: the hold counts however long the launcher takes (the ledger bounds it by the start
        # timeout), however many readings came since the placement
        (S.PLACED, True, False, None, T0 + 1, True),
        (S.SUBMITTED, True, False, None, T0 + 60, True),
        (S.STARTING, True, False, None, T0 + 600, True),
        # a reading shows it: the node's usage grew by the held amount, or the request waits as demand
        (S.STARTING, True, True, None, T0 + 1, False),
        # reserved: the first reading computed after the reservation was seen shows it
        (S.STARTING, True, False, T0 + 10, T0 + 10, True),
        (S.STARTING, True, False, T0 + 10, T0 + 10.5, False),
        # RUNNING without a recorded reservation (no report was read): the command runs, so it was reserved then
        (S.RUNNING, True, False, None, T0 - 1, True),  # state_at is T0
        (S.RUNNING, True, False, None, T0 + 1, False),
        (S.STARTING, True, False, None, None, True),  # a reading without its time: keep counting
        # a job that reserves nothing marks a recent placement until Ray runs it
        (S.PLACED, False, False, None, T0 + 100, True),
        (S.SUBMITTED, False, True, None, T0 + 100, True),
        (S.RUNNING, False, False, None, T0 + 1, False),
        (S.STARTING, False, False, None, T0 + 1, False),
    ],
)
def test_hold_counts(state, reserves, reflected, reserved_at, report_time, counts):
    got = hold_counts(state, reserves=reserves, reflected=reflected, reserved_at=reserved_at, state_at=T0,
                      report_time=report_time)  # fmt: skip
    assert got is counts
