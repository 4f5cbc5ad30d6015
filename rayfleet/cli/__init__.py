"""``rayfleet ...``: parse flags, call the `Fleet` facade, render with rich; each error class has its exit code.

The commands live in modules by subject (`fleet`, `jobs`, `local`), registered on the one `app` when imported here.
"""

from __future__ import annotations

from rayfleet.cli import fleet, jobs, local  # noqa: F401  (registers the commands)
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
    "main",
    "render_decision",
    "render_plan",
]


def main() -> None:
    """The console script's entry point."""
    app()
