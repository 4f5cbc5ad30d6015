"""Local fleets described by a file and by `rayfleet local up` flags, where their state lives, and how `local down`
recognises a cluster's processes by its temp dir. No Ray: files, flags, environment variables and plain processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayfleet.cli.local import _specs
from rayfleet.errors import ConfigError, InvalidRequestError
from rayfleet.provisioning.local import (
    DEMO_FLEET,
    FIRST_BASE,
    LAST_PORT,
    PORT_BLOCK,
    LocalAutoscaling,
    LocalClusterSpec,
    LocalFleet,
    LocalNodeSpec,
    LocalWorkerType,
    _first_taken,
    _members,
    _process_table,
    _read_state,
    load_local_fleet,
    parse_local_fleet,
    state_dir,
)

FULL = """\
clusters:
  - name: cpu
    cpus: 2
    memory: 1GiB
    labels: {kind: cpu, zone: 1, spot: true}
  - name: gang
    cpus: 1
    resources: {disk: 2}
    workers:
      - {cpus: 2, gpus: 1, accelerator: T4, memory: 768MiB, count: 2}
      - {cpus: 1, resources: {worker_only: 1}}
  - name: elastic
    cpus: 1
    gpus: 0
    autoscaling:
      idle_timeout_s: 30
      worker_types:
        a100: {cpus: 1, gpus: 1, accelerator: A100, min_workers: 0, max_workers: 2}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "local-fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_file_describes_heads_labels_worker_nodes_and_autoscaling(tmp_path: Path) -> None:
    specs = load_local_fleet(write(tmp_path, FULL))

    t4 = LocalNodeSpec(cpus=2, gpus=1, accelerator="T4", memory="768MiB")
    assert specs == [
        LocalClusterSpec("cpu", cpus=2, memory="1GiB", labels={"kind": "cpu", "zone": "1", "spot": "true"}),
        LocalClusterSpec(
            "gang",
            cpus=1,
            resources={"disk": 2.0},
            workers=(t4, t4, LocalNodeSpec(cpus=1, resources={"worker_only": 1})),
        ),
        LocalClusterSpec(
            "elastic",
            cpus=1,
            autoscaling=LocalAutoscaling(
                {"a100": LocalWorkerType(cpus=1, gpus=1, accelerator="A100", max_workers=2)}, idle_timeout_s=30
            ),
        ),
    ]
    assert LocalFleet.from_file(write(tmp_path, FULL), name="x").specs == specs


