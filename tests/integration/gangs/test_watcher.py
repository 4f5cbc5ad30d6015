"""The command's watcher (rayfleet/launcher/watcher.py) on real processes, without Ray: this test process (or a stand-in
process) plays the Ray worker that holds the lifeline, and ``sleep`` processes play the raylet and the launcher.

Each command records the pids of its shell and of a background child (which PR_SET_PDEATHSIG does not cover), so a
test can see the whole group go.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayfleet.launcher import watcher
from rayfleet.launcher.watcher import ProcessId
from tests.integration.gangs.processes import gone, group_command, recorded, wait_gone
from tests.polling import poll

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watcher watches best on Linux")

GRACE_S = 0.5


def start(
    command: str, watch: dict[str, ProcessId], survivors: list[ProcessId]
) -> tuple[subprocess.Popen, socket.socket]:
    """The watcher around ``command``, as run_command starts it: returns it, and the worker's end of the lifeline."""
    lifeline, theirs = socket.socketpair()
    argv = watcher.watcher_argv(sys.executable, watcher.__file__, command, lifeline=theirs.fileno(), watch=watch,
                                grace_s=GRACE_S)  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            pass_fds=(theirs.fileno(),))  # fmt: skip
    theirs.close()
    survivors.append(watcher.identify(proc.pid))
    return proc, lifeline


def reported(lifeline: socket.socket) -> bytes:
    """What the watcher (which has exited) wrote to the lifeline."""
    lifeline.setblocking(False)
    try:
        return lifeline.recv(4096)
    except BlockingIOError:
        return b""
    finally:
        lifeline.close()


