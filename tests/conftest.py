"""Shared test settings: every test session gets its own ledger and local-fleet directory, never the user's."""

from __future__ import annotations

import os
import tempfile

# Set before anything starts a Ray cluster: cluster processes (and so the jobs they run) inherit the environment,
# which is how a nested job finds the same ledger file.
_scratch = tempfile.mkdtemp(prefix="rayfleet-tests-")
os.environ["RAYFLEET_LEDGER"] = os.path.join(_scratch, "ledger.db")
os.environ["RAYFLEET_LOCAL_DIR"] = os.path.join(_scratch, "local")
for _var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAYFLEET_FLEET", "RAYFLEET_FLEET_FILE", "RAYFLEET_JOB_ID"):
    os.environ.pop(_var, None)