def test_every_problem_of_a_file_is_reported_at_once_with_its_key_and_a_near_miss(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        clusters:
          - name: GPU
            cpu: 2
            gpus: 1.5
            memory: lots
            labels: {zone: [a, b]}
          - name: b
            workers: [{cpus: 1}]
            autoscaling: {worker_types: {x: {cpus: 1, max_workers: 0}}}
          - name: b
            workers: [{count: 0}]
        """,
    )

    with pytest.raises(ConfigError) as caught:
        load_local_fleet(path)

    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 9 problems:"
    assert lines[1:-1] == [
        "  - key 'clusters.0.cpu': unknown key (did you mean 'cpus'?)",
        "  - key 'clusters.0.name': 'GPU' must be 1-63 lowercase letters, digits, '-' or '_'",
        "  - key 'clusters.0.gpus': gpus=1.5 must be a whole number >= 0",
        "  - key 'clusters.0.memory': must be an amount such as '1GiB' or bytes > 0, not 'lots'",
        "  - key 'clusters.0.labels.zone': must be a text value, not a list",
        "  - key 'clusters.1': has both workers and autoscaling (give one: fixed nodes, or worker types that scale)",
        "  - key 'clusters.1.autoscaling.worker_types.x.max_workers': must be at least 1 and at least min_workers",
        "  - key 'clusters.2.workers.0.count': must be at least 1 (leave the entry out for no node)",
        "  - key 'clusters': the name 'b' is given to more than one cluster",
    ]
    assert lines[-1] == f"To fix: correct it in {path}; the format of a local fleet file is in docs/local.md"
    assert caught.value.source == str(path)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("clusters: []", "clusters", "must be a non-empty list of clusters, not a list"),
        ("clusters: [{name: a, gpus: -1}]", "clusters.0.gpus", "gpus=-1 must be a whole number >= 0"),
        ("clusters: [{name: a, workerz: []}]", "clusters.0.workerz", "unknown key (did you mean 'workers'?)"),
        ("clusters: [{cpus: 1}]", "clusters.0.name", "is required"),
        ("clusters: [{name: a, autoscaling: {}}]", "clusters.0.autoscaling.worker_types", "is required"),
    ],
)
def test_a_single_problem_names_its_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_local_fleet(write(tmp_path, text))

    assert (caught.value.source, caught.value.key) == (str(tmp_path / "local-fleet.yaml"), key)
    assert caught.value.problem.startswith(problem)


def test_unreadable_and_non_yaml_files_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the local fleet file") as missing:
        load_local_fleet(tmp_path / "nope.yaml")
    assert missing.value.source == str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_local_fleet(write(tmp_path, "clusters: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping, not a list"):
        parse_local_fleet([1, 2])


# ----- the flags of `rayfleet local up` -----------------------------------------------------------------------------


def test_flags_shape_clusters_add_labels_and_worker_nodes() -> None:
    specs = _specs(
        None,
        ["gpu:cpus=2,gpus=2,accelerator=A100,memory=1GiB", "cpu:cpus=0.5"],
        ["gpu:zone=a", "gpu:url=http://x:1/?a=b", "cpu:tier=gold"],
        ["gpu:cpus=1,gpus=1,accelerator=T4,memory=512MiB,count=2"],
    )

    t4 = LocalNodeSpec(cpus=1, gpus=1, accelerator="T4", memory="512MiB")
    assert specs == [
        LocalClusterSpec(
            "gpu", cpus=2, gpus=2, accelerator="A100", memory="1GiB",
            labels={"zone": "a", "url": "http://x:1/?a=b"}, workers=(t4, t4),
        ),
        LocalClusterSpec("cpu", cpus=0.5, labels={"tier": "gold"}),
    ]  # fmt: skip


def test_labels_apply_to_the_clusters_of_a_file_or_of_the_demo_fleet(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters: [{name: a, cpus: 1, labels: {x: '1'}}]")

    assert [s.labels for s in _specs(path, [], ["a:y=2"], [])] == [{"x": "1", "y": "2"}]
    assert [s.labels for s in _specs(None, [], ["cpu:zone=b"], [])] == [{"kind": "cpu", "zone": "b"}, {"kind": "gpu"}]
    assert _specs(None, [], [], []) == list(DEMO_FLEET)


@pytest.mark.parametrize(
    ("clusters", "labels", "workers", "message"),
    [
        (["a:cpu=2"], [], [], "--cluster 'a:cpu=2': 'cpu=2' is not one of cpus=, gpus=, accelerator=, memory="),
        (["a:cpus=two"], [], [], "--cluster a:cpus=two, key 'cpus': cpus='two' must be a number >= 0"),
        (["a:cpus=1,cpus=2"], [], [], "--cluster 'a:cpus=1,cpus=2' gives cpus= twice"),
        ([":cpus=1"], [], [], "--cluster ':cpus=1' names no cluster"),
        (["A_B:cpus=1"], [], [], "--cluster A_B:cpus=1, key 'name': 'A_B' must be 1-63 lowercase letters"),
        (["a", "a:cpus=1"], [], [], "local cluster 'a' is given more than once"),
        (["a"], ["b:zone=x"], [], "--label 'b:zone=x': there is no cluster 'b' (the clusters are a)"),
        (["a"], ["a:zone"], [], "--label 'a:zone' is not NAME:KEY=VALUE"),
        (["a"], [], ["a:count=0"], "--worker a:count=0, key 'count': must be at least 1"),
        (["a"], [], ["a:gpus=0.5"], "--worker a:gpus=0.5, key 'gpus': gpus='0.5' must be a whole number >= 0"),
    ],
)
def test_bad_flags_are_invalid_requests_naming_the_flag(
    clusters: list[str], labels: list[str], workers: list[str], message: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        _specs(None, clusters, labels, workers)

    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.hint.startswith(("write it like --", "give every", "name a cluster"))


def test_worker_nodes_cannot_be_added_to_an_autoscaling_cluster(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters: [{name: e, autoscaling: {worker_types: {x: {cpus: 1}}}}]")

    with pytest.raises(InvalidRequestError, match="cluster 'e' autoscales"):
        _specs(path, [], [], ["e:cpus=1"])


# ----- where a local fleet's state lives ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "{home}/.local/share/rayfleet/local/f", id="default"),
        pytest.param({"RAYFLEET_LEDGER": "/x/ledger.db"}, "{home}/.local/share/rayfleet/local/f", id="ledger-ignored"),
        pytest.param({"XDG_DATA_HOME": "/xdg", "RAYFLEET_LEDGER": "/x/l.db"}, "/xdg/rayfleet/local/f", id="xdg"),
        pytest.param({"RAYFLEET_LOCAL_DIR": "/st", "XDG_DATA_HOME": "/xdg"}, "/st/f", id="local-dir-wins"),
    ],
)
def test_the_state_directory_does_not_follow_the_ledger(
    env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAYFLEET_LEDGER", "RAYFLEET_LOCAL_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert state_dir("f") == Path(expected.format(home=tmp_path))


# ----- a cluster's processes, by its temp dir ------------------------------------------------------------------------

# open the file, say so, and hold it until the test closes our stdin (or kills us)
HOLD = "import sys; f = open(sys.argv[1], sys.argv[2]); print('ready', flush=True); sys.stdin.read()"


@pytest.fixture()
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:  # ours, by their pids
        process.kill()
        process.wait()


def start(started: list[subprocess.Popen[str]], *args: str) -> int:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started.append(process)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"  # the file is open now
    return process.pid


def test_the_processes_of_a_cluster_are_those_naming_or_writing_into_its_temp_dir(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    temp_dir = tmp_path / "rf-a-12345678"
    longer = tmp_path / "rf-a-12345678x"  # another cluster's dir that starts with the same characters
    for d in (temp_dir / "logs", longer):
        d.mkdir(parents=True)
    (temp_dir / "logs" / "raylet.out").write_text("")

    writer = start(processes, str(temp_dir / "logs" / "driver.log"), "w")
    appender = start(processes, str(temp_dir / "logs" / "raylet.out"), "a")
    named = start(processes, str(temp_dir / "logs" / "raylet.out"), "r", f"--temp-dir={temp_dir}")
    start(processes, str(temp_dir / "logs" / "raylet.out"), "r")  # a reader (tail -f): not the cluster's
    start(processes, str(tmp_path / "elsewhere.log"), "w", str(temp_dir))  # names it, but not as a Ray option
    start(processes, str(longer / "x.log"), "w", f"--temp-dir={longer}")  # the other cluster's
    with open(temp_dir / "logs" / "mine.log", "w"):  # this process (and its ancestors) are never the cluster's
        found = _members(_process_table(), [str(temp_dir)])

    assert sorted(found) == sorted([writer, appender, named])
    assert sorted(_members(_process_table(), [str(longer)])) == [processes[-1].pid]
    assert _members(_process_table(), []) == {}


def fake_state(directory: Path, temp_dir: Path) -> None:
    """The state file of a one-cluster fleet whose head is gone (its pid: an exited process), on a free port block."""
    head = subprocess.Popen([sys.executable, "-c", "pass"])
    head.wait()
    base = next(b for b in range(LAST_PORT + 1 - PORT_BLOCK, FIRST_BASE, -PORT_BLOCK) if _first_taken(b) is None)
    cluster = {"name": "a", "pid": head.pid, "address": "http://127.0.0.1:1", "port_base": base,
               "temp_dir": str(temp_dir), "log": "", "labels": {}}  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(json.dumps({"name": "f", "clusters": [cluster]}))


def test_down_stops_what_a_dead_head_left_behind(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    temp_dir = tmp_path / "rf-a-abcdefgh"
    (temp_dir / "logs").mkdir(parents=True)
    fake_state(tmp_path / "state", temp_dir)
    orphan = start(processes, str(temp_dir / "logs" / "driver.log"), "w")  # in a session of its own, as a driver

    assert LocalFleet([], name="f", directory=tmp_path / "state").down() == ["a"]

    assert processes[0].wait(timeout=5) == -signal.SIGTERM  # it was given its SIGTERM (and took it)
    assert _members(_process_table(), [str(temp_dir)]) == {}
    assert orphan not in _process_table() and not (tmp_path / "state" / "state.json").exists()


def test_up_after_a_crash_first_stops_the_previous_runs_leftovers(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    temp_dir = tmp_path / "rf-a-abcdefgh"
    (temp_dir / "logs").mkdir(parents=True)
    fake_state(tmp_path / "state", temp_dir)
    start(processes, str(temp_dir / "logs" / "raylet.out"), "a")
    fleet = LocalFleet([], name="f", directory=tmp_path / "state")

    fleet._stop_previous(_read_state(fleet.state_file))  # what up() does before it starts anything

    assert fleet.leftovers_stopped == 1 and processes[0].wait(timeout=5) == -signal.SIGTERM
    assert not fleet.state_file.exists() and not temp_dir.exists()
