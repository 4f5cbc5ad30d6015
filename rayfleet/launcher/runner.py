"""The launcher itself, inside the cluster: reserve the job's bundles, wait for its group if it has one, run the
user's command under its watcher, and exit with the code the dispatcher reads (`python -m rayfleet_launcher`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import watcher  # standard library only
from .rendezvous import (
    ABORT,
    GO,
    Rendezvous,
    RendezvousError,
    open_store,
    settle,
)
from .spec import (
    BUNDLE_INDEX_ENV,
    COMMAND_LOST_EXIT,
    ERROR_MARKER,
    GROUP_ABORTED_MARKER,
    GROUP_GO_MARKER,
    GROUP_RESERVED_MARKER,
    LAUNCHER_ERROR_EXIT,
    LAUNCHER_UNFIT_EXIT,
    LOST_MARKER,
    ORPHANED_MARKER,
    PLACEMENT_GROUP_ENV,
    RESERVATION_TIMEOUT_EXIT,
    RESERVED_MARKER,
    SPEC_ENV,
    STOPPED_EXIT,
    STOPPED_MARKER,
    TIMEOUT_MARKER,
    UNFIT_MARKER,
    SpecError,
    command_task_name,
    parse_spec,
    placement_group_name,
    task_options,
)

_READ_BYTES = 65536
_STOP_GRACE_S = 2.0
_ORPHAN_EXIT_S = 15.0  # an orphaned launcher stops as for stop_job, and exits at the latest this long after
_WAIT_STEP_S = 0.5
# Variables through which Ray tells a process which accelerators it holds: taken from the task, not the launcher.
_VISIBILITY_SUFFIXES = ("_VISIBLE_DEVICES", "_VISIBLE_CORES", "_VISIBLE_CHIPS", "_VISIBLE_MODULES")
_VISIBILITY_NAMES = ("ONEAPI_DEVICE_SELECTOR",)


def command_env(driver_env: Mapping[str, str], task_env: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of the user's command: what an entrypoint would see (the launcher's own environment, which
    has ``RAY_ADDRESS`` and the job's config), with the accelerators the task holds (from the task's environment),
    and ``extra`` (the reservation)."""
    env = {k: v for k, v in driver_env.items() if not k.startswith("RAY_EXPERIMENTAL_NOSET_") and not _visibility(k)}
    env.update({k: v for k, v in task_env.items() if _visibility(k)})
    env.update(extra)
    return env


def _visibility(name: str) -> bool:
    return name.endswith(_VISIBILITY_SUFFIXES) or name in _VISIBILITY_NAMES


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _stop(target: watcher.ProcessId | None) -> None:
    """Stop the command through its watcher: on SIGTERM it stops the command's whole process group (SIGTERM, then
    SIGKILL after the grace period) and exits. SIGKILL to the watcher only if it has not exited well after that (the
    command's shell then dies of its parent-death signal). By pid and start time: a reused pid is left alone."""
    if target is None or watcher.gone(target):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(target.pid, signal.SIGTERM)
    deadline = time.monotonic() + 2 * _STOP_GRACE_S + 2
    while not watcher.gone(target) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not watcher.gone(target):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.pid, signal.SIGKILL)


def raylet_pid(environ: Mapping[str, str], parent: int, name_of: Callable[[int], str | None]) -> int | None:
    """The pid of the raylet of a worker's node: Ray names it in ``RAY_RAYLET_PID`` and starts its workers as its
    children (``parent``); only a process whose name (``name_of(pid)``) is ``raylet`` counts. None if neither is."""
    for candidate in (environ.get("RAY_RAYLET_PID", ""), str(parent)):
        if candidate.isdigit() and int(candidate) > 1 and name_of(int(candidate)) == "raylet":
            return int(candidate)
    return None


