"""Unit tests of the launcher's pure parts: what it imports, the spec, ``wrap()``, ``reservation.current()``, and the
decisions of the command's watcher."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rayfleet import launcher as launch
from rayfleet.launcher import (
    LAUNCHER_ERROR_EXIT,
    PACKAGE,
    SPEC_ENV,
    SpecError,
    command_env,
    merge_runtime_env,
    parse_spec,
    reservation,
    runner,
    task_options,
    watcher,
    wrap,
)
from rayfleet.launcher.watcher import ProcessId, Stat, live_members, parse_argv, parse_stat, same_process, stop_reason

SHIPPED = sorted(Path(launch.__file__).parent.glob("*.py"))  # the launcher package, whole
A100 = {"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports, anywhere in it; "." for a relative import."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_modules_import_only_the_standard_library_and_ray(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | {"ray", "__future__", "."}  # ".": a sibling that travels along
    assert imported_modules(path) - allowed == set()


def test_the_shipped_package_is_the_launcher_package_whole() -> None:
    assert list(launch.shipped_modules()) == [p.name for p in SHIPPED]
    assert {"__init__.py", "__main__.py", "spec.py", "runner.py", "watcher.py", "rendezvous.py"} <= set(
        launch.shipped_modules()
    )
    assert imported_modules(Path(watcher.__file__)) <= set(sys.stdlib_module_names) | {"__future__"}  # -I -S


def test_environment_names_agree() -> None:
    assert (reservation.SPEC_ENV, reservation.PLACEMENT_GROUP_ENV, reservation.BUNDLE_INDEX_ENV) == (
        launch.SPEC_ENV,
        launch.PLACEMENT_GROUP_ENV,
        launch.BUNDLE_INDEX_ENV,
    )


def test_exit_codes_are_distinct() -> None:
    codes = {launch.RESERVATION_TIMEOUT_EXIT, launch.LAUNCHER_ERROR_EXIT, launch.COMMAND_LOST_EXIT}
    assert launch.RESERVATION_TIMEOUT_EXIT == 75 and len(codes) == 3 and 0 not in codes


def test_wrap_returns_the_launcher_entrypoint_and_runtime_env() -> None:
    command = "python train.py --name 'a b' && echo $HOME"
    entrypoint, additions = wrap(command, [A100, A100], "STRICT_SPREAD", 30, driver_bundle=1)
    words = shlex.split(entrypoint)
    assert words == ["python", "-m", PACKAGE, command]
    assert set(additions) == {"py_modules", "env_vars"}
    (package,) = additions["py_modules"]
    assert Path(package).name == PACKAGE
    for source in SHIPPED:
        assert (Path(package) / source.name).read_text() == source.read_text()
    assert {p.name for p in Path(package).iterdir()} == set(launch.shipped_modules())
    spec = json.loads(additions["env_vars"][SPEC_ENV])
    assert spec == {"bundles": [A100, A100], "strategy": "STRICT_SPREAD", "timeout_s": 30.0, "driver_bundle": 1}


def test_wrap_builds_the_package_once() -> None:
    first = wrap("true", [{"CPU": 1}], "PACK", 1)[1]["py_modules"]
    assert wrap("false", [{"GPU": 2}], "SPREAD", 5)[1]["py_modules"] == first


@pytest.mark.parametrize(
    ("bundles", "strategy", "timeout_s", "driver", "message"),
    [
        ([], "PACK", 1, 0, "non-empty"),
        ([{"CPU": 0}], "PACK", 1, 0, "asks for nothing"),
        ([{"CPU": -1}], "PACK", 1, 0, "non-negative"),
        ([{"CPU": "1"}], "PACK", 1, 0, "non-negative"),
        ([{"CPU": 1}], "TIGHT", 1, 0, "strategy"),
        ([{"CPU": 1}], "PACK", -1, 0, "timeout_s"),
        ([{"CPU": 1}], "PACK", 1, 1, "driver_bundle"),
    ],
)
def test_wrap_rejects_a_bad_gang(bundles: list, strategy: str, timeout_s: float, driver: int, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        wrap("true", bundles, strategy, timeout_s, driver)


def test_wrap_rejects_an_empty_entrypoint() -> None:
    with pytest.raises(SpecError, match="empty"):
        wrap("  ", [{"CPU": 1}], "PACK", 1)


def test_parse_spec_drops_zero_amounts_and_fills_defaults() -> None:
    spec = parse_spec('{"bundles": [{"CPU": 1, "GPU": 0}]}')
    assert spec == {"bundles": [{"CPU": 1}], "strategy": "PACK", "timeout_s": 30.0, "driver_bundle": 0}
    with pytest.raises(SpecError, match="not JSON"):
        parse_spec("{")


def test_task_options_ask_for_exactly_the_bundle() -> None:
    assert task_options({"CPU": 2, "GPU": 1, "memory": 1e9, "accelerator_type:A100": 0.001}) == {
        "num_cpus": 2,
        "num_gpus": 1,
        "memory": 1e9,
        "resources": {"accelerator_type:A100": 0.001},
    }
    assert task_options({"GPU": 1}) == {"num_cpus": 0, "num_gpus": 1}


def test_command_env_takes_accelerators_from_the_task() -> None:
    driver = {"RAY_ADDRESS": "x:1", "CUDA_VISIBLE_DEVICES": "", "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    task = {"CUDA_VISIBLE_DEVICES": "0", "RAY_RAYLET_PID": "9", "TPU_VISIBLE_CHIPS": "1"}
    env = command_env(driver, task, {"RAYFLEET_PLACEMENT_GROUP_ID": "ab"})
    assert env == {
        "RAY_ADDRESS": "x:1",
        "CUDA_VISIBLE_DEVICES": "0",
        "TPU_VISIBLE_CHIPS": "1",
        "RAYFLEET_PLACEMENT_GROUP_ID": "ab",
    }
    assert "CUDA_VISIBLE_DEVICES" not in command_env(driver, {}, {})


def test_merge_runtime_env() -> None:
    base = {"py_modules": ["a"], "env_vars": {"A": "1"}, "pip": ["x"]}
    merged = merge_runtime_env(base, {"py_modules": ["b"], "env_vars": {"B": "2"}})
    assert merged == {"py_modules": ["a", "b"], "env_vars": {"A": "1", "B": "2"}, "pip": ["x"]}
    assert base["py_modules"] == ["a"]
    assert merge_runtime_env(None, {"env_vars": {"B": "2"}}) == {"env_vars": {"B": "2"}}


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["true"], {}), (["--spec", "{}", "true"], {}), ([], {SPEC_ENV: '{"bundles": [{"CPU": 1}]}'})],
)
def test_main_refuses_before_touching_ray(argv: list[str], env: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPEC_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch.main(argv) == LAUNCHER_ERROR_EXIT


def test_shipped_package_runs_without_rayfleet() -> None:
    """The package wrap() ships imports and runs its command line in a Python where rayfleet cannot be imported."""
    package = wrap("true", [{"CPU": 1}], "PACK", 1)[1]["py_modules"][0]
    code = (
        "import sys; sys.modules['rayfleet'] = None; sys.path.insert(0, sys.argv[1]);"
        "import rayfleet_launcher; from rayfleet_launcher.runner import main;"
        "assert rayfleet_launcher.current is rayfleet_launcher.reservation.current;"
        "sys.exit(main(['--spec', '{}', 'true']))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(Path(package).parent)], capture_output=True, text=True)
    assert result.returncode == LAUNCHER_ERROR_EXIT, result.stderr
    assert result.stdout.startswith("rayfleet: launcher error: 'bundles'")


def test_current_reads_the_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reservation.PLACEMENT_GROUP_ENV, raising=False)
    assert not reservation.reserved()
    with pytest.raises(LookupError, match="RAYFLEET_PLACEMENT_GROUP_ID"):
        reservation.current()
    _, additions = wrap("true", [A100, {"CPU": 2}], "PACK", 5, driver_bundle=1)
    monkeypatch.setenv(SPEC_ENV, additions["env_vars"][SPEC_ENV])
    monkeypatch.setenv(reservation.PLACEMENT_GROUP_ENV, "ab" * 18)
    monkeypatch.setenv(reservation.BUNDLE_INDEX_ENV, "1")
    g = reservation.current()
    assert reservation.reserved()
    assert (g.placement_group_id, g.bundles, g.strategy, g.driver_bundle) == ("ab" * 18, (A100, {"CPU": 2}), "PACK", 1)
    assert g.other_bundles() == [0]
    assert g.placement_group.id.hex() == "ab" * 18


def test_a_signal_becomes_128_plus_its_number() -> None:
    assert (runner._exit_code(-9), runner._exit_code(0), runner._exit_code(3)) == (137, 0, 3)


# --- the command's watcher ------------------------------------------------------------------------------------------


def test_watcher_and_launcher_agree_on_the_error_exit() -> None:
    assert (watcher.LAUNCHER_ERROR_EXIT, watcher.ERROR_MARKER) == (launch.LAUNCHER_ERROR_EXIT, launch.ERROR_MARKER)
    assert watcher.WATCHER_MARKER.startswith(launch.MARKER)
    assert not watcher.WATCHER_MARKER.startswith((launch.STOPPED_MARKER, launch.LOST_MARKER, launch.ERROR_MARKER))


def test_parse_stat_reads_past_a_command_name_with_spaces_and_parentheses() -> None:
    text = "4242 (ray::a (b) c) Z 17 4240 4240 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0 18446744073709551615"
    assert parse_stat(text) == Stat(state="Z", ppid=17, pgrp=4240, start=987654)
    assert not parse_stat(text).running
    assert parse_stat(text.replace(") Z ", ") S ")).running


@pytest.mark.parametrize(
    "process", [ProcessId(7), ProcessId(7, 123), ProcessId(7, None, "boot.4026531836"), ProcessId(7, 0, "h")]
)
def test_process_id_round_trips(process: ProcessId) -> None:
    assert ProcessId.decode(process.encode()) == process


@pytest.mark.parametrize("text", ["", "x", "0", "-3:1:h", "7:x:h", ":1:h"])
def test_process_id_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        ProcessId.decode(text)


def test_only_a_process_on_this_host_is_watched_by_pid() -> None:
    here = "boot-a.4026531836"
    assert watcher.watchable(ProcessId(7, 1, here), here)
    assert not watcher.watchable(ProcessId(7, 1, "boot-a.4026532000"), here)  # another pid namespace (a container)
    assert not watcher.watchable(ProcessId(7, 1, "boot-b.4026531836"), here)  # another machine, or another boot
    assert not watcher.watchable(ProcessId(7, 1, None), here)
    assert not watcher.watchable(ProcessId(7, 1, None), None)  # not Linux: no pid is comparable


def test_a_reused_pid_or_a_zombie_is_not_the_process() -> None:
    target = ProcessId(7, 100, "h")
    assert same_process(target, Stat("S", 1, 7, 100))
    assert not same_process(target, Stat("S", 1, 7, 101))  # the pid now belongs to a newer process
    assert not same_process(target, Stat("Z", 1, 7, 100))  # it exited; its parent has not reaped it yet
    assert not same_process(target, None)  # gone
    assert same_process(ProcessId(7), Stat("R", 1, 7, 5))  # start unknown: the pid is all there is


def test_live_members_leave_out_zombies_and_other_groups() -> None:
    table = {10: Stat("Z", 3, 10, 1), 11: Stat("S", 10, 10, 2), 12: Stat("R", 1, 10, 3), 13: Stat("S", 1, 13, 4)}
    assert live_members(table, 10) == [11, 12]
    assert live_members({10: Stat("Z", 3, 10, 1)}, 10) == []


def test_stop_reason_names_what_went_first_a_signal_then_a_process_then_the_lifeline() -> None:
    describe = {"raylet": "raylet of this node"}
    raylet = {"raylet": ProcessId(99, 5, "h")}
    assert stop_reason(True, {}, [], describe) is None
    assert stop_reason(True, raylet, [], describe) == "the raylet of this node (pid 99) is gone"
    assert stop_reason(False, raylet, [], describe) == "the raylet of this node (pid 99) is gone"
    assert stop_reason(False, {}, [], describe).startswith("the lifeline closed")
    assert stop_reason(False, raylet, [15], describe).startswith("got signal 15")
    assert stop_reason(True, {"launcher": ProcessId(5)}, [], {}) == "the launcher (pid 5) is gone"


def test_watcher_exit_code_is_the_shells() -> None:
    assert (watcher.exit_code(-15), watcher.exit_code(0), watcher.exit_code(3)) == (143, 0, 3)


def test_watcher_command_line_round_trips() -> None:
    watch = {"worker": ProcessId(10, 1, "h"), "launcher": ProcessId(20, None, None)}
    command = "python train.py --name 'a b' -- --lifeline 3 && echo $HOME"
    argv = watcher.watcher_argv("/py", "/x/watcher.py", command, lifeline=5, watch=watch, grace_s=0.5)
    assert argv[:4] == ["/py", "-I", "-S", "/x/watcher.py"]
    args = parse_argv(argv[4:])
    assert (args.command, args.lifeline, args.watch, args.grace) == (command, 5, watch, 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lifeline", "3"], "exactly one command"),
        (["--lifeline", "3", "--", "  "], "exactly one command"),
        (["--watch", "raylet", "--", "true"], "NAME=pid"),
        (["--watch", "raylet=x", "--", "true"], "not a process id"),
        (["--grace", "-1", "--", "true"], "grace"),
        (["--nonsense", "--", "true"], "unrecognized"),
    ],
)
def test_watcher_refuses_bad_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_argv(argv)
    assert watcher.main(argv) == LAUNCHER_ERROR_EXIT


def test_the_raylet_is_the_parent_or_the_named_pid_only_if_it_is_a_raylet() -> None:
    names = {100: "raylet", 200: "python", 300: "raylet"}.get
    assert launch.raylet_pid({"RAY_RAYLET_PID": "100"}, 200, names) == 100
    assert launch.raylet_pid({}, 300, names) == 300  # no variable: the worker's parent
    assert launch.raylet_pid({"RAY_RAYLET_PID": "200"}, 300, names) == 300  # a stale variable
    assert launch.raylet_pid({"RAY_RAYLET_PID": "x"}, 200, names) is None
    assert launch.raylet_pid({}, 1, {1: "raylet"}.get) is None  # re-parented to init: the raylet is already gone
