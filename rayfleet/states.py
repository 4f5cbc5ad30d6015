"""The one state machine of rayfleet, for attempts and jobs.

An attempt is one Ray submission (its own submission id) on one cluster:

    PLACED -> SUBMITTED -> STARTING -> RUNNING -> SUCCEEDED | FAILED | STOPPED
       |          |           |           |
       +----------+-----------+-----------+--> UNKNOWN (its cluster cannot be reached) -> back, or LOST
       +--> FAILED (the cluster refused the submission)

STARTING: Ray runs the job (Ray's RUNNING), but it is rayfleet's launcher that runs, reserving the job's resources
(or waiting for the rest of its group); the user's command has not started. RUNNING: the launcher reported that the
command started (a job that reserves nothing goes from SUBMITTED to RUNNING with Ray).

A job's own states come before an attempt, or between two: QUEUED (waiting for room) and PROVISIONING (waiting for
a cluster being created for it). A job's state is the newer of its own latest state and its newest attempt's state.
Terminal states are final.

    QUEUED <-> PROVISIONING -> (an attempt) PLACED ...     either may also end FAILED (deadline, no room) or STOPPED
"""

from __future__ import annotations

from enum import Enum
from types import MappingProxyType


class JobState(str, Enum):
    """The state of a rayfleet job or of one of its attempts."""

    QUEUED = "QUEUED"  # recorded, not yet placed on a cluster
    PROVISIONING = "PROVISIONING"  # recorded, waiting for a cluster that is being created for it
    PLACED = "PLACED"  # a cluster was chosen and recorded; the submission is on its way
    SUBMITTED = "SUBMITTED"  # the cluster accepted it (Ray: PENDING)
    STARTING = "STARTING"  # Ray runs the job's launcher; it is reserving, the command has not started
    RUNNING = "RUNNING"  # the command runs
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"  # its cluster has not answered for a while; a partition may heal
    LOST = "LOST"  # its cluster proved it no longer has it (restart, deletion)

    def is_terminal(self) -> bool:
        return self in TERMINAL

    @classmethod
    def from_ray(cls, status: str) -> JobState:
        """Map Ray's ``JobStatus`` (PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED) onto rayfleet's states."""
        return {"PENDING": cls.SUBMITTED}.get(str(status)) or cls(str(status))


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED, JobState.LOST})

_ACTIVE = frozenset({JobState.PLACED, JobState.SUBMITTED, JobState.STARTING, JobState.RUNNING, JobState.UNKNOWN})
_STARTED = frozenset({JobState.STARTING, JobState.RUNNING, JobState.UNKNOWN})
ALLOWED: MappingProxyType[JobState, frozenset[JobState]] = MappingProxyType(
    {
        JobState.QUEUED: frozenset({JobState.PLACED, JobState.PROVISIONING, JobState.STOPPED, JobState.FAILED}),
        JobState.PROVISIONING: frozenset({JobState.PLACED, JobState.STOPPED, JobState.FAILED}),  # requeue() goes back
        JobState.PLACED: frozenset({JobState.SUBMITTED} | _STARTED | TERMINAL),
        JobState.SUBMITTED: frozenset(_STARTED | TERMINAL),
        JobState.STARTING: frozenset({JobState.RUNNING, JobState.UNKNOWN} | TERMINAL),
        JobState.RUNNING: frozenset({JobState.UNKNOWN} | TERMINAL),
        JobState.UNKNOWN: frozenset((_ACTIVE - {JobState.UNKNOWN}) | TERMINAL),  # a repeat is no move
        **{state: frozenset() for state in TERMINAL},
    }
)


def can_move(old: JobState | None, new: JobState) -> bool:
    """Whether a state may follow another; ``old=None`` is the first record, and a repeat is no move at all."""
    if old is None:
        return new in (JobState.QUEUED, JobState.PROVISIONING, JobState.PLACED)
    return new in ALLOWED[old]