def stand_in(survivors: list[ProcessId]) -> ProcessId:
    """A process to watch (a raylet, a launcher)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    process = watcher.identify(proc.pid)
    survivors.append(process)
    return process


def test_the_command_runs_and_its_exit_code_comes_back(tmp_path: Path, survivors: list[ProcessId]) -> None:
    proc, lifeline = start("echo out; echo err >&2; exit 3", {"worker": watcher.identify(os.getpid())}, survivors)
    output, _ = proc.communicate(timeout=30)
    assert reported(lifeline) == b""
    assert proc.returncode == 3
    assert output.decode().split() == ["out", "err"]  # nothing of the watcher's own


def test_a_signal_that_ends_the_shell_gives_128_plus_its_number(survivors: list[ProcessId]) -> None:
    proc, lifeline = start("kill -9 $$", {}, survivors)
    proc.communicate(timeout=30)
    assert reported(lifeline) == b""
    assert proc.returncode == 137


def test_what_the_command_leaves_in_its_group_is_stopped_when_it_exits(
    tmp_path: Path, survivors: list[ProcessId]
) -> None:
    pids, done = tmp_path / "pids", tmp_path / "done"
    proc, lifeline = start(group_command(pids, tail=f"until [ -e {done} ]; do sleep 0.05; done; exit 0"), {}, survivors)
    shell, child = recorded(pids, survivors)
    done.touch()
    output, _ = proc.communicate(timeout=30)  # the background sleep holds the output pipe: it ends with it
    assert reported(lifeline) == b""
    assert proc.returncode == 0
    assert gone(shell) and gone(child)
    assert f"{watcher.WATCHER_MARKER}: the command exited; stopping what it left running" in output.decode()


def test_the_group_goes_when_the_lifeline_closes(tmp_path: Path, survivors: list[ProcessId]) -> None:
    pids = tmp_path / "pids"
    proc, lifeline = start(group_command(pids), {}, survivors)
    shell, child = recorded(pids, survivors)
    assert not gone(child)
    lifeline.close()  # as when the worker dies
    wait_gone(shell, child, timeout=10, after="the lifeline closed")
    output, _ = proc.communicate(timeout=10)
    assert f"{watcher.WATCHER_MARKER}: the lifeline closed" in output.decode()


def test_the_group_goes_when_the_worker_is_killed(tmp_path: Path, survivors: list[ProcessId]) -> None:
    """A stand-in worker, killed with SIGKILL: it cannot clean up, its lifeline closes with it."""
    pids = tmp_path / "pids"
    worker_code = textwrap.dedent(f"""
        import os, signal, socket, subprocess, sys
        sys.path.insert(0, {str(Path(watcher.__file__).parent)!r})
        import watcher  # the module alone: standard library only
        ours, theirs = socket.socketpair()
        argv = watcher.watcher_argv(sys.executable, watcher.__file__, sys.argv[1], lifeline=theirs.fileno(),
                                    watch={{"worker": watcher.identify(os.getpid())}}, grace_s={GRACE_S})
        subprocess.Popen(argv, start_new_session=True, pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL)
        theirs.close()
        signal.pause()  # until the test SIGKILLs it
    """)
    worker = subprocess.Popen([sys.executable, "-c", worker_code, group_command(pids)])
    survivors.append(watcher.identify(worker.pid))
    shell, child = recorded(pids, survivors)
    worker.kill()
    worker.wait()
    wait_gone(shell, child, timeout=10, after="the worker was killed")


@pytest.mark.parametrize("detach", [True, False], ids=["detached", "child"])
def test_a_worker_that_kills_its_children_as_it_exits_cannot_leave_the_command_behind(
    detach: bool, tmp_path: Path, survivors: list[ProcessId]
) -> None:
    """A Ray worker that exits SIGKILLs its direct children (RAY_kill_child_processes_on_worker_exit): a watcher that
    is one of them dies before it can stop the command, and the command's background child runs on (the shell dies
    of its parent-death signal only). Detached, the watcher is not the worker's child, and stops the whole group. The
    stand-in worker kills its children (found in /proc, after it has started the watcher) and then itself."""
    pids, children = tmp_path / "pids", tmp_path / "children"
    worker_code = textwrap.dedent(f"""
        import os, signal, socket, subprocess, sys
        sys.path.insert(0, {str(Path(watcher.__file__).parent)!r})
        import watcher  # the module alone: standard library only
        ours, theirs = socket.socketpair()
        argv = watcher.watcher_argv(sys.executable, watcher.__file__, sys.argv[1], lifeline=theirs.fileno(),
                                    watch={{}}, grace_s={GRACE_S}, detach={detach})
        first = subprocess.Popen(argv, start_new_session=True, pass_fds=(theirs.fileno(),), stdout=subprocess.DEVNULL)
        theirs.close()
        sys.stdin.readline()  # the test says when the command runs (it has read its pids)
        if {detach}:
            first.wait()  # the first process exits at once; the watcher is its child, reparented
        mine = [p for p, st in watcher.process_table().items() if st.ppid == os.getpid()]
        open(sys.argv[2], "w").write(" ".join(map(str, mine)))
        for pid in mine:  # as an exiting Ray worker does
            os.kill(pid, signal.SIGKILL)
        os._exit(0)
    """)
    worker = subprocess.Popen([sys.executable, "-c", worker_code, group_command(pids), str(children)],
                              stdin=subprocess.PIPE)  # fmt: skip
    survivors.append(watcher.identify(worker.pid))
    shell, child = recorded(pids, survivors)
    worker.communicate(b"go\n", timeout=30)
    if detach:
        wait_gone(shell, child, timeout=10, after="the worker killed its children and exited")
        assert children.read_text().split() == []  # the watcher was not among them
    else:  # the hole the detach closes: the background child outlives its killed watcher
        wait_gone(shell, timeout=10, after="the watcher was killed (parent-death signal)")
        assert not gone(child) and len(children.read_text().split()) == 1


@pytest.mark.parametrize("name", ["raylet", "launcher"])
def test_the_group_goes_when_a_watched_process_exits(name: str, tmp_path: Path, survivors: list[ProcessId]) -> None:
    pids = tmp_path / "pids"
    watched = stand_in(survivors)
    proc, lifeline = start(group_command(pids), {name: watched}, survivors)
    shell, child = recorded(pids, survivors)
    os.kill(watched.pid, signal.SIGKILL)
    wait_gone(shell, child, timeout=10, after=f"the {name} was killed")
    output, _ = proc.communicate(timeout=10)
    reason = f"the {watcher.DESCRIBE[name]} (pid {watched.pid}) is gone"
    assert f"{watcher.WATCHER_MARKER}: {reason}: stopping the command" in output.decode()
    assert reported(lifeline) == f"{reason}\n".encode()  # so that a worker still alive reports the command lost


def test_a_process_on_another_host_is_not_watched(tmp_path: Path, survivors: list[ProcessId]) -> None:
    watched = stand_in(survivors)
    elsewhere = ProcessId(watched.pid, watched.start, "another-machine.1")
    proc, lifeline = start("echo ran", {"launcher": elsewhere}, survivors)
    os.kill(watched.pid, signal.SIGKILL)
    output, _ = proc.communicate(timeout=30)
    assert reported(lifeline) == b""
    assert (proc.returncode, output.decode()) == (0, "ran\n")


def test_the_command_does_not_start_when_a_watched_process_is_already_gone(
    tmp_path: Path, survivors: list[ProcessId]
) -> None:
    ran = tmp_path / "ran"
    here = watcher.identify(os.getpid())
    reused = ProcessId(here.pid, (here.start or 0) + 1, here.host)  # this pid, but a process that started later
    proc, lifeline = start(f"touch {ran}", {"launcher": reused}, survivors)
    output, _ = proc.communicate(timeout=30)
    assert reported(lifeline) == b""
    assert proc.returncode == watcher.LAUNCHER_ERROR_EXIT
    assert output.decode().startswith(f"{watcher.ERROR_MARKER}: the launcher (pid {here.pid}) is gone")
    assert not ran.exists()


def test_sigterm_stops_the_group_and_sigkill_follows_the_grace(tmp_path: Path, survivors: list[ProcessId]) -> None:
    pids = tmp_path / "pids"
    stubborn = f"(trap '' TERM; exec sleep 300) & echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}; wait"
    proc, lifeline = start(stubborn, {}, survivors)
    shell, child = recorded(pids, survivors)
    proc.send_signal(signal.SIGTERM)  # as _stop() does when the task is cancelled
    wait_gone(shell, timeout=5, after="SIGTERM")
    wait_gone(child, timeout=GRACE_S + 5, after="SIGTERM and the grace period (it ignores SIGTERM)")
    proc.communicate(timeout=10)
    assert reported(lifeline) == b""


def test_a_watch_without_pidfd_polls(monkeypatch: pytest.MonkeyPatch, survivors: list[ProcessId]) -> None:
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    watched = stand_in(survivors)
    watch = watcher._Watch(watched)
    assert watch.fd is None and watch.alive()
    os.kill(watched.pid, signal.SIGKILL)
    poll(lambda: not watch.alive(), timeout=10)
