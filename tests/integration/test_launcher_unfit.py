"""A real cluster whose ``python`` cannot import Ray: the python first on its PATH runs without site-packages, as a
cluster whose PATH finds the system python would. A job that needs the launcher fails there with exit 78 before its
command runs, is placed elsewhere at once, and the cluster is marked in the ledger (shown by ``clusters`` and
``explain``) so the next such job goes elsewhere first; a job that needs no launcher still goes there."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rayfleet import Fleet, JobState, LocalClusterSpec, LocalFleet
from rayfleet.ledger import LAUNCHER_UNFIT
from rayfleet.provisioning.local import RunningCluster
from tests.integration.test_cli import rayfleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def noray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    shims = tmp_path_factory.mktemp("shims")
    python = shims / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')  # -S: no site-packages, no Ray
    python.chmod(0o755)
    path = os.pathsep.join([str(shims), os.environ.get("PATH", "")])
    fleet = LocalFleet(
        [LocalClusterSpec("noray", cpus=1, memory="1GiB", env={"PATH": path})], name=f"noray-{os.getpid()}"
    )
    fleet.up()
    try:
        yield fleet.running[0]
    finally:
        fleet.down()


def test_a_launcher_job_on_a_cluster_whose_python_lacks_ray_runs_elsewhere_and_the_cluster_is_marked(
    noray: RunningCluster, addresses: dict[str, str], tmp_path: Path
) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    clusters = [
        {"name": "noray", "address": noray.address, "cost_per_cpu_hour": 0.0},  # the cheapest: chosen first
        {"name": "cpu", "address": addresses["cpu"], "cost_per_cpu_hour": 1.0},
    ]
    fleet_file.write_text(yaml.safe_dump({"policy": "cost", "clusters": clusters}))
    ledger = tmp_path / "ledger.db"
    with Fleet.from_file(fleet_file, ledger=ledger) as fleet:
        job = fleet.submit("echo ran-$((40 + 2))", {"cpu": 0.5})  # "ran-42" only if it ran
        assert job.attempts[0].cluster == "noray"
        assert job.wait(120) is JobState.SUCCEEDED
        first, second = job.attempts
        assert (first.cluster, first.state, second.cluster) == ("noray", JobState.FAILED, "cpu")
        assert "cannot import Ray: No module named 'ray'" in (first.detail or "")
        assert "ran-42" not in job.logs(attempt=1) and "ran-42" in job.logs()

        (mark,) = fleet.marks()["noray"]
        assert mark.kind == LAUNCHER_UNFIT and "cannot import Ray" in mark.reason
        again = fleet.submit("true", {"cpu": 0.5})
        assert [a.cluster for a in again.attempts] == ["cpu"]  # straight to the cluster that can run it
        plain = fleet.submit("echo plain", {}, cluster="noray")  # asks for nothing: no launcher, not refused
        assert plain.wait(120) is JobState.SUCCEEDED and again.wait(120) is JobState.SUCCEEDED

    args = ("--fleet", str(fleet_file), "--ledger", str(ledger))
    shown = rayfleet("clusters", *args).stdout
    assert re.search(r"│ noray +│ ok, no launcher \(python lacks Ray\)", shown), shown
    explained = rayfleet("explain", "--cpu", "0.5", *args).stdout
    assert re.search(r"│ noray +│ no +│.*│ cluster noray cannot run rayfleet's launcher: the python on this", explained)
