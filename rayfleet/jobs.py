"""`JobHandle`: follow one rayfleet job (state, logs, stop) through whichever attempt is current."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from rayfleet.ledger import AttemptRecord, JobRecord
from rayfleet.states import JobState

if TYPE_CHECKING:
    from rayfleet.dispatch import Dispatcher
    from rayfleet.dispatch.logs import JobLog

__all__ = ["JobHandle", "JobState"]


class JobHandle:
    """A job submitted through a fleet. Cheap to make: it holds only the id and reads the ledger when asked.

    Example:
        >>> handle = fleet.submit("python -c 'print(1)'", {"cpu": 1})       # doctest: +SKIP
        >>> handle.wait(timeout=60)                                          # doctest: +SKIP
        <JobState.SUCCEEDED: 'SUCCEEDED'>
    """

    def __init__(self, dispatcher: Dispatcher, job_id: str) -> None:
        self._dispatcher = dispatcher
        self.id = job_id

    def __repr__(self) -> str:
        record = self.record
        return f"JobHandle(id={self.id!r}, cluster={self.cluster!r}, state={record.state.value})"

    @property
    def record(self) -> JobRecord:
        """The job as the ledger has it now (no cluster is asked)."""
        return self._dispatcher.ledger.job(self.id)

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        """Every Ray submission of this job, oldest first, with its cluster and state."""
        return self.record.attempts

    @property
    def cluster(self) -> str | None:
        """The cluster of the newest attempt."""
        attempt = self.record.last_attempt
        return attempt.cluster if attempt else None

    @property
    def submission_id(self) -> str | None:
        attempt = self.record.last_attempt
        return attempt.submission_id if attempt else None

    def status(self) -> JobState:
        """Ask the job's cluster for its state (recording any change) and return it."""
        return self._dispatcher.refresh(self.id).state

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job is terminal; return its state.

        Raises:
            TimeoutError: it is still running after ``timeout`` seconds.
        """
        return self._dispatcher.wait(self.id, timeout).state

    def logs(self, attempt: int | None = None) -> str:
        """The job's output so far: of its newest attempt, or of attempt ``attempt`` (1 is the first). From its
        cluster, or as saved (the loop saves a running job's log every ``log_checkpoint_s``, and a job's last one
        when it ends or its cluster is deleted).

        Raises:
            LogsUnavailableError: there is none, and the message says why (never placed, never started, lost before
                any of it was saved).
        """
        return self._dispatcher.logs(self.id, attempt)

    def log(self, attempt: int | None = None) -> JobLog:
        """Like `logs`, with a note when the text is not the live log (saved, when, and why: its cluster lost the
        job, or no longer answers)."""
        return self._dispatcher.job_log(self.id, attempt)

    def tail(self) -> Iterator[str]:
        """Yield the job's output as it is written, until the job ends."""
        return self._dispatcher.tail(self.id)

    def stop(self) -> bool:
        """Ask the cluster to stop the job. Returns whether Ray accepted the request."""
        return self._dispatcher.stop(self.id)
