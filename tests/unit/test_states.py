"""Unit tests for `rayfleet.states`: the one state machine of jobs and attempts."""

from __future__ import annotations

import pytest

from rayfleet.states import TERMINAL, JobState, can_move

S = JobState
ALL = list(JobState)
TERMINAL_STATES = [S.SUCCEEDED, S.FAILED, S.STOPPED, S.LOST]


def test_exactly_succeeded_failed_stopped_and_lost_are_terminal():
    assert {s for s in ALL if s.is_terminal()} == set(TERMINAL_STATES)
    assert frozenset(TERMINAL_STATES) == TERMINAL


@pytest.mark.parametrize("old", TERMINAL_STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("new", ALL, ids=lambda s: s.value)
def test_terminal_states_are_final(old, new):
    assert not can_move(old, new)


@pytest.mark.parametrize("state", ALL, ids=lambda s: s.value)
def test_a_repeat_is_no_move(state):
    assert not can_move(state, state)


@pytest.mark.parametrize("new", ALL, ids=lambda s: s.value)
def test_a_first_record_is_queued_provisioning_or_placed(new):
    assert can_move(None, new) is (new in (S.QUEUED, S.PROVISIONING, S.PLACED))


@pytest.mark.parametrize("old", ALL, ids=lambda s: s.value)
def test_nothing_moves_back_to_queued(old):
    assert not can_move(old, S.QUEUED)


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (S.QUEUED, S.PLACED, True),
        (S.QUEUED, S.PROVISIONING, True),
        (S.PROVISIONING, S.PLACED, True),
        (S.PROVISIONING, S.STOPPED, True),
        (S.PROVISIONING, S.FAILED, True),
        (S.PROVISIONING, S.SUBMITTED, False),
        (S.PROVISIONING, S.RUNNING, False),
        (S.QUEUED, S.STOPPED, True),
        (S.QUEUED, S.FAILED, True),
        (S.QUEUED, S.SUBMITTED, False),
        (S.QUEUED, S.RUNNING, False),
        (S.QUEUED, S.SUCCEEDED, False),
        (S.QUEUED, S.UNKNOWN, False),
        (S.QUEUED, S.LOST, False),
        (S.PLACED, S.SUBMITTED, True),
        (S.PLACED, S.RUNNING, True),  # a fast job: the first reading already shows it running
        (S.PLACED, S.SUCCEEDED, True),  # ... or already finished
        (S.PLACED, S.FAILED, True),  # the cluster refused the submission
        (S.PLACED, S.UNKNOWN, True),
        (S.PLACED, S.LOST, True),
        (S.SUBMITTED, S.RUNNING, True),
        (S.SUBMITTED, S.STOPPED, True),
        (S.SUBMITTED, S.UNKNOWN, True),
        (S.SUBMITTED, S.PLACED, False),
        (S.SUBMITTED, S.STARTING, True),  # Ray runs the launcher; the command has not started
        (S.PLACED, S.STARTING, True),
        (S.STARTING, S.RUNNING, True),  # the launcher reported the command started
        (S.STARTING, S.FAILED, True),  # e.g. the reservation timed out: the command never ran
        (S.STARTING, S.STOPPED, True),
        (S.STARTING, S.UNKNOWN, True),
        (S.STARTING, S.LOST, True),
        (S.STARTING, S.SUBMITTED, False),
        (S.RUNNING, S.STARTING, False),  # a command that started does not go back
        (S.UNKNOWN, S.STARTING, True),
        (S.QUEUED, S.STARTING, False),
        (S.PROVISIONING, S.STARTING, False),
        (S.RUNNING, S.SUCCEEDED, True),
        (S.RUNNING, S.FAILED, True),
        (S.RUNNING, S.STOPPED, True),
        (S.RUNNING, S.UNKNOWN, True),
        (S.RUNNING, S.LOST, True),
        (S.RUNNING, S.SUBMITTED, False),
        (S.RUNNING, S.PLACED, False),
        (S.UNKNOWN, S.PLACED, True),  # a partition heals: back to what the cluster says
        (S.UNKNOWN, S.SUBMITTED, True),
        (S.UNKNOWN, S.RUNNING, True),
        (S.UNKNOWN, S.SUCCEEDED, True),
        (S.UNKNOWN, S.LOST, True),
    ],
    ids=lambda v: v.value if isinstance(v, JobState) else str(v),
)
def test_allowed_moves(old, new, allowed):
    assert can_move(old, new) is allowed


@pytest.mark.parametrize(
    ("ray_status", "state"),
    [
        ("PENDING", S.SUBMITTED),
        ("RUNNING", S.RUNNING),
        ("SUCCEEDED", S.SUCCEEDED),
        ("FAILED", S.FAILED),
        ("STOPPED", S.STOPPED),
    ],
)
def test_from_ray_maps_ray_job_status_strings(ray_status, state):
    assert JobState.from_ray(ray_status) is state


def test_from_ray_accepts_every_member_of_rays_job_status_enum():
    from ray.dashboard.modules.job.common import JobStatus

    mapped = {status.value: JobState.from_ray(status) for status in JobStatus}
    assert mapped == {
        "PENDING": S.SUBMITTED,
        "RUNNING": S.RUNNING,
        "STOPPED": S.STOPPED,
        "SUCCEEDED": S.SUCCEEDED,
        "FAILED": S.FAILED,
    }
    assert all(JobState.from_ray(s).is_terminal() == s.is_terminal() for s in JobStatus)


@pytest.mark.parametrize("status", ["pending", "DONE", ""])
def test_from_ray_rejects_unknown_statuses(status):
    with pytest.raises(ValueError):
        JobState.from_ray(status)


def test_job_states_compare_equal_to_their_names_for_storage():
    assert S.RUNNING == "RUNNING"
    assert JobState("LOST") is S.LOST
