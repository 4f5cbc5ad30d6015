"""Marks on clusters: cordon, uncordon, drain (recorded in the ledger, honoured by every dispatcher sharing it)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from rayfleet.cli.common import EXIT_ERROR, FleetOpt, LedgerOpt, _fleet, _run, app, err, out

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (shown by 'rayfleet explain' and 'rayfleet clusters')")]


@app.command()
def cordon(cluster: str, reason: ReasonOpt = "", fleet_file: FleetOpt = None, ledger: LedgerOpt = None) -> None:
    """No new placements on CLUSTER; the jobs running there go on. Undo with 'rayfleet uncordon'."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    _run(lambda: fleet.cordon(cluster, reason))
    running = len(_run(lambda: fleet.active_on(cluster)))
    out.print(f"{cluster}: cordoned; {running} job(s) still running there", highlight=False)
    fleet.close()


@app.command()
def uncordon(cluster: str, fleet_file: FleetOpt = None, ledger: LedgerOpt = None) -> None:
    """Let placements onto CLUSTER again (ends a cordon or a drain)."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    was = _run(lambda: fleet.uncordon(cluster))
    out.print(f"{cluster}: {'uncordoned' if was else 'was not cordoned'}", highlight=False)
    fleet.close()


@app.command()
def drain(
    cluster: str,
    reason: ReasonOpt = "",
    move: Annotated[
        bool, typer.Option("--move", help="Move the jobs that may be retried (max_retries left) elsewhere now")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait until no job runs there")] = True,
    timeout: Annotated[float, typer.Option(help="With --wait: give up waiting after this many seconds")] = 600.0,
    fleet_file: FleetOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Cordon CLUSTER, then wait for its jobs to end (with --move, move those that may be retried first).

    Exits 0 once nothing runs there, 1 if jobs are still running when --timeout passes (the cluster stays draining)."""
    fleet = _run(lambda: _fleet(fleet_file, ledger))
    moved = _run(lambda: fleet.drain(cluster, reason, move=move))
    out.print(f"{cluster}: draining" + (f"; moved {', '.join(moved)}" if moved else ""), highlight=False)
    deadline = time.monotonic() + timeout
    left = _run(lambda: fleet.active_on(cluster))
    while wait and left and time.monotonic() < deadline:
        for handle in left:
            _run(handle.status)  # follows each job as the loop would: a job that ended is recorded so
        left = _run(lambda: fleet.active_on(cluster))
        if left:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    fleet.close()
    if left:
        ids = ", ".join(h.id for h in left)
        err.print(f"{cluster}: {len(left)} job(s) still running: {ids}", highlight=False)
        if wait:
            err.print("[yellow]To fix:[/] wait longer (--timeout), or stop them ('rayfleet stop ID')", highlight=False)
            raise typer.Exit(EXIT_ERROR)
        return
    out.print(f"{cluster}: drained, no job runs there", highlight=False)
