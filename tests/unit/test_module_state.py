"""No module of rayfleet holds mutable state: two Fleets in one process share nothing through a module attribute.

Every module under rayfleet/ is imported and each of its attributes checked: values must be immutable (numbers,
strings, patterns, enums, tuples, frozensets, read-only mappings, frozen dataclasses, all checked inside), or code
(functions, classes, modules, memoising caches). Anything else, a list, a dict, a set or an object that can change,
must be in `ALLOWED` with the reason it is safe.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import logging
import pkgutil
import re
import subprocess
import sys
import threading
import types
from pathlib import Path, PurePath
from typing import Any

import pytest
from sqlalchemy.sql import ClauseElement

import rayfleet

# (module, attribute): why its mutable object is not state two fleets could share by accident
ALLOWED = {
    ("rayfleet.cli.common", "app"): "typer's command table: filled by decorators at import, only read afterwards",
    ("rayfleet.cli.common", "local_app"): "typer's command table of `rayfleet local`, as `app`",
    ("rayfleet.cli.common", "out"): "the CLI process's console on stdout",
    ("rayfleet.cli.common", "err"): "the CLI process's console on stderr",
    ("rayfleet.backends.ray_jobs", "_env_lock"): "guards os.environ, which is one per process",
    ("rayfleet.ledger", "_MIGRATING"): "guards Alembic's op and context, which are one per process",
    # not yet immutable, in files being rewritten elsewhere: never written to, due to become read-only
    ("rayfleet.provisioning.local", "DEMO_FLEET"): "frozen specs whose labels and resources are plain dicts",
}

SKIPPED_MODULES = {
    "rayfleet.__main__",  # importing it runs the CLI
    "rayfleet.migrations.env",  # Alembic runs it, on the connection the ledger gives it
}

IMMUTABLE = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    re.Pattern,
    PurePath,
    enum.Enum,
    type(annotations),  # the object `from __future__ import annotations` binds in each module
    types.GenericAlias,  # list[int], Callable[..., T]
    types.UnionType,  # int | None
)
CODE = (
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    type,
    functools._lru_cache_wrapper,  # a memoising cache of a pure function (what it returns is checked by its tests)
    functools.partial,
)
THIRD_PARTY = (
    "logging",  # loggers live in logging's own registry; the application configures them
    "tenacity",  # retry/stop/wait strategies: each call gets its own RetryCallState, they keep none
    "typing",  # TypeVar, Literal[...], Annotated[...]
)


def mutable_parts(value: Any, where: str, depth: int = 0) -> list[str]:
    """Where in ``value`` something mutable sits (empty when nothing does), with its type."""
    if depth > 10 or isinstance(value, IMMUTABLE + CODE):
        return []
    if type(value).__module__.split(".")[0] in THIRD_PARTY:
        return []
    if isinstance(value, ClauseElement) or type(value).__module__.startswith("sqlalchemy.sql."):
        return []  # tables, statements, func: SQLAlchemy's constructs are generative (a query made from one is a new
        # object), so a module-level one is a constant
    if isinstance(value, tuple | frozenset):
        return [p for i, item in enumerate(value) for p in mutable_parts(item, f"{where}[{i}]", depth + 1)]
    if isinstance(value, types.MappingProxyType):
        items = [(f"{where} key", k) for k in value] + [(f"{where}[{k!r}]", v) for k, v in value.items()]
        return [p for at, item in items for p in mutable_parts(item, at, depth + 1)]
    if dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen:  # type: ignore[union-attr]
        fields = dataclasses.fields(value)
        return [p for f in fields for p in mutable_parts(getattr(value, f.name), f"{where}.{f.name}", depth + 1)]
    return [f"{where}: {type(value).__module__}.{type(value).__qualname__}"]


def allowed_objects() -> set[int]:
    """The objects `ALLOWED` lists, by identity: a module that imports one (``from rayfleet.cli.common import app``)
    holds the same object, not state of its own."""
    return {id(getattr(importlib.import_module(m), name)) for m, name in ALLOWED}


def module_state(module: types.ModuleType) -> list[str]:
    """The mutable attributes of ``module`` that `ALLOWED` does not list (here or where they were made)."""
    found = []
    allowed = allowed_objects()
    for name, value in sorted(vars(module).items()):
        if name.startswith("__") or (module.__name__, name) in ALLOWED or id(value) in allowed:
            continue
        found += mutable_parts(value, f"{module.__name__}.{name}")
    return found


def rayfleet_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(rayfleet.__path__, "rayfleet.") if m.name not in SKIPPED_MODULES]
    return [rayfleet, *(importlib.import_module(n) for n in names)]


def test_no_rayfleet_module_holds_mutable_state():
    modules = rayfleet_modules()
    assert len(modules) > 30  # walk_packages found the whole tree
    found = [f for m in modules for f in module_state(m)]
    assert found == [], "module-level mutable state (make it immutable, or move it to its owner):\n" + "\n".join(found)


def test_every_allowed_entry_still_exists():
    modules = {m.__name__: m for m in rayfleet_modules()}
    stale = [f"{m}.{a}" for m, a in ALLOWED if m not in modules or not hasattr(modules[m], a)]
    assert stale == [], f"remove from ALLOWED: {stale}"


class _Mix:  # the shape of a state holder the check must catch (rayfleet once had one: LIVE_MIX)
    def __init__(self) -> None:
        self.mix = None


@dataclasses.dataclass(frozen=True)
class _Frozen:
    items: Any


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (_Mix(), ["m.X: tests.unit.test_module_state._Mix"]),
        ({"a": 1}, ["m.X: builtins.dict"]),
        ([1], ["m.X: builtins.list"]),
        ({1}, ["m.X: builtins.set"]),
        (bytearray(b"x"), ["m.X: builtins.bytearray"]),
        ((1, [2]), ["m.X[1]: builtins.list"]),
        (types.MappingProxyType({"a": {}}), ["m.X['a']: builtins.dict"]),
        (_Frozen(items=[]), ["m.X.items: builtins.list"]),
        (threading.Lock(), ["m.X: _thread.lock"]),
        ((1, "a", frozenset({2}), types.MappingProxyType({"k": (3,)}), _Frozen(items=(4,))), []),
        (re.compile("x"), []),
        (logging.getLogger("x"), []),
    ],
)
def test_the_check_finds_mutable_values_and_passes_immutable_ones(value: Any, found: list[str]):
    module = types.ModuleType("m")
    module.X = value  # type: ignore[attr-defined]
    assert module_state(module) == found


def test_import_rayfleet_loads_neither_ray_nor_linux_only_modules():
    # POSIX-only modules blocked as on Windows: the standard library copes without them, `import rayfleet` must too
    code = (
        "import sys\n"
        "for name in ('fcntl', 'termios', 'resource'):\n"
        "    sys.modules[name] = None\n"
        "import rayfleet\n"
        "print('ray' in sys.modules, 'rayfleet.provisioning.local' in sys.modules)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]  # `import ray` costs seconds; the local fleet needs Linux
