"""``rayfleet ...``: parse flags, call the `Fleet` facade, render with rich; each error class has its exit code."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from rayfleet.config import FLEET_FILE_ENV
from rayfleet.errors import (
    ClusterError,
    ConfigError,
    InvalidRequestError,
    NoCapacityError,
    RayfleetError,
)
from rayfleet.fleet import Fleet
from rayfleet.placement import Decision
from rayfleet.resources import Resources, format_bytes
from rayfleet.states import JobState

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_CAPACITY = 3
EXIT_CLUSTER = 4
EXIT_JOB_FAILED = 5

app = typer.Typer(
    help="Dispatch Ray jobs across a fleet of Ray clusters.", no_args_is_help=True, pretty_exceptions_enable=False
)
local_app = typer.Typer(help="An embedded local fleet of real Ray clusters on this machine.", no_args_is_help=True)
app.add_typer(local_app, name="local")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

FleetOpt = Annotated[
    Path | None,
    typer.Option("--fleet", "-f", help=f"Fleet YAML file (default: ${FLEET_FILE_ENV}, else the local fleet)"),
]
LedgerOpt = Annotated[Path | None, typer.Option("--ledger", help="Ledger file (default: $RAYFLEET_LEDGER or data dir)")]
CpuOpt = Annotated[float, typer.Option("--cpu", help="CPUs per node")]
GpuOpt = Annotated[float, typer.Option("--gpu", help="GPUs per node")]
AccOpt = Annotated[str | None, typer.Option("--accelerator", help="Allowed GPU models, e.g. A100,H100")]
MemOpt = Annotated[str | None, typer.Option("--memory", help="Memory, e.g. 4GiB")]
ResOpt = Annotated[list[str] | None, typer.Option("--resource", help="Custom resource KEY=AMOUNT (repeatable)")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="Cluster label KEY=VALUE to match (repeatable)")]
ClusterOpt = Annotated[str | None, typer.Option("--cluster", help="Pin to this cluster")]
PolicyOpt = Annotated[str | None, typer.Option("--policy", help="binpack, spread or cost")]


def main() -> None:
    """The console script's entry point."""
    app()


def _run(fn: Callable[[], T]) -> T:
    """Call into the library; turn rayfleet's errors into a message with its hint and a distinct exit code."""
    try:
        return fn()
    except NoCapacityError as e:
        _fail(e, EXIT_NO_CAPACITY)
    except ClusterError as e:
        _fail(e, EXIT_CLUSTER)
    except (InvalidRequestError, ConfigError) as e:
        _fail(e, EXIT_USAGE)
    except RayfleetError as e:
        _fail(e, EXIT_ERROR)
    raise AssertionError("unreachable")  # pragma: no cover


def _fail(error: RayfleetError, code: int) -> None:
    err.print(f"[bold red]error:[/] {error.message}", highlight=False)
    if error.hint:
        err.print(f"[yellow]To fix:[/] {error.hint}", highlight=False)
    raise typer.Exit(code)


def _fleet(fleet_file: Path | None, ledger: Path | None) -> Fleet:
    from rayfleet.provisioning.local import state_dir

    path = fleet_file or (Path(os.environ[FLEET_FILE_ENV]) if os.environ.get(FLEET_FILE_ENV) else None)
    if path is None:
        local = state_dir("default") / "fleet.yaml"
        if not local.exists():
            raise ConfigError(
                "no fleet given and no local fleet is up",
                f"pass --fleet FILE, set ${FLEET_FILE_ENV}, or start one with 'rayfleet local up'",
            )
        path = local
    return Fleet.from_file(path, ledger=ledger)


def _pairs(items: list[str] | None, what: str, number: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"{what} {item!r} is not KEY=VALUE", f"write it like --{what} key=value")
        if number:
            try:
                out[key] = float(value)
            except ValueError:
                raise InvalidRequestError(f"{what} {item!r}: {value!r} is not a number", "give e.g. TPU=4") from None
        else:
            out[key] = value
    return out


