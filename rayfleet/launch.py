"""The launcher rayfleet puts around a job's entrypoint: reserve the job's bundles, then run the user's command.

The job is submitted with zero entrypoint resources, so Ray starts this launcher at once. The launcher

1. connects to its own cluster (``ray.init()``; inside a Ray job ``RAY_ADDRESS`` points at it) and reads the gang spec
   (JSON, from ``--spec`` or the ``RAYFLEET_GANG_SPEC`` environment variable)::

       {"bundles": [{"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}, ...],
        "strategy": "STRICT_SPREAD", "timeout_s": 30, "driver_bundle": 0}

2. creates a placement group of those bundles and waits up to ``timeout_s`` for it;
3. if it is not ready in time: removes it, prints ``rayfleet: reservation timed out ...`` and exits with
   ``RESERVATION_TIMEOUT_EXIT`` (75). The user's command never ran;
4. if it is ready: prints ``rayfleet: reserved <n> bundles ...`` and runs the user's command (a shell string) in a
   Ray task that holds the driver bundle (so Ray sets ``CUDA_VISIBLE_DEVICES`` as it would for entrypoint GPUs). The
   command's output (stdout and stderr, merged) streams back to the launcher, which prints it into the job's log. The
   launcher exits with the command's exit code.

The task does not run the command itself: it starts the command's *watcher* (``watcher.py``), which runs the command as
a process group of its own and takes that whole group down (SIGTERM, then SIGKILL) when the command loses its cluster:
when the task's worker dies (however: the watcher holds one end of a socket pair, the *lifeline*, whose other end only
the worker has), when the raylet of its node exits (the Ray session it runs in is gone), or when this launcher exits
while it runs on the same machine (a launcher elsewhere: Ray itself kills a dead driver's workers, and so the lifeline
closes). The launcher, in turn, stops when the process Ray's job supervisor started it under is gone (the head's Ray
processes were killed: Ray itself would leave this driver running for a minute). So a command does not outlive the
attempt that started it, and a dispatcher that runs the job again elsewhere does not run it twice at once. When the
command's shell exits, what it left running in its group is stopped too, as Ray does for an entrypoint.

The user's command finds its reservation through ``rayfleet.reservation.current()`` (environment variables
``RAYFLEET_PLACEMENT_GROUP_ID``, ``RAYFLEET_GANG_SPEC``, ``RAYFLEET_BUNDLE_INDEX``).

This module travels with the job (``runtime_env`` ``py_modules``), so clusters need no rayfleet installed: it imports
only the standard library, ``ray`` and its sibling ``watcher``, never the rest of rayfleet. ``wrap()`` is what a
dispatcher calls; it ships a copy of this file, ``reservation.py`` and ``watcher.py`` as the small package
``rayfleet_launcher`` and returns the new entrypoint
(``python -m rayfleet_launcher '<command>'``). ``python -m rayfleet.launch '<command>'`` works where rayfleet is
installed.

Exit codes and log markers a dispatcher can rely on (a marker is a whole line of the job's log):

- ``rayfleet: reserved <n> bundles`` -- the reservation is held and the user's command is about to start;
  from then on the exit code is the command's own (a signal N gives 128 + N).
- ``rayfleet: reservation timed out`` and exit ``RESERVATION_TIMEOUT_EXIT`` (75) -- the group was removed and the
  command never ran. A command may exit 75 itself: only the marker tells the two apart.
- ``rayfleet: launcher error`` and exit ``LAUNCHER_ERROR_EXIT`` (76) -- a bad spec or a failure before the command
  started: the command never ran.
- ``rayfleet: stopped by signal <n>`` -- the job was stopped (``stop_job``); the launcher stops the command (if it
  had started) and removes the group.
- ``rayfleet: stopped before it started`` / ``... while reserving`` and exit ``STOPPED_EXIT`` (143) -- Ray records
  the job STOPPED although this driver runs: ``stop_job`` came while the job was PENDING, which sends no signal. The
  command never ran (the launcher reads the job's record before reserving and before the command starts).
- ``rayfleet: orphaned`` -- the process that started the launcher (the shell of Ray's job supervisor) is gone, so is
  the supervisor: the launcher stops as for ``stop_job`` (the line ``rayfleet: stopped by signal 15`` follows), and
  exits at the latest ``_ORPHAN_EXIT_S`` (15) seconds later. Nobody may read the log by then.
- ``rayfleet: command lost`` and exit ``COMMAND_LOST_EXIT`` (77) -- the task that ran the command died (its node
  died, for instance), or the command's watcher stopped it because the raylet of its node exited: the command
  started and may or may not have finished; its watcher stops whatever of it is left (a line
  ``rayfleet: watcher: ...``, when the log still gets it).

The launcher's report to the dispatcher (version ``REPORT_VERSION``), read through Ray's state API without fetching
logs: the placement group is named ``rayfleet:<submission id>`` (created: the reservation is held; its bundles name
the nodes), and the task that runs the command is named ``rayfleet:<submission id>:command`` (it exists once the
reservation is held and, for a group member, the group said go: the command starts).

A job can be a member of a group (``"group"`` in the spec, see docs/groups.md): then no member runs its command until
every member has reserved. Between "placement group ready" and "run the command" the launcher writes
``reserved-<member>`` into the group's rendezvous directory and waits for the group's one ``decision`` (``go`` or
``abort``), made once by an exclusive create; it prints ``rayfleet: group member reserved ...`` then either
``rayfleet: group go ...`` (and runs the command as above) or ``rayfleet: group aborted: <why>`` and exits
``RESERVATION_TIMEOUT_EXIT`` (75) without running it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import watcher  # shipped beside this module, standard library only

RESERVATION_TIMEOUT_EXIT = 75  # the placement group was not ready within timeout_s; the command never ran
LAUNCHER_ERROR_EXIT = 76  # bad spec, or a failure before the command started; the command never ran
COMMAND_LOST_EXIT = 77  # the task running the command died; the command started
STOPPED_EXIT = 143  # stopped (Ray's stop_job) before the command started; as for SIGTERM, 128 + 15

SPEC_ENV = "RAYFLEET_GANG_SPEC"  # the gang spec (JSON), set by wrap() through runtime_env env_vars
PLACEMENT_GROUP_ENV = "RAYFLEET_PLACEMENT_GROUP_ID"  # hex id of the reserved group, set for the user's command
BUNDLE_INDEX_ENV = "RAYFLEET_BUNDLE_INDEX"  # the bundle the user's command holds, set for the user's command

MARKER = "rayfleet:"  # every line the launcher itself prints starts with this
RESERVED_MARKER = "rayfleet: reserved"
TIMEOUT_MARKER = "rayfleet: reservation timed out"
ERROR_MARKER = "rayfleet: launcher error"
LOST_MARKER = "rayfleet: command lost"
STOPPED_MARKER = "rayfleet: stopped"
GROUP_RESERVED_MARKER = "rayfleet: group member reserved"  # this member holds its reservation; the group decides
GROUP_GO_MARKER = "rayfleet: group go"  # every member reserved: the command is about to start
GROUP_ABORTED_MARKER = "rayfleet: group aborted"  # exit 75: the group withdrew, the command never ran
ORPHANED_MARKER = "rayfleet: orphaned"  # the process that started the launcher (Ray's job supervisor) is gone

REPORT_VERSION = 1  # the names below; the dispatcher writes it into the job's metadata under REPORT_KEY
REPORT_KEY = "rayfleet.report"


def placement_group_name(submission_id: str) -> str:
    """The name of the placement group that holds an attempt's reservation."""
    return f"rayfleet:{submission_id}"


