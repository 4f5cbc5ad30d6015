"""Pipelines, the pure parts: stage and DAG validation (typed errors), the order, and which stages start or stop."""

from __future__ import annotations

import pytest

from rayfleet import InvalidPipelineError, InvalidRequestError, InvalidResourcesError, Pipeline, Stage, StageState
from rayfleet.capacity import ClusterSnapshot
from rayfleet.errors import StageFailedError
from rayfleet.pipeline import (
    PipelineResult,
    StageRun,
    artifact_uri,
    input_env,
    next_moves,
    open_uri,
    topological_order,
    worker_counts,
)
from rayfleet.templates import ClusterTemplate

W, S, F, X, R = StageState.WAITING, StageState.SUCCEEDED, StageState.FAILED, StageState.STOPPED, StageState.RUNNING

CPU = ClusterTemplate(name="cpu", labels={"pool": "cpu"}, workers=[{"name": "w", "cpu": 2, "replicas": 1}])
GPU = ClusterTemplate(
    name="gpu",
    mode="autoscaled",
    labels={"pool": "gpu"},
    workers=[{"name": "g", "cpu": 1, "gpu": 1, "max_replicas": 2}],
)


def test_the_template_is_the_one_switch_between_static_and_autoscaled() -> None:
    assert Stage("a", "echo", template=CPU).mode == "static"
    assert Stage("a", "echo", template=GPU).mode == "autoscaled"
    assert Stage("a", "echo").mode == "any"
    assert Stage("a", "echo", template=GPU, labels={"zone": "x"}).selector == {"pool": "gpu", "zone": "x"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"name": "Has Space", "entrypoint": "x"}, "not valid"),
        ({"name": "", "entrypoint": "x"}, "not valid"),
        ({"name": 3, "entrypoint": "x"}, "not valid"),
        ({"name": "a", "entrypoint": "  "}, "entrypoint is empty"),
        ({"name": "a", "entrypoint": "x", "depends_on": ["a"]}, "depends on itself"),
        ({"name": "a", "entrypoint": "x", "depends_on": "b"}, "is a string"),
        ({"name": "a", "entrypoint": "x", "template": "gpu"}, "not a ClusterTemplate"),
        ({"name": "a", "entrypoint": "x", "template": ClusterTemplate(name="bare")}, "has no labels"),
        ({"name": "a", "entrypoint": "x", "timeout_s": 0}, "timeout_s"),
    ],
)
def test_a_bad_stage_is_refused_with_a_typed_error_and_a_hint(kwargs: dict, words: str) -> None:
    with pytest.raises(InvalidPipelineError) as e:
        Stage(**kwargs)
    assert words in e.value.message
    assert e.value.hint
    assert isinstance(e.value, InvalidRequestError)  # callers that catch bad input in general catch this too


def test_bad_stage_resources_are_an_invalid_resources_error() -> None:
    with pytest.raises(InvalidResourcesError):
        Stage("a", "echo", {"cpu": -1})


@pytest.mark.parametrize(
    ("stages", "words"),
    [
        ([], "at least one stage"),
        (["not a stage"], "is not a Stage"),
        ([Stage("a", "x"), Stage("a", "y")], "repeat: a"),
        ([Stage("a", "x", depends_on=["nope"])], "'nope', which is not a stage"),
        ([Stage("a", "x", depends_on=["b"]), Stage("b", "y", depends_on=["a"])], "cycle: a -> b -> a"),
        (
            [Stage("a", "x", template=CPU), Stage("b", "y", template=ClusterTemplate(name="cpu2", labels=CPU.labels))],
            "have the same labels",
        ),
    ],
)
def test_a_bad_pipeline_is_refused_with_a_typed_error(stages: list, words: str) -> None:
    with pytest.raises(InvalidPipelineError) as e:
        Pipeline(stages)
    assert words in e.value.message
    assert e.value.hint


def test_a_longer_cycle_is_named_in_full() -> None:
    deps = {"a": ("c",), "b": ("a",), "c": ("b",), "d": ()}
    with pytest.raises(InvalidPipelineError, match="cycle: a -> c -> b -> a"):
        topological_order(deps)


def test_stages_run_after_their_dependencies_otherwise_in_the_given_order() -> None:
    deps = {"report": ("train", "eval"), "eval": ("train",), "train": ("ingest",), "ingest": (), "lint": ()}
    assert topological_order(deps) == ["ingest", "train", "eval", "report", "lint"]
    pipeline = Pipeline([Stage(n, "x", depends_on=d) for n, d in deps.items()], artifacts="/tmp/a")
    assert pipeline.order == ["ingest", "train", "eval", "report", "lint"]


