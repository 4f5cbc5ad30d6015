"""The timing rules of a job's life, as pure functions: what was recorded, what was just observed, and ``now`` in;
the next step out. The dispatcher observes, calls these, and acts; tests call them with any ``now`` they like.

- `follow`: one look at an attempt's cluster -> record a state (and maybe fence, place again), or wait.
- `retry_after_loss`: a lost attempt -> another attempt, or the job fails.
- `creation_step`: one look at a cluster being created -> ask for it, wait, fail it, or join it.
- `queue_expired`: a queued job's deadline.
- `hold_counts`: whether what an attempt holds still counts against its cluster's free capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from rayfleet.launcher import LAUNCHER_UNFIT_EXIT, RESERVATION_TIMEOUT_EXIT, UNFIT_MARKER
from rayfleet.states import JobState


@dataclass(frozen=True)
class Rules:
    """The fleet's timing settings that `follow` applies."""

    placed_grace_s: float = 5.0
    unknown_after_s: float = 30.0


@dataclass(frozen=True)
class AttemptView:
    """What the ledger says of the attempt being followed."""

    state: JobState
    cluster: str
    created_at: float
    updated_at: float
    session: str | None = None  # the Ray session it was submitted into


class Seen(str, Enum):
    """What one look at the attempt's cluster found."""

    STATUS = "status"  # the cluster reported the job's status
    ABSENT = "absent"  # the cluster answered that it has no such job
    UNREACHABLE = "unreachable"  # the cluster did not answer


@dataclass(frozen=True)
class Observation:
    """One look at the attempt's cluster.

    Attributes:
        seen: what was found.
        status: Ray's status of the job (with ``seen=STATUS``).
        message: Ray's message, or the error that made the cluster unreachable.
        session: the cluster's Ray session now, if known (a new one proves the job lost).
        last_ok: when the cluster last answered a job call from this process (0: never).
        started: while Ray runs the job, whether its launcher reported that the user's command started (None: no
            report was read: a job without a launcher, or one whose report could not be read; Ray's state counts).
    """

    seen: Seen
    status: str | None = None
    message: str | None = None
    session: str | None = None
    last_ok: float = 0.0
    started: bool | None = None


@dataclass(frozen=True)
class Step:
    """What to do after a look. ``record`` None: change nothing. ``fence``: take the attempt's submission id on its
    cluster first (it was never submitted; its submitter may still try). ``again``: then place the job again,
    trying ``exclude`` last; ``replacing_unknown``: its UNKNOWN attempt may still be running (at-least-once)."""

    record: JobState | None = None
    detail: str | None = None
    fence: bool = False
    again: bool = False
    exclude_tried: bool = False  # exclude every cluster the job has been tried on, not only this attempt's
    replacing_unknown: bool = False
    lost: bool = False  # a loss: whether it is placed again depends on `retry_after_loss`
    unfit: bool = False  # its cluster cannot run the launcher: mark it so (the command never ran)


WAIT = Step()


