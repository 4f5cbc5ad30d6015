"""Named points in the dispatcher where a test can make this process die, to prove that a crash there loses nothing.

Off unless ``$RAYFLEET_FAULT`` names a point (a test sets it in a child process it then watches); the check is one
environment read. ``<point>`` kills the process there (SIGKILL); ``<point>:stop`` pauses it (SIGSTOP, as a closed
laptop: it goes on where it was when it gets SIGCONT). Points, in the order one submission passes them:

- ``creation.recorded``: the job and its new cluster are in the ledger; the provisioner has not been asked.
- ``creation.asked``: the provisioner was asked; the cluster is starting.
- ``creation.ready``: the cluster is ready and recorded READY; the job is not yet placed on it.
- ``attempt.recorded``: an attempt is recorded PLACED; it has not been sent to its cluster.
- ``attempt.submitted``: Ray accepted the attempt; the ledger does not yet say SUBMITTED.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "RAYFLEET_FAULT"
POINTS = frozenset({"creation.recorded", "creation.asked", "creation.ready", "attempt.recorded", "attempt.submitted"})


def point(name: str) -> None:
    """Die here (SIGKILL: no cleanup, no atexit, as a crash or a lost host), or pause (SIGSTOP), if
    ``$RAYFLEET_FAULT`` names this point."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{name}:stop":
        os.kill(os.getpid(), signal.SIGSTOP)
