"""A submitter killed (SIGKILL) at each point of a cluster creation loses no job and runs none twice.

`fleet.submit` of a job that needs a new cluster records the job and the cluster in one transaction, asks the
provisioner, and returns; the loop (here the child's `JobHandle.wait`) places the job once the cluster is ready. A
real child process dies at a named point (`rayfleet.faults`), a fresh `Fleet` on the same ledger carries on, and
the command must have started exactly once. Real local clusters made by the local provisioner; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayfleet import Fleet, JobState
from rayfleet.config import FleetConfig
from rayfleet.faults import FAULT_ENV
from rayfleet.ledger import Ledger
from tests.reliability.conftest import dump, marker, started

pytestmark = pytest.mark.integration

SUBMITTER = textwrap.dedent(
    """
    import json, sys
    from rayfleet import Fleet
    from rayfleet.config import FleetConfig
    fleet = Fleet(config=FleetConfig.build(**json.loads(sys.argv[1])), ledger=sys.argv[2])
    job = fleet.submit(sys.argv[3], {"cpu": 1})
    print(job.id, flush=True)
    job.wait(timeout=300)
    print("not killed", flush=True)
    """
)


def fleet_config(directory: Path) -> dict:
    return {
        "name": "crash",
        "provisioners": [
            {
                "kind": "local",
                "directory": str(directory),
                "max_clusters": 2,
                "templates": [{"name": "solo", "mode": "static", "head": {"cpu": 1, "memory": "1GiB"}, "workers": []}],
            }
        ],
    }


@pytest.mark.parametrize("point", ["creation.recorded", "creation.asked", "creation.ready", "attempt.submitted"])
def test_a_submitter_killed_during_a_creation_loses_nothing_and_runs_the_job_once(point: str, tmp_path: Path) -> None:
    data, ledger_path, ran = fleet_config(tmp_path / "clusters"), tmp_path / "ledger.db", tmp_path / "ran"
    script = tmp_path / "submit.py"
    script.write_text(SUBMITTER)
    child = subprocess.run(
        [sys.executable, str(script), json.dumps(data), str(ledger_path), marker(ran)],
        env={**os.environ, FAULT_ENV: point},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert "not killed" not in child.stdout

    ledger = Ledger(ledger_path)
    [recorded] = ledger.jobs()  # recorded before it died, whatever the point
    with Fleet(config=FleetConfig.build(**data), ledger=ledger_path) as fleet:
        try:
            job = fleet.job(recorded.id)
            assert job.wait(timeout=240) is JobState.SUCCEEDED, dump(ledger, {recorded.id})
            assert started(ran) == [job.submission_id]  # the command ran once, under the attempt that succeeded
            states = {c.name: c.state for c in ledger.managed(live_only=False)}
            assert states[job.cluster] == "READY"
            if point == "creation.asked":  # its creator died while it started: that cluster failed, another was made
                assert sorted(states.values()) == ["FAILED", "READY"], states
            else:
                assert list(states.values()) == ["READY"], states
        finally:  # a failed assertion must not leave a cluster running for the rest of the suite
            deleted = fleet.gc(everything=True)
        assert deleted == [job.cluster]
    assert not any((tmp_path / "clusters").rglob("rf-*")), "a cluster was left behind"
    ledger.close()