def follow(attempt: AttemptView, look: Observation, now: float, rules: Rules, *, at_least_once: bool = False,
           grouped: bool = False) -> Step:  # fmt: skip
    """The next step for an attempt that is not terminal, after one look at its cluster.

    Args:
        attempt: the attempt as recorded.
        look: what its cluster said (or that it said nothing).
        now: the time of the look.
        rules: the fleet's grace periods.
        at_least_once: the job may be placed again while its attempt is UNKNOWN (it may then run twice).
        grouped: the job belongs to a group, which retries as a whole (not one member alone).

    Example:
        >>> placed = AttemptView(JobState.PLACED, "a", created_at=100.0, updated_at=100.0)
        >>> follow(placed, Observation(Seen.ABSENT), now=101.0, rules=Rules(placed_grace_s=5)) is WAIT
        True
        >>> follow(placed, Observation(Seen.ABSENT), now=106.0, rules=Rules(placed_grace_s=5)).fence
        True
    """
    if look.seen is Seen.ABSENT:
        if attempt.state is JobState.PLACED:
            if now - attempt.created_at < rules.placed_grace_s:
                return WAIT  # the process that placed it is submitting it now
            detail = "never submitted: the process placing it stopped; its id is fenced"
            return Step(JobState.FAILED, detail, fence=True, again=True)
        return Step(JobState.LOST, loss_reason(attempt.cluster, attempt.session, look.session), lost=True)
    if look.seen is Seen.UNREACHABLE:
        silent = now - max(look.last_ok, attempt.updated_at)
        if silent < rules.unknown_after_s:
            return WAIT  # unreachable is not dead: a partition may heal
        detail = f"cluster {attempt.cluster} has not answered for {silent:.0f} s ({look.message or 'unreachable'})"
        record = JobState.UNKNOWN if attempt.state is not JobState.UNKNOWN else None
        return Step(record, detail, again=at_least_once, replacing_unknown=at_least_once)
    state = JobState.from_ray(str(look.status))
    if state is JobState.RUNNING and look.started is False:
        state = JobState.STARTING  # Ray runs the launcher; the command has not started
    if state == attempt.state or (state is JobState.STARTING and attempt.state is JobState.RUNNING):
        return WAIT
    if state is JobState.FAILED and (why := launcher_unfit(look.message)) is not None:
        detail = f"cluster {attempt.cluster} cannot run rayfleet's launcher: {why}"
        return Step(state, detail, again=not grouped, exclude_tried=True, unfit=True)  # the command never ran there
    if state is JobState.FAILED and not_reserved(look.message):
        detail = f"not reserved within the start timeout: {short_message(look.message)}"
        return Step(state, detail, again=not grouped, exclude_tried=True)  # the command never ran there
    return Step(state, short_message(look.message))


DETAIL_LOG_LINES = 3  # the last lines of a job's log kept in its recorded reason (the whole log: `rayfleet logs`)
DETAIL_CHARS = 400


def short_message(message: str | None) -> str | None:
    """Ray's message about a job, short enough for a reason: Ray appends up to 20,000 characters of the job's log to
    a failure ("..., last available logs (truncated to 20,000 chars):" and the log); keep its first line and the
    log's last few lines, and say where the rest is.

    Example:
        >>> short_message("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 "
        ...               "chars):\\nstep 1\\nstep 2\\nValueError: bad")
        'Job entrypoint command failed with exit code 1; its log ends: step 1 | step 2 | ValueError: bad'
    """
    if not message:
        return message
    head, sep, rest = message.partition("\n")
    head = head.split(", last available logs")[0].rstrip(":")
    lines = [line.strip() for line in rest.splitlines() if line.strip()][-DETAIL_LOG_LINES:] if sep else []
    text = f"{head}; its log ends: {' | '.join(lines)}" if lines else head
    return text if len(text) <= DETAIL_CHARS else text[: DETAIL_CHARS - 1] + "…"


def loss_reason(cluster: str, recorded: str | None, now: str | None) -> str:
    """Why a cluster no longer has a job: a new Ray session (it restarted), or just gone."""
    if recorded and now and now != recorded:
        return f"cluster {cluster} restarted (Ray session {recorded} -> {now}) and lost the job"
    return f"cluster {cluster} no longer has the job"


def not_reserved(message: str | None) -> bool:
    """Whether Ray's message says the launcher gave up waiting for its reservation (the command never ran)."""
    return bool(message) and f"exit code {RESERVATION_TIMEOUT_EXIT}" in message  # type: ignore[operator]


LAUNCHER_RECHECK_S = 600.0  # a cluster found unable to run the launcher is passed over this long (or until it restarts)


def launcher_unfit(message: str | None) -> str | None:
    """Why the launcher could not run on the job's cluster (its marker line, without the marker), when Ray's message
    says so: exit ``LAUNCHER_UNFIT_EXIT`` with the marker in the log; else None."""
    if not message or f"exit code {LAUNCHER_UNFIT_EXIT}" not in message:
        return None
    line = next((line for line in message.splitlines() if line.startswith(UNFIT_MARKER)), None)
    return None if line is None else line[len(UNFIT_MARKER) :].lstrip(": ").strip() or "no reason given"


