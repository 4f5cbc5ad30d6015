"""The command's watcher: it runs the user's command and takes it down when the launcher loses its cluster.

The launcher's task (``launch.run_command``, in a Ray worker) does not start the user's command itself: it starts this
watcher (``python -I -S watcher.py ...``) in a session of its own, and the watcher starts the command in another new
session, as a process group of its own (its id is the command's shell's pid). The watcher is not in the command's group
nor in the worker's (which the raylet kills when the worker exits), and with ``--detach`` it is not the worker's child
either: it forks once more and the first process exits at once, because a Ray worker that exits kills its direct
children (``RAY_kill_child_processes_on_worker_exit``, on by default), and a watcher killed so would leave the command
behind. So it outlives whatever it watches. It stops the command's whole process group (SIGTERM, then SIGKILL after
a grace period) as soon as any of these happens:

- the *lifeline* closes: the worker holds the only other end of a connected socket pair, and never writes to it; end
  of file on the watcher's end means the worker process is gone, however it died (SIGKILL included);
- a watched process exits: the worker itself, the raylet of its node (the Ray session the task runs in), and the
  launcher (the job's driver) when it runs on this machine (the same boot and pid namespace). Watched through a pidfd
  where Linux has them (an exit is seen at once), else by polling ``/proc`` (or ``kill(pid, 0)``) every half second;
  a process is known by its pid *and* its start time, so a reused pid is not mistaken for it;
- the watcher gets SIGTERM (the task is cancelled: the job is being stopped).

When it stops the command for any of these reasons but SIGTERM, the watcher first writes the reason (a line) to the
lifeline: a worker that still lives reads it once the watcher has exited, and reports the command lost rather than the
exit code it died with. A detached watcher, whose exit code nobody can wait for, also writes ``pid <pid:start:host>``
first (whom to signal to stop the command) and ``exit <code>`` last.

When the command's shell exits by itself, the watcher stops what the command left running in its process group (as
Ray does with an entrypoint's group when a job ends), then exits with the shell's exit code (a signal N gives
128 + N). The watcher reaps the shell only after its last signal to the group: until then the zombie shell holds the
group's id, so no signal can reach an unrelated group that reused it. The shell also gets ``PR_SET_PDEATHSIG`` SIGKILL,
a backstop for a killed watcher (which covers the shell only).

When something it watches is already gone before the command starts, the watcher does not start it: it prints
``rayfleet: launcher error: ...`` and exits ``LAUNCHER_ERROR_EXIT`` (76), as the launcher does.

Like the launcher, this module travels with the job and imports only the standard library (run as a script, with
``-I -S``: no site-packages at all); it imports on any platform, and watches best on Linux.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

LAUNCHER_ERROR_EXIT = 76  # the same as launch.LAUNCHER_ERROR_EXIT (a test checks): the command never ran
ERROR_MARKER = "rayfleet: launcher error"  # the same as launch.ERROR_MARKER
WATCHER_MARKER = "rayfleet: watcher"  # a line the watcher prints when it stops the command
DEFAULT_GRACE_S = 2.0  # between SIGTERM and SIGKILL to the command's group
TICK_S = 0.5  # how often the watcher looks at what pidfds do not report (exit without a pidfd, a shell that ended)
_STEP_S = 0.05  # how often it looks whether the group is gone, during the grace period
_REAP_S = 5.0  # how long it waits for the shell to be reaped after SIGKILL (a process stuck in the kernel)
_DEAD_STATES = ("Z", "X")  # zombie, dead: /proc lists them, but they run nothing


# --- pure parts ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessId:
    """A process as the watcher knows it: its pid, its start time (clock ticks after boot, field 22 of
    ``/proc/<pid>/stat``; None where unknown) and its host (`host_key`; None where unknown). Two processes can watch
    each other's pid only with the same, known host."""

    pid: int
    start: int | None = None
    host: str | None = None

    def encode(self) -> str:
        """``pid:start:host`` (empty fields where unknown)."""
        return f"{self.pid}:{'' if self.start is None else self.start}:{self.host or ''}"

    @classmethod
    def decode(cls, text: str) -> ProcessId:
        """The inverse of `encode`; raises ValueError on anything else."""
        pid, _, rest = text.partition(":")
        start, _, host = rest.partition(":")
        if not pid.isdigit() or int(pid) <= 0 or (start and not start.isdigit()):
            raise ValueError(f"not a process id (pid:start:host): {text!r}")
        return cls(int(pid), int(start) if start else None, host or None)


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the watcher uses."""

    state: str
    ppid: int
    pgrp: int
    start: int

    @property
    def running(self) -> bool:
        return self.state not in _DEAD_STATES


def parse_stat(text: str) -> Stat:
    """Parse the text of ``/proc/<pid>/stat`` (the command name, in parentheses, may hold spaces and parentheses).

    Example:
        >>> parse_stat("42 (a b) c) S 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 1234 0 0")
        Stat(state='S', ppid=1, pgrp=42, start=1234)
    """
    fields = text[text.rindex(")") + 2 :].split()
    return Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[19]))


def watchable(target: ProcessId, here: str | None) -> bool:
    """Whether a process on host ``here`` can watch ``target`` by its pid: same host, both known."""
    return here is not None and target.host == here


def same_process(target: ProcessId, stat: Stat | None) -> bool:
    """Whether ``stat`` (of ``target.pid``, None if there is no such process) is still ``target``, running."""
    return stat is not None and stat.running and (target.start is None or stat.start == target.start)


def live_members(table: Mapping[int, Stat], pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (zombies do not: the shell, unreaped, holds the id)."""
    return sorted(pid for pid, stat in table.items() if stat.pgrp == pgid and stat.running)