def command_task_name(submission_id: str) -> str:
    """The name of the Ray task that runs an attempt's command (it is created when the command starts)."""
    return f"rayfleet:{submission_id}:command"


PACKAGE = "rayfleet_launcher"  # the name of the package wrap() ships with a job
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_TIMEOUT_S = 30.0
_READ_BYTES = 65536
_STOP_GRACE_S = 2.0
_ORPHAN_EXIT_S = 15.0  # an orphaned launcher stops as for stop_job, and exits at the latest this long after
_WAIT_STEP_S = 0.5
# Variables through which Ray tells a process which accelerators it holds: taken from the task, not the launcher.
_VISIBILITY_SUFFIXES = ("_VISIBLE_DEVICES", "_VISIBLE_CORES", "_VISIBLE_CHIPS", "_VISIBLE_MODULES")
_VISIBILITY_NAMES = ("ONEAPI_DEVICE_SELECTOR",)


class SpecError(ValueError):
    """The gang spec is malformed."""


def parse_spec(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    """Validate a gang spec (JSON text or a mapping) and return it normalized.

    Raises:
        SpecError: with what is wrong.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SpecError(f"the gang spec is not JSON: {e}") from None
    if not isinstance(raw, Mapping):
        raise SpecError("the gang spec must be a JSON object")
    bundles = raw.get("bundles")
    if not isinstance(bundles, list) or not bundles:
        raise SpecError("'bundles' must be a non-empty list of {resource: amount} objects")
    clean: list[dict[str, float]] = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping):
            raise SpecError(f"bundle {i} must be an object of resource amounts")
        out: dict[str, float] = {}
        for key, value in bundle.items():
            if not isinstance(key, str) or not key:
                raise SpecError(f"bundle {i} has a resource name that is not a non-empty string: {key!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise SpecError(f"bundle {i}: {key} must be a non-negative number, not {value!r}")
            if value > 0:
                out[key] = value
        if not out:
            raise SpecError(f"bundle {i} asks for nothing (Ray refuses an empty bundle)")
        clean.append(out)
    strategy = raw.get("strategy", "PACK")
    if strategy not in STRATEGIES:
        raise SpecError(f"'strategy' must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    timeout_s = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s < 0:
        raise SpecError(f"'timeout_s' must be a non-negative number of seconds, not {timeout_s!r}")
    driver = raw.get("driver_bundle", 0)
    if isinstance(driver, bool) or not isinstance(driver, int) or not 0 <= driver < len(clean):
        raise SpecError(f"'driver_bundle' must be a bundle index in [0, {len(clean)}), not {driver!r}")
    spec: dict[str, Any] = {
        "bundles": clean, "strategy": strategy, "timeout_s": float(timeout_s), "driver_bundle": driver
    }  # fmt: skip
    if raw.get("group") is not None:
        spec["group"] = parse_group(raw["group"])
    return spec


def task_options(bundle: Mapping[str, float]) -> dict[str, Any]:
    """Ray task options that ask for exactly ``bundle`` (so the task fits the bundle, and holds all of it)."""
    resources = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
    options: dict[str, Any] = {"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)}
    if bundle.get("memory"):
        options["memory"] = bundle["memory"]
    if resources:
        options["resources"] = resources
    return options


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


def _stop(proc: subprocess.Popen) -> None:
    """Stop the command through its watcher: on SIGTERM it stops the command's whole process group (SIGTERM, then
    SIGKILL after the grace period) and exits. SIGKILL to the watcher only if it has not exited well after that (the
    command's shell then dies of its parent-death signal)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(2 * _STOP_GRACE_S + 2)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


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


def _lost_reason(lifeline: socket.socket) -> str | None:
    """What the watcher wrote to the lifeline before it stopped the command (it has exited), or None."""
    lifeline.setblocking(False)
    try:
        data = lifeline.recv(_READ_BYTES)
    except OSError:  # nothing written (BlockingIOError), or the watcher's end is gone
        return None
    return data.decode(errors="replace").strip() or None


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
    # there means this process is gone, whatever killed it; the watcher writes why it stopped the command, if it did.
    lifeline, theirs = socket.socketpair()
    argv = watcher.watcher_argv(sys.executable, watcher.__file__, command, lifeline=theirs.fileno(),
                                watch=_watched(launcher), grace_s=_STOP_GRACE_S)  # fmt: skip
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
        lifeline.close()
        raise
    finally:
        theirs.close()
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    try:
        while True:
            # A short select timeout keeps the task's thread in Python, so a cancel (KeyboardInterrupt) is seen.
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            chunk = os.read(fd, _READ_BYTES)
            if not chunk:
                break
            yield ("out", chunk)
        code = _exit_code(proc.wait())
        lost = _lost_reason(lifeline)
        yield ("lost", lost) if lost is not None else ("exit", code)
    finally:
        _stop(proc)
        proc.stdout.close()
        lifeline.close()


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


# --- groups: no member runs its command until every member of the group has reserved ------------------------------

GO, ABORT = "go", "abort"
# What a member does next (`next_action`): obey a decision, propose one, or wait.
PROPOSE_GO, PROPOSE_ABORT, WAIT, WITHDRAW = "propose-go", "propose-abort", "wait", "withdraw"
DECISION_FILE = "decision"
RESERVED_PREFIX = "reserved-"
DEFAULT_GROUP_POLL_S = 0.2
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RendezvousError(RuntimeError):
    """The group's rendezvous storage could not be read or written (for longer than the group can wait)."""


def parse_group(raw: Any) -> dict[str, Any]:
    """Validate a group spec ``{"uri", "id", "member", "size", "timeout_s"[, "poll_s"]}`` and return it normalized.

    Raises:
        SpecError: with what is wrong.
    """
    if not isinstance(raw, Mapping):
        raise SpecError("'group' must be an object with uri, id, member, size and timeout_s")
    unknown = sorted(set(raw) - {"uri", "id", "member", "size", "timeout_s", "poll_s"})
    if unknown:
        raise SpecError(f"'group' has unknown keys {unknown}")
    uri, group_id, member, size = raw.get("uri"), raw.get("id"), raw.get("member"), raw.get("size")
    if not isinstance(uri, str) or not uri.strip():
        raise SpecError("'group.uri' must be a directory or an fsspec URI (e.g. s3://bucket/groups)")
    if not isinstance(group_id, str) or not _GROUP_ID.match(group_id):
        raise SpecError(f"'group.id' must be 1-128 letters, digits, '.', '_' or '-', not {group_id!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SpecError(f"'group.size' must be a whole number >= 1, not {size!r}")
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < size:
        raise SpecError(f"'group.member' must be an index in [0, {size}), not {member!r}")
    out: dict[str, Any] = {"uri": uri, "id": group_id, "member": member, "size": size}
    for key, default in (("timeout_s", None), ("poll_s", DEFAULT_GROUP_POLL_S)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SpecError(f"'group.{key}' must be a number of seconds > 0, not {value!r}")
        out[key] = float(value)
    return out


def next_action(decision: str | None, reserved: Sequence[int] | set[int], size: int, me: int, expired: bool) -> str:
    """The group's rule, for member ``me`` of ``size``: what to do now.

    Args:
        decision: the group's decision so far (``"go"``, ``"abort"``) or None.
        reserved: the members whose ``reserved-<i>`` exists.
        expired: whether this member's deadline has passed.

    Returns:
        ``"go"`` / ``"abort"``: obey the decision. ``"propose-go"``: every member is reserved, try to decide go.
        ``"propose-abort"``: no decision and the deadline passed, try to decide abort. ``"wait"``: look again soon.
        ``"withdraw"``: the group went without this member's reservation (the protocol makes that impossible; a member
        that sees it must not run).

    Example:
        >>> next_action(None, {0, 1}, 2, 0, expired=False), next_action(None, {0}, 2, 0, expired=True)
        ('propose-go', 'propose-abort')
    """
    if decision == ABORT:
        return ABORT
    if decision == GO:
        return GO if me in reserved else (WITHDRAW if expired else WAIT)
    if all(i in reserved for i in range(size)):
        return PROPOSE_GO
    return PROPOSE_ABORT if expired else WAIT


@dataclass(frozen=True)
class GroupDecision:
    """The group's one decision. ``by`` says who made it (``member <i>`` or ``dispatcher``), ``at`` is wall time."""

    outcome: str
    by: str
    reason: str
    at: float

    def to_bytes(self) -> bytes:
        return json.dumps({"decision": self.outcome, "by": self.by, "reason": self.reason, "at": self.at}).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> GroupDecision | None:
        """None while there is no decision (or it is still being written); an unreadable one counts as abort, which
        never runs anything."""
        if not data:
            return None
        try:
            raw = json.loads(data)
            if raw["decision"] in (GO, ABORT):
                return cls(raw["decision"], str(raw.get("by", "?")), str(raw.get("reason", "")), float(raw["at"]))
        except (ValueError, KeyError, TypeError):
            pass
        return cls(ABORT, "?", f"the decision file is unreadable: {data[:80]!r}", 0.0)


class LocalStore:
    """A rendezvous directory on a filesystem every member can reach: this machine's (the local fleet) or a shared
    mount. The decision's exclusive create is a hard link of a complete temporary file (atomic, and never seen half
    written); where links are not supported, ``O_CREAT | O_EXCL``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    def _temp(self, data: bytes) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        temp = self.path / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def write(self, name: str, data: bytes) -> None:
        """Write (or replace) ``name`` atomically."""
        os.replace(self._temp(data), self.path / name)

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` only if it does not exist; False when it does."""
        temp = self._temp(data)
        try:
            os.link(temp, self.path / name)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: O_EXCL (a reader may briefly see it empty, and waits)
            try:
                fd = os.open(self.path / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.path) if not n.startswith(".")]
        except FileNotFoundError:
            return []


class FsspecStore:
    """A rendezvous under an fsspec URI (``s3://bucket/prefix``, ``gs://...``, ``memory://...``). fsspec (and the
    backend's package) must be installed where the URI is used; it is imported only here. The decision's exclusive
    create is ``pipe_file(mode="create")``: atomic where the backend turns it into a conditional write (s3fs:
    ``If-None-Match: *``; gcsfs: ``ifGenerationMatch=0``), a check-then-write that two writers can race elsewhere."""

    def __init__(self, uri: str) -> None:
        fsspec = importlib.import_module("fsspec")  # optional: the launcher needs it only for URIs with a scheme
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)

    def __repr__(self) -> str:
        return f"FsspecStore({self.uri!r})"

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def create(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(name), data, mode="create")
        except FileExistsError:
            return False
        return True

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self.root)  # listings are cached by some backends: members must see new files
        try:
            return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []


