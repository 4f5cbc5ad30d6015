"""Fleet commands: clusters, submit, dispatch, gc, explain."""

from __future__ import annotations

import contextlib
import shlex
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from rayfleet.cli.common import (
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
from rayfleet.errors import InvalidRequestError
from rayfleet.placement import Decision
from rayfleet.resources import Resources, format_bytes

# ----- fleet commands ---------------------------------------------------------------------------------------------


@app.command()
def clusters(fleet_file: FleetOpt = None, ledger: LedgerOpt = None) -> None:
    """Live capacity of every cluster: free/total CPU, GPU and memory, the age of each reading, and health."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
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
    for cluster in fleet.clusters:
        snap = snapshots[cluster.name]
        labels = ",".join(f"{k}={v}" for k, v in sorted(cluster.labels.items()))
        record = managed.get(cluster.name)
        deadline = record.idle_deadline if record else None
        owner = "-" if record is None else f"{record.provisioner}/{record.template}"
        if deadline is not None:
            owner += f", idle deletion in {max(0.0, deadline - time.time()):.0f}s"
        if not snap.healthy:
            table.add_row(
                cluster.name,
                f"[red]unreachable[/] ({snap.error})",
                f"{snap.age:.1f}s",
                "-",
                "-",
                "-",
                "-",
                labels,
                owner,
            )
            continue
        table.add_row(
            cluster.name,
            "[green]ok[/]",
            f"{snap.age:.1f}s",
            str(len(snap.node_ids)),
            f"{snap.sum('CPU', 'free'):g}/{snap.sum('CPU'):g}",
            f"{snap.sum('GPU', 'free'):g}/{snap.sum('GPU'):g}",
            f"{format_bytes(snap.sum('memory', 'free'))}/{format_bytes(snap.sum('memory'))}",
            labels,
            owner,
        )
    out.print(table)
    fleet.close()


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
        deleted = _run(fleet.tick)
        out.print(f"deleted: {', '.join(deleted) or 'nothing'}")
    else:
        out.print(f"dispatching every {interval:g} s; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            fleet.run(interval, background=False)
    fleet.close()


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
    out.print(render_decision(decision, request))
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


def render_decision(decision: Decision, request: Resources) -> Table:
    """A table of every cluster: chosen or not, score, node, reason."""
    table = Table(title=f"placement of {request.describe()}")
    for column in ("cluster", "fits", "score", "node", "model", "reason"):
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
