"""`Pipeline.run`'s loop against a scripted fleet: stages are submitted in the loop's own thread (submit returns at
once, also while a cluster is being created), followed by one `status()` a turn, shown waiting for the cluster being
created for them, and stopped (withdrawn while they wait) through their handles.

The fleet here is a stand-in for `Fleet` with the same calls the pipeline makes (`submit`, `snapshots`, and the
handle's `status`, `record`, `stop`, `logs`); each job moves through a script of ledger records, one step per
`status()`, as a real job is moved by the dispatcher. Its `stop` withdraws a job that is QUEUED or PROVISIONING, as
`Dispatcher.stop` does.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console

from rayfleet import Pipeline, Stage, StageState
from rayfleet.errors import NoCapacityError, RayfleetError
from rayfleet.ledger import AttemptRecord, JobRecord
from rayfleet.pipeline import PipelineResult, StageRun, _Progress
from rayfleet.states import JobState
from rayfleet.templates import ClusterTemplate

GPU = ClusterTemplate(
    name="gpu", mode="autoscaled", labels={"pool": "gpu"}, workers=[{"name": "g", "cpu": 1, "gpu": 1}]
)
WAITING_STATES = (JobState.QUEUED, JobState.PROVISIONING)


@dataclass(frozen=True)
class Step:
    """What the ledger says of a job at one moment: its state, its newest attempt's cluster, the cluster it waits
    for (PROVISIONING), the detail of its latest state."""

    state: JobState
    cluster: str | None = None
    awaits: str | None = None
    detail: str | None = None

    def record(self, job_id: str) -> JobRecord:
        own = self.cluster is None or self.state in WAITING_STATES  # the job's own state is the newest
        attempts: tuple[AttemptRecord, ...] = ()
        if self.cluster is not None:
            state = JobState.FAILED if own else self.state  # an own state after an attempt: that attempt failed
            attempts = (
                AttemptRecord(f"{job_id}-1", job_id, 1, self.cluster, None, None, 0.0, state, 0.0,
                              None if own else self.detail, seq=1 if own else 3),
            )  # fmt: skip
        return JobRecord(
            job_id, 0.0, "x", {}, None, None, None, attempts,
            job_state=self.state if own else JobState.PROVISIONING,  # placed after waiting: the older own state
            detail=self.detail if own else None,
            job_seq=2,
            awaits=self.awaits,  # the ledger keeps it with the own state, also once the job was placed
        )  # fmt: skip


class ScriptedJob:
    """A job handle whose job takes the next step of its script at every `status()` (the last step stays)."""

    def __init__(self, job_id: str, steps: Sequence[Step], threads: list[threading.Thread]) -> None:
        self.id = job_id
        self.steps = list(steps)
        self.at = 0
        self.stops = 0
        self.threads = threads

    @property
    def step(self) -> Step:
        return self.steps[self.at]

    @property
    def record(self) -> JobRecord:
        return self.step.record(self.id)

    @property
    def cluster(self) -> str | None:
        attempt = self.record.last_attempt
        return attempt.cluster if attempt else None

    def status(self) -> JobState:
        self.threads.append(threading.current_thread())
        if not self.step.state.is_terminal() and self.at < len(self.steps) - 1:
            self.at += 1
        return self.record.state

    def stop(self) -> bool:
        self.stops += 1
        if self.step.state.is_terminal():
            return False
        detail = f"stopped while {self.step.state.value}" if self.step.state in WAITING_STATES else None
        self.steps[self.at + 1 :] = []
        self.steps.append(Step(JobState.STOPPED, None if detail else self.step.cluster, detail=detail))
        self.at = len(self.steps) - 1
        return True

    def logs(self) -> str:
        return ""


class ScriptedFleet:
    """Stage name -> the steps of its job (the first is what submit leaves it in) or the error submit raises."""

    def __init__(self, scripts: Mapping[str, Sequence[Step] | RayfleetError]) -> None:
        self.scripts = dict(scripts)
        self.jobs: dict[str, ScriptedJob] = {}
        self.calls: list[dict[str, Any]] = []
        self.threads: list[threading.Thread] = []

    def submit(self, entrypoint: str, resources: Any = None, **kwargs: Any) -> ScriptedJob:
        self.threads.append(threading.current_thread())
        stage = kwargs["metadata"]["stage"]
        self.calls.append({"entrypoint": entrypoint, **kwargs})
        script = self.scripts[stage]
        if isinstance(script, RayfleetError):
            raise script
        self.jobs[stage] = ScriptedJob(f"rf-{stage}", script, self.threads)
        return self.jobs[stage]

    def snapshots(self, *, max_age: float | None = None) -> dict[str, Any]:
        return {}


def _run(pipeline: Pipeline, fleet: ScriptedFleet, **kwargs: Any) -> tuple[PipelineResult, list[dict[str, Any]]]:
    """Run it (fast turns); also return each stage's state, cluster and awaited cluster after every change."""
    seen: list[dict[str, Any]] = []

    def snap(result: PipelineResult) -> None:
        seen.append({n: (r.state, r.cluster, r.awaits) for n, r in result.runs.items()})

    kwargs.setdefault("show", False)
    return pipeline.run(fleet, poll_s=0.001, on_change=snap, **kwargs), seen  # type: ignore[arg-type]


