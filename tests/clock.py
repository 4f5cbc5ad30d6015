"""A clock that tests move by hand: timing rules (grace periods, timeouts, deadlines) are tested without sleeping."""

from __future__ import annotations

import time


class ManualClock:
    """Wall-clock seconds that stand still until `advance` moves them. Starts at the real time by default."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
