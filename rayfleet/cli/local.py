"""`rayfleet local ...`: an embedded local fleet of real Ray clusters."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from rayfleet.cli.common import (
    EXIT_ERROR,
    _run,
    local_app,
    out,
)
from rayfleet.errors import InvalidRequestError

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
