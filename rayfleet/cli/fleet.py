"""Fleet commands: clusters, submit, dispatch, gc, explain."""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Annotated, Any

import typer
from rich.table import Table

from rayfleet.capacity import AUTH, ClusterSnapshot
from rayfleet.cli.common import (
    EXIT_AUTH,
    EXIT_CLUSTER,
    EXIT_JOB_FAILED,
    AccOpt,
    ClusterOpt,
    CpuOpt,
    FleetOpt,
    GpuOpt,
    LabelOpt,
    LedgerOpt,
    MemOpt,
    PolicyOpt,
    ResOpt,
    _fail,
    _fleet,
    _pairs,
    _resources,
    _run,
    app,
    out,
)
from rayfleet.errors import AuthenticationError, ClusterError, InvalidRequestError
from rayfleet.ledger import CORDON, DRAIN, LAUNCHER_UNFIT, ClusterMark, JobRecord
from rayfleet.lifecycle import launcher_mark_holds
from rayfleet.placement import Decision
from rayfleet.resources import Resources, format_bytes
from rayfleet.states import JobState
from rayfleet.text import shorten

# ----- fleet commands ---------------------------------------------------------------------------------------------


@app.command()
def clusters(fleet_file: FleetOpt = None, ledger: LedgerOpt = None) -> None:
    """Live capacity of every cluster: free/total CPU, GPU and memory, the age of each reading, and health.

    A cluster that did not answer as asked is shown with the class of its failure (auth refused, unreachable,
    refused, error) and, below the table, what happened and what to do. Exits 0 when at least one cluster answered
    (the fleet was shown, and can take jobs); when none did, 6 if every one refused the credentials, else 4.
    """
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    with _told_by_the_table():
        snapshots = fleet.snapshots(max_age=0)
    table = Table(title="rayfleet clusters")
    for column in (
        "cluster",
        "health",
        "age",
        "nodes",
        "CPU free/total",
        "GPU free/total",
        "memory free/total",
        "labels",
        "managed",
    ):
        table.add_column(column)
    managed = fleet.managed
    marks = {name: [m for m in kept if _in_force(m, snapshots.get(name))] for name, kept in _run(fleet.marks).items()}
    failed = []
    for cluster in fleet.clusters:
        snap = snapshots[cluster.name]
        marked = "".join(f", [yellow]{MARK_WORDS.get(m.kind, m.kind)}[/]" for m in marks.get(cluster.name, []))
        labels = ",".join(f"{k}={v}" for k, v in sorted(cluster.labels.items()))
        record = managed.get(cluster.name)
        deadline = record.idle_deadline if record else None
        owner = "-" if record is None else f"{record.provisioner}/{record.template}"
        if deadline is not None:
            owner += f", idle deletion in {max(0.0, deadline - time.time()):.0f}s"
        if not snap.healthy:
            failed.append(snap)
            table.add_row(cluster.name, f"[red]{health_label(snap)}[/]{marked}", f"{snap.age:.1f}s", "-", "-", "-",
                          "-", labels, owner)  # fmt: skip
            continue
        table.add_row(
            cluster.name,
            f"[green]ok[/]{marked}",
            f"{snap.age:.1f}s",
            str(len(snap.node_ids)),
            f"{snap.sum('CPU', 'free'):g}/{snap.sum('CPU'):g}",
            f"{snap.sum('GPU', 'free'):g}/{snap.sum('GPU'):g}",
            f"{format_bytes(snap.sum('memory', 'free'))}/{format_bytes(snap.sum('memory'))}",
            labels,
            owner,
        )
    out.print(table)
    for mark in (m for cluster_marks in marks.values() for m in cluster_marks):
        why = f": {mark.reason}" if mark.reason else ""
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mark.at))
        out.print(f"{mark.cluster}: {MARK_WORDS.get(mark.kind, mark.kind)} by {mark.by} at {at}{why}", highlight=False)
    for snap in failed:
        out.print(f"[red]{snap.error}[/]", highlight=False)
        if snap.error_hint:
            out.print(f"  [yellow]To fix:[/] {snap.error_hint}", highlight=False)
    fleet.close()
    if failed and len(failed) == len(fleet.clusters):
        _none_answered(failed)


