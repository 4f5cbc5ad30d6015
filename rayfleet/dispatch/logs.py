"""Logs: saved as a job runs (checkpoints by the loop) and when it ends, and read back for any attempt, with a message
for every case in which there is none (never placed, never submitted, lost before anything was saved)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.errors import (
    ClusterError,
    ClusterUnreachableError,
    InvalidRequestError,
    JobNotFoundError,
    LogsUnavailableError,
)
from rayfleet.ledger import AttemptRecord, JobRecord
from rayfleet.states import JobState
from rayfleet.text import strip_escapes

log = logging.getLogger("rayfleet.dispatch")

LOG_CHECKPOINT_S = 30.0  # how often the loop saves the log of each running job (its cluster may be lost any time)
LOG_KEEP_CHARS = 1_000_000  # the newest part of a log the ledger keeps (a checkpoint or a final save)
_CHECKPOINTED = (JobState.STARTING, JobState.RUNNING)


@dataclass(frozen=True)
class JobLog:
    """One attempt's log as found: the text, and a note when it is not the live log (saved, and when; why)."""

    text: str
    attempt: int
    note: str | None = None


def _clock_time(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def keep(text: str) -> str:
    """What the ledger keeps of a log: without terminal escapes, its newest `LOG_KEEP_CHARS` characters."""
    text = strip_escapes(text)
    if len(text) <= LOG_KEEP_CHARS:
        return text
    cut = text[-LOG_KEEP_CHARS:]
    return f"[rayfleet: the first {len(text) - len(cut)} characters of this log were not kept]\n{cut}"


class Logs:
    """The logs duty of `Dispatcher` (a mixin: the state it uses is the dispatcher's, see `core`)."""

    log_checkpoint_s = LOG_CHECKPOINT_S

    def checkpoint_logs(self) -> int:
        """Save the log of every running attempt whose last save is older than ``log_checkpoint_s`` (one read of its
        cluster each), so a cluster lost under a job leaves its log behind up to then. Returns how many were saved."""
        now, saved = self._clock(), 0
        for job in self.ledger.active():
            attempt = job.last_attempt
            if attempt is None or attempt.state not in _CHECKPOINTED or attempt.cluster not in self._backends:
                continue
            last = self.ledger.saved_logs(attempt.submission_id)
            if last is not None and now - last.saved_at < self.log_checkpoint_s:
                continue
            if self._known_down(attempt.cluster) is None and self._save_log(attempt, final=False):
                saved += 1
        return saved

    def _save_log(self, attempt: AttemptRecord, *, final: bool) -> bool:
        """Read an attempt's log from its cluster and save it. Returns whether it was saved."""
        backend = self._backends.get(attempt.cluster)
        if backend is None:
            return False
        try:
            text = backend.logs(attempt.submission_id)
        except (ClusterError, JobNotFoundError) as e:
            log.debug("job %s: log not saved: %s", attempt.job_id, e)
            return False
        self.ledger.save_logs(attempt.submission_id, keep(text), final=final)
        return True

    def finish_log(self, attempt: AttemptRecord) -> None:
        """An attempt ended: if its log was checkpointed, save it once more as final (its cluster may go later)."""
        last = self.ledger.saved_logs(attempt.submission_id)
        if last is not None and not last.final:
            self._save_log(attempt, final=True)

    def logs(self, job_id: str, attempt: int | None = None) -> str:
        """An attempt's output (default: the newest): from its cluster, or as saved."""
        return self.job_log(job_id, attempt).text

    def job_log(self, job_id: str, n: int | None = None) -> JobLog:
        """Attempt ``n``'s log (default: the newest) with a note when it is not the live log.

        Raises:
            LogsUnavailableError: there is none, saying why: the job never reached a cluster, or the attempt never
                started there, or its cluster lost it before any of it was saved.
            InvalidRequestError: the job has no attempt ``n``.
            ClusterError: its cluster did not answer and nothing of it was saved.
        """
        job = self.ledger.job(job_id)
        attempt = self._pick(job, n)
        saved = self.ledger.saved_logs(attempt.submission_id)
        if saved is not None and saved.final:
            return JobLog(saved.text, attempt.n)
        gone = self._gone(job, attempt)
        if gone is not None:
            if saved is None:
                raise LogsUnavailableError(
                    f"{gone}, before any of its log was saved",
                    f"logs are saved every {self.log_checkpoint_s:g} s while a job runs (by 'rayfleet dispatch' or "
                    f"fleet.run()); see 'rayfleet job {job_id}' for what is known",
                )
            return JobLog(saved.text, attempt.n, f"{gone}; its log as saved at {_clock_time(saved.saved_at)}")
        backend = self._backends[attempt.cluster]
        try:
            return JobLog(backend.logs(attempt.submission_id), attempt.n)
        except (ClusterUnreachableError, JobNotFoundError) as e:
            if saved is None:
                raise
            why = e.message if isinstance(e, ClusterUnreachableError) else "its cluster no longer has it"
            note = f"attempt {attempt.n} on {attempt.cluster}: {why}; its log as saved at {_clock_time(saved.saved_at)}"
            return JobLog(saved.text, attempt.n, note)

    def _pick(self, job: JobRecord, n: int | None) -> AttemptRecord:
        """Attempt ``n`` of a job (the newest by default), or why there is none."""
        if not job.attempts:
            state, why = job.state, job.reason or "no reason recorded"
            if state in (JobState.QUEUED, JobState.PROVISIONING):
                raise LogsUnavailableError(
                    f"job {job.id} has not run yet: it is {state.value} ({why})",
                    f"wait for it to be placed ('rayfleet job {job.id}' shows why it waits)",
                )
            raise LogsUnavailableError(
                f"job {job.id} was never placed on a cluster, so it has no log: {state.value}: {why}",
                f"see 'rayfleet job {job.id}'",
            )
        if n is None:
            return job.attempts[-1]
        for attempt in job.attempts:
            if attempt.n == n:
                return attempt
        raise InvalidRequestError(
            f"job {job.id} has no attempt {n}: it has attempts 1 to {len(job.attempts)}",
            f"give --attempt between 1 and {len(job.attempts)}, or leave it out for the newest",
        )

    def _gone(self, job: JobRecord, attempt: AttemptRecord) -> str | None:
        """Why an attempt's log cannot come from its cluster (None: ask the cluster)."""
        detail = f" ({attempt.detail})" if attempt.detail else ""
        if attempt.state is JobState.LOST:
            return f"attempt {attempt.n} was lost with cluster {attempt.cluster}{detail}"
        if attempt.state is JobState.FAILED and attempt.detail and attempt.detail.startswith("never submitted"):
            raise LogsUnavailableError(
                f"attempt {attempt.n} of job {job.id} never started on {attempt.cluster}{detail}: it has no log",
                f"see 'rayfleet job {job.id}' for its other attempts",
            )
        if attempt.cluster not in self._backends:
            return f"attempt {attempt.n} ran on cluster {attempt.cluster}, which this fleet no longer has"
        return None

    def tail(self, job_id: str) -> Iterator[str]:
        """The newest attempt's output as it is written, until it ends."""
        attempt = self._pick(self.ledger.job(job_id), None)
        backend: RayJobs | None = self._backends.get(attempt.cluster)
        if backend is None:
            raise LogsUnavailableError(
                f"job {job_id} ran on cluster {attempt.cluster}, which this fleet does not have",
                "use the fleet definition the job was submitted with, or read what was saved: "
                f"'rayfleet logs {job_id}'",
            )
        return backend.tail(attempt.submission_id)
