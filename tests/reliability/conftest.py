"""Real local Ray clusters shared by the reliability tests, and helpers to follow what really ran.

Two clusters, "a" and "b": the session's "cpu" and "gpu" clusters (`local` in tests/conftest.py) under other names
in the tests' own fleets and ledgers. A test module that kills a cluster starts its own third one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ray.job_submission import JobSubmissionClient

from rayfleet import Cluster, Fleet, LocalFleet
from rayfleet.ledger import Ledger
from tests.polling import poll


@pytest.fixture(scope="package")
def stable_clusters(local: LocalFleet) -> list[Cluster]:
    """The session's two clusters, named "a" and "b" here (their names are the fleet's labels, not Ray's)."""
    return [Cluster(name=name, address=c.address) for name, c in zip("ab", local.running, strict=True)]


def marker(path: Path, then: str = "") -> str:
    """A command that appends its Ray submission id (``<job id>-<n>``) to ``path`` as its first act: proof that
    the user's command started, attempt by attempt."""
    code = (
        "import json, os; c = json.loads(os.environ.get('RAY_JOB_CONFIG_JSON_ENV_VAR') or '{}'); "
        f"open('{path}', 'a').write(c.get('metadata', {{}}).get('job_submission_id', '?') + chr(10))"
    )
    return f'python -c "{code}"' + (f" && {then}" if then else "")


def started(path: Path) -> list[str]:
    """The submission ids whose command started (one line each time a command started)."""
    return path.read_text().split() if path.exists() else []


def drive(fleet: Fleet, condition: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Run the dispatcher's turns (``fleet.tick()``) until ``condition()`` holds."""

    def turn() -> Any:
        fleet.tick()
        return condition()

    return poll(turn, timeout=timeout, interval=interval)


def ray_jobs(address: str, job_ids: set[str]) -> list[tuple[str, str, str]]:
    """(submission id, rayfleet job id, status) of every job Ray has on the cluster that belongs to ``job_ids``."""
    client = JobSubmissionClient(address)
    out = []
    for job in client.list_jobs():
        owner = (job.metadata or {}).get("rayfleet.job_id")
        if owner in job_ids or any(str(job.submission_id or "").startswith(j) for j in job_ids):
            out.append((str(job.submission_id), str(owner), str(job.status)))
    return out


def fences(address: str, job_ids: set[str]) -> set[str]:
    """The submission ids of ``job_ids`` that the cluster holds as fences (no-op jobs that took an attempt's id so that
    its stopped submitter can never start it)."""
    client = JobSubmissionClient(address)
    return {
        str(job.submission_id)
        for job in client.list_jobs()
        if (job.metadata or {}).get("rayfleet.fence") and (job.metadata or {}).get("rayfleet.job_id") in job_ids
    }


def ledger_matches_ray(ledger: Ledger, addresses: dict[str, str], job_ids: set[str]) -> list[str]:
    """What disagrees between the ledger's attempts and the clusters' job lists (empty when they agree):
    every submission Ray has is a ledger attempt on that cluster, none twice, and Ray's final state is the ledger's;
    a fence's attempt is FAILED as never submitted.
    """
    problems = []
    attempts = {a.submission_id: a for j in job_ids for a in ledger.job(j).attempts}
    seen: dict[str, str] = {}
    for name, address in addresses.items():
        fenced = fences(address, job_ids)
        for sid, _owner, status in ray_jobs(address, job_ids):
            if sid in seen:
                problems.append(f"{sid} is on {seen[sid]} and {name}")
            seen[sid] = name
            attempt = attempts.get(sid)
            if attempt is None:
                problems.append(f"{name} has {sid}, which the ledger does not know")
            elif attempt.cluster != name:
                problems.append(f"{sid} is on {name}, the ledger says {attempt.cluster}")
            elif sid in fenced:
                if attempt.state.value != "FAILED" or "fenced" not in (attempt.detail or ""):
                    problems.append(f"{sid} is a fence on {name}, the ledger says {attempt.state.value}")
            elif status in ("SUCCEEDED", "FAILED", "STOPPED") and attempt.state.value != status:
                problems.append(f"{sid}: Ray says {status}, the ledger {attempt.state.value}")
    return problems


def dump(ledger: Ledger, job_ids: set[str]) -> str:
    """The ledger's view of some jobs, for assertion messages."""
    rows = {}
    for j in sorted(job_ids):
        job = ledger.job(j)
        rows[j] = [job.state.value, job.reason, [(a.cluster, a.state.value, a.detail) for a in job.attempts]]
    return json.dumps(rows, indent=1)