def test_a_stage_waits_placing_for_its_new_cluster_then_runs_on_it_and_its_dependent_follows() -> None:
    P, S, R, OK = JobState.PROVISIONING, JobState.SUBMITTED, JobState.RUNNING, JobState.SUCCEEDED
    fleet = ScriptedFleet(
        {
            "gen": [Step(P, awaits="rf-gpu-1"), Step(P, awaits="rf-gpu-1"), Step(P, awaits="rf-gpu-1"),
                    Step(S, "rf-gpu-1", awaits="rf-gpu-1"), Step(R, "rf-gpu-1", awaits="rf-gpu-1"),
                    Step(OK, "rf-gpu-1", awaits="rf-gpu-1")],
            "report": [Step(JobState.PLACED, "cpu"), Step(OK, "cpu")],
        }
    )  # fmt: skip
    pipeline = Pipeline([Stage("gen", "g", template=GPU), Stage("report", "r", depends_on=["gen"])], name="p")
    result, seen = _run(pipeline, fleet)

    assert result.ok, result.summary()
    assert [c["metadata"]["stage"] for c in fleet.calls] == ["gen", "report"]
    assert fleet.calls[0]["labels"] == {"pool": "gpu"}
    assert set(fleet.threads) == {threading.main_thread()}  # submitted and followed in the loop itself, no pool
    gen = [s["gen"] for s in seen]
    assert gen[0] == (StageState.PLACING, None, "rf-gpu-1")  # the first turn already knows the cluster it waits for
    assert (StageState.RUNNING, "rf-gpu-1", None) in gen  # placed: its own cluster, no longer one being created
    assert all(s["report"][0] is StageState.WAITING for s in seen if s["gen"][0] is not StageState.SUCCEEDED)
    run = result.runs["gen"]
    assert (run.job_id, run.cluster, run.awaits) == ("rf-gen", "rf-gpu-1", None)
    assert run.submitted_at is not None and run.started_at is not None and run.ended_at is not None
    assert result.runs["report"].cluster == "cpu"


def test_the_display_shows_the_cluster_being_created_while_the_stage_waits_and_its_cluster_once_placed() -> None:
    P = JobState.PROVISIONING
    fleet = ScriptedFleet({"gen": [Step(P, awaits="rf-gpu-7")] * 3 + [Step(JobState.SUCCEEDED, "rf-gpu-7")]})
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    result, _ = _run(Pipeline([Stage("gen", "g", template=GPU)], name="p"), fleet, show=True, console=console)
    assert result.ok
    lines = console.file.getvalue().splitlines()
    assert any("stage gen (autoscaled) PLACING on rf-gpu-7 (being created)" in line for line in lines), lines
    assert any("stage gen (autoscaled) SUCCEEDED on rf-gpu-7" in line for line in lines), lines

    pipeline = Pipeline([Stage("gen", "g", template=GPU), Stage("old", "o")], name="p")
    progress = _Progress(pipeline, fleet, console, show=False)  # type: ignore[arg-type]
    waiting = StageRun(pipeline.by_name["gen"], StageState.PLACING, "rf-gen", cluster="rf-gpu-2", awaits="rf-gpu-3")
    placed = StageRun(pipeline.by_name["old"], StageState.RUNNING, "rf-old", cluster="cpu")
    progress.workers = {"rf-gpu-2": (2, 2), "cpu": (1, 0)}
    table = Console(file=io.StringIO(), width=200)
    table.print(progress.table(PipelineResult("p", {"gen": waiting, "old": placed}, "/tmp/a", started_at=time.time())))
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in table.file.getvalue().splitlines()]
    rows = {row[0]: row for row in cells if row}
    assert rows["stage"][3:5] == ["cluster", "workers"]
    # after a failover, its old attempt's cluster is not where it goes: the one being created is shown, no workers
    assert rows["gen"][3:5] == ["rf-gpu-3 (being created)", ""]
    assert rows["old"][3:5] == ["cpu", "1"]


