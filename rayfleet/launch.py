"""The launcher rayfleet puts around a job's entrypoint: reserve the job's bundles, then run the user's command.

The job is submitted with zero entrypoint resources, so Ray starts this launcher at once. The launcher

1. connects to its own cluster (``ray.init()``; inside a Ray job ``RAY_ADDRESS`` points at it) and reads the gang spec
   (JSON, from ``--spec`` or the ``RAYFLEET_GANG_SPEC`` environment variable)::

       {"bundles": [{"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}, ...],
        "strategy": "STRICT_SPREAD", "timeout_s": 30, "driver_bundle": 0}

2. creates a placement group of those bundles and waits up to ``timeout_s`` for it;
3. if it is not ready in time: removes it, prints ``rayfleet: reservation timed out ...`` and exits with
   ``RESERVATION_TIMEOUT_EXIT`` (75). The user's command never ran;
4. if it is ready: prints ``rayfleet: reserved <n> bundles ...`` and runs the user's command (a shell string) as a
   subprocess of a Ray task that holds the driver bundle (so Ray sets ``CUDA_VISIBLE_DEVICES`` as it would for
   entrypoint GPUs). The command's output (stdout and stderr, merged) streams back to the launcher, which prints it
   into the job's log. The launcher exits with the command's exit code.

The user's command finds its reservation through ``rayfleet.gang.current()`` (environment variables
``RAYFLEET_PLACEMENT_GROUP_ID``, ``RAYFLEET_GANG_SPEC``, ``RAYFLEET_BUNDLE_INDEX``).

This module travels with the job (``runtime_env`` ``py_modules``), so clusters need no rayfleet installed: it imports
only the standard library and ``ray``, never the rest of rayfleet. ``wrap()`` is what a dispatcher calls; it ships a
copy of this file and of ``gang.py`` as the small package ``rayfleet_launcher`` and returns the new entrypoint
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
- ``rayfleet: command lost`` and exit ``COMMAND_LOST_EXIT`` (77) -- the task that ran the command died (its node
  died, for instance): the command started and may or may not have finished.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

RESERVATION_TIMEOUT_EXIT = 75  # the placement group was not ready within timeout_s; the command never ran
LAUNCHER_ERROR_EXIT = 76  # bad spec, or a failure before the command started; the command never ran
COMMAND_LOST_EXIT = 77  # the task running the command died; the command started

SPEC_ENV = "RAYFLEET_GANG_SPEC"  # the gang spec (JSON), set by wrap() through runtime_env env_vars
PLACEMENT_GROUP_ENV = "RAYFLEET_PLACEMENT_GROUP_ID"  # hex id of the reserved group, set for the user's command
BUNDLE_INDEX_ENV = "RAYFLEET_BUNDLE_INDEX"  # the bundle the user's command holds, set for the user's command

MARKER = "rayfleet:"  # every line the launcher itself prints starts with this
RESERVED_MARKER = "rayfleet: reserved"
TIMEOUT_MARKER = "rayfleet: reservation timed out"
ERROR_MARKER = "rayfleet: launcher error"
LOST_MARKER = "rayfleet: command lost"
STOPPED_MARKER = "rayfleet: stopped"

PACKAGE = "rayfleet_launcher"  # the name of the package wrap() ships with a job
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
DEFAULT_TIMEOUT_S = 30.0
_READ_BYTES = 65536
_STOP_GRACE_S = 2.0
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
    return {"bundles": clean, "strategy": strategy, "timeout_s": float(timeout_s), "driver_bundle": driver}


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


def _parent_death_signal() -> Any:
    """A function for the child between fork and exec that asks Linux to SIGKILL the command's shell when the task's
    worker dies (a backstop for a killed worker), or None where that is not available. Prepared before the fork, so
    the child imports nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen) -> None:
    """Stop the command's whole process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, _STOP_GRACE_S)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def run_command(command: str, env: Mapping[str, str]) -> Iterator[tuple[str, Any]]:
    """The body of the Ray task that holds the driver bundle: run ``command`` in a shell and stream its output.

    Yields ``("out", bytes)`` chunks of merged stdout/stderr, then ``("exit", code)``.
    """
    full_env = command_env(env, os.environ, {})
    proc = subprocess.Popen(
        command,
        shell=True,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so that _stop() reaches everything it started
        preexec_fn=_parent_death_signal(),
    )
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
        yield ("exit", _exit_code(proc.wait()))
    finally:
        _stop(proc)
        proc.stdout.close()


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
    name = f"rayfleet:{submission}" if submission else ""
    started = time.monotonic()
    try:
        pg = placement_group(bundles, strategy=strategy, name=name)
    except Exception as e:  # Ray validates bundles and strategy too
        _say(f"{ERROR_MARKER}: cannot create the placement group: {e}")
        return LAUNCHER_ERROR_EXIT
    generator = None
    try:
        if not _wait_ready(pg, timeout_s):
            remove_placement_group(pg)
            _say(
                f"{TIMEOUT_MARKER} after {timeout_s:g} s: {len(bundles)} bundles {strategy} {json.dumps(bundles)}; "
                "the placement group was removed and the command did not run"
            )
            return RESERVATION_TIMEOUT_EXIT
        waited = time.monotonic() - started
        _say(f"{RESERVED_MARKER} {len(bundles)} bundles ({strategy}, placement group {pg.id.hex()}, {waited:.2f} s)")
        env = dict(os.environ)
        env.update({PLACEMENT_GROUP_ENV: pg.id.hex(), BUNDLE_INDEX_ENV: str(driver), SPEC_ENV: json.dumps(spec)})
        task = ray.remote(run_command).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=driver),
            num_returns="streaming",
            max_retries=0,  # never run the user's command twice
            retry_exceptions=False,
            name="rayfleet-command",
            **task_options(bundles[driver]),
        )
        generator = task.remote(command, env)
        out = sys.stdout.buffer
        code: int | None = None
        try:
            for ref in generator:
                kind, payload = ray.get(ref)
                if kind == "out":
                    out.write(payload)
                    out.flush()
                else:
                    code = payload
        except ray.exceptions.RayError as e:
            generator = None  # it has ended
            _say(f"{LOST_MARKER}: the task running the command failed: {type(e).__name__}: {e}")
            return COMMAND_LOST_EXIT
        generator = None
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


def _on_sigterm(signum: int, frame: Any) -> None:
    _say(f"{STOPPED_MARKER} by signal {signum}: stopping the command and releasing the reservation")
    raise SystemExit(128 + signum)


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
    try:
        return reserve_and_run(command, spec)
    finally:
        ray.shutdown()


# --- for the dispatcher (runs on the submitting machine) ---------------------------------------------------------


def _sources() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {"launch.py": (here / "launch.py").read_text(), "gang.py": (here / "gang.py").read_text()}


_INIT = '"""rayfleet\'s launcher, shipped with a job (a copy of rayfleet/launch.py and rayfleet/gang.py)."""\n\n'
_INIT += "from rayfleet_launcher.gang import Gang, current, in_gang\n\n__all__ = ['Gang', 'current', 'in_gang']\n"
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
) -> tuple[str, dict[str, Any]]:
    """Put the launcher around ``entrypoint``.

    Returns:
        The new entrypoint, and the runtime_env additions to merge into the job's (``merge_runtime_env``):
        ``py_modules`` with the launcher package, and ``env_vars`` with the gang spec. Submit the job with zero
        entrypoint resources.

    Raises:
        SpecError: the gang is malformed.
    """
    spec = parse_spec(
        {"bundles": bundles, "strategy": strategy, "timeout_s": timeout_s, "driver_bundle": driver_bundle}
    )
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