def test_waiting_stages_start_once_every_dependency_succeeded() -> None:
    deps = {"a": (), "b": ("a",), "c": ("a", "b"), "d": ()}
    assert next_moves(deps, {"a": W, "b": W, "c": W, "d": W}).start == ("a", "d")
    assert next_moves(deps, {"a": R, "b": W, "c": W, "d": S}).start == ()
    assert next_moves(deps, {"a": S, "b": W, "c": W, "d": S}).start == ("b",)
    assert next_moves(deps, {"a": S, "b": S, "c": W, "d": S}).start == ("c",)
    assert next_moves(deps, {"a": S, "b": S, "c": S, "d": S}) == next_moves(deps, {"a": S, "b": S, "c": S, "d": S})


def test_a_failed_stage_stops_its_dependents_and_only_them() -> None:
    deps = {"a": (), "b": ("a",), "c": ("b",), "d": (), "e": ("d",)}
    states = {"a": F, "b": W, "c": W, "d": S, "e": W}
    moves = next_moves(deps, states)
    assert moves.stop == {"b": "not started: it depends on a, which failed"}
    assert moves.start == ("e",)  # the independent branch goes on
    states.update({"b": X, "e": R})
    assert next_moves(deps, states).stop == {"c": "not started: it depends on b, which did not run"}


def _result(states: dict[str, StageState], deps: dict[str, tuple[str, ...]]) -> PipelineResult:
    runs = {n: StageRun(Stage(n, "x", depends_on=deps[n]), state=s) for n, s in states.items()}
    return PipelineResult("p", runs, "/tmp/a", started_at=100.0, ended_at=112.5)


def test_the_summary_says_where_and_why_it_failed_and_what_that_stopped() -> None:
    deps = {"ingest": (), "generate": ("ingest",), "evaluate": ("generate",), "side": ()}
    result = _result({"ingest": S, "generate": F, "evaluate": X, "side": S}, deps)
    result.runs["generate"].cluster = "rf-gpu-1"
    result.runs["generate"].reason = "Job entrypoint command failed with exit code 1"
    result.runs["generate"].job_id = "rf-123"
    assert not result.ok
    assert result.stopped_by("generate") == ["evaluate"]
    assert result.summary().splitlines() == [
        "pipeline p: failed after 12.5 s",
        "  stage generate failed on cluster rf-gpu-1: Job entrypoint command failed with exit code 1",
        "    so these never started: evaluate",
    ]
    with pytest.raises(StageFailedError) as e:
        result.raise_for_failure()
    assert (e.value.stage, e.value.stopped) == ("generate", ["evaluate"])
    assert "rf-123" in e.value.hint


def test_a_successful_result_says_so_and_does_not_raise() -> None:
    result = _result({"a": S, "b": S}, {"a": (), "b": ("a",)})
    assert result.ok and result.raise_for_failure() is result
    assert result.summary() == "pipeline p: all 2 stages succeeded in 12.5 s"


def test_each_stage_is_told_its_output_and_its_inputs_by_uri() -> None:
    pipeline = Pipeline(
        [Stage("ingest", "x"), Stage("gen-a", "y", depends_on=["ingest"], runtime_env={"env_vars": {"K": "v"}})],
        artifacts="s3://bucket/run-1/",
        name="rag",
    )
    env = pipeline.runtime_env(pipeline.by_name["gen-a"])["env_vars"]
    assert env["K"] == "v"
    assert env["RAYFLEET_OUTPUT"] == "s3://bucket/run-1/gen-a"
    assert env[input_env("ingest")] == env["RAYFLEET_INPUT_INGEST"] == "s3://bucket/run-1/ingest"
    assert env["RAYFLEET_STAGE"] == "gen-a" and env["RAYFLEET_PIPELINE"] == "rag"
    assert input_env("gen-a") == "RAYFLEET_INPUT_GEN_A"
    assert artifact_uri("/tmp/x/", "a", "/b.json") == "/tmp/x/a/b.json"


def test_a_local_artifact_uri_opens_as_a_local_filesystem(tmp_path) -> None:
    fs, path = open_uri(f"file://{tmp_path}/out")
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/m.json", b"{}")
    assert (tmp_path / "out" / "m.json").read_bytes() == b"{}"
    fs2, path2 = open_uri(str(tmp_path / "out"))
    assert fs2.exists(f"{path2}/m.json")


def test_workers_are_the_nodes_other_than_the_head_and_gpu_workers_those_with_gpus() -> None:
    head = ("h", {"CPU": 1.0}, {})
    gpu = [(f"g{i}", {"CPU": 1.0, "GPU": 1.0}, {}) for i in range(2)]
    cpu = ("c", {"CPU": 2.0}, {})
    assert worker_counts(ClusterSnapshot.from_nodes("x", [head])) == (0, 0)
    assert worker_counts(ClusterSnapshot.from_nodes("x", [head, *gpu])) == (2, 2)
    assert worker_counts(ClusterSnapshot.from_nodes("x", [head, cpu])) == (1, 0)
    assert worker_counts(ClusterSnapshot.from_nodes("x", [gpu[0]])) == (0, 0)  # a GPU head is no worker
    assert worker_counts(ClusterSnapshot.unreachable("x", "down")) == (0, 0)
