"""Job commands: jobs, job (one job, and why), logs, stop."""

from __future__ import annotations

import re
import sys
import time
import types
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rayfleet.cli.common import (
    EXIT_USAGE,
    FleetOpt,
    LedgerOpt,
    _fail,
    _fleet,
    _run,
    app,
    err,
    out,
)
from rayfleet.errors import InvalidRequestError, RayfleetError
from rayfleet.ledger import AttemptRecord, JobRecord
from rayfleet.states import JobState
from rayfleet.text import shorten

REASON_CHARS = 60  # of a job's reason in the `jobs` table (the whole of it: `rayfleet job ID`)
LOG_LINES = 20  # the last lines of the log `rayfleet job ID` shows
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = types.MappingProxyType({"s": 1, "m": 60, "h": 3600, "d": 86400})


def _since(text: str | None, now: float) -> float | None:
    """``--since 30m`` (s, m, h, d) -> the wall-clock time that far back."""
    if text is None:
        return None
    match = _SINCE.match(text.strip())
    if match is None:
        raise InvalidRequestError(f"--since {text!r} is not a duration", "give e.g. 90s, 30m, 6h or 2d")
    return now - float(match.group(1)) * _UNIT_S[match.group(2)]


def _states(values: list[str] | None) -> set[JobState]:
    try:
        return {JobState(v.upper()) for v in values or []}
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise InvalidRequestError(f"--state {values} names no job state", f"use one of: {names}") from None


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _what(job: JobRecord) -> str:
    """What a job asks for, gangs with their bundles (``STRICT_SPREAD gang of 2 x (1 CPU, 1 GPU)``)."""
    from rayfleet.dispatch.submission import Submission

    try:
        return Submission.from_job(job).describe()
    except RayfleetError:  # a request a newer rayfleet recorded: show what can be read
        return job.resources.describe()


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    state: Annotated[list[str] | None, typer.Option("--state", help="Only jobs in this state (repeatable)")] = None,
    owner: Annotated[str | None, typer.Option(help="Only this owner's jobs")] = None,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Only jobs with an attempt on this cluster")] = None,
    since: Annotated[str | None, typer.Option(help="Only jobs submitted this recently: 90s, 30m, 6h, 2d")] = None,
    refresh: Annotated[bool, typer.Option(help="Ask the clusters for the state of live jobs")] = True,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Jobs in the ledger, newest first, with the reason of each one's latest state."""
    states, after = _run(lambda: (_states(state), _since(since, time.time())))
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    filtered = bool(states or owner or cluster or after)
    table = Table(
        title="rayfleet jobs",
        caption="a reason cut short (…): all of it with 'rayfleet job ID'; the log with 'rayfleet logs ID'",
        caption_justify="left",
    )
    for column in ("job", "state", "cluster", "attempts", "resources", "reason", "entrypoint"):
        table.add_column(column, overflow="fold")
    shown = 0
    for handle in fleet.jobs(limit=100_000 if filtered else limit):
        record = handle.record
        if after is not None and record.created_at < after:
            break  # newest first: the rest are older
        if owner is not None and record.owner != owner:
            continue
        if cluster is not None and all(a.cluster != cluster for a in record.attempts):
            continue
        if refresh and not record.state.is_terminal():
            _run(handle.status)
            record = handle.record
        if states and record.state not in states:
            continue
        waiting = record.state is JobState.PROVISIONING and record.awaits
        table.add_row(
            record.id,
            record.state.value,
            f"{record.awaits} (being created)" if waiting else handle.cluster or "-",
            str(len(record.attempts)),
            _what(record),
            escape(shorten(record.reason or "", REASON_CHARS) or "-"),
            escape(record.entrypoint[:60]),
        )
        shown += 1
        if shown >= limit:
            break
    out.print(table)
    fleet.close()


def _exit_code(attempt: AttemptRecord) -> str:
    match = re.search(r"exit code (-?\d+)", attempt.detail or "")
    return match.group(1) if match else "-"


