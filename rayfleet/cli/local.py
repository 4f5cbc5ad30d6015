"""`rayfleet local ...`: an embedded local fleet of real Ray clusters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from rayfleet.cli.common import (
    EXIT_ERROR,
    _run,
    local_app,
    out,
)
from rayfleet.errors import ConfigError, InvalidRequestError

if TYPE_CHECKING:
    from rayfleet.provisioning.local import LocalClusterSpec

T = TypeVar("T")

# ----- local fleet ------------------------------------------------------------------------------------------------

NameOpt = Annotated[str, typer.Option("--name", help="The local fleet's name")]
CLUSTER_EXAMPLE = "gpu:cpus=2,gpus=2,accelerator=A100,memory=2GiB"
WORKER_EXAMPLE = "gpu:cpus=1,gpus=1,accelerator=T4,memory=1GiB,count=2"
LABEL_EXAMPLE = "gpu:zone=a"
_CLUSTER_KEYS = ("cpus", "gpus", "accelerator", "memory")
_WORKER_KEYS = ("cpus", "gpus", "accelerator", "memory", "count")
_NUMBERS = ("cpus", "gpus", "count")


def _number(key: str, text: str) -> Any:
    """A flag's value as the number its key takes (left as text if it is none: the check names it as given)."""
    try:
        return float(text) if key == "cpus" else int(text)
    except ValueError:
        return text