def is_remote_uri(uri: str) -> bool:
    """Whether ``uri`` names an fsspec location (a scheme other than ``file://``) rather than a local directory."""
    return bool(_SCHEME.match(uri)) and not uri.startswith("file://")


def open_store(uri: str, group_id: str) -> LocalStore | FsspecStore:
    """The rendezvous of group ``group_id`` under ``uri``: a local directory (a path, or ``file://``), or an fsspec
    location (a URI with another scheme)."""
    if is_remote_uri(uri):
        return FsspecStore(f"{uri.rstrip('/')}/{group_id}")
    return LocalStore(Path(uri.removeprefix("file://")).expanduser() / group_id)


class Rendezvous:
    """One group's rendezvous, as seen by a member or the dispatcher: who has reserved, and the one decision.

    Args:
        store: where the group's files are (`LocalStore` or `FsspecStore`).
        size: the number of members.
        timeout_s: how long each member waits from its start (for messages).
    """

    def __init__(self, store: Any, size: int, timeout_s: float) -> None:
        self.store, self.size, self.timeout_s = store, size, timeout_s

    def decision(self) -> GroupDecision | None:
        return GroupDecision.from_bytes(self.store.read(DECISION_FILE))

    def reserved(self) -> dict[int, dict[str, Any]]:
        """Member index -> what it wrote when it reserved."""
        out = {}
        for name in self.store.names():
            index = name[len(RESERVED_PREFIX) :]
            if name.startswith(RESERVED_PREFIX) and index.isdigit() and int(index) < self.size:
                with contextlib.suppress(ValueError, TypeError):
                    out[int(index)] = json.loads(self.store.read(name) or b"{}")
        return out

    def announce(self, member: int, info: Mapping[str, Any]) -> None:
        """Member ``member`` holds its reservation (and keeps it until the decision)."""
        self.store.write(f"{RESERVED_PREFIX}{member}", json.dumps({"member": member, **info}).encode())

    def propose(self, outcome: str, reason: str, by: str) -> GroupDecision | None:
        """Try to make the decision; return the one in force (ours, or the one that won the race)."""
        self.store.create(DECISION_FILE, GroupDecision(outcome, by, reason, time.time()).to_bytes())
        return self.decision()

    def step(self, member: int, expired: bool) -> GroupDecision | None:
        """One turn of member ``member``'s rule (`next_action`): the decision to obey, or None to look again."""
        decision = self.decision()
        reserved = set(self.reserved()) if decision is None or decision.outcome == GO else set()
        action = next_action(decision.outcome if decision else None, reserved, self.size, member, expired)
        if action in (GO, ABORT):
            return decision
        if action == WITHDRAW:
            return GroupDecision(ABORT, f"member {member}", "the group went without this member's reservation", 0.0)
        if action == PROPOSE_GO:
            return self.propose(GO, f"all {self.size} members reserved", f"member {member}")
        if action == PROPOSE_ABORT:
            missing = [i for i in range(self.size) if i not in reserved]
            return self.propose(
                ABORT, f"member(s) {missing} not reserved within {self.timeout_s:g} s", f"member {member}"
            )
        return None


