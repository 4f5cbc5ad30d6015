"""Two dispatchers (think: two processes) on one ledger file, over clusters a and b that no test contacts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rayfleet.config import FleetConfig
from rayfleet.dispatch import Dispatcher
from rayfleet.ledger import Ledger


@contextmanager
def two_dispatchers(path: Path, clock: Callable[[], float]) -> Iterator[tuple[Dispatcher, Dispatcher]]:
    config = FleetConfig.build(
        clusters=[{"name": "a", "address": "http://127.0.0.1:9"}, {"name": "b", "address": "http://127.0.0.1:9"}]
    )
    one, two = Dispatcher(config, Ledger(path, clock=clock)), Dispatcher(config, Ledger(path, clock=clock))
    try:
        yield one, two
    finally:
        one.close()
        two.close()
