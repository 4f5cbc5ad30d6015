"""``rayfleet ...``: parse flags, call the `Fleet` facade, render with rich; each error class has its exit code.

The commands live in modules by subject (`fleet`, `jobs`, `local`), registered on the one `app` when imported here.
Logging is configured here, for the CLI's process only (the library never configures the root logger): warnings and
errors by default, ``-v`` adds rayfleet's info (Ray's client lines among them), ``-vv`` its debug, ``-q`` errors only.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated

import typer

from rayfleet.cli import fleet, jobs, local, marks  # noqa: F401  (registers the commands)
from rayfleet.cli.common import (
    EXIT_AUTH,
    EXIT_CLUSTER,
    EXIT_ERROR,
    EXIT_JOB_FAILED,
    EXIT_NO_CAPACITY,
    EXIT_USAGE,
    app,
)
from rayfleet.cli.fleet import render_decision, render_plan

__all__ = [
    "EXIT_AUTH",
    "EXIT_CLUSTER",
    "EXIT_ERROR",
    "EXIT_JOB_FAILED",
    "EXIT_NO_CAPACITY",
    "EXIT_USAGE",
    "app",
    "configure_logging",
    "main",
    "render_decision",
    "render_plan",
]


class _Handler(logging.StreamHandler):
    """To whatever ``sys.stderr`` is when a record is emitted (a test's runner swaps it), marked as the CLI's."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _Formatter(logging.Formatter):
    """``warning: message`` (the level in lower case, as the CLI's own ``error:`` lines); with the logger's name
    when verbose."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}"


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """The CLI process's logging: one handler on the root logger, on stderr (replacing one set earlier), at WARNING
    (ERROR with ``quiet``); rayfleet's loggers (Ray's client records are among them, as ``rayfleet.ray``) at INFO
    with ``verbose`` 1, DEBUG with 2 or more. Python warnings go through it too, as one line each."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(_Formatter("[%(name)s] %(message)s" if verbose else "%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    ours = {0: logging.NOTSET, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.getLogger("rayfleet").setLevel(logging.NOTSET if quiet else ours)
    logging.captureWarnings(True)
    warnings.formatwarning = _one_line_warning


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """A Python warning as one line, without the source file and line that `warnings` shows by default."""
    return f"{message} ({category.__name__})"


@app.callback()
def _options(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Say more: -v info (Ray's client lines too), -vv debug")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors only: no warnings")] = False,
) -> None:
    """Dispatch Ray jobs across a fleet of Ray clusters."""
    if verbose and quiet:
        raise typer.BadParameter("give -v or -q, not both", param_hint="'--verbose' / '--quiet'")
    configure_logging(verbose, quiet)


def main() -> None:
    """The console script's entry point."""
    app()
