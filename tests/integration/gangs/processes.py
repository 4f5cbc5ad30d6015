"""Processes of a job's command, as tests see them from this machine (``/proc``): which ones still run, and waiting
for them to go. A process is known by its pid and start time (`rayfleet.launcher.watcher.ProcessId`), so a reused pid is
never taken for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rayfleet.launcher import watcher
from rayfleet.launcher.watcher import ProcessId
from tests.polling import poll


def gone(process: ProcessId) -> bool:
    """Whether ``process`` has exited (a zombie has)."""
    return not watcher.same_process(process, watcher.read_stat(process.pid))


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


def ancestor(pid: int, name: str) -> int:
    """The nearest process above ``pid`` whose executable is ``name``."""
    seen = pid
    while (stat := watcher.read_stat(seen)) is not None and stat.ppid > 1:
        seen = stat.ppid
        if watcher.command_name(seen) == name:
            return seen
    raise AssertionError(f"no {name} above pid {pid}")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
