"""The one orchestrator: validate, probe, place, record, submit, and follow jobs through their attempts."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.capacity import ClusterSnapshot, Prober
from rayfleet.config import FLEET_ENV, FleetConfig
from rayfleet.errors import (
    ClusterError,
    ClusterUnreachableError,
    InvalidRequestError,
    JobNotFoundError,
    NoCapacityError,
    UnknownClusterError,
)
from rayfleet.ledger import JobRecord, Ledger
from rayfleet.placement import Decision, Hold, PlacementRequest, place
from rayfleet.resources import Resources
from rayfleet.states import JobState

log = logging.getLogger(__name__)

JOB_ID_ENV = "RAYFLEET_JOB_ID"  # set in every job's environment: a nested submission records it as its parent
METADATA_PREFIX = "rayfleet."
# A hold is dropped once the cluster's own report was computed this long after the placement: by then the job's
# supervisor holds its resources (or waits as pending demand), so the report shows it.
HOLD_REFLECT_S = 3.0


@dataclass(frozen=True)
class Submission:
    """A validated request to run one job."""

    entrypoint: str
    resources: Resources
    runtime_env: Mapping[str, Any] | None
    labels: Mapping[str, str]
    cluster: str | None
    policy: str
    metadata: Mapping[str, str]
    parent_id: str | None

    def request(self, exclude: frozenset[str] = frozenset()) -> PlacementRequest:
        return PlacementRequest(self.resources, dict(self.labels), self.cluster, self.policy, exclude)


class Dispatcher:
    """Places and submits jobs on a fleet, records everything in the ledger, and follows their state.

    Args:
        config: the fleet.
        ledger: where jobs are recorded.
    """

    def __init__(self, config: FleetConfig, ledger: Ledger) -> None:
        self.config = config
        self.ledger = ledger
        self.prober = Prober(
            config.clusters,
            ttl=config.probe_ttl_s,
            timeout=config.probe_timeout_s,
            on_version=self._check_version,
        )
        self._backends = {c.name: RayJobs(c) for c in config.clusters}
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def close(self) -> None:
        self.prober.close()

    # ----- validation ---------------------------------------------------------------------------------------------

    def validate(
        self,
        entrypoint: str,
        resources: Resources | Mapping[str, Any] | None,
        *,
        runtime_env: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        cluster: str | None = None,
        policy: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Submission:
        """Check a request before anything is recorded or sent. Raises `InvalidRequestError` subclasses."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise InvalidRequestError(
                "the entrypoint is empty", "give the shell command to run, e.g. 'python train.py'"
            )
        res = Resources.of(resources)
        if cluster is not None and self.config.cluster(cluster) is None:
            names = ", ".join(c.name for c in self.config.clusters)
            raise UnknownClusterError(f"no cluster named {cluster!r} in the fleet", f"pin to one of: {names}")
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise InvalidRequestError(
                f"runtime_env={runtime_env!r} is not a mapping", "pass a dict, e.g. {'pip': [...]}"
            )
        if labels is not None and not isinstance(labels, Mapping):
            raise InvalidRequestError(f"labels={labels!r} is not a mapping", "pass a dict, e.g. {'cloud': 'gcp'}")
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        reserved = sorted(k for k in meta if k.startswith(METADATA_PREFIX))
        if reserved:
            raise InvalidRequestError(f"metadata keys {reserved} are reserved by rayfleet", "use other key names")
        return Submission(
            entrypoint=entrypoint,
            resources=res,
            runtime_env=runtime_env,
            labels={str(k): str(v) for k, v in (labels or {}).items()},
            cluster=cluster,
            policy=policy or self.config.policy,
            metadata=meta,
            parent_id=os.environ.get(JOB_ID_ENV) or None,
        )

    # ----- placement ----------------------------------------------------------------------------------------------

    def snapshots(self, names: list[str] | None = None, *, max_age: float | None = None) -> dict[str, ClusterSnapshot]:
        return self.prober.snapshots(names, max_age=max_age)

    def decide(self, sub: Submission, exclude: frozenset[str] = frozenset()) -> Decision:
        """Probe (through the cache) and place, without changing anything."""
        return self._decide(sub, exclude)[0]

    def _decide(self, sub: Submission, exclude: frozenset[str]) -> tuple[Decision, dict[str, ClusterSnapshot]]:
        names = [sub.cluster] if sub.cluster else None
        snapshots = self.snapshots(names)
        decision = place(sub.request(exclude), self.config.clusters, snapshots, self._live_holds(snapshots))
        return decision, snapshots

    def _live_holds(self, snapshots: Mapping[str, ClusterSnapshot]) -> list[Hold]:
        now = time.time()
        with self._lock:
            kept = []
            for hold in self._holds:
                snap = snapshots.get(hold.cluster)
                reported_at = (snap.report_time or snap.taken_at) if snap is not None and snap.healthy else 0.0
                seen = reported_at > hold.placed_at and (
                    reported_at > hold.placed_at + HOLD_REFLECT_S or hold.reflected_in(snap)  # type: ignore[arg-type]
                )
                if not seen and now - hold.placed_at < self.config.hold_ttl_s:
                    kept.append(hold)
            self._holds = kept
            return list(kept)

    def _no_capacity(self, sub: Submission, decision: Decision, history: list[tuple[str, str]]) -> Exception:
        snaps = {o.cluster: self.prober.cached(o.cluster) for o in decision.options}
        healthy = [o for o in decision.options if (snap := snaps.get(o.cluster)) is not None and snap.healthy]
        pinned = snaps.get(sub.cluster) if sub.cluster else None
        if sub.cluster and (pinned is None or not pinned.healthy):
            return ClusterUnreachableError(
                f"the pinned cluster {sub.cluster} is unreachable: {pinned.error if pinned else 'no reading'}",
                "check that it is up and its dashboard address is right, or pin another cluster",
                cluster=sub.cluster,
            )
        if not healthy:
            return ClusterUnreachableError(
                "every cluster in the fleet is unreachable",
                "check the addresses in the fleet definition and that the clusters are up ('rayfleet clusters')",
                cluster="*",
            )
        largest = {n: s.largest_node() for n, s in snaps.items() if s is not None and s.healthy}
        if all(o.too_large for o in healthy):
            return NoCapacityError(
                f"{sub.resources.describe()} is larger than any node in the fleet",
                "ask for less than the largest node below (a job's request must fit on one node), "
                "or add a cluster with bigger nodes",
                rejects=decision.rejects,
                largest_nodes=largest,
                history=history,
            )
        return NoCapacityError(
            f"no cluster can take {sub.resources.describe()} now",
            "wait for running jobs to finish, relax labels or the pin, or add capacity",
            rejects=decision.rejects,
            largest_nodes=largest,
            history=history,
        )

    # ----- submission ---------------------------------------------------------------------------------------------

    def submit(self, sub: Submission) -> str:
        """Place and submit; returns the job id once a cluster has accepted it and the ledger has recorded it.

        The ledger records the chosen cluster before the submission leaves, under a submission id made here, so a
        retry (or a process that restarts) can tell whether Ray has it: "already exists" means it does. A
        submission that provably did not reach its cluster is marked FAILED and the next-best cluster is tried.
        """
        job_id = f"rf-{uuid.uuid4().hex[:12]}"
        history: list[tuple[str, str]] = []
        exclude: frozenset[str] = frozenset()
        for n in range(1, len(self.config.clusters) + 1):
            decision, snapshots = self._decide(sub, exclude)
            chosen = decision.chosen
            if chosen is None:
                if n > 1:  # the job is in the ledger already: its attempts say what happened
                    self.ledger.record_job(job_id, JobState.FAILED, "no cluster could take it")
                raise self._no_capacity(sub, decision, history)
            submission_id = f"{job_id}-{n}"
            attempt = {
                "submission_id": submission_id,
                "n": n,
                "cluster": chosen.cluster,
                "node_id": chosen.node_id,
                "accelerator": chosen.accelerator,
                "detail": f"policy {sub.policy}, score {chosen.score[1]:.3f}" if chosen.score else None,
            }
            if n == 1:
                self.ledger.add_job(
                    job_id,
                    entrypoint=sub.entrypoint,
                    request={
                        "resources": sub.resources.model_dump(mode="json"),
                        "labels": dict(sub.labels),
                        "cluster": sub.cluster,
                        "policy": sub.policy,
                    },
                    runtime_env=sub.runtime_env,
                    metadata=sub.metadata,
                    parent_id=sub.parent_id,
                    attempt=attempt,
                )
            else:
                self.ledger.add_attempt(job_id, attempt)
            with self._lock:
                self._holds.append(
                    Hold.on(
                        snapshots[chosen.cluster], chosen.node_id, sub.resources.to_ray(chosen.accelerator), time.time()
                    )
                )
            try:
                self._backends[chosen.cluster].submit(
                    submission_id,
                    sub.entrypoint,
                    runtime_env=self._runtime_env(sub, job_id),
                    metadata=self._metadata(sub, job_id, n),
                    entrypoint_kwargs=sub.resources.entrypoint_kwargs(chosen.accelerator),
                )
            except ClusterUnreachableError as e:
                self._drop_hold(chosen.cluster)
                if not self._provably_absent(chosen.cluster, submission_id):
                    self.ledger.record(submission_id, JobState.UNKNOWN, e.message)
                    raise
                self.ledger.record(submission_id, JobState.FAILED, f"not submitted: {e.message}")
                self.prober.invalidate(chosen.cluster)
                history.append((chosen.cluster, e.message))
                exclude |= {chosen.cluster}
                continue
            except ClusterError as e:
                self._drop_hold(chosen.cluster)
                self.ledger.record(submission_id, JobState.FAILED, f"refused: {e.message}")
                raise
            self.ledger.record(submission_id, JobState.SUBMITTED)
            return job_id
        raise AssertionError("unreachable")  # pragma: no cover - the loop excludes one cluster per turn

    def _drop_hold(self, cluster: str) -> None:
        with self._lock:
            for i in range(len(self._holds) - 1, -1, -1):
                if self._holds[i].cluster == cluster:
                    del self._holds[i]
                    break

    def _provably_absent(self, cluster: str, submission_id: str) -> bool:
        """After a failed submit: True only if the cluster answers that it has no such job."""
        try:
            self._backends[cluster].status(submission_id)
        except JobNotFoundError:
            return True
        except ClusterError:
            return False
        return False

    def _runtime_env(self, sub: Submission, job_id: str) -> dict[str, Any]:
        env = dict(sub.runtime_env or {})
        env_vars = dict(env.get("env_vars") or {})
        env_vars[JOB_ID_ENV] = job_id
        env_vars.setdefault(FLEET_ENV, self.config.to_env_json())  # templates only: no secret travels
        env["env_vars"] = env_vars
        return env

    @staticmethod
    def _metadata(sub: Submission, job_id: str, n: int) -> dict[str, str]:
        meta = dict(sub.metadata)
        meta[f"{METADATA_PREFIX}job_id"] = job_id
        meta[f"{METADATA_PREFIX}attempt"] = str(n)
        meta[f"{METADATA_PREFIX}resources"] = json.dumps(sub.resources.model_dump(mode="json"), sort_keys=True)
        if sub.parent_id:
            meta[f"{METADATA_PREFIX}parent_id"] = sub.parent_id
        return meta

    # ----- following jobs -----------------------------------------------------------------------------------------

    def refresh(self, job_id: str) -> JobRecord:
        """Ask the cluster of the job's newest attempt for its state, record a change, and return the job."""
        job = self.ledger.job(job_id)
        attempt = job.last_attempt
        if attempt is None or attempt.state.is_terminal() or attempt.cluster not in self._backends:
            return job
        try:
            info = self._backends[attempt.cluster].info(attempt.submission_id)
        except JobNotFoundError:
            if attempt.state is JobState.PLACED:  # the process that placed it may still be submitting
                return job
            self.ledger.record(attempt.submission_id, JobState.LOST, f"cluster {attempt.cluster} no longer has it")
            return self.ledger.job(job_id)
        except ClusterUnreachableError:
            return job  # unreachable is not dead: a partition may heal (issue 4 adds the grace period)
        state = JobState.from_ray(str(info.status))
        if state != attempt.state:
            self.ledger.record(attempt.submission_id, state, getattr(info, "message", None))
            job = self.ledger.job(job_id)
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Poll until the job is terminal. Raises `TimeoutError` when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            job = self.refresh(job_id)
            if job.state.is_terminal():
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s")
            remaining = None if deadline is None else deadline - time.monotonic()
            time.sleep(min(delay, remaining) if remaining is not None else delay)
            delay = min(delay * 1.5, 1.0)

    def _attempt(self, job_id: str) -> tuple[RayJobs, str]:
        attempt = self.ledger.job(job_id).last_attempt
        if attempt is None:
            raise JobNotFoundError(f"job {job_id} has not been submitted to any cluster", "wait until it is placed")
        if attempt.cluster not in self._backends:
            raise UnknownClusterError(
                f"job {job_id} ran on cluster {attempt.cluster}, which this fleet does not have",
                "use the fleet definition the job was submitted with",
            )
        return self._backends[attempt.cluster], attempt.submission_id

    def logs(self, job_id: str) -> str:
        backend, sid = self._attempt(job_id)
        return backend.logs(sid)

    def tail(self, job_id: str) -> Iterator[str]:
        backend, sid = self._attempt(job_id)
        return backend.tail(sid)

    def stop(self, job_id: str) -> bool:
        backend, sid = self._attempt(job_id)
        stopped = backend.stop(sid)
        self.refresh(job_id)
        return stopped

    # ----- versions -----------------------------------------------------------------------------------------------

    def _check_version(self, cluster: str, version: str, session: str) -> None:
        local = _local_ray_version()
        if local and version != local and cluster not in self._warned:
            self._warned.add(cluster)
            warnings.warn(
                f"cluster {cluster} runs Ray {version}, this process has Ray {local}: job submission works across "
                "versions, but runtime_env features may differ. Align the versions to be safe.",
                stacklevel=2,
            )


def _local_ray_version() -> str | None:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None