# how `clusters` names each mark (`Fleet.cordon`, `drain`, and a python that could not run the launcher)
MARK_WORDS = MappingProxyType({CORDON: "cordoned", DRAIN: "draining", LAUNCHER_UNFIT: "no launcher (python lacks Ray)"})


def _in_force(mark: ClusterMark, snap: ClusterSnapshot | None) -> bool:
    """A cordon or drain holds until lifted; a launcher mark until the cluster restarts or it is rechecked."""
    if mark.kind != LAUNCHER_UNFIT:
        return True
    session = snap.session_name if snap is not None and snap.healthy else None
    return launcher_mark_holds(mark.at, mark.session, time.time(), session)


def health_label(snap: ClusterSnapshot) -> str:
    """The class of a cluster's failed reading, short: "auth refused (HTTP 401)", "unreachable", "refused (HTTP
    404)", "error (HTTP 500)"."""
    label = {AUTH: "auth refused"}.get(snap.error_kind or "", snap.error_kind or "unreachable")
    return f"{label} (HTTP {snap.error_status})" if snap.error_status else label


def _none_answered(failed: list[ClusterSnapshot]) -> None:
    """Exit non-zero when no cluster answered: the table was shown, but the fleet can take no job. 6 when every
    cluster refused the credentials (a setting to fix), else 4."""
    which = "the fleet's one cluster" if len(failed) == 1 else f"all {len(failed)} clusters of the fleet"
    if all(s.error_kind == AUTH for s in failed):
        error: ClusterError = AuthenticationError(
            f"{which} refused rayfleet's credentials", "set the headers of each, as said above", cluster="*"
        )
        _fail(error, EXIT_AUTH)
    _fail(ClusterError(f"no cluster answered ({which})", "see what each needs, above", cluster="*"), EXIT_CLUSTER)