def _fields(option: str, text: str, allowed: Sequence[str], example: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}). Cluster names hold no ':' and values no ','."""
    name, _, rest = text.partition(":")
    if not name:
        raise InvalidRequestError(f"{option} {text!r} names no cluster", f"write it like {option} {example}")
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise InvalidRequestError(
                f"{option} {text!r}: {item!r} is not one of {', '.join(k + '=' for k in allowed)}",
                f"write it like {option} {example}",
            )
        if key in fields:
            raise InvalidRequestError(f"{option} {text!r} gives {key}= twice", f"write it like {option} {example}")
        fields[key] = _number(key, value) if key in _NUMBERS else value
    return name, fields


def _checked(fn: Callable[[], T], option: str, example: str) -> T:
    """A flag's values checked as a local fleet file's would be; its problems reported as a bad option."""
    try:
        return fn()
    except ConfigError as e:
        raise InvalidRequestError(e.message, f"write it like {option} {example} (see docs/local.md)") from None


def _spec(text: str) -> LocalClusterSpec:
    """``--cluster name:cpus=2,gpus=2,accelerator=A100,memory=2GiB`` -> LocalClusterSpec."""
    from rayfleet.provisioning.local import parse_local_cluster

    name, fields = _fields("--cluster", text, _CLUSTER_KEYS, CLUSTER_EXAMPLE)
    return _checked(
        lambda: parse_local_cluster({"name": name, **fields}, source=f"--cluster {text}"), "--cluster", CLUSTER_EXAMPLE
    )


def _named(specs: list[LocalClusterSpec], name: str, option: str, text: str, example: str) -> int:
    for i, spec in enumerate(specs):
        if spec.name == name:
            return i
    raise InvalidRequestError(
        f"{option} {text!r}: there is no cluster {name!r} (the clusters are {', '.join(s.name for s in specs)})",
        f"name a cluster given by --cluster or the fleet file, e.g. {option} {example}",
    )


def _with_label(specs: list[LocalClusterSpec], text: str) -> None:
    """``--label name:KEY=VALUE``: one more label of cluster ``name`` (the value may hold '=' and ':')."""
    name, _, pair = text.partition(":")
    key, sep, value = pair.partition("=")
    if not name or not key or not sep or not value:
        raise InvalidRequestError(f"--label {text!r} is not NAME:KEY=VALUE", f"write it like --label {LABEL_EXAMPLE}")
    i = _named(specs, name, "--label", text, LABEL_EXAMPLE)
    specs[i] = dataclasses.replace(specs[i], labels={**specs[i].labels, key: value})


def _with_workers(specs: list[LocalClusterSpec], text: str) -> None:
    """``--worker name:cpus=1,...,count=2``: more worker nodes of cluster ``name``."""
    from rayfleet.provisioning.local import parse_local_node

    name, fields = _fields("--worker", text, _WORKER_KEYS, WORKER_EXAMPLE)
    nodes = _checked(lambda: parse_local_node(fields, source=f"--worker {text}"), "--worker", WORKER_EXAMPLE)
    i = _named(specs, name, "--worker", text, WORKER_EXAMPLE)
    if specs[i].autoscaling is not None:
        raise InvalidRequestError(
            f"--worker {text!r}: cluster {name!r} autoscales, so it has no fixed worker nodes",
            "give its worker types in the fleet file (autoscaling.worker_types), or drop --worker",
        )
    specs[i] = dataclasses.replace(specs[i], workers=(*specs[i].workers, *nodes))


def _specs(
    file: Path | None, clusters: Sequence[str], labels: Sequence[str], workers: Sequence[str]
) -> list[LocalClusterSpec]:
    """The clusters of the file and of --cluster (the demo fleet if neither), then --label and --worker applied."""
    from rayfleet.provisioning.local import DEMO_FLEET, load_local_fleet

    specs = [*(load_local_fleet(file) if file else []), *(_spec(c) for c in clusters)]
    names = [s.name for s in specs]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidRequestError(
            f"local cluster {twice[0]!r} is given more than once (by --cluster and the fleet file)",
            "give every local cluster its own name",
        )
    specs = specs or list(DEMO_FLEET)
    for text in labels:
        _with_label(specs, text)
    for text in workers:
        _with_workers(specs, text)
    return specs


@local_app.command("up")
def local_up(
    name: NameOpt = "default",
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", help="Local fleet file (YAML: clusters with cpus, gpus, labels, workers...; docs/local.md)"
        ),
    ] = None,
    cluster: Annotated[
        list[str] | None,
        typer.Option("--cluster", help=f"A cluster NAME:cpus=,gpus=,accelerator=,memory=, e.g. {CLUSTER_EXAMPLE}"),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help=f"A label NAME:KEY=VALUE of cluster NAME, e.g. {LABEL_EXAMPLE}")
    ] = None,
    worker: Annotated[
        list[str] | None,
        typer.Option(
            "--worker", help=f"Worker nodes NAME:cpus=,gpus=,accelerator=,memory=,count= e.g. {WORKER_EXAMPLE}"
        ),
    ] = None,
    port_base: Annotated[
        int | None, typer.Option("--port-base", help="First port (default: free blocks from 24000)")
    ] = None,
) -> None:
    """Start real Ray clusters on this machine (default: 'cpu' with 2 CPUs, 'gpu' with 2 CPUs + 2 A100s).

    They keep running after this command; 'rayfleet local down' stops them.
    """
    from rayfleet.provisioning.local import LocalFleet

    specs = _run(lambda: _specs(file, cluster or [], label or [], worker or []))
    running = _run(lambda: LocalFleet(specs, name=name, port_base=port_base).up())
    if running.leftovers_stopped:
        out.print(f"stopped {running.leftovers_stopped} processes left by the previous run of local fleet {name!r}")
    for c in running.running:
        labels = ",".join(f"{k}={v}" for k, v in sorted(c.labels.items()))
        nodes = f", {len(c.workers)} worker nodes" if c.workers else ""
        out.print(f"{c.name}: {c.address} (pid {c.pid}{nodes}) labels {labels}", highlight=False)
    out.print(f"fleet file: {running.fleet_file}", highlight=False)
    out.print(f"state directory: {running.dir}", highlight=False)


@local_app.command("down")
def local_down(name: NameOpt = "default") -> None:
    """Stop the local fleet's clusters: every process of theirs (orphans of a crashed head too), then check their
    ports are free."""
    from rayfleet.provisioning.local import LocalFleet

    fleet = LocalFleet(name=name)
    stopped = _run(fleet.down)
    if stopped:
        out.print(f"stopped: {', '.join(stopped)}", highlight=False)
    else:
        out.print(f"stopped: nothing was running (no state file in {fleet.dir})", highlight=False)


@local_app.command("status")
def local_status(name: NameOpt = "default") -> None:
    """Whether each local cluster's process lives and its dashboard answers; where the fleet keeps its state."""
    from rayfleet.provisioning.local import LocalFleet

    fleet = LocalFleet(name=name)
    rows = _run(fleet.status)
    out.print(f"state directory: {fleet.dir}", highlight=False)
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
