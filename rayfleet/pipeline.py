"""Pipelines: stages that run as fleet jobs in dependency order, each on a cluster of its own template.

A `Stage` is a job (entrypoint and driver resources) with an optional cluster template. The template is the one
switch between a **static** stage (a fixed-size cluster, e.g. CPU ingestion) and an **autoscaled** one (a cluster whose
autoscaler adds workers, e.g. GPU workers from zero, as the stage's tasks ask for them and removes them after idle).
Each stage is dispatched through the fleet like any job (`Fleet.submit`), with the template's labels as its selector:
it lands on an existing cluster with those labels, or the fleet creates one from the template.

Stages exchange artifacts through URIs: a pipeline has an artifact root (a local path for the local fleet, or an
fsspec/pyarrow URI such as ``s3://bucket/run``); each stage writes under ``<root>/<stage>`` and finds its inputs under
``<root>/<dependency>``, told through environment variables (`ENV_OUTPUT`, `ENV_ARTIFACTS`, ``RAYFLEET_INPUT_<DEP>``).

A failed stage stops its dependents (they are never started); independent stages go on. The result names the stage
that failed, why, and what it stopped.

Example:
    >>> ingest = Stage("ingest", "python ingest.py --out $RAYFLEET_OUTPUT", {"cpu": 1}, template=cpu_template)
    >>> answer = Stage("answer", "python answer.py", {"cpu": 1}, template=gpu_template, depends_on=["ingest"])
    >>> result = Pipeline([ingest, answer], artifacts="/tmp/run-1").run(fleet)      # doctest: +SKIP
    >>> result.ok, result.runs["answer"].cluster                                    # doctest: +SKIP
    (True, 'rf-gpu-3f2a1c')
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from rayfleet.errors import InvalidPipelineError, RayfleetError, StageFailedError
from rayfleet.resources import Resources
from rayfleet.states import JobState
from rayfleet.templates import ClusterTemplate

if TYPE_CHECKING:
    from rich.console import Console

    from rayfleet.capacity import ClusterSnapshot
    from rayfleet.fleet import Fleet
    from rayfleet.jobs import JobHandle
    from rayfleet.ledger import JobRecord

__all__ = [
    "ENV_ARTIFACTS",
    "ENV_OUTPUT",
    "ENV_STAGE",
    "Pipeline",
    "PipelineResult",
    "Stage",
    "StageRun",
    "StageState",
    "artifact_uri",
    "input_env",
    "next_moves",
    "open_uri",
]

ENV_PIPELINE = "RAYFLEET_PIPELINE"
ENV_STAGE = "RAYFLEET_STAGE"
ENV_ARTIFACTS = "RAYFLEET_ARTIFACTS"  # the pipeline's artifact root
ENV_OUTPUT = "RAYFLEET_OUTPUT"  # <root>/<this stage>
ENV_INPUT_PREFIX = "RAYFLEET_INPUT_"  # + the dependency's name in upper case, '-' as '_': <root>/<dependency>
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class StageState(str, Enum):
    """Where a stage is: WAITING until it is submitted as a job, then its job's state (see `of_job`)."""

    WAITING = "WAITING"  # its dependencies have not all succeeded yet
    PLACING = "PLACING"  # its job waits to be placed: queued, or for a cluster being created for it, or on its way
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # it failed, could not be placed, or timed out
    STOPPED = "STOPPED"  # never started (a dependency failed) or stopped on request

    def is_terminal(self) -> bool:
        return self in (StageState.SUCCEEDED, StageState.FAILED, StageState.STOPPED)

    @classmethod
    def of_job(cls, state: JobState) -> StageState:
        """The stage state for a job state (UNKNOWN keeps the stage RUNNING: a partition may heal; LOST fails it)."""
        return {
            JobState.QUEUED: cls.PLACING,
            JobState.PROVISIONING: cls.PLACING,
            JobState.PLACED: cls.PLACING,
            JobState.SUBMITTED: cls.SUBMITTED,
            JobState.STARTING: cls.SUBMITTED,  # its launcher reserves; the stage's command has not started
            JobState.RUNNING: cls.RUNNING,
            JobState.UNKNOWN: cls.RUNNING,
            JobState.SUCCEEDED: cls.SUCCEEDED,
            JobState.FAILED: cls.FAILED,
            JobState.LOST: cls.FAILED,
            JobState.STOPPED: cls.STOPPED,
        }[state]


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a job, the cluster template it runs on, and the stages it needs first.

    Args:
        name: unique in the pipeline; lowercase letters, digits, ``-`` and ``_``.
        entrypoint: the shell command (as for `Fleet.submit`); ``$RAYFLEET_OUTPUT`` and friends are set for it.
        resources: what the stage's driver needs on one node. Work it spreads over Ray tasks or actors asks for its
            own resources inside the cluster (e.g. ``num_gpus=1``), which is what makes an autoscaled cluster grow.
        template: the cluster template the stage runs on; its ``mode`` makes the stage static or autoscaled, and its
            labels select the cluster. ``None``: any cluster of the fleet that fits.
        depends_on: names of the stages that must succeed first.
        runtime_env: Ray's runtime_env for the job; the pipeline adds its environment variables.
        labels: more labels the cluster must have (on top of the template's).
        timeout_s: stop the stage and fail it if it has not ended this long after it was submitted.

    Raises:
        InvalidPipelineError: a bad name, an empty entrypoint, a dependency on itself, a template without labels.
        InvalidResourcesError: bad resources.
    """

    name: str
    entrypoint: str
    resources: Resources | Mapping[str, Any] | None = None
    template: ClusterTemplate | None = None
    depends_on: Sequence[str] = ()
    runtime_env: Mapping[str, Any] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidPipelineError(
                f"stage name {self.name!r} is not valid",
                "use lowercase letters, digits, '-' and '_', starting with a letter or digit (at most 63)",
                stage=str(self.name),
            )
        if not isinstance(self.entrypoint, str) or not self.entrypoint.strip():
            raise InvalidPipelineError(
                f"stage {self.name}: the entrypoint is empty", "give the shell command to run", stage=self.name
            )
        if isinstance(self.depends_on, str):
            raise InvalidPipelineError(
                f"stage {self.name}: depends_on={self.depends_on!r} is a string",
                f"give a list of stage names, e.g. depends_on=[{self.depends_on!r}]",
                stage=self.name,
            )
        depends = tuple(dict.fromkeys(self.depends_on))
        if self.name in depends:
            raise InvalidPipelineError(
                f"stage {self.name} depends on itself", "remove it from its own depends_on", stage=self.name
            )
        if self.template is not None and not isinstance(self.template, ClusterTemplate):
            raise InvalidPipelineError(
                f"stage {self.name}: template={self.template!r} is not a ClusterTemplate",
                "pass rayfleet.templates.ClusterTemplate(...) (the one the fleet's provisioner has)",
                stage=self.name,
            )
        if self.template is not None and not self.template.labels:
            raise InvalidPipelineError(
                f"stage {self.name}: template {self.template.name} has no labels, so nothing ties the stage to "
                "clusters of that template",
                f"give the template labels, e.g. labels={{'pool': '{self.template.name}'}}",
                stage=self.name,
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InvalidPipelineError(
                f"stage {self.name}: timeout_s={self.timeout_s!r}", "give a number of seconds > 0", stage=self.name
            )
        object.__setattr__(self, "depends_on", depends)
        object.__setattr__(self, "resources", Resources.of(self.resources))
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in dict(self.labels or {}).items()})

    @property
    def mode(self) -> str:
        """``static`` or ``autoscaled`` (its template's mode), or ``any`` without a template."""
        return self.template.mode if self.template is not None else "any"

    @property
    def selector(self) -> dict[str, str]:
        """The labels its cluster must have: the template's, then the stage's own."""
        return {**(self.template.labels if self.template is not None else {}), **self.labels}


@dataclass(frozen=True)
class Moves:
    """What a pipeline does next: stages to start now, and stages to stop (never start) with the reason."""

    start: tuple[str, ...]
    stop: Mapping[str, str]


def next_moves(depends_on: Mapping[str, Sequence[str]], states: Mapping[str, StageState]) -> Moves:
    """Decide which waiting stages start and which are stopped, from the stages' states (pure).

    A waiting stage starts when every dependency succeeded; it is stopped when a dependency failed or was stopped
    (so a failure stops everything downstream of it, one level per call; `Pipeline.run` calls until nothing moves).

    Args:
        depends_on: stage name -> the names it depends on, in pipeline order.
        states: stage name -> its state now.

    Returns:
        The `Moves`, stages in pipeline order.

    Example:
        >>> deps = {"a": (), "b": ("a",), "c": ("b",)}
        >>> next_moves(deps, {"a": StageState.FAILED, "b": StageState.WAITING, "c": StageState.WAITING}).stop
        {'b': 'not started: it depends on a, which failed'}
    """
    start, stop = [], {}
    for name, deps in depends_on.items():
        if states[name] is not StageState.WAITING:
            continue
        broken = [d for d in deps if states[d] in (StageState.FAILED, StageState.STOPPED)]
        if broken:
            how = "failed" if states[broken[0]] is StageState.FAILED else "did not run"
            stop[name] = f"not started: it depends on {broken[0]}, which {how}"
        elif all(states[d] is StageState.SUCCEEDED for d in deps):
            start.append(name)
    return Moves(tuple(start), stop)


def topological_order(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """The stage names, each after its dependencies, otherwise in the given order (pure).

    Raises:
        InvalidPipelineError: a dependency names no stage, or the dependencies form a cycle (the error names it).
    """
    for name, deps in depends_on.items():
        for dep in deps:
            if dep not in depends_on:
                raise InvalidPipelineError(
                    f"stage {name} depends on {dep!r}, which is not a stage of the pipeline",
                    f"add a stage named {dep!r}, or fix the name (stages: {', '.join(depends_on)})",
                    stage=name,
                )
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            raise InvalidPipelineError(
                f"the stages depend on each other in a cycle: {' -> '.join(cycle)}",
                "remove one of these dependencies",
                stage=name,
            )
        visiting.append(name)
        for dep in depends_on[name]:
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(name)

    for name in depends_on:
        visit(name)
    return order


def artifact_uri(root: str, *parts: str) -> str:
    """``root`` joined with ``parts`` by ``/`` (a URI such as ``s3://bucket/run`` or a local path)."""
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def input_env(stage: str) -> str:
    """The environment variable that holds the artifact URI of stage ``stage`` for the stages depending on it."""
    return ENV_INPUT_PREFIX + stage.upper().replace("-", "_")


def open_uri(uri: str) -> tuple[Any, str]:
    """A filesystem and path for an artifact URI: local paths directly, others through fsspec (or pyarrow).

    Returns:
        ``(filesystem, path)``: an fsspec filesystem (``LocalFileSystem`` for a local path or ``file://``), and the
        path within it.

    Raises:
        PipelineError: no library for the URI's scheme is installed.
    """
    try:
        import fsspec.core
    except ImportError:  # pragma: no cover - fsspec comes with the rag extra
        if "://" in uri and not uri.startswith("file://"):
            from pyarrow import fs as pafs

            return pafs.FileSystem.from_uri(uri)
        from pyarrow import fs as pafs

        return pafs.LocalFileSystem(), uri.removeprefix("file://")
    return fsspec.core.url_to_fs(uri)


@dataclass
class StageRun:
    """What happened to one stage in one run.

    Attributes:
        stage: the stage.
        state: its state now.
        job_id: the fleet job's id, once submitted.
        cluster: the cluster it runs on, once placed.
        awaits: the cluster being created for it, while its job waits for one (state PLACING); else None.
        reason: why it failed or was stopped (Ray's message, the placement error, the failed dependency).
        output: its artifact URI.
        submitted_at / started_at / ended_at: wall times (None until then).
    """

    stage: Stage
    state: StageState = StageState.WAITING
    job_id: str | None = None
    cluster: str | None = None
    awaits: str | None = None
    reason: str | None = None
    output: str = ""
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    handle: JobHandle | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float | None:
        """How long it ran (from its submission to its end), or so far."""
        if self.submitted_at is None:
            return None
        return (self.ended_at or time.time()) - self.submitted_at


@dataclass
class PipelineResult:
    """The outcome of `Pipeline.run`.

    Attributes:
        name: the pipeline's name.
        runs: stage name -> its `StageRun`, in pipeline order.
        artifacts: the artifact root.
        timeline: cluster name -> ``(seconds since the run started, workers, GPU workers)`` each time they changed.
        started_at / ended_at: wall times.
    """

    name: str
    runs: dict[str, StageRun]
    artifacts: str
    timeline: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.state is StageState.SUCCEEDED for r in self.runs.values())

    @property
    def failed(self) -> list[StageRun]:
        """The stages that failed themselves (not those stopped because of them)."""
        return [r for r in self.runs.values() if r.state is StageState.FAILED]

    def stopped_by(self, stage: str) -> list[str]:
        """The stages that never started because ``stage`` failed (directly or through others)."""
        out: list[str] = []
        for name, run in self.runs.items():
            if run.state is StageState.STOPPED and any(d == stage or d in out for d in run.stage.depends_on):
                out.append(name)
        return out

    def peak_workers(self, cluster: str, gpu: bool = True) -> int:
        """The most (GPU) workers the cluster had during the run."""
        return max((g if gpu else w for _, w, g in self.timeline.get(cluster, [])), default=0)

    def summary(self) -> str:
        """A few lines: ok, or where and why it failed and what that stopped."""
        took = self.ended_at - self.started_at
        if self.ok:
            return f"pipeline {self.name}: all {len(self.runs)} stages succeeded in {took:.1f} s"
        lines = [f"pipeline {self.name}: failed after {took:.1f} s"]
        for run in self.failed:
            where = f" on cluster {run.cluster}" if run.cluster else ""
            lines.append(f"  stage {run.stage.name} failed{where}: {run.reason or 'no reason given'}")
            stopped = self.stopped_by(run.stage.name)
            if stopped:
                lines.append(f"    so these never started: {', '.join(stopped)}")
        stopped_by_failure = {n for r in self.failed for n in self.stopped_by(r.stage.name)}
        others = [r for n, r in self.runs.items() if r.state is StageState.STOPPED and n not in stopped_by_failure]
        lines += [f"  stage {r.stage.name} stopped: {r.reason or 'on request'}" for r in others]
        return "\n".join(lines)

    def raise_for_failure(self) -> PipelineResult:
        """Raise `StageFailedError` for the first stage that failed; return self if every stage succeeded."""
        for run in self.failed:
            raise StageFailedError(
                self.summary(),
                f"read the stage's logs: fleet.job({run.job_id!r}).logs()" if run.job_id else "see the reason above",
                stage=run.stage.name,
                reason=run.reason or "",
                stopped=self.stopped_by(run.stage.name),
            )
        return self


class Pipeline:
    """Stages run through a fleet in dependency order.

    Args:
        stages: the stages; dependencies are named by stage name.
        artifacts: the artifact root URI (a local path, ``file://...``, ``s3://...``); default a new temp directory.
        name: the pipeline's name (in the jobs' metadata and the progress display).

    Raises:
        InvalidPipelineError: no stages, duplicate names, an unknown dependency, a cycle, or two templates of
            different names with the same labels (a stage could land on the other's cluster).

    Example:
        >>> Pipeline([Stage("a", "echo a"), Stage("b", "echo b", depends_on=["a"])]).order
        ['a', 'b']
    """

    def __init__(self, stages: Iterable[Stage], *, artifacts: str | None = None, name: str = "pipeline") -> None:
        self.stages = list(stages)
        if not self.stages:
            raise InvalidPipelineError("a pipeline needs at least one stage", "pass a list of Stage(...)")
        for stage in self.stages:
            if not isinstance(stage, Stage):
                raise InvalidPipelineError(f"{stage!r} is not a Stage", "build each with rayfleet.Stage(...)")
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidPipelineError(
                f"stage names repeat: {', '.join(repeated)}", "give every stage its own name", stage=repeated[0]
            )
        templates: dict[tuple[tuple[str, str], ...], str] = {}
        for stage in self.stages:
            if stage.template is None:
                continue
            key = tuple(sorted(stage.template.labels.items()))
            other = templates.setdefault(key, stage.template.name)
            if other != stage.template.name:
                raise InvalidPipelineError(
                    f"templates {other} and {stage.template.name} have the same labels {dict(key)}, so a stage "
                    "could run on a cluster of the other",
                    "give each template a label of its own, e.g. {'pool': '<template name>'}",
                    stage=stage.name,
                )
        self.by_name = {s.name: s for s in self.stages}
        self.order = topological_order({s.name: tuple(s.depends_on) for s in self.stages})
        self.artifacts = artifacts or tempfile.mkdtemp(prefix=f"rayfleet-{name}-")
        self.name = name

    def environment(self, stage: Stage) -> dict[str, str]:
        """The environment variables the pipeline gives ``stage``: its output URI and its inputs' URIs."""
        env = {
            ENV_PIPELINE: self.name,
            ENV_STAGE: stage.name,
            ENV_ARTIFACTS: self.artifacts,
            ENV_OUTPUT: artifact_uri(self.artifacts, stage.name),
        }
        env.update({input_env(dep): artifact_uri(self.artifacts, dep) for dep in stage.depends_on})
        return env

    def runtime_env(self, stage: Stage) -> dict[str, Any]:
        runtime_env = dict(stage.runtime_env or {})
        runtime_env["env_vars"] = {**dict(runtime_env.get("env_vars") or {}), **self.environment(stage)}
        return runtime_env

    def run(
        self,
        fleet: Fleet,
        *,
        console: Console | None = None,
        show: bool = True,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        watch_scale_down_s: float = 0.0,
        on_change: Callable[[PipelineResult], None] | None = None,
        logs: bool = True,
    ) -> PipelineResult:
        """Run the stages through ``fleet``, each once its dependencies succeeded; return when all have ended.

        Starting a stage submits its job and does not wait for a cluster: a stage whose job waits for a cluster being
        created for it is PLACING (`StageRun.awaits` names that cluster), and each turn's look at the job carries the
        creation on and places the job once the cluster is ready. So the progress display and the following of the
        other stages go on meanwhile.

        Args:
            fleet: the fleet (with provisioners holding the stages' templates, or clusters with their labels).
            console: where progress goes (a rich `Console`; default stdout).
            show: show progress (a live table on a terminal, and a line for every change).
            poll_s: how often stage states and cluster workers are read.
            timeout_s: stop every unfinished stage after this long (they end STOPPED, the run's summary says so).
            watch_scale_down_s: after the stages end, keep following the autoscaled clusters used, up to this long,
                until they are back to their minimum of workers (so the scale-down shows in the timeline).
            on_change: called with the result so far whenever a stage's state changes.
            logs: with ``show``, print the running stages' own output lines as they come, prefixed by the stage.

        Returns:
            The `PipelineResult`; call ``raise_for_failure()`` on it to turn a failure into `StageFailedError`.
        """
        progress = _Progress(self, fleet, console, show, logs)
        result = PipelineResult(self.name, {}, self.artifacts, started_at=time.time())
        for name in self.order:
            stage = self.by_name[name]
            result.runs[name] = StageRun(stage, output=artifact_uri(self.artifacts, name))
        depends = {name: tuple(self.by_name[name].depends_on) for name in self.order}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        progress.start(result)
        try:
            while True:
                changed = self._advance(fleet, result, depends)
                changed |= self._follow(result)
                if deadline is not None and time.monotonic() > deadline:
                    changed |= self._stop_all(result, f"the pipeline's timeout of {timeout_s:g} s passed")
                progress.update(result, changed)
                if changed and on_change is not None:
                    on_change(result)
                if all(r.state.is_terminal() for r in result.runs.values()):
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            self._stop_all(result, "interrupted")
            progress.update(result, True)
            progress.stop(result)
            raise
        result.ended_at = time.time()
        if watch_scale_down_s > 0:
            progress.watch_scale_down(result, watch_scale_down_s, poll_s)
        progress.stop(result)
        return result

    # ----- the loop's steps ---------------------------------------------------------------------------------------

    def _advance(self, fleet: Fleet, result: PipelineResult, depends: Mapping[str, Sequence[str]]) -> bool:
        """Stop the waiting stages whose dependencies failed, start those whose dependencies succeeded; repeat until
        nothing moves. Returns whether anything did."""
        changed = False
        while True:
            moves = next_moves(depends, {n: r.state for n, r in result.runs.items()})
            if not moves.start and not moves.stop:
                return changed
            for name, why in moves.stop.items():
                run = result.runs[name]
                run.state, run.reason, run.ended_at = StageState.STOPPED, why, time.time()
            for name in moves.start:
                self._start(fleet, result.runs[name])
            changed = True

    def _start(self, fleet: Fleet, run: StageRun) -> None:
        """Submit the stage's job (this returns at once, also when a cluster is to be created for it); a submission
        the fleet refuses fails the stage."""
        stage = run.stage
        try:
            handle = fleet.submit(
                stage.entrypoint,
                stage.resources,
                runtime_env=self.runtime_env(stage),
                labels=stage.selector or None,
                metadata={"pipeline": self.name, "stage": stage.name},
            )
        except Exception as error:  # refused (no room, no template), or the fleet failed: this stage fails, not the run
            message = error.message if isinstance(error, RayfleetError) else f"{type(error).__name__}: {error}"
            run.state, run.reason, run.ended_at = StageState.FAILED, f"not placed: {message}", time.time()
            return
        run.handle, run.job_id, run.submitted_at = handle, handle.id, time.time()
        run.state = StageState.PLACING

    def _follow(self, result: PipelineResult) -> bool:
        """Look at the job of every unfinished stage once (for a job waiting for its new cluster, the look carries
        the creation on); record its state, its cluster (or the one being created for it), its end; fail a stage past
        its timeout. Returns whether anything changed."""
        changed = False
        for run in result.runs.values():
            if run.handle is None or run.state.is_terminal():
                continue
            try:
                state = StageState.of_job(run.handle.status())
                record = run.handle.record
            except RayfleetError as e:  # cannot ask now; try again next turn
                run.reason = f"cannot read its state: {e.message}"
                continue
            timeout = run.stage.timeout_s
            if not state.is_terminal() and timeout and run.submitted_at and time.time() - run.submitted_at > timeout:
                run.handle.stop()
                run.state, run.reason, run.ended_at = StageState.FAILED, f"timed out after {timeout:g} s", time.time()
                changed = True
                continue
            attempt = record.last_attempt
            cluster = attempt.cluster if attempt else None
            awaits = record.awaits if record.state is JobState.PROVISIONING else None
            if (state, cluster, awaits) == (run.state, run.cluster, run.awaits):
                continue
            changed = True
            if state is StageState.RUNNING and run.started_at is None:
                run.started_at = time.time()
            if state.is_terminal():
                run.ended_at = time.time()
                if state is not StageState.SUCCEEDED:
                    run.reason = _end_reason(record, state)
            run.state, run.cluster, run.awaits = state, cluster, awaits
        return changed

    @staticmethod
    def _stop_all(result: PipelineResult, why: str) -> bool:
        """Stop every unfinished stage, and its job if it has one (a job still waiting to be placed is withdrawn)."""
        changed = False
        for run in result.runs.values():
            if run.state.is_terminal():
                continue
            reason = why
            if run.handle is not None:
                try:
                    run.handle.stop()
                except RayfleetError as e:
                    reason = f"{why} (stopping its job failed: {e.message})"
            run.state, run.reason, run.ended_at = StageState.STOPPED, reason, time.time()
            changed = True
        return changed


def _end_reason(record: JobRecord, state: StageState) -> str:
    """Why a stage's job ended without success: what its latest state says (Ray's message, the failed creation of
    its cluster, the loss), as a placement error when it never reached a cluster."""
    reason = record.reason or f"its job ended {state.value}"
    return reason if record.last_attempt is not None or state is not StageState.FAILED else f"not placed: {reason}"


# ----- progress ---------------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAY_LINE = re.compile(  # Ray's own lines in a job's log (the stage's output is the rest)
    r"^(\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(INFO|WARNING|DEBUG)|\((autoscaler|raylet)|Running entrypoint)"
)
_STYLE = MappingProxyType(
    {
        StageState.WAITING: "dim",
        StageState.PLACING: "yellow",
        StageState.SUBMITTED: "yellow",
        StageState.RUNNING: "cyan",
        StageState.SUCCEEDED: "green",
        StageState.FAILED: "bold red",
        StageState.STOPPED: "red",
    }
)


def worker_counts(snapshot: ClusterSnapshot) -> tuple[int, int]:
    """(workers, GPU workers) of a cluster: its nodes other than the head, and those of them with GPUs.

    The head is the first node with no GPU, or the first node (clusters made from templates have no GPU on the head).
    """
    if not snapshot.healthy or not snapshot.node_ids:
        return 0, 0
    gpu = snapshot.column("GPU")
    has_gpu = [bool(gpu is not None and snapshot.total[i, gpu] > 0) for i in range(len(snapshot.node_ids))]
    head = has_gpu.index(False) if False in has_gpu else 0
    workers = len(snapshot.node_ids) - 1
    return workers, sum(has_gpu) - (1 if has_gpu[head] else 0)


class _Progress:
    """The live view of a run: a table of stages (state, cluster, workers, time) and a line for every change."""

    def __init__(
        self, pipeline: Pipeline, fleet: Fleet, console: Console | None, show: bool, logs: bool = True
    ) -> None:
        from rich.console import Console

        self.pipeline = pipeline
        self.fleet = fleet
        self.show = show
        self.console = console or Console(width=None if sys.stdout.isatty() else 120)
        self.live: Any = None
        self.workers: dict[str, tuple[int, int]] = {}
        self.launching: dict[str, int] = {}
        self.states: dict[str, StageState] = {}
        self.t0 = time.time()
        self.logs = logs
        self.printed: dict[str, int] = {}  # stage -> characters of its output printed so far

    def start(self, result: PipelineResult) -> None:
        self.t0 = result.started_at
        if self.show and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.table(result), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def stop(self, result: PipelineResult) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.show:
            self.console.print(self.table(result))

    def _clusters(self, result: PipelineResult) -> list[str]:
        return list(dict.fromkeys(r.cluster for r in result.runs.values() if r.cluster))

    def sample(self, result: PipelineResult) -> None:
        """Read the worker counts of the clusters in use; record changes in the timeline."""
        clusters = self._clusters(result)
        if not clusters:
            return
        try:
            snapshots = self.fleet.snapshots(max_age=0.5)
        except RayfleetError:
            return
        now = time.time() - self.t0
        for name in clusters:
            snap = snapshots.get(name)
            if snap is None or not snap.healthy:
                continue
            counts = worker_counts(snap)
            self.launching[name] = sum(int(n) for n in (snap.autoscaler.get("pending_launches") or {}).values())
            if self.workers.get(name) != counts:
                before = self.workers.get(name)
                self.workers[name] = counts
                result.timeline.setdefault(name, []).append((round(now, 1), *counts))
                if before is not None and self.show:
                    self._line(f"cluster [bold]{name}[/]: {before[0]} -> {counts[0]} workers ({counts[1]} with GPUs)")

    def update(self, result: PipelineResult, changed: bool) -> None:
        self.sample(result)
        if self.show:
            for name, run in result.runs.items():
                if self.states.get(name) is not run.state:
                    self.states[name] = run.state
                    where = f" on [bold]{run.cluster}[/]" if run.cluster else ""
                    if run.awaits:
                        where = f" on [bold]{run.awaits}[/] (being created)"
                    why = f": {_first_line(run.reason)}" if run.reason and run.state.is_terminal() else ""
                    style = _STYLE[run.state]
                    self._line(f"stage [bold]{name}[/] ({run.stage.mode}) [{style}]{run.state.value}[/]{where}{why}")
                if self.logs and run.handle is not None and run.state in (StageState.RUNNING, StageState.SUCCEEDED):
                    self._output(name, run)
        if self.live is not None:
            self.live.update(self.table(result))

    def _output(self, name: str, run: StageRun) -> None:
        """Print the stage's new output lines (its own, not Ray's INFO/WARNING lines), prefixed by its name."""
        if run.handle is None or (run.state.is_terminal() and self.printed.get(name, -1) < 0):
            return  # ended before we saw it running: its summary says enough
        try:
            text = run.handle.logs()
        except RayfleetError:
            return
        done = self.printed.get(name, 0)
        complete = text[: text.rfind("\n") + 1]  # whole lines only
        for line in complete[done:].splitlines():
            line = _ANSI.sub("", line).rstrip()
            if line and not _RAY_LINE.match(line):
                self._line(f"[dim]{name} |[/] {line}", markup_line=False)
        self.printed[name] = max(done, len(complete))

    def watch_scale_down(self, result: PipelineResult, seconds: float, poll_s: float) -> None:
        """Until every autoscaled cluster used is back to its template's minimum of workers (or ``seconds`` pass)."""
        floors = {}
        for run in result.runs.values():
            template = run.stage.template
            if run.cluster and template is not None and template.autoscaled:
                floors[run.cluster] = sum(g.min_replicas for g in template.workers)
        if not floors:
            return
        if self.show:
            self._line(f"waiting up to {seconds:g} s for {', '.join(floors)} to scale back down")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.update(result, False)
            if all(self.workers.get(c, (0, 0))[0] <= floor for c, floor in floors.items()):
                return
            time.sleep(poll_s)

    def _line(self, text: str, markup_line: bool = True) -> None:
        from rich.text import Text

        stamp = f"[dim]{time.time() - self.t0:6.1f}s[/] "
        if not markup_line:  # a stage's own output: print it as it is, after the markup of the prefix
            prefix, _, raw = text.partition("[/] ")
            out: Any = Text.from_markup(stamp + prefix + "[/] ") + Text(raw)
        else:
            out = stamp + text
        console = self.live.console if self.live is not None else self.console
        console.print(out, highlight=False)

    def table(self, result: PipelineResult) -> Any:
        from rich.table import Table

        table = Table(title=f"pipeline {self.pipeline.name}", title_justify="left")
        for column in ("stage", "kind", "state", "cluster", "workers", "time"):
            table.add_column(column, no_wrap=True)
        table.add_column("note")
        for name, run in result.runs.items():
            template = run.stage.template
            kind = f"{run.stage.mode} ({template.name})" if template else run.stage.mode
            workers = ""
            if run.cluster and run.cluster in self.workers and run.awaits is None:
                total, gpu = self.workers[run.cluster]
                workers = f"{total}" + (f" ({gpu} GPU)" if gpu else "")
                if self.launching.get(run.cluster):
                    workers += f" +{self.launching[run.cluster]} starting"
            seconds = run.seconds
            note = _first_line(run.reason) if run.reason else ""
            table.add_row(
                name,
                kind,
                f"[{_STYLE[run.state]}]{run.state.value}[/]",
                _where(run),
                workers,
                f"{seconds:.0f} s" if seconds is not None else "",
                note,
            )
        return table


def _where(run: StageRun) -> str:
    """The cluster to show for a stage: the one being created for it while its job waits for it, else its own."""
    return f"{run.awaits} (being created)" if run.awaits else run.cluster or ""


def _first_line(text: str | None, limit: int = 160) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