@contextlib.contextmanager
def _told_by_the_table() -> Iterator[None]:
    """Keep the prober's warnings about failed clusters off stderr while ``clusters`` reads them: its table and the
    lines below it say the same, with the hint (``-v`` shows them still)."""
    logger = logging.getLogger("rayfleet.capacity")
    if logger.getEffectiveLevel() <= logging.INFO:
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    cpu: CpuOpt = 0.0,
    gpu: GpuOpt = 0.0,
    accelerator: AccOpt = None,
    memory: MemOpt = None,
    resource: ResOpt = None,
    label: LabelOpt = None,
    cluster: ClusterOpt = None,
    policy: PolicyOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end and print its logs")] = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="When nothing can take it now, queue it (placed by 'rayfleet dispatch')")
    ] = False,
    queue_timeout: Annotated[
        float | None, typer.Option("--queue-timeout", help="With --queue: fail it after this many seconds queued")
    ] = None,
    priority: Annotated[int, typer.Option(help="Queued jobs with a higher priority are placed first")] = 0,
    owner: Annotated[str | None, typer.Option(help="Owner for fair share (default: $RAYFLEET_OWNER or user)")] = None,
    max_retries: Annotated[int, typer.Option(help="Run it again this many times if its cluster loses it")] = 0,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop it and mark it FAILED after this many seconds running")
    ] = None,
    start_timeout: Annotated[
        float | None, typer.Option(help="Seconds it may take to reserve its resources before it moves elsewhere")
    ] = None,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Submit a command: rayfleet submit --cpu 1 -- python train.py --epochs 3"""
    command = list(ctx.args)
    # one argument is a shell command as written; several are quoted so the shell sees them as they were given
    entrypoint = command[0] if len(command) == 1 else shlex.join(command)
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    handle = _run(
        lambda: fleet.submit(
            entrypoint,
            _resources(cpu, gpu, accelerator, memory, resource),
            labels=_pairs(label, "label"),
            cluster=cluster,
            policy=policy,
            wait=(queue_timeout if queue_timeout is not None else True) if queue else False,
            priority=priority,
            owner=owner,
            max_retries=max_retries,
            start_timeout_s=start_timeout,
            timeout_s=timeout,
        )
    )
    if handle.cluster is None:
        out.print(f"{handle.id} queued: {handle.record.reason}", highlight=False)
    else:
        out.print(f"{handle.id} submitted to [bold]{handle.cluster}[/] ({handle.submission_id})", highlight=False)
    if wait:
        state = _run(lambda: handle.wait())
        out.print(_run(handle.logs), end="", highlight=False, markup=False)
        out.print(f"{handle.id}: {state.value}")
        if state.value != "SUCCEEDED":
            raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
def dispatch(
    interval: Annotated[float, typer.Option(help="Seconds between turns")] = 5.0,
    once: Annotated[bool, typer.Option("--once", help="One turn, then exit")] = False,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Run the dispatch loop: follow every job (failover, cluster loss, retries), place queued jobs, delete idle
    managed clusters."""
    if not interval > 0 or interval == float("inf"):  # 0 or less would spin; NaN compares False
        _fail(InvalidRequestError(f"--interval {interval:g} is not a positive number of seconds", "give e.g. 5"), 2)
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    if once:
        before = {j.id: j for j in fleet.ledger.jobs(limit=1_000_000, active_only=True)}
        deleted = _run(fleet.tick)
        now = {j.id: j for j in fleet.ledger.jobs(limit=1_000_000)}  # one read, as for `before`
        after = {job_id: now[job_id] for job_id in before}
        for line in describe_turn(before, after, deleted):
            out.print(line, highlight=False)
    else:
        out.print(f"dispatching every {interval:g} s; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            fleet.run(interval, background=False)
    fleet.close()


MAX_TURN_LINES = 20


def describe_turn(before: Mapping[str, JobRecord], after: Mapping[str, JobRecord], deleted: list[str]) -> list[str]:
    """What one turn of the loop did, from the ledger before and after it: how many jobs it looked at, what changed
    for each (placed, placed again elsewhere, started, ended, queued again), and the clusters it deleted."""
    changes = [line for job_id, old in before.items() if (line := _change(old, after[job_id]))]
    placed = sum(1 for j in before.values() if len(after[j.id].attempts) > len(j.attempts))
    ended = sum(1 for j in before.values() if after[j.id].state.is_terminal())
    queued = sum(1 for j in before.values() if j.state in (JobState.QUEUED, JobState.PROVISIONING))
    if before:
        head = (
            f"one turn: {len(before) - queued} active and {queued} queued job(s) looked at; "
            f"{len(changes)} changed ({placed} placed, {ended} ended)"
        )
    else:
        head = "one turn: no active or queued job to follow"
    lines = [head]
    lines += [f"  {line}" for line in changes[:MAX_TURN_LINES]]
    if len(changes) > MAX_TURN_LINES:
        lines.append(f"  … {len(changes) - MAX_TURN_LINES} more: see 'rayfleet jobs'")
    lines.append(
        f"deleted idle managed clusters: {', '.join(deleted)}" if deleted else "no idle managed cluster deleted"
    )
    return lines


def _change(old: JobRecord, new: JobRecord) -> str | None:
    """One job's change in a turn, as a line (None when it did not change)."""
    where = new.last_attempt.cluster if new.last_attempt else None
    if len(new.attempts) > len(old.attempts):
        verb = "placed on" if not old.attempts else f"placed again (attempt {len(new.attempts)}) on"
        return f"{new.id}: {old.state.value} -> {new.state.value}, {verb} {where}"
    if new.state is old.state:
        return None
    reason = f": {shorten(new.reason, 120)}" if new.reason and new.state.is_terminal() else ""
    return f"{new.id}: {old.state.value} -> {new.state.value}" + (f" on {where}" if where else "") + reason


@app.command()
def gc(
    everything: Annotated[bool, typer.Option("--all", help="Delete every managed cluster this fleet owns")] = False,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Delete leftover clusters this fleet created: idle past their deadline, or no longer known to the ledger."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    deleted = _run(lambda: fleet.gc(everything=everything))
    out.print(f"deleted: {', '.join(deleted) or 'nothing'}")
    fleet.close()


@app.command()
def explain(
    cpu: CpuOpt = 0.0,
    gpu: GpuOpt = 0.0,
    accelerator: AccOpt = None,
    memory: MemOpt = None,
    resource: ResOpt = None,
    label: LabelOpt = None,
    cluster: ClusterOpt = None,
    policy: PolicyOpt = None,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Where a job with these resources would go now, and why each other cluster would not take it."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    request = _run(lambda: _resources(cpu, gpu, accelerator, memory, resource))
    decision = _run(lambda: fleet.explain(request, labels=_pairs(label, "label"), cluster=cluster, policy=policy))
    out.print(render_decision(decision, request, policy or fleet.config.policy))
    if decision.chosen is None and cluster is None:
        room, made = _run(lambda: fleet.plan(request, labels=_pairs(label, "label")))
        if room or made:
            out.print(render_plan(room, made))
    fleet.close()


def render_plan(room: list[Any], made: list[Any]) -> Table:
    """Headroom on managed clusters, then new clusters from templates: what rayfleet would do when nothing fits."""
    table = Table(title="nothing fits now: autoscaler headroom, then a new cluster")
    for column in ("option", "usable", "reason"):
        table.add_column(column)
    for h in room:
        table.add_row(f"headroom on {h.cluster}", "yes" if h.fits else "[red]no[/]", h.reason)
    for c in made:
        table.add_row(f"new {c.provisioner}/{c.template}", "yes" if c.fits else "[red]no[/]", c.reason)
    return table


# what the second number of a score measures, per policy (rayfleet/placement/policies.py); lower ranks first
NODE_SCORE_MEANING = MappingProxyType(
    {
        "binpack": "the node's capacity left free after placing, as fractions of each resource, summed (a "
        "tighter fit is lower; +4 on a GPU node for a job without GPUs)",
        "cost": "as binpack: the node's capacity left free after placing, as fractions, summed (+4 on a GPU node "
        "for a job without GPUs)",
        "spread": "minus the mean fraction of the node left free after placing (more room left is lower)",
        "fragmentation": "a rank that packs three keys: the packing plan's choice first, then how much placing it "
        "there grows the fragmentation for the typical request mix, then (the fraction) fuller nodes first",
    }
)


def render_decision(decision: Decision, request: Resources, policy: str = "binpack") -> Table:
    """A table of every cluster: chosen or not, score, node, reason; the caption says what the score's two numbers
    are for ``policy``."""
    first = "the price per hour of the request there" if policy == "cost" else "0 (only policy cost prices clusters)"
    table = Table(
        title=f"placement of {request.describe()} (policy {policy})",
        caption_justify="left",
        caption=(
            f"score = cluster/node, lower first: the cluster part is {first}; the node part is "
            f"{NODE_SCORE_MEANING.get(policy, 'the policy node score')}"
        ),
    )
    for column in ("cluster", "fits", "score (cluster/node)", "node", "model", "reason"):
        table.add_column(column)
    for option in decision.options:
        chosen = option is decision.chosen
        table.add_row(
            f"[bold green]{option.cluster} ←[/]" if chosen else option.cluster,
            "yes" if option.fits else "[red]no[/]",
            f"{option.score[0]:g}/{option.score[1]:.3f}" if option.score else "-",
            (option.node_id or "-")[:12],
            option.accelerator or "-",
            option.reason or ("chosen" if chosen else "fits, ranked lower"),
        )
    return table
