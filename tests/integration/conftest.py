"""Fixtures over the session's real local Ray clusters ("cpu", "gpu"; `local` in tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from rayfleet import Fleet, LocalFleet
from rayfleet.ledger import Ledger
from tests.polling import poll


@pytest.fixture(scope="session")
def addresses(local: LocalFleet) -> dict[str, str]:
    return {c.name: c.address for c in local.running}


@pytest.fixture(scope="session")
def fleet_file(local: LocalFleet) -> Path:
    return local.fleet_file


@pytest.fixture(scope="session")
def ledger_path() -> Path:
    return Path(os.environ["RAYFLEET_LEDGER"])


@pytest.fixture()
def fleet(fleet_file: Path, ledger_path: Path) -> Iterator[Fleet]:
    """A new Fleet object per test (its probe cache and holds start empty) over the shared clusters and ledger."""
    with Fleet.from_file(fleet_file, ledger=ledger_path) as f:
        yield f


@pytest.fixture()
def ledger(ledger_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(ledger_path)
    yield ledger
    ledger.close()


def ray_job(address: str, submission_id: str) -> dict | None:
    """A job as Ray's own REST API reports it (None if the cluster does not have it)."""
    response = requests.get(f"{address}/api/jobs/{submission_id}", timeout=5)
    return response.json() if response.status_code == 200 else None


def wait_idle(fleet: Fleet, timeout: float = 60.0) -> None:
    """Until every cluster reports all its CPUs free (a stopped job's resources are released a little later), and
    the ledger knows it: the jobs it still has active are looked at once more, so that what an earlier test left
    unfollowed no longer holds capacity (holds come from the shared ledger)."""
    poll(
        lambda: all(s.healthy and s.sum("CPU", "free") == s.sum("CPU") for s in fleet.snapshots(max_age=0).values()),
        timeout=timeout,
    )
    names = {c.name for c in fleet.clusters}
    for job in fleet.ledger.active():
        if job.last_attempt is not None and job.last_attempt.cluster in names:
            fleet.job(job.id).status()
