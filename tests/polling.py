"""Waiting for a condition in tests: poll it with a deadline (never a bare sleep standing in for synchronisation)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def poll(
    condition: Callable[[], Any],
    timeout: float = 60.0,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Until ``condition()`` is truthy (and return it); fail the test if it is not within ``timeout`` seconds, with
    ``describe()`` saying what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(describe() if describe else f"condition not met within {timeout} s")
        time.sleep(interval)


def until_file(path: Any) -> str:
    """A job's command that runs until ``path`` exists: the test decides when it ends, no timing involved."""
    return f"python -c \"import os, time\nwhile not os.path.exists('{path}'): time.sleep(0.1)\""
