"""Following jobs: one look at an attempt's cluster, the step `lifecycle.follow` says, and acting on it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.dispatch.submission import Submission
from rayfleet.errors import ClusterError, ClusterUnreachableError, JobNotFoundError, RayfleetError, UnknownClusterError
from rayfleet.ledger import LAUNCHER_UNFIT, AttemptRecord, JobRecord
from rayfleet.lifecycle import (
    WAIT,
    AttemptView,
    Observation,
    Rules,
    Seen,
    Step,
    follow,
    loss_reason,
    past_timeout,
    retry_after_loss,
)
from rayfleet.report import speaks_report
from rayfleet.states import JobState

log = logging.getLogger("rayfleet.dispatch")


class Following:
    """The following duty of `Dispatcher` (a mixin: the state it uses is the dispatcher's, see `core`)."""

    def refresh(self, job_id: str) -> JobRecord:
        """Ask the cluster of the job's newest attempt for its state, record a change, act on it, return the job.

        Acting on it: an attempt whose reservation timed out is placed again elsewhere; an attempt whose cluster has
        not answered for ``unknown_after_s`` becomes UNKNOWN (and with ``at_least_once`` is placed again); an
        attempt its cluster provably lost (a new Ray session, or the job is gone) is LOST, then placed again if
        ``max_retries`` allows, else the job FAILS with the reason. A stale older attempt that is still alive on a
        cluster that answers again is stopped.
        """
        job = self.ledger.job(job_id)
        for old in job.attempts[:-1]:
            if not old.state.is_terminal():
                self._stop_stale(job, old)
        if job.state is JobState.PROVISIONING:  # its cluster is being created: carry the creation on
            self.advance_creations()
            return self.ledger.job(job_id)
        attempt = job.last_attempt
        if attempt is None or attempt.state.is_terminal() or attempt.cluster not in self._backends:
            return self.ledger.job(job_id) if job.attempts[:-1] else job
        sub = Submission.from_job(job)
        if past_timeout(attempt.state, attempt.updated_at, sub.timeout_s, self._clock()):
            return self._time_out(job, attempt, sub.timeout_s or 0.0)
        view = AttemptView(attempt.state, attempt.cluster, attempt.created_at, attempt.updated_at, attempt.session)
        rules = Rules(placed_grace_s=self.config.placed_grace_s, unknown_after_s=self.config.unknown_after_s)
        grouped = sub.group is not None
        step = follow(view, self._look(attempt), self._clock(), rules, at_least_once=sub.at_least_once, grouped=grouped)
        return self._act(job, attempt, step)

    def _look(self, attempt: AttemptRecord) -> Observation:
        """Ask an attempt's cluster for it once (not at all if the prober knows the cluster is down)."""
        cluster, last_ok = attempt.cluster, self._last_ok.get(attempt.cluster, 0.0)
        if (down := self._known_down(cluster)) is not None:
            return Observation(Seen.UNREACHABLE, message=down.message, last_ok=last_ok)
        try:
            info = self._backends[cluster].info(attempt.submission_id)
        except JobNotFoundError:
            session = None if attempt.state is JobState.PLACED else self.prober.read_session(cluster)
            return Observation(Seen.ABSENT, session=session, last_ok=last_ok)
        except ClusterUnreachableError as e:
            self.snapshots([cluster], max_age=0)  # the prober's verdict from now on: the next turns do not ask again
            return Observation(Seen.UNREACHABLE, message=e.message, last_ok=last_ok)
        self._last_ok[cluster] = self._clock()
        status, started = str(info.status), None
        if status == "RUNNING" and attempt.state is not JobState.RUNNING and speaks_report(info.metadata):
            started = self._read_report(attempt)
        return Observation(Seen.STATUS, status=status, message=getattr(info, "message", None), started=started)

    def _read_report(self, attempt: AttemptRecord) -> bool | None:
        """Read the launcher's report of a job Ray runs; record its reservation the first time it is held. Returns
        whether the command started (None: the report could not be read, and Ray's state stands)."""
        try:
            report = self._backends[attempt.cluster].report(attempt.submission_id)
        except (ClusterError, JobNotFoundError) as e:
            log.debug("job %s: no launcher report from %s: %s", attempt.job_id, attempt.cluster, e)
            return None
        if report.reserved and attempt.reserved_at is None:
            self.ledger.record_reservation(attempt.submission_id, report.nodes, time.time())  # compared with reports
        return report.started

    def _act(self, job: JobRecord, attempt: AttemptRecord, step: Step) -> JobRecord:
        """Carry out `follow`'s step: fence, record, then place again (or fail the job) as it says."""
        if step == WAIT:
            return job
        sid = attempt.submission_id
        if step.fence and not self._backends[attempt.cluster].fence(sid, self._fence_metadata(job, attempt)):
            return job  # the real submission landed just now: the next look finds it
        moved = step.record is None or self.ledger.record(sid, step.record, step.detail)
        job = self.ledger.job(job.id)
        if not moved:
            return job  # another process moved it first
        if step.record is not None and step.record.is_terminal():
            self.finish_log(attempt)
        if step.unfit:
            me = f"{socket.gethostname()}:{os.getpid()}"
            self.ledger.mark(attempt.cluster, LAUNCHER_UNFIT, by=me, reason=step.detail or "", session=attempt.session)
            log.warning("job %s: %s; placing it elsewhere, and no launcher job goes there for now", job.id, step.detail)
        if step.lost:
            return self._after_loss(job)
        if not step.again:
            return job
        if step.replacing_unknown:
            if job.state is not JobState.UNKNOWN:
                return job
            log.warning("job %s: cluster %s is unreachable; placing it again (at-least-once)", job.id, attempt.cluster)
            return self._again(job, exclude=frozenset({attempt.cluster}), replacing_unknown=True)
        tried = frozenset(a.cluster for a in job.attempts) if step.exclude_tried else frozenset({attempt.cluster})
        return self._again(job, exclude=tried)

    def _time_out(self, job: JobRecord, attempt: AttemptRecord, timeout_s: float) -> JobRecord:
        """A job ran past its ``timeout_s``: stop it on its cluster, then record it FAILED with that reason (stopped
        first: a crash in between leaves it STOPPED, never running on unrecorded)."""
        ran = self._clock() - attempt.updated_at
        self._backends[attempt.cluster].stop(attempt.submission_id)
        detail = f"ran past its timeout_s={timeout_s:g} (stopped after {ran:.0f} s running)"
        if self.ledger.record(attempt.submission_id, JobState.FAILED, detail):
            log.warning("job %s: %s", job.id, detail)
            self.finish_log(attempt)
        return self.ledger.job(job.id)

    def move(self, job_id: str, reason: str) -> bool:
        """Move a running job off its cluster (a drain): stop it there, record the attempt LOST with ``reason``, and
        place it again elsewhere as after a loss (it counts against ``max_retries``). Only a job that may be retried
        is moved. Returns whether it was. Stopped first, recorded second: a crash in between leaves the job STOPPED,
        never running in two places."""
        job = self.ledger.job(job_id)
        attempt = job.last_attempt
        sub = Submission.from_job(job)
        lost = sum(1 for a in job.attempts if a.state is JobState.LOST)
        if attempt is None or attempt.state.is_terminal() or not retry_after_loss(lost + 1, sub.max_retries):
            return False
        self._backends[attempt.cluster].stop(attempt.submission_id)
        if not self.ledger.record(attempt.submission_id, JobState.LOST, reason):
            return False
        self.finish_log(attempt)
        self._after_loss(self.ledger.job(job_id))
        return True

    def _after_loss(self, job: JobRecord) -> JobRecord:
        """The newest attempt was lost: place the job again if ``max_retries`` allows, else fail it."""
        attempt = job.last_attempt
        assert attempt is not None
        lost = sum(1 for a in job.attempts if a.state is JobState.LOST)
        allowed = Submission.from_job(job).max_retries
        if not retry_after_loss(lost, allowed):
            self.ledger.record_job(
                job.id, JobState.FAILED, f"lost on {attempt.cluster}: {attempt.detail}; max_retries={allowed}"
            )
            return self.ledger.job(job.id)
        log.warning("job %s: %s; placing it again (%d/%d)", job.id, attempt.detail, lost, allowed)
        return self._again(job, exclude=frozenset({attempt.cluster}))

    def _stop_stale(self, job: JobRecord, attempt: AttemptRecord) -> None:
        """An older attempt is still active (its cluster was unreachable when the job was placed again). If its
        cluster answers now, stop it there: the job runs elsewhere."""
        backend = self._backends.get(attempt.cluster)
        if backend is None or self._known_down(attempt.cluster) is not None:
            return
        try:
            status = JobState.from_ray(str(backend.status(attempt.submission_id)))
            if not status.is_terminal():
                backend.stop(attempt.submission_id)
                status = JobState.STOPPED
            self.ledger.record(
                attempt.submission_id, status, f"stale: the job was placed again as attempt {len(job.attempts)}"
            )
        except JobNotFoundError:
            self.ledger.record(attempt.submission_id, JobState.LOST, loss_reason(attempt.cluster, None, None))
        except ClusterError:
            self.snapshots([attempt.cluster], max_age=0)  # still unreachable: the prober says when to try again
            return

    def _known_down(self, cluster: str) -> ClusterUnreachableError | None:
        """Whether the prober knows the cluster is down (re-probed only once its backoff ends). A dead cluster is not
        asked about each job: every such call waits out the job client's retries (about 11 s)."""
        reading = self.prober.cached(cluster)
        if reading is None or not reading.healthy:  # never read by this process, or down: probe, unless backing off
            reading = self.snapshots([cluster])[cluster]
            if not reading.healthy:
                return ClusterUnreachableError(reading.error or "unreachable", cluster=cluster)
        return None

    def _again(self, job: JobRecord, *, exclude: frozenset[str], replacing_unknown: bool = False) -> JobRecord:
        """Place a job again: its newest attempt failed to start (never ran), was lost, or (at-least-once) is
        unknown. Clusters in ``exclude`` are tried last. With no room now, the job waits in the queue."""
        sub = Submission.from_job(job)
        self.prober.invalidate()  # the reading that sent it there was wrong: read every cluster afresh
        history = [(a.cluster, a.detail or a.state.value) for a in job.attempts]
        n = len(job.attempts) + 1
        outcome = self._place(sub, job.id, n, exclude, history, in_ledger=True, replacing_unknown=replacing_unknown)
        if not outcome.settled and not outcome.conflict and exclude:  # the excluded clusters, last
            outcome = self._place(
                sub, job.id, n, frozenset(), history, in_ledger=True, replacing_unknown=replacing_unknown
            )
        if not outcome.settled and not outcome.conflict:
            if replacing_unknown:
                log.warning("job %s: no room elsewhere now; it stays UNKNOWN", job.id)
            elif self.ledger.requeue(job.id, "waiting: no cluster can take it now"):
                log.info("job %s: no cluster can take it now; it waits in the queue", job.id)
        return self.ledger.job(job.id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Poll until the job is terminal. Raises `TimeoutError` when ``timeout`` passes first.

        While the job is queued, this process works the queue (in priority order) as the dispatch loop would; while
        it waits for a new cluster, this process carries the creation on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            job = self.refresh(job_id)  # for a job waiting for its new cluster, this carries the creation on
            if job.state is JobState.QUEUED:
                self.place_queued()
                job = self.ledger.job(job_id)
            if job.state.is_terminal():
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s")
            remaining = None if deadline is None else deadline - time.monotonic()
            time.sleep(min(delay, remaining) if remaining is not None else delay)
            # a cluster being created becomes ready at a moment worth catching: its job is placed on the next look
            delay = min(delay * 1.5, 0.25 if job.state is JobState.PROVISIONING else 1.0)

    def _attempt(self, job_id: str) -> tuple[RayJobs, str]:
        attempt = self.ledger.job(job_id).last_attempt
        if attempt is None:
            raise JobNotFoundError(f"job {job_id} has not been submitted to any cluster", "wait until it is placed")
        if attempt.cluster not in self._backends:
            raise UnknownClusterError(
                f"job {job_id} ran on cluster {attempt.cluster}, which this fleet does not have",
                "use the fleet definition the job was submitted with",
            )
        return self._backends[attempt.cluster], attempt.submission_id

    def stop(self, job_id: str) -> bool:
        """Stop a job (withdraw it from the queue, or ask its cluster to stop it) and, first, its children: the jobs
        it submitted through rayfleet (nested dispatch). Returns whether the job itself was stopped or withdrawn."""
        for child in self.ledger.children(job_id):
            if not child.state.is_terminal():
                with contextlib.suppress(RayfleetError):
                    self.stop(child.id)
        job = self.ledger.job(job_id)
        if job.state in (JobState.QUEUED, JobState.PROVISIONING):
            return self.ledger.record_job(job_id, JobState.STOPPED, f"stopped while {job.state.value}")
        backend, sid = self._attempt(job_id)
        stopped = backend.stop(sid)
        self.refresh(job_id)
        return stopped