def _watched(launcher: str | None) -> dict[str, watcher.ProcessId]:
    """What the command's watcher watches, from the task's worker: the worker, its raylet, and the launcher."""
    watch = {"worker": watcher.identify(os.getpid())}
    raylet = raylet_pid(os.environ, os.getppid(), watcher.command_name)
    if raylet is not None:
        watch["raylet"] = watcher.identify(raylet)
    if launcher:
        with contextlib.suppress(ValueError):
            watch["launcher"] = watcher.ProcessId.decode(launcher)
    return watch


class _Lifeline:
    """The worker's end of the lifeline, read line by line: the detached watcher's ``pid ...`` first, the reason it
    stopped the command (if it did), and ``exit <code>`` last."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.lines = sock, b"", []

    def read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout`` for something); False at end of file."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return True
        try:
            data = self.sock.recv(_READ_BYTES)
        except OSError:
            return False
        self.buffer += data
        *done, self.buffer = self.buffer.split(b"\n")
        self.lines += [line.decode(errors="replace") for line in done]
        return bool(data)

    def take(self, prefix: str) -> str | None:
        """The rest of the first line that starts with ``prefix`` (removed), or None."""
        for i, line in enumerate(self.lines):
            if line.startswith(prefix):
                del self.lines[i]
                return line[len(prefix) :]
        return None

    def watcher(self, timeout: float) -> watcher.ProcessId | None:
        """The detached watcher, as it announced itself (waiting up to ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (pid := self.take("pid ")) is None and time.monotonic() < deadline:
            if not self.read(max(0.0, deadline - time.monotonic())):
                break
        try:
            return watcher.ProcessId.decode(pid) if pid is not None else None
        except ValueError:
            return None

    def outcome(self) -> tuple[int | None, str | None]:
        """Once the watcher has exited: its exit code (None if it did not say) and why it stopped the command."""
        while self.read(0.5):
            pass
        code = self.take("exit ")
        reason = " ".join(line for line in self.lines if line.strip()) or None
        return (int(code) if code is not None and code.strip().lstrip("-").isdigit() else None), reason


def run_command(command: str, env: Mapping[str, str], launcher: str | None = None) -> Iterator[tuple[str, Any]]:
    """The body of the Ray task that holds the driver bundle: run ``command`` in a shell, under its watcher, and
    stream its output.

    Args:
        launcher: the launcher process (`watcher.ProcessId.encode`): the watcher stops the command when it exits, if
            it runs on this machine.

    Yields ``("out", bytes)`` chunks of merged stdout/stderr, then ``("exit", code)``, or ``("lost", reason)`` when
    the watcher stopped the command because its cluster is going (this node's raylet exited, the launcher did).
    """
    full_env = command_env(env, os.environ, {})
    # The lifeline: this worker holds one end of a socket pair (never written), the watcher the other. End of file
    # there means this process is gone, whatever killed it; the watcher writes who it is, why it stopped the command
    # (if it did) and its exit code. It is detached (not this worker's child): an exiting worker kills its children.
    mine, theirs = socket.socketpair()
    argv = watcher.watcher_argv(sys.executable, watcher.__file__, command, lifeline=theirs.fileno(),
                                watch=_watched(launcher), grace_s=_STOP_GRACE_S, detach=True)  # fmt: skip
    try:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # neither in this worker's process group (the raylet kills it) nor the command's
            pass_fds=(theirs.fileno(),),
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    assert proc.stdout is not None
    lifeline, target = _Lifeline(mine), None
    fd = proc.stdout.fileno()
    try:
        started = proc.wait()  # the first process exits at once (the watcher forked), or says why it could not start
        target = lifeline.watcher(timeout=30.0) if started == 0 else None
        while True:
            # A short select timeout keeps the task's thread in Python, so a cancel (KeyboardInterrupt) is seen.
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(fd, _READ_BYTES)
            if not chunk:
                break
            yield ("out", chunk)
        if started != 0:  # the watcher did not start the command (it printed why)
            yield ("exit", _exit_code(started))
            return
        code, lost = lifeline.outcome()
        if lost is None and code is None:
            lost = "the command's watcher ended without reporting an exit code"
        yield ("lost", lost) if lost is not None else ("exit", code)
    finally:
        _stop(target)
        proc.stdout.close()
        mine.close()


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _submission_id() -> str | None:
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return (config.get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def reserve_and_run(command: str, spec: Mapping[str, Any]) -> int:
    """Reserve ``spec``'s bundles as a placement group, then run ``command`` on the driver bundle. Returns the exit
    code of the launcher (see the module's docstring). Needs ``ray.init()`` done."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles, strategy, timeout_s, driver = spec["bundles"], spec["strategy"], spec["timeout_s"], spec["driver_bundle"]
    submission = _submission_id()
    name = placement_group_name(submission) if submission else ""
    started = time.monotonic()
    if _stopped_before_start(submission):
        _say(f"{STOPPED_MARKER} before it started: nothing was reserved and the command did not run")
        return STOPPED_EXIT
    rendezvous = None
    if spec.get("group") is not None:
        rendezvous, code = _join_group(spec["group"])
        if rendezvous is None:
            return code
    try:
        pg = placement_group(bundles, strategy=strategy, name=name)
    except Exception as e:  # Ray validates bundles and strategy too
        _say(f"{ERROR_MARKER}: cannot create the placement group: {e}")
        return LAUNCHER_ERROR_EXIT
    generator = None
    try:
        if rendezvous is not None:
            code = _settle_group(pg, spec, rendezvous, started, submission)
            if code is not None:
                return code
        elif not _wait_ready(pg, timeout_s):
            remove_placement_group(pg)
            _say(
                f"{TIMEOUT_MARKER} after {timeout_s:g} s: {len(bundles)} bundles {strategy} {json.dumps(bundles)}; "
                "the placement group was removed and the command did not run"
            )
            return RESERVATION_TIMEOUT_EXIT
        waited = time.monotonic() - started
        if _stopped_before_start(submission):
            remove_placement_group(pg)
            _say(f"{STOPPED_MARKER} while reserving: the placement group was removed and the command did not run")
            return STOPPED_EXIT
        _say(f"{RESERVED_MARKER} {len(bundles)} bundles ({strategy}, placement group {pg.id.hex()}, {waited:.2f} s)")
        env = dict(os.environ)
        env.update({PLACEMENT_GROUP_ENV: pg.id.hex(), BUNDLE_INDEX_ENV: str(driver), SPEC_ENV: json.dumps(spec)})
        task = ray.remote(run_command).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=driver),
            num_returns="streaming",
            max_retries=0,  # never run the user's command twice
            retry_exceptions=False,
            name=command_task_name(submission) if submission else "rayfleet-command",
            **task_options(bundles[driver]),
        )
        generator = task.remote(command, env, watcher.identify(os.getpid()).encode())
        out = sys.stdout.buffer
        code: int | None = None
        lost: str | None = None
        try:
            for ref in generator:
                kind, payload = ray.get(ref)
                if kind == "out":
                    out.write(payload)
                    out.flush()
                elif kind == "lost":
                    lost = payload
                else:
                    code = payload
        except ray.exceptions.RayError as e:
            generator = None  # it has ended
            _say(f"{LOST_MARKER}: the task running the command failed: {type(e).__name__}: {e}")
            return COMMAND_LOST_EXIT
        generator = None
        if lost is not None:
            _say(f"{LOST_MARKER}: its watcher stopped the command: {lost}")
            return COMMAND_LOST_EXIT
        if code is None:
            _say(f"{LOST_MARKER}: the task running the command ended without an exit code")
            return COMMAND_LOST_EXIT
        return code
    finally:
        if generator is not None:  # interrupted (the job is being stopped): stop the command, then its task
            _cancel(generator)
        with contextlib.suppress(Exception):
            remove_placement_group(pg)


def _wait_ready(pg: Any, timeout_s: float) -> bool:
    """Whether ``pg`` became ready within ``timeout_s``; waits in short steps, so a SIGTERM (``stop_job``) is handled
    at once rather than after the whole timeout."""
    import ray

    ready = pg.ready()
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = ray.wait([ready], timeout=max(0.0, min(_WAIT_STEP_S, deadline - time.monotonic())))
        if done:
            return True
        if time.monotonic() >= deadline:
            return False


def _cancel(generator: Any) -> None:
    import ray

    try:
        ray.cancel(generator)  # KeyboardInterrupt in the task: it stops the command's process group
        deadline = time.monotonic() + 2 * _STOP_GRACE_S + 1
        for ref in generator:  # drain until the task ends
            if time.monotonic() > deadline:
                break
            try:
                ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                break
    except Exception:
        pass
    with contextlib.suppress(Exception):
        ray.cancel(generator, force=True)


def _join_group(group: Mapping[str, Any]) -> tuple[Rendezvous | None, int]:
    """The group's rendezvous, if it can be reached and has not aborted already; else None and the exit code."""
    try:
        rendezvous = Rendezvous(open_store(group["uri"], group["id"]), group["size"], group["timeout_s"])
        early = rendezvous.decision()
    except Exception as e:
        _say(f"{ERROR_MARKER}: cannot reach the rendezvous of group {group['id']} at {group['uri']}: {e}")
        return None, LAUNCHER_ERROR_EXIT
    if early is not None and early.outcome == ABORT:
        _say(f"{GROUP_ABORTED_MARKER}: {early.reason} (decided by {early.by}); the command did not run")
        return None, RESERVATION_TIMEOUT_EXIT
    if early is not None:  # a member runs only if it announced before "go": this launcher came too late (a retry?)
        _say(f"{GROUP_ABORTED_MARKER}: the group decided go before this launcher started (decided by {early.by}); "
             "the command did not run")  # fmt: skip
        return None, RESERVATION_TIMEOUT_EXIT
    return rendezvous, 0


def _settle_group(pg: Any, spec: Mapping[str, Any], rendezvous: Rendezvous, started: float, submission: str | None
                  ) -> int | None:  # fmt: skip
    """Between "placement group created" and "run the command", for a group member: None to run the command, or the
    exit code to withdraw with (the placement group is removed by the caller)."""
    import ray

    group, ready_ref = spec["group"], pg.ready()
    member = group["member"]
    # The member's own reservation timeout may be longer than the group's (a cluster that must scale up first)
    timeout = max(group["timeout_s"], spec["timeout_s"])

    def wait_ready(timeout: float) -> bool:
        return bool(ray.wait([ready_ref], timeout=timeout)[0])

    def info() -> dict[str, Any]:
        waited = time.monotonic() - started
        _say(f"{GROUP_RESERVED_MARKER} {member} of {group['size']} (group {group['id']}, placement group "
             f"{pg.id.hex()}, {waited:.2f} s); waiting for the group's decision")  # fmt: skip
        return {"placement_group": pg.id.hex(), "submission_id": submission, "waited_s": round(waited, 3)}

    try:
        decision, announced = settle(
            rendezvous, member, wait_ready, deadline=started + timeout, info=info, poll_s=group["poll_s"]
        )
    except RendezvousError as e:
        _say(f"{ERROR_MARKER}: {e}; the command did not run")
        return LAUNCHER_ERROR_EXIT
    except BaseException:  # stopped (SIGTERM) before the decision: make the others withdraw too, if still possible
        with contextlib.suppress(Exception):
            rendezvous.propose(ABORT, f"member {member} was stopped before the group's decision", f"member {member}")
        raise
    if decision.outcome == GO and announced:
        _say(f"{GROUP_GO_MARKER}: all {group['size']} members reserved (decided by {decision.by})")
        return None
    _say(f"{GROUP_ABORTED_MARKER}: {decision.reason} (decided by {decision.by}); the placement group was removed and "
         "the command did not run")  # fmt: skip
    return RESERVATION_TIMEOUT_EXIT


# Ray's job record, in the GCS key-value store (ray/dashboard/modules/job/common.py, JobInfoStorageClient).
_JOB_INFO_KEY, _JOB_INFO_NAMESPACE = "_ray_internal_job_info_{}", "job"


def _stopped_before_start(submission: str | None) -> bool:
    """Whether Ray already records this job STOPPED. ``stop_job`` on a job that is still PENDING (its runtime env
    being set up) marks it STOPPED and sends no signal: the supervisor starts this driver anyway. The
    launcher checks before it reserves and before the command starts, so a job stopped early never runs."""
    if not submission:
        return False
    try:
        from ray.experimental import internal_kv

        raw = internal_kv._internal_kv_get(_JOB_INFO_KEY.format(submission), namespace=_JOB_INFO_NAMESPACE)
        return raw is not None and json.loads(raw).get("status") == "STOPPED"
    except Exception:  # an unreadable record: the signal handler still covers a stop that comes later
        return False


def _on_sigterm(signum: int, frame: Any) -> None:
    _say(f"{STOPPED_MARKER} by signal {signum}: stopping the command and releasing the reservation")
    raise SystemExit(128 + signum)


def _follow_parent(interval: float = _WAIT_STEP_S, exit_after: float = _ORPHAN_EXIT_S) -> None:
    """Share the fate of the process that started the launcher (the shell in which Ray's job supervisor runs the
    entrypoint): once it is gone, the supervisor is (its node's Ray processes were killed, say), and Ray would not stop
    this driver before the GCS gives up on it, a minute later. So the launcher stops as for ``stop_job`` (SIGTERM to
    itself: it cancels the command's task, whose watcher stops the command), and exits ``exit_after`` seconds later if
    that cleanup hangs (a dead GCS); its exit is what the command's watcher sees on this machine."""
    parent = os.getppid()
    if parent <= 1:  # orphaned already, or a pid namespace's init: nothing to follow
        return

    def follow() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        _say(f"{ORPHANED_MARKER}: the launcher's parent (pid {parent}, which Ray's job supervisor started) is gone: "
             "stopping the command and releasing the reservation")  # fmt: skip
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(exit_after)
        _say(f"{ORPHANED_MARKER}: the launcher did not stop within {exit_after:g} s: exiting")
        os._exit(STOPPED_EXIT)

    threading.Thread(target=follow, name="rayfleet-follow-parent", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rayfleet_launcher [--spec JSON] COMMAND...``: the launcher's command line."""
    parser = argparse.ArgumentParser(prog="rayfleet-launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help=f"the gang spec as JSON (default: ${SPEC_ENV})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the user's command (a shell string)")
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        _say(f"{ERROR_MARKER}: no command to run")
        return LAUNCHER_ERROR_EXIT
    command = words[0] if len(words) == 1 else shlex.join(words)
    raw = args.spec if args.spec is not None else os.environ.get(SPEC_ENV)
    if raw is None:
        _say(f"{ERROR_MARKER}: no gang spec (pass --spec or set {SPEC_ENV})")
        return LAUNCHER_ERROR_EXIT
    try:
        spec = parse_spec(raw)
    except SpecError as e:
        _say(f"{ERROR_MARKER}: {e}")
        return LAUNCHER_ERROR_EXIT
    python = f"{sys.executable} (Python {sys.version_info.major}.{sys.version_info.minor})"
    try:
        import ray
    except ImportError as e:
        _say(f"{UNFIT_MARKER}: the python on this cluster's PATH, {python}, cannot import Ray: {e}")
        return LAUNCHER_UNFIT_EXIT
    try:
        ray.init(log_to_driver=False)
    except Exception as e:
        cause = f"{type(e).__name__}: {e}"
        _say(f"{UNFIT_MARKER}: {python} with Ray {ray.__version__} cannot connect to its cluster: {cause}")
        return LAUNCHER_UNFIT_EXIT
    # Ray's stop_job sends SIGTERM: stop the command and remove the group. After ray.init(), which installs its own.
    signal.signal(signal.SIGTERM, _on_sigterm)
    _follow_parent()
    try:
        return reserve_and_run(command, spec)
    finally:
        ray.shutdown()
