"""For the dispatcher (on the submitting machine): wrap an entrypoint in the launcher, and build the package that
travels with the job: this whole directory, as ``rayfleet_launcher``."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .spec import (
    PACKAGE,
    SPEC_ENV,
    SpecError,
    parse_spec,
)


def shipped_modules() -> tuple[str, ...]:
    """The files that travel with a job: every module of this package (they import one another relatively, and
    nothing else of rayfleet)."""
    return tuple(sorted(p.name for p in Path(__file__).resolve().parent.glob("*.py")))


def _sources() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {name: (here / name).read_text() for name in shipped_modules()}


def package_path() -> str:
    """The directory of the ``rayfleet_launcher`` package that travels with a job (built once per content, under
    the temp dir, atomically)."""
    files = _sources()
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
