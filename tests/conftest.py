"""Shared test settings: every test session gets its own ledger and local-fleet directory, never the user's; and the
session's two real local Ray clusters, started once, at first use, for the integration and reliability tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

# Set before anything starts a Ray cluster: cluster processes (and so the jobs they run) inherit the environment,
# which is how a nested job finds the same ledger file.
_scratch = tempfile.mkdtemp(prefix="rayfleet-tests-")
os.environ["RAYFLEET_LEDGER"] = os.path.join(_scratch, "ledger.db")
os.environ["RAYFLEET_LOCAL_DIR"] = os.path.join(_scratch, "local")
for _var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAYFLEET_FLEET", "RAYFLEET_FLEET_FILE", "RAYFLEET_JOB_ID"):
    os.environ.pop(_var, None)


# The demo fleet of the README: "cpu" with 2 CPUs; "gpu" with 2 CPUs and 2 logical A100 GPUs.
def _specs():  # imported late: rayfleet must not load before the environment above is set
    from rayfleet import LocalClusterSpec

    return (
        LocalClusterSpec("cpu", cpus=2, memory="1GiB", labels={"kind": "cpu"}),
        LocalClusterSpec("gpu", cpus=2, gpus=2, accelerator="A100", memory="1GiB", labels={"kind": "gpu"}),
    )


@pytest.fixture(scope="session")
def local() -> Iterator[object]:
    """The session's clusters ("cpu", "gpu"), stopped by their own process ids at the end."""
    from rayfleet import LocalFleet

    running = LocalFleet(_specs(), name=f"tests-{os.getpid()}")
    with running:
        yield running