def _resources(
    cpu: float, gpu: float, accelerator: str | None, memory: str | None, resource: list[str] | None
) -> Resources:
    return Resources(
        cpu=cpu, gpu=gpu, memory=memory or 0, accelerators=accelerator, custom=_pairs(resource, "resource", True)
    )


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


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    refresh: Annotated[bool, typer.Option(help="Ask the clusters for the state of live jobs")] = True,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Jobs in the ledger, newest first."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    table = Table(title="rayfleet jobs")
    for column in ("job", "state", "cluster", "attempts", "resources", "entrypoint"):
        table.add_column(column)
    for handle in fleet.jobs(limit=limit):
        if refresh and not handle.record.state.is_terminal():
            _run(handle.status)
        record = handle.record
        waiting = record.state is JobState.PROVISIONING and record.awaits
        table.add_row(
            record.id,
            record.state.value,
            f"{record.awaits} (being created)" if waiting else handle.cluster or "-",
            str(len(record.attempts)),
            record.resources.describe(),
            record.entrypoint[:60],
        )
    out.print(table)
    fleet.close()


@app.command()
def logs(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-F", help="Stream until the job ends")] = False,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """The output of a job (its newest attempt)."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    handle = _run(lambda: fleet.job(job_id))
    if follow:
        for chunk in _run(handle.tail):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(_run(handle.logs))
    fleet.close()


@app.command()
def stop(job_id: str, fleet_file: FleetOpt = None, ledger: LedgerOpt = None) -> None:
    """Ask the job's cluster to stop it."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    handle = _run(lambda: fleet.job(job_id))
    accepted = _run(handle.stop)
    out.print(
        f"{job_id}: stop {'requested' if accepted else 'not needed (already ended)'}; state {handle.record.state.value}"
    )
    fleet.close()


# ----- local fleet ------------------------------------------------------------------------------------------------

NameOpt = Annotated[str, typer.Option("--name", help="The local fleet's name")]


def _spec(text: str) -> Any:
    """``name:cpus=2,gpus=2,accelerator=A100,memory=2GiB`` -> LocalClusterSpec."""
    from rayfleet.provisioning.local import LocalClusterSpec

    name, _, rest = text.partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("cpus", "gpus", "accelerator", "memory"):
            raise InvalidRequestError(
                f"local cluster {text!r}: {item!r} is not one of cpus=, gpus=, accelerator=, memory=",
                "write e.g. --cluster gpu:cpus=2,gpus=2,accelerator=A100,memory=2GiB",
            )
        try:
            fields[key] = float(value) if key == "cpus" else int(value) if key == "gpus" else value
        except ValueError:
            raise InvalidRequestError(
                f"local cluster {text!r}: {key}={value!r} is not a {'number' if key == 'cpus' else 'whole number'}",
                "write e.g. --cluster gpu:cpus=2,gpus=2,accelerator=A100,memory=2GiB",
            ) from None
    return LocalClusterSpec(name, **fields)


@local_app.command("up")
def local_up(
    name: NameOpt = "default",
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", help="NAME:cpus=2,gpus=0,accelerator=A100,memory=2GiB (repeatable)")
    ] = None,
    port_base: Annotated[
        int | None, typer.Option("--port-base", help="First port (default: free blocks from 24000)")
    ] = None,
) -> None:
    """Start real Ray clusters on this machine (default: 'cpu' with 2 CPUs, 'gpu' with 2 CPUs + 2 A100s)."""
    from rayfleet.provisioning.local import DEMO_FLEET, LocalFleet

    specs = _run(lambda: [_spec(c) for c in cluster]) if cluster else DEMO_FLEET
    running = _run(lambda: LocalFleet(specs, name=name, port_base=port_base).up())
    for c in running.running:
        out.print(f"{c.name}: {c.address} (pid {c.pid})")
    out.print(f"fleet file: {running.fleet_file}")


@local_app.command("down")
def local_down(name: NameOpt = "default") -> None:
    """Stop the local fleet's clusters (only the processes it started)."""
    from rayfleet.provisioning.local import LocalFleet

    stopped = _run(lambda: LocalFleet(name=name).down())
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@local_app.command("status")
def local_status(name: NameOpt = "default") -> None:
    """Whether each local cluster's process lives and its dashboard answers."""
    from rayfleet.provisioning.local import LocalFleet

    rows = _run(lambda: LocalFleet(name=name).status())
    if not rows:
        out.print(f"local fleet {name!r} is not up")
        raise typer.Exit(EXIT_ERROR)
    table = Table(title=f"local fleet {name}")
    for column in ("cluster", "address", "pid", "process", "dashboard"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["address"],
            str(row["pid"]),
            "up" if row["alive"] else "[red]gone[/]",
            "answers" if row["answering"] else "[red]silent[/]",
        )
    out.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