def render_job(record: JobRecord, timeline: list[Any], tail: str | None, tail_note: str | None) -> list[Any]:
    """What `rayfleet job` prints: the job, why it is where it is, every attempt, every state, the log's end."""
    parts: list[Any] = []
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("job", f"{record.id}  [bold]{record.state.value}[/]")
    head.add_row("why", escape(record.reason or "-"))
    head.add_row("asks for", escape(_what(record)))
    head.add_row("entrypoint", escape(record.entrypoint))
    head.add_row("owner", escape(f"{record.owner or '-'}, priority {record.priority}"))
    head.add_row("submitted", _when(record.created_at))
    if record.parent_id:
        head.add_row("parent", record.parent_id)
    parts.append(head)
    if record.attempts:
        attempts = Table(title="attempts")
        for column in ("#", "cluster", "Ray submission id", "state", "exit code", "node", "placed", "last change"):
            attempts.add_column(column)
        attempts.add_column("cause", overflow="fold")
        for a in record.attempts:
            attempts.add_row(
                str(a.n), a.cluster, a.submission_id, a.state.value, _exit_code(a), (a.node_id or "-")[:12],
                _when(a.created_at), _when(a.updated_at), escape(a.detail or "-"),
            )  # fmt: skip
        parts.append(attempts)
    history = Table(title="every state (placement, failover, verdicts)")
    for column in ("at", "attempt", "cluster", "state"):
        history.add_column(column)
    history.add_column("why", overflow="fold")
    for t in timeline:
        history.add_row(_when(t.at), "job" if t.attempt is None else str(t.attempt), t.cluster or "-",
                        t.state.value, escape(t.detail or "-"))  # fmt: skip
    parts.append(history)
    if tail is not None:
        parts.append(f"[bold]log[/] (last {LOG_LINES} lines{'; ' + escape(tail_note) if tail_note else ''}):")
        parts.append(Text(tail or "(empty)"))
    elif tail_note:
        parts.append(f"[bold]log[/]: {escape(tail_note)}")
    return parts


@app.command("job")
def job(
    job_id: str,
    refresh: Annotated[bool, typer.Option(help="Ask the job's cluster for its state first")] = True,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """One job: its state and why, every attempt (cluster, Ray submission id, state, exit code, cause, times), every
    state it went through (placement and failover), and the last lines of its log."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    handle = _run(lambda: fleet.job(job_id))
    if refresh and not handle.record.state.is_terminal():
        _run(handle.status)
    record = handle.record
    tail, note = None, None
    try:
        found = handle.log()
        tail, note = "\n".join(found.text.rstrip("\n").splitlines()[-LOG_LINES:]), found.note
    except RayfleetError as e:  # no log is part of the answer: say why instead
        note = e.message
    for part in render_job(record, fleet.ledger.timeline(job_id), tail, note):
        out.print(part, highlight=False)
    fleet.close()


@app.command()
def logs(
    job_id: str,
    attempt: Annotated[int | None, typer.Option("--attempt", "-a", help="This attempt (1 is the first)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Stream until the job ends")] = False,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """The output of a job: its newest attempt, or any attempt's, live from its cluster or as saved."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    handle = _run(lambda: fleet.job(job_id))
    if follow:
        if attempt is not None:
            _fail(InvalidRequestError("--follow streams the newest attempt only", "leave out --attempt"), EXIT_USAGE)
        for chunk in _run(handle.tail):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        found = _run(lambda: handle.log(attempt))
        if found.note:
            err.print(f"[yellow]note:[/] {found.note}", highlight=False)
        sys.stdout.write(found.text)
    fleet.close()


@app.command()
def stop(
    job_id: Annotated[str | None, typer.Argument(help="The job to stop")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Stop every job of this group")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Stop every job of this pipeline")] = None,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Stop a job (withdraw it from the queue, or ask its cluster to stop it), or every job of a group or pipeline."""
    given = [x for x in (job_id, group, pipeline) if x is not None]
    if len(given) != 1:
        example = "e.g. 'rayfleet stop rf-1234', 'rayfleet stop --group G' or 'rayfleet stop --pipeline NAME'"
        _fail(InvalidRequestError("give exactly one of: a job id, --group or --pipeline", example), EXIT_USAGE)
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    if job_id is not None:
        handle = _run(lambda: fleet.job(job_id))
        accepted = _run(handle.stop)
        verb = "requested" if accepted else "not needed (already ended)"
        out.print(f"{job_id}: stop {verb}; state {handle.record.state.value}", highlight=False)
    else:
        stopped = _run(lambda: fleet.stop_group(group) if group is not None else fleet.stop_pipeline(str(pipeline)))
        what = f"group {group}" if group is not None else f"pipeline {pipeline}"
        out.print(f"{what}: stopped {len(stopped)} job(s): {', '.join(stopped) or '-'}", highlight=False)
    fleet.close()
