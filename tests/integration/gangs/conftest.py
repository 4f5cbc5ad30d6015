"""Two multi-node local clusters for the gang and launcher tests, started once for this package (and stopped after
it, so that their five nodes do not weigh on the rest of the session).

"spread": a head with 1 CPU and no GPU, two worker nodes with 1 CPU and 1 logical A100 each.
"fat": a head with 1 CPU, one worker node with 2 CPUs and 2 A100s.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from rayfleet import LocalClusterSpec, LocalFleet, LocalNodeSpec
from rayfleet.launcher.watcher import ProcessId
from tests.integration.gangs.processes import gone

GPU_NODE = LocalNodeSpec(cpus=1, gpus=1, accelerator="A100", memory="512MiB")
SPECS = (
    LocalClusterSpec("spread", cpus=1, memory="768MiB", workers=(GPU_NODE, GPU_NODE)),
    LocalClusterSpec("fat", cpus=1, memory="768MiB", workers=(LocalNodeSpec(cpus=2, gpus=2, accelerator="A100"),)),
)


@pytest.fixture(scope="package")
def gang_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    running = LocalFleet(SPECS, name=f"gangs-{os.getpid()}", directory=tmp_path_factory.mktemp("gangs"))
    with running:
        yield running


@pytest.fixture(scope="package")
def spread_address(gang_fleet: LocalFleet) -> str:
    return next(c.address for c in gang_fleet.running if c.name == "spread")


@pytest.fixture()
def survivors() -> Iterator[list[ProcessId]]:
    """Processes a test starts or records (a job's command): whatever of them still runs at the end is SIGKILLed, by
    pid and start time (so that a failing test, or the old launcher, leaves no orphan behind)."""
    processes: list[ProcessId] = []
    yield processes
    for process in processes:
        if not gone(process):
            os.kill(process.pid, signal.SIGKILL)