def launcher_mark_holds(at: float, session: str | None, now: float, session_now: str | None) -> bool:
    """Whether a cluster marked unable to run the launcher at ``at`` (in Ray session ``session``) is still passed
    over: for `LAUNCHER_RECHECK_S`, and not once it runs a new session (restarted, perhaps fixed)."""
    if session is not None and session_now is not None and session != session_now:
        return False
    return now - at < LAUNCHER_RECHECK_S


def past_timeout(state: JobState, running_since: float, timeout_s: float | None, now: float) -> bool:
    """Whether a job with a maximum run time (``timeout_s``) has run past it: RUNNING since ``running_since``."""
    return timeout_s is not None and state is JobState.RUNNING and now - running_since >= timeout_s


def retry_after_loss(lost: int, max_retries: int) -> bool:
    """Whether a job whose attempts were lost ``lost`` times gets another attempt (else it FAILS)."""
    return lost <= max_retries


def hold_counts(state: JobState, *, reserves: bool, reflected: bool, reserved_at: float | None, state_at: float,
                report_time: float | None) -> bool:  # fmt: skip
    """Whether an attempt's hold still counts against its cluster's free capacity in a reading computed at
    ``report_time`` (the cluster's own clock). A hold follows the attempt, not a timer: it counts until a reading
    shows the reservation, or the attempt ends or passes its start timeout (the ledger leaves such attempts out).

    Args:
        state: the attempt's state.
        reserves: it reserves something (a job that asks for nothing holds nothing: its hold only marks a recent
            placement, until Ray runs it).
        reflected: this reading shows the node's usage grown by the held amount, or the request waiting as demand.
        reserved_at: when its launcher was seen holding the reservation, if it was.
        state_at: when it entered ``state`` (for RUNNING without a report: the command runs, so it was reserved).
        report_time: when the reading was computed (None: unknown, the hold counts).

    Example:
        >>> hold_counts(JobState.STARTING, reserves=True, reflected=False, reserved_at=None, state_at=10.0,
        ...             report_time=99.0)
        True
        >>> hold_counts(JobState.STARTING, reserves=True, reflected=False, reserved_at=50.0, state_at=10.0,
        ...             report_time=51.0)
        False
    """
    if not reserves:
        return state in (JobState.PLACED, JobState.SUBMITTED)
    if reflected:
        return False
    seen = reserved_at if reserved_at is not None else (state_at if state is JobState.RUNNING else None)
    return seen is None or report_time is None or report_time <= seen


def queue_expired(deadline: float | None, now: float) -> bool:
    """Whether a queued job has waited past its deadline (None: it waits as long as it takes)."""
    return deadline is not None and now >= deadline


class Creation(str, Enum):
    """The next step for a cluster being created."""

    WAIT = "wait"  # still starting (or its creator is about to ask for it)
    ASK = "ask"  # recorded but never asked for, by a creator that stopped in between: ask in its place
    FAIL = "fail"  # it cannot become ready: delete it, place its jobs elsewhere
    JOIN = "join"  # ready: join the fleet, place its jobs there


def creation_step(*, ready: bool, exists: bool, asked_at: float | None, created_at: float, now: float,
                  ready_timeout_s: float, ask_grace_s: float) -> Creation:  # fmt: skip
    """One look at a creation (``exists``: the provisioner knows the cluster; ``ready``: it is ready).

    Example:
        >>> creation_step(ready=False, exists=False, asked_at=None, created_at=0, now=6, ready_timeout_s=60,
        ...               ask_grace_s=5)
        <Creation.ASK: 'ask'>
    """
    if ready:
        return Creation.JOIN
    if not exists:
        if asked_at is None:
            return Creation.WAIT if now - created_at < ask_grace_s else Creation.ASK
        return Creation.FAIL  # asked for, and gone: deleted while it started
    return Creation.WAIT if now - created_at <= ready_timeout_s else Creation.FAIL
