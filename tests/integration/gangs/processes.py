"""Processes of a job's command, as tests see them from this machine (``/proc``): which ones still run, and waiting
for them to go. A process is known by its pid and start time (`rayfleet.launcher.watcher.ProcessId`), so a reused pid is
never taken for it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from rayfleet.launcher import watcher
from rayfleet.launcher.watcher import ProcessId
from tests.polling import poll


def gone(process: ProcessId) -> bool:
    """Whether ``process`` has exited (a zombie has)."""
    return watcher.gone(process)


def group_command(pids: Path, tail: str = "wait") -> str:
    """A command whose shell writes its own pid and a background child's to ``pids`` (atomically), then runs
    ``tail``. The child is in the shell's process group, and PR_SET_PDEATHSIG on the shell does not reach it."""
    return f"sleep 3000 & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; {tail}"


def recorded(
    pids: Path, survivors: list[ProcessId], timeout: float = 20, describe: Callable[[], str] | None = None
) -> list[ProcessId]:
    """The processes written to ``pids`` (waiting for the file), added to ``survivors`` (killed after the test)."""
    poll(pids.exists, timeout=timeout, interval=0.05, describe=describe)
    found = [watcher.identify(int(pid)) for pid in pids.read_text().split()]
    survivors.extend(found)
    assert not any(gone(p) for p in found), found
    return found


def wait_gone(*processes: ProcessId, timeout: float, after: str) -> None:
    """Until every one of ``processes`` has exited; fail after ``timeout`` seconds saying which still run."""

    def describe() -> str:
        running = [p.pid for p in processes if not gone(p)]
        return f"still running {timeout:g} s after {after}: pids {running} of {[p.pid for p in processes]}"

    poll(lambda: all(gone(p) for p in processes), timeout=timeout, interval=0.05, describe=describe)


def watched(shell: int, name: str) -> int:
    """The process the command's watcher (the parent of the command's shell) watches as ``name``: its pid, from the
    watcher's command line (``--watch raylet=pid:start:host``). The watcher is detached from the Ray worker, so the
    raylet is not an ancestor of the command."""
    watcher_pid = watcher.read_stat(shell).ppid  # type: ignore[union-attr]
    words = cmdline(watcher_pid).split()
    for word, value in itertools.pairwise(words):
        if word == "--watch" and value.startswith(f"{name}="):
            return watcher.ProcessId.decode(value.split("=", 1)[1]).pid
    raise AssertionError(f"the watcher (pid {watcher_pid}) of shell {shell} watches no {name}: {words}")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
