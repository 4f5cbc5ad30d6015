"""What every command shares: the command tables, the consoles, the options, and each error class's exit code."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from rayfleet.config import FLEET_FILE_ENV
from rayfleet.errors import (
    AuthenticationError,
    ClusterError,
    ConfigError,
    InvalidRequestError,
    NoCapacityError,
    RayfleetError,
)
from rayfleet.fleet import Fleet
from rayfleet.resources import Resources

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_CAPACITY = 3
EXIT_CLUSTER = 4
EXIT_JOB_FAILED = 5
EXIT_AUTH = 6

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
PolicyOpt = Annotated[str | None, typer.Option("--policy", help="binpack, spread, cost or fragmentation")]


def _run(fn: Callable[[], T]) -> T:
    """Call into the library; turn rayfleet's errors into a message with its hint and a distinct exit code."""
    try:
        return fn()
    except NoCapacityError as e:
        _fail(e, EXIT_NO_CAPACITY)
    except AuthenticationError as e:
        _fail(e, EXIT_AUTH)
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
