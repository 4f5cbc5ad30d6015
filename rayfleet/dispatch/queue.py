"""The queue: placing queued jobs by priority, fair share and age."""

from __future__ import annotations

import logging

from rayfleet.dispatch.submission import Submission, next_in_queue
from rayfleet.ledger import JobRecord
from rayfleet.lifecycle import queue_expired
from rayfleet.states import JobState

log = logging.getLogger("rayfleet.dispatch")


def expiry_reason(job: JobRecord, deadline: float | None, now: float) -> str:
    """Why a queued job failed at its deadline: how long it waited, its limit, and what it was waiting for."""
    waited, limit = now - job.created_at, (deadline or now) - job.created_at
    why = f"; it was {job.reason}" if job.reason else ""
    return f"waited {_seconds(waited)} s in the queue, past its queue timeout of {_seconds(limit)} s{why}"


def _seconds(s: float) -> str:
    return f"{s:.1f}" if s < 10 else f"{s:.0f}"


class Queue:
    """The queue duty of `Dispatcher` (a mixin: the state it uses is the dispatcher's, see `core`)."""

    def place_queued(self) -> list[str]:
        """Place queued jobs where they fit now: higher priority first, then (with ``fair_share``) the owner with
        the fewest active jobs, then the oldest. Jobs past their queue deadline fail. Returns the ids placed.

        A job that does not fit is passed over and a lower one may start (backfill); the holds of jobs placed in
        this turn keep a lower job from taking what a higher one was just given.
        """
        queued = self.ledger.queued()
        if not queued:
            return []
        now = self._clock()
        active: dict[str, int] = {}
        if self.config.fair_share:
            for job in self.ledger.active():
                active[job.owner] = active.get(job.owner, 0) + 1
        placed = []
        waiting = list(queued)
        while waiting:
            job = next_in_queue(waiting, active)
            waiting.remove(job)
            sub = Submission.from_job(job)
            if queue_expired(sub.queue_deadline, now):
                self.ledger.record_job(job.id, JobState.FAILED, expiry_reason(job, sub.queue_deadline, now))
                continue
            outcome = self._place(sub, job.id, len(job.attempts) + 1, frozenset(), [], in_ledger=True)
            if outcome.settled:
                placed.append(job.id)
                active[job.owner] = active.get(job.owner, 0) + 1
        return placed
