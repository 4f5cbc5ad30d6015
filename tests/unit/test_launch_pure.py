"""Unit tests of the launcher's pure parts: what it imports, the spec, ``wrap()``, and ``gang.current()``."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rayfleet import gang, launch
from rayfleet.launch import (
    LAUNCHER_ERROR_EXIT,
    PACKAGE,
    SPEC_ENV,
    SpecError,
    command_env,
    merge_runtime_env,
    parse_spec,
    task_options,
    wrap,
)

SHIPPED = [Path(launch.__file__), Path(gang.__file__)]
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
    allowed = set(sys.stdlib_module_names) | {"ray", "__future__"}
    assert imported_modules(path) - allowed == set()


def test_environment_names_agree() -> None:
    assert (gang.SPEC_ENV, gang.PLACEMENT_GROUP_ENV, gang.BUNDLE_INDEX_ENV) == (
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
    assert {p.name for p in Path(package).iterdir()} >= {"__init__.py", "__main__.py", "launch.py", "gang.py"}
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
        "import rayfleet_launcher; from rayfleet_launcher.launch import main;"
        "assert rayfleet_launcher.current is rayfleet_launcher.gang.current;"
        "sys.exit(main(['--spec', '{}', 'true']))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(Path(package).parent)], capture_output=True, text=True)
    assert result.returncode == LAUNCHER_ERROR_EXIT, result.stderr
    assert result.stdout.startswith("rayfleet: launcher error: 'bundles'")


def test_current_reads_the_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(gang.PLACEMENT_GROUP_ENV, raising=False)
    assert not gang.in_gang()
    with pytest.raises(LookupError, match="RAYFLEET_PLACEMENT_GROUP_ID"):
        gang.current()
    _, additions = wrap("true", [A100, {"CPU": 2}], "PACK", 5, driver_bundle=1)
    monkeypatch.setenv(SPEC_ENV, additions["env_vars"][SPEC_ENV])
    monkeypatch.setenv(gang.PLACEMENT_GROUP_ENV, "ab" * 18)
    monkeypatch.setenv(gang.BUNDLE_INDEX_ENV, "1")
    g = gang.current()
    assert gang.in_gang()
    assert (g.placement_group_id, g.bundles, g.strategy, g.driver_bundle) == ("ab" * 18, (A100, {"CPU": 2}), "PACK", 1)
    assert g.other_bundles() == [0]
    assert g.placement_group.id.hex() == "ab" * 18


def test_a_signal_becomes_128_plus_its_number() -> None:
    assert (launch._exit_code(-9), launch._exit_code(0), launch._exit_code(3)) == (137, 0, 3)
