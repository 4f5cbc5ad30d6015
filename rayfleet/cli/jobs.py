"""Job commands: jobs, logs, stop."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from rayfleet.cli.common import (
    FleetOpt,
    LedgerOpt,
    _fleet,
    _run,
    app,
    out,
)
from rayfleet.states import JobState


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