def stop_reason(
    lifeline_open: bool, gone: Mapping[str, ProcessId], signals: Sequence[int], describe: Mapping[str, str]
) -> str | None:
    """Why the watcher must stop the command now, or None to let it run.

    Args:
        lifeline_open: whether the worker's end of the lifeline is still open.
        gone: the watched processes that are gone (name -> process).
        signals: the signals the watcher got (SIGTERM: the task is being stopped).
        describe: name -> what that process is, for the message.

    Example:
        >>> stop_reason(True, {}, [], {}) is None, stop_reason(False, {}, [], {})
        (True, 'the lifeline closed: the worker that started the command is gone')
    """
    if signals:
        return f"got signal {signals[0]}: the task running the command is being stopped"
    for name, process in gone.items():
        return f"the {describe.get(name, name)} (pid {process.pid}) is gone"
    if not lifeline_open:
        return "the lifeline closed: the worker that started the command is gone"
    return None


def exit_code(returncode: int) -> int:
    """A shell's exit code as a process's: a signal N (``returncode`` -N) gives 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def watcher_argv(
    python: str,
    script: str,
    command: str,
    *,
    lifeline: int,
    watch: Mapping[str, ProcessId],
    grace_s: float = DEFAULT_GRACE_S,
    detach: bool = False,
) -> list[str]:
    """The command line that runs the watcher (``script``, this file) around ``command``."""
    argv = [python, "-I", "-S", script, "--lifeline", str(lifeline), "--grace", f"{grace_s:g}"]
    if detach:
        argv.append("--detach")
    for name, process in watch.items():
        argv += ["--watch", f"{name}={process.encode()}"]
    return [*argv, "--", command]


def _watch_arg(text: str) -> tuple[str, ProcessId]:
    name, sep, process = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=pid:start:host, not {text!r}")
    try:
        return name, ProcessId.decode(process)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # raise instead of printing usage and exiting 2
        raise ValueError(message)


def parse_argv(argv: Sequence[str]) -> argparse.Namespace:
    """The watcher's options (without the interpreter and script of `watcher_argv`); raises ValueError."""
    parser = _Parser(prog="rayfleet-watcher", add_help=False)
    parser.add_argument("--lifeline", type=int)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    parser.add_argument("--watch", type=_watch_arg, action="append", default=[])
    parser.add_argument("--detach", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if len(words) != 1 or not words[0].strip():
        raise ValueError("expected exactly one command (a shell string) after --")
    if args.grace < 0:
        raise ValueError(f"--grace must be >= 0, not {args.grace}")
    args.command, args.watch = words[0], dict(args.watch)
    return args


# --- this machine's processes -------------------------------------------------------------------------------------


def read_stat(pid: int) -> Stat | None:
    """``/proc/<pid>/stat`` of a process, or None (no such process, or no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None


def process_table() -> dict[int, Stat]:
    """Every process of ``/proc``: pid -> its stat (empty where there is no ``/proc``)."""
    table = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
                table[int(entry)] = stat
    return table


def host_key() -> str | None:
    """What makes pids comparable: this boot of this kernel, and this pid namespace. None off Linux."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}.{namespace}" if boot else None


def gone(target: ProcessId) -> bool:
    """Whether ``target`` no longer runs on this machine (exited, a zombie, or its pid now belongs to another)."""
    return not same_process(target, read_stat(target.pid))


def identify(pid: int) -> ProcessId:
    """``pid`` with its start time and this machine's host key, as far as they are known."""
    stat = read_stat(pid)
    return ProcessId(pid, stat.start if stat else None, host_key())


def command_name(pid: int) -> str | None:
    """The name of a process's executable (``/proc/<pid>/comm``), or None."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS (an old kernel), EPERM (a sandbox): poll /proc instead
        return None


class _Watch:
    """One watched process: through a pidfd (readable once it exits) or, without one, by polling."""

    def __init__(self, target: ProcessId) -> None:
        self.target = target
        try:
            self.fd = _pidfd(target.pid)
        except ProcessLookupError:
            self.fd, self.dead = None, True
            return
        # The pidfd names whatever has the pid now: it is the target only if the start time agrees.
        self.dead = not self._present()

    def _present(self) -> bool:
        if self.target.start is not None or os.path.isdir("/proc"):
            return same_process(self.target, read_stat(self.target.pid))
        try:
            os.kill(self.target.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # EPERM: it exists
            pass
        return True

    def alive(self) -> bool:
        if not self.dead:
            if self.fd is not None:
                self.dead = bool(select.select([self.fd], [], [], 0)[0])
            else:
                self.dead = not self._present()
        return not self.dead

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _parent_death_signal() -> Callable[[], Any] | None:
    """For the shell, between fork and exec: SIGKILL when the watcher dies (Linux), prepared before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


def _say(line: str) -> None:
    """A line into the job's log (through the worker), if anyone still reads it."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode(errors="replace"))


# --- the watcher ----------------------------------------------------------------------------------------------------

# what each watched process is, for the lines the watcher prints
DESCRIBE = MappingProxyType(
    {"worker": "worker that started the command", "raylet": "raylet of this node", "launcher": "launcher"}
)


class Watcher:
    """Runs ``command`` as its own process group and stops that group when the lifeline or a watched process goes.

    Args:
        command: the shell string.
        lifeline: the watcher's end of the lifeline, a connected stream socket (None: no lifeline).
        watch: name -> process to watch; those on another host (`watchable`) are left out.
        grace_s: between SIGTERM and SIGKILL.
    """

    def __init__(self, command: str, lifeline: int | None, watch: Mapping[str, ProcessId], grace_s: float) -> None:
        self.command, self.lifeline, self.grace_s = command, lifeline, grace_s
        here = host_key()
        self.watches = {name: _Watch(p) for name, p in watch.items() if watchable(p, here)}
        self.lifeline_open = lifeline is not None
        self.signals: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _gone(self) -> dict[str, ProcessId]:
        return {name: w.target for name, w in self.watches.items() if not w.alive()}

    def _read_lifeline(self) -> None:
        assert self.lifeline is not None
        try:
            data = os.read(self.lifeline, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # end of file: the worker's end is closed, the worker is gone
            self.lifeline_open = False

    def _report(self, reason: str) -> None:
        """Tell the worker, if it still reads, why the command was stopped (it reads once the watcher has exited)."""
        if self.lifeline_open:
            tell(self.lifeline, reason)

    def _exited(self) -> bool:
        """Whether the shell has exited, without reaping it (the zombie keeps the group's id ours) where ``waitid``
        exists; elsewhere it is reaped (and the group's id could be reused before the last signal, in theory)."""
        assert self.proc is not None
        if not hasattr(os, "waitid"):
            return self.proc.poll() is not None
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _group_running(self) -> bool:
        assert self.proc is not None
        if os.path.isdir("/proc"):
            return bool(live_members(process_table(), self.proc.pid))
        return not self._exited()  # no /proc: the shell is all that can be seen

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop_group(self) -> None:
        """SIGTERM to the command's group, then SIGKILL once the grace period is over (at once when it has ended)."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self._group_running():
            time.sleep(_STEP_S)
        self._signal_group(signal.SIGKILL)  # safe however late: the unreaped shell holds the group's id

    def _reap(self) -> int:
        assert self.proc is not None
        try:
            return exit_code(self.proc.wait(_REAP_S))
        except subprocess.TimeoutExpired:
            return 128 + int(signal.SIGKILL)

    def run(self) -> int:
        """Start the command, watch, stop it if need be; the shell's exit code."""
        for sig in ("SIGTERM", "SIGHUP"):
            if hasattr(signal, sig):
                signal.signal(getattr(signal, sig), self._on_signal)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        if self.lifeline is not None:
            os.set_blocking(self.lifeline, False)
            self._read_lifeline()
        reason = stop_reason(self.lifeline_open, self._gone(), self.signals, DESCRIBE)
        if reason is not None:
            _say(f"{ERROR_MARKER}: {reason} before the command started; the command did not run")
            return LAUNCHER_ERROR_EXIT
        try:
            self.proc = subprocess.Popen(
                self.command,
                shell=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, which the watcher is not in
                preexec_fn=_parent_death_signal(),
            )
        except OSError as e:
            _say(f"{ERROR_MARKER}: cannot start the command's shell: {e}; the command did not run")
            return LAUNCHER_ERROR_EXIT
        poller = select.poll()
        fds = [wake_r, *(w.fd for w in self.watches.values() if w.fd is not None)]
        if self.lifeline is not None:
            fds.append(self.lifeline)
        with contextlib.suppress(ProcessLookupError):
            if (child := _pidfd(self.proc.pid)) is not None:
                fds.append(child)
        for fd in fds:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            if self._exited():
                reason = None
                break
            reason = stop_reason(self.lifeline_open, self._gone(), self.signals, DESCRIBE)
            if reason is not None:
                break
            for fd, _ in poller.poll(TICK_S * 1000):
                if fd == self.lifeline:
                    self._read_lifeline()
                    if not self.lifeline_open:
                        poller.unregister(fd)
                elif fd == wake_r:
                    with contextlib.suppress(OSError):
                        os.read(wake_r, 512)
                elif fd not in (w.fd for w in self.watches.values()):  # the shell's pidfd: it exited
                    poller.unregister(fd)
        if reason is not None:
            _say(f"{WATCHER_MARKER}: {reason}: stopping the command (process group {self.proc.pid})")
            if not self.signals:  # SIGTERM: the worker stops the command itself, it knows why
                self._report(reason)
            self.stop_group()
        elif self._group_running():  # the shell ended and left processes behind in its group
            _say(f"{WATCHER_MARKER}: the command exited; stopping what it left running (process group "
                 f"{self.proc.pid})")  # fmt: skip
            self.stop_group()
        elif not os.path.isdir("/proc"):  # its members cannot be seen here: whatever is left of the group goes now
            self._signal_group(signal.SIGKILL)
        return self._reap()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -I -S watcher.py --lifeline FD [--watch NAME=pid:start:host]... [--grace S] -- COMMAND``."""
    try:
        args = parse_argv(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        _say(f"{ERROR_MARKER}: the command's watcher got bad arguments: {e}")
        return LAUNCHER_ERROR_EXIT
    if args.detach and hasattr(os, "fork"):
        if os.fork() > 0:  # the worker's child exits at once; the watcher goes on as its child, reparented
            os._exit(0)
        tell(args.lifeline, f"pid {identify(os.getpid()).encode()}")
    try:
        code = Watcher(args.command, args.lifeline, args.watch, args.grace).run()
    except Exception as e:
        _say(f"{ERROR_MARKER}: the command's watcher could not start: {type(e).__name__}: {e}")
        code = LAUNCHER_ERROR_EXIT
    if args.detach:
        tell(args.lifeline, f"exit {code}")
    return code


def tell(lifeline: int | None, line: str) -> None:
    """Write one line to the worker's end of the lifeline (nothing if there is none or it is closed)."""
    if lifeline is not None:
        with contextlib.suppress(OSError):
            os.write(lifeline, (line + "\n").encode(errors="replace"))


if __name__ == "__main__":
    sys.exit(main())