def settle(
    rendezvous: Rendezvous,
    member: int,
    wait_ready: Callable[[float], bool],
    *,
    deadline: float,
    info: Callable[[], Mapping[str, Any]] = dict,
    poll_s: float = DEFAULT_GROUP_POLL_S,
    grace_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[GroupDecision, bool]:
    """Member ``member``'s side of the protocol, from "placement group created" to the group's decision.

    Waits for its reservation (``wait_ready(t)``: whether it became ready within ``t`` seconds), then writes
    ``reserved-<member>`` (with ``info()``), and follows `Rendezvous.step` until there is a decision. Storage errors
    are retried until ``deadline + grace_s`` (default: the timeout again).

    Returns:
        The decision, and whether this member announced its reservation.

    Raises:
        RendezvousError: the storage kept failing past the grace period: the member must withdraw without running.
    """
    grace = rendezvous.timeout_s if grace_s is None else grace_s
    ready = announced = False
    details: dict[str, Any] | None = None
    while True:
        if not ready:
            ready = wait_ready(max(0.0, min(poll_s, deadline - clock())))
            if ready:
                details = {"at": time.time(), **info()}
        try:
            if details is not None and not announced:
                rendezvous.announce(member, details)
                announced = True
            decision = rendezvous.step(member, expired=clock() >= deadline)
            if decision is not None:
                return decision, announced
        except Exception as e:
            if clock() >= deadline + grace:
                raise RendezvousError(f"the group's rendezvous {rendezvous.store!r} failed: {e}") from e
        if ready or clock() >= deadline:
            sleep(poll_s)


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
    try:
        import ray

        ray.init(log_to_driver=False)
    except Exception as e:
        _say(f"{ERROR_MARKER}: cannot connect to the Ray cluster: {type(e).__name__}: {e}")
        return LAUNCHER_ERROR_EXIT
    # Ray's stop_job sends SIGTERM: stop the command and remove the group. After ray.init(), which installs its own.
    signal.signal(signal.SIGTERM, _on_sigterm)
    _follow_parent()
    try:
        return reserve_and_run(command, spec)
    finally:
        ray.shutdown()


# --- for the dispatcher (runs on the submitting machine) ---------------------------------------------------------


SHIPPED_MODULES = ("launch.py", "reservation.py", "watcher.py")  # the files of rayfleet that travel with a job


def _sources() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {name: (here / name).read_text() for name in SHIPPED_MODULES}


_INIT = (
    '"""rayfleet\'s launcher, shipped with a job (a copy of rayfleet/launch.py, reservation.py and watcher.py)."""\n\n'
    "from rayfleet_launcher.reservation import Reservation, current, reserved\n\n"
    "__all__ = ['Reservation', 'current', 'reserved']\n"
)
_MAIN = "import sys\n\nfrom rayfleet_launcher.launch import main\n\nsys.exit(main())\n"


def package_path() -> str:
    """The directory of the ``rayfleet_launcher`` package that travels with a job (built once per content, under
    the temp dir, atomically)."""
    files = {**_sources(), "__init__.py": _INIT, "__main__.py": _MAIN}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"rayfleet-launcher-{os.getuid() if hasattr(os, 'getuid') else 0}"
    final = root / digest / PACKAGE
    if final.is_dir():
        return str(final)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-", dir=root))
    try:
        (staging / PACKAGE).mkdir()
        for name, text in files.items():
            (staging / PACKAGE / name).write_text(text)
        try:
            os.rename(staging, root / digest)
        except OSError:  # another process built it first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(final)


def wrap(
    entrypoint: str,
    bundles: list[dict[str, float]],
    strategy: str,
    timeout_s: float,
    driver_bundle: int = 0,
    *,
    group: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Put the launcher around ``entrypoint``.

    Args:
        group: makes the job member ``group["member"]`` of a group (see `parse_group` and docs/groups.md): it runs its
            command only once every member has reserved, and withdraws (exit 75) when the group aborts.

    Returns:
        The new entrypoint, and the runtime_env additions to merge into the job's (``merge_runtime_env``):
        ``py_modules`` with the launcher package, and ``env_vars`` with the gang spec. Submit the job with zero
        entrypoint resources.

    Raises:
        SpecError: the gang is malformed.
    """
    raw: dict[str, Any] = {
        "bundles": bundles, "strategy": strategy, "timeout_s": timeout_s, "driver_bundle": driver_bundle
    }  # fmt: skip
    if group is not None:
        raw["group"] = group
    spec = parse_spec(raw)
    if not entrypoint.strip():
        raise SpecError("the entrypoint is empty")
    new = f"python -m {PACKAGE} {shlex.quote(entrypoint)}"
    return new, {"py_modules": [package_path()], "env_vars": {SPEC_ENV: json.dumps(spec, separators=(",", ":"))}}


def merge_runtime_env(runtime_env: Mapping[str, Any] | None, additions: Mapping[str, Any]) -> dict[str, Any]:
    """``runtime_env`` with ``additions`` merged in: lists appended, ``env_vars`` updated, other keys set."""
    merged = dict(runtime_env or {})
    for key, value in additions.items():
        if key == "py_modules":
            merged[key] = [*merged.get(key, []), *value]
        elif key == "env_vars":
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


if __name__ == "__main__":
    sys.exit(main())
