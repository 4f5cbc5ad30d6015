"""Named points in the dispatcher where a test can make this process die, to prove that a crash there loses nothing.

Off unless ``$RAYFLEET_FAULT`` names a point (a test sets it in a child process it then watches die); the check is
one environment read. Points, in the order one submission passes them:

- ``creation.recorded``: the job and its new cluster are in the ledger; the provisioner has not been asked.
- ``creation.asked``: the provisioner was asked; the cluster is starting.
- ``creation.ready``: the cluster is ready and recorded READY; the job is not yet placed on it.
- ``attempt.submitted``: Ray accepted the attempt; the ledger does not yet say SUBMITTED.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "RAYFLEET_FAULT"
POINTS = frozenset({"creation.recorded", "creation.asked", "creation.ready", "attempt.submitted"})


def point(name: str) -> None:
    """Die here (SIGKILL: no cleanup, no atexit, as a crash or a lost host) if ``$RAYFLEET_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