def test_a_refused_submission_fails_the_stage_not_placed_and_stops_its_dependents_only() -> None:
    refused = NoCapacityError("no cluster can take cpu=64", rejects={"cpu": "too small"})
    fleet = ScriptedFleet({"big": refused, "side": [Step(JobState.SUCCEEDED, "cpu")]})
    stages = [Stage("big", "b", {"cpu": 64}), Stage("after", "a", depends_on=["big"]), Stage("side", "s")]
    result, _ = _run(Pipeline(stages, name="p"), fleet)
    big = result.runs["big"]
    assert big.state is StageState.FAILED
    assert big.reason == f"not placed: {refused.message}"
    assert big.job_id is None and big.handle is None
    assert result.runs["after"].state is StageState.STOPPED and "after" not in fleet.jobs
    assert result.runs["side"].state is StageState.SUCCEEDED


def test_a_cluster_that_could_not_be_created_fails_its_stage_as_not_placed() -> None:
    why = "cluster rf-gpu-1 could not be created: not ready within 600 s"
    fleet = ScriptedFleet({"gen": [Step(JobState.PROVISIONING, awaits="rf-gpu-1"), Step(JobState.FAILED, detail=why)]})
    result, _ = _run(Pipeline([Stage("gen", "g", template=GPU)], name="p"), fleet)
    run = result.runs["gen"]
    assert (run.state, run.reason, run.awaits, run.cluster) == (StageState.FAILED, f"not placed: {why}", None, None)


def test_a_failed_job_gives_the_stage_its_attempts_reason() -> None:
    why = "Job entrypoint command failed with exit code 3"
    fleet = ScriptedFleet({"a": [Step(JobState.RUNNING, "cpu"), Step(JobState.FAILED, "cpu", detail=why)]})
    result, _ = _run(Pipeline([Stage("a", "x")], name="p"), fleet)
    assert (result.runs["a"].state, result.runs["a"].reason) == (StageState.FAILED, why)


@pytest.mark.parametrize("waiting", [JobState.PROVISIONING, JobState.QUEUED])
def test_the_pipeline_timeout_withdraws_a_job_still_waiting_to_be_placed(waiting: JobState) -> None:
    fleet = ScriptedFleet({"gen": [Step(waiting, awaits="rf-gpu-1" if waiting is JobState.PROVISIONING else None)]})
    result, _ = _run(Pipeline([Stage("gen", "g", template=GPU)], name="p"), fleet, timeout_s=0.05)
    run, job = result.runs["gen"], fleet.jobs["gen"]
    assert (run.state, run.reason) == (StageState.STOPPED, "the pipeline's timeout of 0.05 s passed")
    assert job.stops == 1 and job.step == Step(JobState.STOPPED, detail=f"stopped while {waiting.value}")


def test_a_stage_timeout_counts_from_its_submission_and_stops_a_job_waiting_for_its_cluster() -> None:
    fleet = ScriptedFleet({"gen": [Step(JobState.PROVISIONING, awaits="rf-gpu-1")]})
    stages = [Stage("gen", "g", template=GPU, timeout_s=0.05), Stage("after", "a", depends_on=["gen"])]
    result, _ = _run(Pipeline(stages, name="p"), fleet)
    run = result.runs["gen"]
    assert (run.state, run.reason) == (StageState.FAILED, "timed out after 0.05 s")
    assert fleet.jobs["gen"].step.state is JobState.STOPPED  # withdrawn
    assert result.runs["after"].state is StageState.STOPPED


def test_an_interrupt_stops_every_unfinished_stage_through_its_handle_and_is_raised_again() -> None:
    fleet = ScriptedFleet(
        {
            "gen": [Step(JobState.PROVISIONING, awaits="rf-gpu-1")],
            "run": [Step(JobState.SUBMITTED, "cpu"), Step(JobState.RUNNING, "cpu")],
        }
    )
    stages = [Stage("gen", "g", template=GPU), Stage("run", "r"), Stage("later", "l", depends_on=["run"])]
    seen: list[PipelineResult] = []

    def interrupt(result: PipelineResult) -> None:
        seen.append(result)
        if result.runs["run"].state is StageState.RUNNING:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pipeline(stages, name="p").run(fleet, show=False, poll_s=0.001, on_change=interrupt)  # type: ignore[arg-type]
    runs = seen[-1].runs
    assert {n: (r.state, r.reason) for n, r in runs.items()} == {n: (StageState.STOPPED, "interrupted") for n in runs}
    assert fleet.jobs["gen"].step == Step(JobState.STOPPED, detail="stopped while PROVISIONING")  # withdrawn
    assert fleet.jobs["run"].step == Step(JobState.STOPPED, "cpu")
    assert "later" not in fleet.jobs
