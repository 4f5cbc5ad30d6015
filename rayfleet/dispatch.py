"""The one orchestrator: validate, probe, place, record, submit, and follow jobs through their attempts."""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata
import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayfleet import faults, launch
from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.capacity import ClusterSnapshot, Prober
from rayfleet.config import FLEET_ENV, POLICIES, Cluster, FleetConfig
from rayfleet.errors import (
    AttemptFencedError,
    ClusterError,
    ClusterUnreachableError,
    InvalidRequestError,
    JobNotFoundError,
    NoCapacityError,
    ProvisioningError,
    RayfleetError,
    UnknownClusterError,
)
from rayfleet.ledger import AttemptConflict, AttemptRecord, JobRecord, Ledger, ManagedClusterRecord, NewCluster
from rayfleet.lifecycle import (
    WAIT,
    AttemptView,
    Observation,
    Rules,
    Seen,
    Step,
    creation_step,
    follow,
    loss_reason,
    queue_expired,
    retry_after_loss,
)
from rayfleet.lifecycle import Creation as CreationStep
from rayfleet.placement import Decision, Hold, PlacementRequest, place
from rayfleet.placement.fragmentation import refresh_live_mix
from rayfleet.placement.provision import (
    Creation,
    Headroom,
    ProvisionerState,
    creations,
    gang_creations,
    gang_headroom,
    headroom,
)
from rayfleet.provisioning.base import ManagedCluster
from rayfleet.provisioning.templates import ClusterTemplate
from rayfleet.resources import Gang, Resources
from rayfleet.states import JobState

log = logging.getLogger(__name__)

JOB_ID_ENV = "RAYFLEET_JOB_ID"  # set in every job's environment: a nested submission records it as its parent
METADATA_PREFIX = "rayfleet."
# A hold is dropped once the cluster's own report was computed this long after the placement: by then the job's
# supervisor holds its resources (or waits as pending demand), so the report shows it.
HOLD_REFLECT_S = 3.0
# A job's launcher waits this long for its reservation before it gives up (exit code 75) and the dispatcher places the
# job again elsewhere: with free capacity counted at placement, a reservation that takes longer is stuck. Placements
# that count on a worker being added (autoscaler headroom, a new cluster) add the template's scale_up_s.
DEFAULT_START_TIMEOUT_S = 3.0
DEFAULT_RESERVATION_TIMEOUT_S = DEFAULT_START_TIMEOUT_S  # the name it had before queued and plain jobs used it
# A job pinned to the node placement chose asks for this much of Ray's per-node node:<ip> resource (1.0 per node).
PIN_AMOUNT = 0.001
# policy="fragmentation" learns the typical request mix again from the ledger after this many new jobs.
MIX_EVERY = 200
# A managed cluster still CREATING this long after its template's ready timeout was left by a creator that crashed.
CREATING_MARGIN_S = 60.0
# A cluster recorded CREATING whose provisioner has not been asked this long after the record was left by a creator
# that stopped in between (crashed, or paused): the loop asks in its place. Asking twice is harmless (the second ask
# finds the cluster, as a retry would), so this only keeps the loop from racing a creator that is about to ask.
ASK_GRACE_S = 5.0
CREATOR_GONE = "creator gone"  # the detail of a creation given up because its creator stopped waiting long ago


@dataclass(frozen=True)
class _Target:
    """Where one attempt goes: a cluster, the node and GPU model placement chose (if it chose one), and how long the
    job may take to reserve its resources there (longer where a worker has to be added first)."""

    cluster: str
    node_id: str | None
    accelerator: str | None
    detail: str | None
    bundle_nodes: tuple[str, ...] | None = None
    scale_up_s: float = 0.0
    pin: str | None = None  # Ray's node:<ip> resource of the node placement chose, when the job is pinned to it


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
    gang: Gang | None = None
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    queue: bool = False  # when nothing can take it now: wait in the queue instead of failing
    queue_deadline: float | None = None  # when a queued job gives up (time.time() seconds)
    priority: int = 0
    owner: str = ""
    max_retries: int = 0  # new attempts after a proven loss of its cluster
    at_least_once: bool = False  # also place it again when its cluster stays unreachable (it may then run twice)
    group: Mapping[str, Any] | None = None  # the rendezvous of a group of jobs (rayfleet.group)

    def request(self, exclude: frozenset[str] = frozenset()) -> PlacementRequest:
        return PlacementRequest(self.resources, dict(self.labels), self.cluster, self.policy, exclude, self.gang)

    def describe(self) -> str:
        return self.gang.describe() if self.gang is not None else self.resources.describe()

    @property
    def launched(self) -> bool:
        """Whether the job goes through the launcher (it reserves something, so its start must be confirmed)."""
        return self.gang is not None or not self.resources.is_empty

    def to_json(self) -> dict[str, Any]:
        """What the ledger keeps of the request, enough to place the job again (failover, the queue, a retry)."""
        out: dict[str, Any] = {
            "resources": self.resources.model_dump(mode="json"),
            "labels": dict(self.labels),
            "cluster": self.cluster,
            "policy": self.policy,
            "start_timeout_s": self.start_timeout_s,
            "queue": self.queue,
            "queue_deadline": self.queue_deadline,
            "priority": self.priority,
            "owner": self.owner,
            "max_retries": self.max_retries,
            "at_least_once": self.at_least_once,
        }
        if self.gang is not None:
            out["gang"] = self.gang.model_dump(mode="json")
        if self.group is not None:
            out["group"] = dict(self.group)
        return out

    @classmethod
    def from_job(cls, job: JobRecord) -> Submission:
        request = job.request
        gang = request.get("gang")
        return cls(
            entrypoint=job.entrypoint,
            resources=Resources(**request.get("resources", {})),
            runtime_env=job.runtime_env,
            labels=dict(request.get("labels") or {}),
            cluster=request.get("cluster"),
            policy=request.get("policy", "binpack"),
            metadata=dict(job.metadata or {}),
            parent_id=job.parent_id,
            gang=Gang(**gang) if gang else None,
            start_timeout_s=request.get(
                "start_timeout_s", request.get("reservation_timeout_s", DEFAULT_START_TIMEOUT_S)
            ),
            queue=bool(request.get("queue", False)),
            queue_deadline=request.get("queue_deadline"),
            priority=int(request.get("priority", 0)),
            owner=str(request.get("owner") or ""),
            max_retries=int(request.get("max_retries", 0)),
            at_least_once=bool(request.get("at_least_once", False)),
            group=request.get("group"),
        )


@dataclass(frozen=True)
class _Failed:
    """A creation that failed; ``avoid``: its template was at fault (do not use it again for its jobs at once)."""

    avoid: bool


@dataclass
class _Outcome:
    """How a placement turn ended."""

    submitted: bool
    in_ledger: bool  # the job has been recorded (an attempt was placed, or it waits for a new cluster)
    decision: Decision | None = None
    conflict: bool = False  # another process placed (or stopped) the job first
    provisioning: str | None = None  # the cluster being created for it: the loop places it there once ready

    @property
    def settled(self) -> bool:
        """Whether the job is on its way: submitted, or waiting for its new cluster."""
        return self.submitted or self.provisioning is not None


class Dispatcher:
    """Places and submits jobs on a fleet, records everything in the ledger, and follows their state.

    Args:
        config: the fleet.
        ledger: where jobs are recorded.
        provisioners: where clusters on demand come from.
        clock: wall-clock seconds for every timing rule (default: the ledger's clock).
    """

    def __init__(
        self,
        config: FleetConfig,
        ledger: Ledger,
        provisioners: Sequence[Any] = (),
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        # every timing rule reads this clock (the ledger's by default): tests move it instead of sleeping. Holds
        # alone use the wall clock: they are compared with the times in the clusters' own reports
        self._clock = clock or ledger.clock
        self._provisioners: dict[str, Any] = {p.name: p for p in provisioners}
        self._clusters: dict[str, Cluster] = {c.name: c for c in config.clusters}
        self._managed: dict[str, ManagedClusterRecord] = {}
        self._annotated: dict[str, float] = {}
        self.prober = Prober(
            config.clusters,
            ttl=config.probe_ttl_s,
            timeout=config.probe_timeout_s,
            on_version=self._check_version,
        )
        self._backends = {c.name: RayJobs(c) for c in config.clusters}
        self._since_mix = 0  # submissions since policy="fragmentation" last learned the typical request mix
        self._learn_mix()
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._last_ok: dict[str, float] = {}  # when each cluster last answered a job call
        self._warned: set[str] = set()
        for record in ledger.managed():  # clusters created earlier, by this process or another
            if record.state == "READY" and record.address and record.provisioner in self._provisioners:
                cluster = Cluster(name=record.name, address=record.address, labels=dict(record.labels))
                self._join(cluster, record)

    @property
    def clusters(self) -> list[Cluster]:
        """The fleet's clusters now: the configured ones and the managed ones that are ready."""
        return list(self._clusters.values())

    @property
    def managed(self) -> dict[str, ManagedClusterRecord]:
        return dict(self._managed)

    def close(self) -> None:
        self.prober.close()
        for provisioner in self._provisioners.values():
            close = getattr(provisioner, "close", None)
            if close is not None:
                close()

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
        gang: Gang | Mapping[str, Any] | None = None,
        start_timeout_s: float | None = None,
        reservation_timeout_s: float | None = None,
        wait: bool | float = False,
        priority: int = 0,
        owner: str | None = None,
        max_retries: int = 0,
        at_least_once: bool = False,
    ) -> Submission:
        """Check a request before anything is recorded or sent. Raises `InvalidRequestError` subclasses."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise InvalidRequestError(
                "the entrypoint is empty", "give the shell command to run, e.g. 'python train.py'"
            )
        if "\x00" in entrypoint:
            raise InvalidRequestError(
                "the entrypoint contains a NUL byte, which no shell can run", "remove the \\x00 from the command"
            )
        res = Resources.of(resources)
        if gang is not None:
            gang = gang if isinstance(gang, Gang) else Gang(**dict(gang))
            if not res.is_empty:
                raise InvalidRequestError(
                    "both resources and a gang were given", "put the driver's needs in the gang's first bundle"
                )
        if start_timeout_s is not None and reservation_timeout_s is not None:
            raise InvalidRequestError(
                "both start_timeout_s and reservation_timeout_s were given", "give start_timeout_s only"
            )
        given = start_timeout_s if start_timeout_s is not None else reservation_timeout_s
        timeout = self.config.start_timeout_s if given is None else _number(given, "start_timeout_s")
        if not timeout > 0 or timeout == float("inf"):
            raise InvalidRequestError(f"start_timeout_s={given!r}", "give a finite number of seconds > 0")
        if isinstance(wait, bool):
            queue, deadline = wait, None
        else:
            seconds = _number(wait, "wait")
            if not seconds > 0:
                raise InvalidRequestError(f"wait={wait!r}", "give True, False, or a number of seconds > 0")
            queue, deadline = True, (self._clock() + seconds if seconds != float("inf") else None)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidRequestError(f"priority={priority!r} is not an integer", "give an int; higher runs first")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidRequestError(f"max_retries={max_retries!r}", "give an int >= 0")
        if cluster is not None and cluster not in self._clusters:
            names = ", ".join(self._clusters)
            raise UnknownClusterError(f"no cluster named {cluster!r} in the fleet", f"pin to one of: {names}")
        if runtime_env is not None:
            _check_runtime_env(runtime_env)
        if labels is not None and not isinstance(labels, Mapping):
            raise InvalidRequestError(f"labels={labels!r} is not a mapping", "pass a dict, e.g. {'cloud': 'gcp'}")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidRequestError(f"metadata={metadata!r} is not a mapping", "pass a dict of strings")
        if policy is not None and policy not in POLICIES:
            raise InvalidRequestError(f"unknown policy {policy!r}", f"use one of: {', '.join(sorted(POLICIES))}")
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
            gang=gang,
            start_timeout_s=timeout,
            queue=queue,
            queue_deadline=deadline,
            priority=priority,
            owner=owner if owner is not None else _default_owner(),
            max_retries=max_retries,
            at_least_once=bool(at_least_once),
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
        decision = place(sub.request(exclude), self.clusters, snapshots, self._live_holds(snapshots))
        return decision, snapshots

    def _pin(self, sub: Submission, snapshot: ClusterSnapshot | None, node_id: str | None) -> str | None:
        """The ``node:<ip>`` resource that keeps a one-bundle job on the node placement chose, or None: pinning is
        off (``pin_node``; by default on for ``policy="fragmentation"``), the job is a gang (its strategy places its
        bundles) or asks for nothing, or the node has no address of its own."""
        wanted = self.config.pin_node if self.config.pin_node is not None else sub.policy == "fragmentation"
        if not wanted or not sub.launched or sub.gang is not None or snapshot is None:
            return None
        return snapshot.pin(node_id)

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
        if not healthy and decision.options:
            return ClusterUnreachableError(
                "every cluster in the fleet is unreachable",
                "check the addresses in the fleet definition and that the clusters are up ('rayfleet clusters')",
                cluster="*",
            )
        largest = {n: s.largest_node() for n, s in snaps.items() if s is not None and s.healthy}
        rejects = dict(decision.rejects)
        room, made = self.provision_plan(sub, {n: s for n, s in snaps.items() if s is not None})
        rejects.update({f"headroom on {h.cluster}": h.reason for h in room if not h.fits})
        rejects.update({f"template {c.provisioner}/{c.template}": c.reason for c in made if not c.fits})
        if healthy and all(o.too_large for o in healthy) and not any(c.fits for c in made):
            return NoCapacityError(
                f"{sub.describe()} is larger than any node in the fleet",
                "ask for less than the largest node below (a job's request must fit on one node), "
                "or add a cluster with bigger nodes",
                rejects=rejects,
                largest_nodes=largest,
                history=history,
                never_fits=True,
            )
        return NoCapacityError(
            f"no cluster can take {sub.describe()} now",
            "wait for running jobs to finish, relax labels or the pin, or add capacity",
            rejects=rejects,
            largest_nodes=largest,
            history=history,
        )

    # ----- submission ---------------------------------------------------------------------------------------------

    def submit(self, sub: Submission) -> str:
        """Place and submit; returns the job id once a cluster has accepted it and the ledger has recorded it, or once
        the job and a cluster to be created for it are recorded (PROVISIONING): it never waits for a creation.

        The ledger records the chosen cluster before the submission leaves, under a submission id made here, so a
        retry (or a process that restarts) can tell whether Ray has it: "already exists" means it does. A
        submission that provably did not reach its cluster is marked FAILED and the next-best cluster is tried.
        When nothing fits now, a managed autoscaling cluster's headroom is used, else a cluster is created (the loop,
        `advance_creations`, places the job there when it is ready); else a job submitted with ``queue`` waits in
        the ledger's queue for the dispatch loop, and any other raises.
        """
        job_id = f"rf-{uuid.uuid4().hex[:12]}"
        history: list[tuple[str, str]] = []
        outcome = self._place(sub, job_id, 1, frozenset(), history, in_ledger=False)
        if outcome.settled or outcome.conflict:  # on its way (a conflict: another loop has it now)
            return job_id
        assert outcome.decision is not None
        error = self._no_capacity(sub, outcome.decision, history)
        if sub.queue and not getattr(error, "never_fits", False):
            reason = error.message.splitlines()[0]
            if outcome.in_ledger:
                self.ledger.requeue(job_id, f"waiting: {reason}")
            else:
                self._add_job(job_id, sub, detail=f"waiting: {reason}")
            log.info("job %s is queued: %s", job_id, reason)
            return job_id
        if outcome.in_ledger:  # the job is in the ledger already: its attempts say what happened
            self.ledger.record_job(job_id, JobState.FAILED, "no cluster could take it")
        raise error

    def _place(
        self,
        sub: Submission,
        job_id: str,
        n: int,
        exclude: frozenset[str],
        history: list[tuple[str, str]],
        *,
        in_ledger: bool,
        replacing_unknown: bool = False,
        avoid: frozenset[str] = frozenset(),
    ) -> _Outcome:
        """Try the best cluster, then the next ones, until one accepts attempt ``n`` (or a later one). Free capacity
        first, then autoscaler headroom, then a new cluster (recorded with the job, asked for, not waited for) from a
        template not in ``avoid`` (``provisioner/template``: one whose cluster just failed for this job)."""
        decision: Decision | None = None
        for _ in range(len(self._clusters) + 2 * len(self._provisioners) + 2):
            decision, snapshots = self._decide(sub, exclude)
            chosen = decision.chosen
            if chosen is not None:
                pin = self._pin(sub, snapshots.get(chosen.cluster), chosen.node_id)
                why = [f"policy {sub.policy}, score {chosen.score[1]:.3f}"] if chosen.score else []
                why += [f"pinned to {pin}"] if pin else []
                target = _Target(
                    chosen.cluster,
                    chosen.node_id,
                    chosen.accelerator,
                    ", ".join(why) or None,
                    chosen.bundle_nodes,
                    pin=pin,
                )
            else:
                target = self._headroom(sub, snapshots, exclude)
            if target is None:
                if replacing_unknown:  # its UNKNOWN attempt may still run: wait for room, do not create for it
                    return _Outcome(False, in_ledger, decision)
                created, in_ledger = self._provision(
                    sub, job_id, snapshots, exclude, history, in_ledger=in_ledger, avoid=avoid
                )
                return _Outcome(False, in_ledger, decision, provisioning=created)
            try:
                reached = self._submit_attempt(
                    sub, job_id, n, target, snapshots.get(target.cluster), history,
                    new_job=not in_ledger, replacing_unknown=replacing_unknown,
                )  # fmt: skip
            except AttemptConflict:
                return _Outcome(False, True, decision, conflict=True)
            if reached:
                return _Outcome(True, True, decision)
            in_ledger, replacing_unknown = True, False
            exclude |= {target.cluster}
            n += 1
        return _Outcome(False, in_ledger, decision)

    def _submit_attempt(
        self,
        sub: Submission,
        job_id: str,
        n: int,
        target: _Target,
        snapshot: ClusterSnapshot | None,
        history: list[tuple[str, str]],
        *,
        new_job: bool,
        replacing_unknown: bool = False,
    ) -> bool:
        """Record attempt ``n`` on ``target``, then submit it. False when it provably did not reach the cluster.

        Raises:
            AttemptConflict: another process placed this job's next attempt first (nothing was sent).
        """
        submission_id = f"{job_id}-{n}"
        attempt = {
            "submission_id": submission_id,
            "n": n,
            "cluster": target.cluster,
            "node_id": target.node_id,
            "accelerator": target.accelerator,
            "detail": target.detail,
            "session": snapshot.session_name if snapshot is not None and snapshot.healthy else None,
        }
        if new_job:
            self._add_job(job_id, sub, attempt=attempt)
        else:
            self.ledger.add_attempt(job_id, attempt, replacing_unknown=replacing_unknown)
        faults.point("attempt.recorded")
        entrypoint, runtime_env = sub.entrypoint, self._runtime_env(sub, job_id)
        kwargs: dict[str, Any] = {}
        if sub.gang is not None:  # zero entrypoint resources: the launcher reserves the gang, then runs the command
            bundles, strategy = sub.gang.to_ray(target.accelerator), sub.gang.strategy
            held = list(zip(target.bundle_nodes or [None] * len(bundles), bundles, strict=True))
        elif sub.launched:  # one bundle: the launcher confirms the start (a PENDING Ray job cannot be withdrawn)
            bundle = sub.resources.to_ray(target.accelerator)
            held = [(target.node_id, bundle)]
            bundles, strategy = [{**bundle, target.pin: PIN_AMOUNT} if target.pin else bundle], "STRICT_PACK"
        else:  # needs nothing: Ray starts it at once (an empty hold still counts as a recent placement there)
            bundles, strategy, held = [], "", [(target.node_id, {})]
        if bundles:
            timeout = sub.start_timeout_s + target.scale_up_s
            extra = {"group": sub.group} if sub.group is not None else {}
            entrypoint, additions = launch.wrap(sub.entrypoint, bundles, strategy, timeout, **extra)
            runtime_env = launch.merge_runtime_env(runtime_env, additions)
        if held and snapshot is not None and snapshot.healthy:
            with self._lock:
                now = time.time()
                self._holds.extend(Hold.on(snapshot, node, resources, now) for node, resources in held)
        try:
            with self._slot(target.cluster):
                self._backends[target.cluster].submit(
                    submission_id,
                    entrypoint,
                    runtime_env=runtime_env,
                    metadata=self._metadata(sub, job_id, n),
                    entrypoint_kwargs=kwargs,
                )
        except AttemptFencedError as e:  # paused past the grace: another loop took the id and placed the job again
            self._drop_hold(target.cluster)
            log.warning("job %s: %s", job_id, e.message)
            raise AttemptConflict(e.message) from None
        except ClusterUnreachableError as e:
            self._drop_hold(target.cluster)
            if not self._provably_absent(target.cluster, submission_id):
                self.ledger.record(submission_id, JobState.UNKNOWN, e.message)
                raise
            self.ledger.record(submission_id, JobState.FAILED, f"not submitted: {e.message}")
            self.prober.invalidate(target.cluster)
            history.append((target.cluster, e.message))
            return False
        except ClusterError as e:
            self._drop_hold(target.cluster)
            self.ledger.record(submission_id, JobState.FAILED, f"refused: {e.message}")
            raise
        faults.point("attempt.submitted")
        self.ledger.record(submission_id, JobState.SUBMITTED)
        self._last_ok[target.cluster] = self._clock()
        if target.cluster in self._managed:
            self.ledger.update_managed(target.cluster, last_busy_at=self._clock())
        return True

    def _learn_mix(self) -> None:
        """The request mix ``policy="fragmentation"`` measures against: the fleet's ``fragmentation_mix``, else the
        typical shapes of the ledger's last 1000 jobs."""
        recent = (job.resources for job in self.ledger.jobs(limit=1000))
        refresh_live_mix(self.config.fragmentation_mix, () if self.config.fragmentation_mix else recent)

    def _add_job(
        self, job_id: str, sub: Submission, *, attempt: Mapping[str, Any] | None = None, detail: str | None = None
    ) -> None:
        """Record a new job: with its first attempt PLACED, or QUEUED (``detail`` says why)."""
        self.ledger.add_job(job_id, **self._job_fields(sub), attempt=attempt, detail=detail)

    def _job_fields(self, sub: Submission) -> dict[str, Any]:
        """What the ledger keeps of a new job (besides its first state)."""
        self._since_mix += 1
        if self._since_mix >= MIX_EVERY and not self.config.fragmentation_mix:
            self._since_mix = 0
            self._learn_mix()
        return {
            "entrypoint": sub.entrypoint,
            "request": sub.to_json(),
            "runtime_env": sub.runtime_env,
            "metadata": sub.metadata,
            "parent_id": sub.parent_id,
        }

    @contextlib.contextmanager
    def _slot(self, cluster: str) -> Iterator[None]:
        """At most ``max_in_flight`` submissions to one cluster at a time from this process (ray#41241: a burst of
        submissions can overwhelm a head)."""
        with self._lock:
            slots = self._slots.setdefault(cluster, threading.BoundedSemaphore(self.config.max_in_flight))
        with slots:
            yield

    # ----- the queue ----------------------------------------------------------------------------------------------

    def place_queued(self) -> list[str]:
        """Place queued jobs where they fit now: higher priority first, then (with ``fair_share``) the owner with
        the fewest active jobs, then the oldest. Jobs past their queue deadline fail. Returns the ids placed.

        A job that does not fit is passed over and a lower one may start (backfill); the holds of jobs placed in
        this turn keep a lower job from taking what a higher one was just given.
        """
        queued = self.ledger.queued()
        if not queued:
            return []
        now = self._clock()
        active: dict[str, int] = {}
        if self.config.fair_share:
            for job in self.ledger.active():
                active[job.owner] = active.get(job.owner, 0) + 1
        placed = []
        waiting = list(queued)
        while waiting:
            job = next_in_queue(waiting, active)
            waiting.remove(job)
            if queue_expired(job.request.get("queue_deadline"), now):
                self.ledger.record_job(job.id, JobState.FAILED, "waited in the queue past its deadline (wait=...)")
                continue
            sub = Submission.from_job(job)
            outcome = self._place(sub, job.id, len(job.attempts) + 1, frozenset(), [], in_ledger=True)
            if outcome.settled:
                placed.append(job.id)
                active[job.owner] = active.get(job.owner, 0) + 1
        return placed

    # ----- clusters on demand -------------------------------------------------------------------------------------

    def _managed_templates(self, exclude: frozenset[str] = frozenset()) -> dict[str, ClusterTemplate]:
        out = {}
        for name, record in self._managed.items():
            provisioner = self._provisioners.get(record.provisioner)
            template = (
                next((t for t in provisioner.templates if t.name == record.template), None) if provisioner else None
            )
            if template is not None and name not in exclude:
                out[name] = template
        return out

    def provision_plan(
        self, sub: Submission, snapshots: Mapping[str, ClusterSnapshot], exclude: frozenset[str] = frozenset()
    ) -> tuple[list[Headroom], list[Creation]]:
        """What could take the request if nothing fits now: headroom on managed clusters, then new clusters."""
        if sub.cluster is not None or not self._provisioners:
            return [], []
        managed = self._managed_templates(exclude)
        room = [
            h
            for h in (
                gang_headroom(sub.gang, managed, snapshots)
                if sub.gang is not None
                else headroom(sub.resources, managed, snapshots)
            )
            if all(self._clusters[h.cluster].labels.get(k) == v for k, v in sub.labels.items())
        ]
        live = self._live_managed()  # by this process or another: a creation under way counts
        states = []
        for provisioner in self._provisioners.values():
            kinds = {t.name: t for t in provisioner.templates}
            mine = [r for r in live if r.provisioner == provisioner.name]
            states.append(
                ProvisionerState(
                    provisioner.name,
                    provisioner.templates,
                    provisioner.max_clusters,
                    provisioner.max_gpus,
                    len(mine),
                    sum(kinds[r.template].total_gpus() for r in mine if r.template in kinds),  # removed ones: unknown
                )
            )
        made = [
            c
            if all(
                _template(self._provisioners[c.provisioner], c.template).labels.get(k) == v
                for k, v in sub.labels.items()
            )
            else Creation(c.provisioner, c.template, False, "its labels do not match the job's")
            for c in (gang_creations(sub.gang, states) if sub.gang is not None else creations(sub.resources, states))
        ]
        return room, sorted(made, key=lambda c: (not c.fits, c.price, c.workers, c.provisioner, c.template))

    def _headroom(
        self, sub: Submission, snapshots: Mapping[str, ClusterSnapshot], exclude: frozenset[str]
    ) -> _Target | None:
        """A managed autoscaling cluster whose autoscaler can add a worker for the job, if one can."""
        room, _ = self.provision_plan(sub, snapshots, exclude)
        option = next((h for h in room if h.fits), None)
        if option is None:
            return None
        return _Target(
            option.cluster,
            None,
            option.accelerator,
            f"autoscaler headroom: {option.reason}",
            scale_up_s=self._managed_templates()[option.cluster].scale_up_s,  # the start waits for a worker to join
        )

    def _provision(
        self,
        sub: Submission,
        job_id: str,
        snapshots: Mapping[str, ClusterSnapshot],
        exclude: frozenset[str],
        history: list[tuple[str, str]],
        *,
        in_ledger: bool,
        avoid: frozenset[str] = frozenset(),
    ) -> tuple[str | None, bool]:
        """Begin creating a cluster for the job from the best template that can hold it: the job (PROVISIONING) and
        the cluster (CREATING) are recorded in one transaction, then the provisioner is asked; nothing waits for the
        cluster. Returns (the cluster's name, or None if no template could be used; whether the job is recorded)."""
        job = None if in_ledger else self._job_fields(sub)
        for record in self._live_managed():  # a creation under way whose template holds it: wait for that one
            if record.state != "CREATING" or record.name in exclude or self._holds_job(sub, record) is None:
                continue
            if f"{record.provisioner}/{record.template}" in avoid:
                continue
            detail = f"waiting for new cluster {record.name} from template {record.template}, being created"
            try:
                if self.ledger.add_provisioning(job_id, record.name, detail, job=job):
                    return record.name, True
            except AttemptConflict:
                return None, True
        _, made = self.provision_plan(sub, snapshots, exclude)
        for creation in made:
            if not creation.fits:
                continue
            provisioner = self._provisioners[creation.provisioner]
            template = _template(provisioner, creation.template)
            where = f"{provisioner.name}/{template.name}"
            if where in avoid:
                continue
            for _ in range(3):  # a name someone else has: take another
                name = provisioner.new_name(template)
                new = NewCluster(
                    name, provisioner.name, template.name, provisioner.namespace, template.idle_ttl_s,
                    provisioner.max_clusters,
                )  # fmt: skip
                detail = f"waiting for new cluster {name} from template {template.name}: {creation.reason}"
                try:
                    recorded = self.ledger.add_provisioning(job_id, new, detail, job=None if in_ledger else job)
                except AttemptConflict:
                    return None, True
                if not recorded:  # another thread or process took the last slot since the plan was made
                    cap = provisioner.max_clusters
                    history.append((where, f"at its cap of {cap} clusters (counting those being created)"))
                    break
                in_ledger = True
                faults.point("creation.recorded")
                try:
                    self._ask(provisioner, template, name)
                except ProvisioningError as e:
                    self._fail_creation(name, provisioner, e.message)
                    if e.status == 409:
                        continue
                    history.append((where, e.message))
                    break
                log.info("creating cluster %s from %s for job %s", name, where, job_id)
                return name, True
        return None, in_ledger

    def _ask(self, provisioner: Any, template: ClusterTemplate, name: str) -> None:
        """Ask the provisioner to create a recorded cluster, and record that it was asked."""
        try:
            provisioner.create(template, name)
        except ProvisioningError:
            raise
        except Exception as e:  # not the provisioner's own error (a bug, a full disk): still leave nothing behind
            raise ProvisioningError(f"{type(e).__name__}: {e}", "see the log", provisioner=provisioner.name) from e
        self.ledger.update_managed(name, asked_at=self._clock())
        faults.point("creation.asked")

    def _fail_creation(self, name: str, provisioner: Any, why: str) -> None:
        """Record a creation as FAILED and delete whatever of the cluster exists. Never leak."""
        record = self.ledger.managed_record(name)
        self.ledger.update_managed(name, state="FAILED", ended_at=self._clock(), detail=why)
        if record is not None:
            managed = ManagedCluster(name, record.provisioner, record.template, record.namespace, record.created_at)
            with contextlib.suppress(Exception):
                provisioner.delete(managed)
        log.warning("creating cluster %s failed: %s", name, why)

    def advance_creations(self) -> None:
        """Carry every creation under way on, whichever process began it: ask for one that was recorded but never
        asked for, join one that is ready and place the jobs waiting for it, and fail one that cannot finish (its
        jobs are placed again, or queued, or fail)."""
        waiting: dict[str, list[JobRecord]] = {}
        for job in self.ledger.provisioning():
            waiting.setdefault(job.awaits or "", []).append(job)
        for record in self._live_managed():
            provisioner = self._provisioners.get(record.provisioner)
            if provisioner is None:
                waiting.pop(record.name, None)  # another fleet's provisioner: its own loop carries it on
                continue
            jobs = waiting.pop(record.name, [])
            if record.state == "CREATING":
                ready = self._poll_creation(record, provisioner)
                if ready is None:
                    continue
                if ready is not True:  # failed: its jobs go elsewhere (the same template again if none was at fault)
                    for job in jobs:
                        self._creation_failed_quietly(job, self.ledger.managed_record(record.name), avoid=ready.avoid)
                    continue
            elif record.name not in self._clusters:
                if not record.address:
                    continue
                cluster = Cluster(name=record.name, address=record.address, labels=dict(record.labels))
                self._join(cluster, record)  # READY, recorded by another process
            for job in jobs:
                self._place_on_new(job, record)
        for name, jobs in waiting.items():  # their cluster failed or was deleted elsewhere, or its creator is gone
            record = self.ledger.managed_record(name)
            for job in jobs:
                self._creation_failed_quietly(job, record, avoid=record is None or record.detail != CREATOR_GONE)

    def _creation_failed_quietly(self, job: JobRecord, record: ManagedClusterRecord | None, *, avoid: bool) -> None:
        try:
            self._creation_failed(job, record, avoid=avoid)
        except RayfleetError as e:  # one job's trouble must not stop the turn
            log.warning("job %s: %s", job.id, e)

    def _poll_creation(self, record: ManagedClusterRecord, provisioner: Any) -> bool | _Failed | None:
        """One look at a creation: True once it is ready (recorded READY and joined), None while it starts,
        `_Failed` if it failed (recorded FAILED and deleted)."""
        template = next((t for t in provisioner.templates if t.name == record.template), None)
        managed = ManagedCluster(record.name, record.provisioner, record.template, record.namespace, record.created_at)
        limit = template.ready_timeout_s if template is not None else 600.0
        now = self._clock()
        cluster, why = None, f"not ready within {limit:g} s"
        try:
            cluster, exists = provisioner.poll(managed), True
        except ProvisioningError as e:
            if e.status != 404:
                self._fail_creation(record.name, provisioner, e.message)
                return _Failed(avoid=not e.abandoned)
            exists, why = False, e.message
        step = creation_step(
            ready=cluster is not None, exists=exists, asked_at=record.asked_at, created_at=record.created_at,
            now=now, ready_timeout_s=limit, ask_grace_s=ASK_GRACE_S,
        )  # fmt: skip
        if step is CreationStep.ASK and template is not None:
            try:
                self._ask(provisioner, template, record.name)  # its creator stopped before asking
                return None
            except ProvisioningError as e:
                step, why = CreationStep.FAIL, e.message
        if step is CreationStep.WAIT:
            return None
        if step is not CreationStep.JOIN or cluster is None:
            self._fail_creation(record.name, provisioner, why)
            return _Failed(avoid=True)
        self.ledger.update_managed(
            record.name, state="READY", address=cluster.address, labels=cluster.labels, ready_at=now, last_busy_at=now
        )
        self._join(cluster, self.ledger.managed_record(record.name))
        log.info("cluster %s from template %s of %s is ready", record.name, record.template, provisioner.name)
        faults.point("creation.ready")
        return True

    def _place_on_new(self, job: JobRecord, record: ManagedClusterRecord) -> None:
        """Submit a job that waited for a cluster, now ready, on it (its start may wait for workers to be added)."""
        sub = Submission.from_job(job)
        fit = self._holds_job(sub, record)
        template = _template(self._provisioners[record.provisioner], record.template)
        if fit is None:  # the template no longer holds it (the fleet file changed): place it as a new job would be
            self._creation_failed(job, record)
            return
        target = _Target(
            record.name,
            None,
            fit.accelerator,
            f"new cluster from template {template.name}: {fit.reason}",
            scale_up_s=template.scale_up_s if fit.workers else 0.0,  # its workers start from the minimum
        )
        history = [(a.cluster, a.detail or a.state.value) for a in job.attempts]
        snapshot = self.snapshots([record.name]).get(record.name)
        n = len(job.attempts) + 1
        try:
            reached = self._submit_attempt(sub, job.id, n, target, snapshot, history, new_job=False)
        except AttemptConflict:
            return  # another loop placed it first
        except RayfleetError as e:  # recorded (FAILED: refused; UNKNOWN: unreachable); the next turns follow it
            log.warning("job %s: %s", job.id, e)
            return
        if not reached:
            self._again(self.ledger.job(job.id), exclude=frozenset({record.name}))

    def _holds_job(self, sub: Submission, record: ManagedClusterRecord) -> Creation | None:
        """How a managed cluster's template holds the job (its accelerator, the workers it adds), or None if it
        cannot: the job's labels must match the template's, and a pinned job goes nowhere else."""
        provisioner = self._provisioners.get(record.provisioner)
        template = next((t for t in provisioner.templates if t.name == record.template), None) if provisioner else None
        if template is None or sub.cluster is not None:
            return None
        if any(template.labels.get(k) != v for k, v in sub.labels.items()):
            return None
        state = [ProvisionerState(record.provisioner, [template], max_clusters=1 << 30, max_gpus=1 << 30)]
        made = gang_creations(sub.gang, state) if sub.gang is not None else creations(sub.resources, state)
        return next((c for c in made if c.fits), None)

    def _creation_failed(self, job: JobRecord, record: ManagedClusterRecord | None, *, avoid: bool = True) -> None:
        """The cluster a job waited for will not be ready: place the job again (another cluster, or a template other
        than its own when ``avoid``), else queue it (``wait``) or fail it with the reason."""
        why = f"cluster {job.awaits} could not be created: {record.detail if record else 'it has no record'}"
        sub = Submission.from_job(job)
        avoid = frozenset({f"{record.provisioner}/{record.template}"} if record and avoid else ())
        history = [(job.awaits or "?", why)]
        outcome = self._place(sub, job.id, len(job.attempts) + 1, frozenset(), history, in_ledger=True, avoid=avoid)
        if outcome.settled or outcome.conflict:
            return
        if sub.queue:
            self.ledger.requeue(job.id, f"waiting: {why}")
        else:
            self.ledger.record_job(job.id, JobState.FAILED, why)

    def _join(self, cluster: Cluster, record: ManagedClusterRecord | None) -> None:
        """Add a cluster to the fleet. The maps are replaced, never changed in place, under the lock: a reader on
        another thread sees the old or the new map, whole."""
        with self._lock:
            self._clusters = {**self._clusters, cluster.name: cluster}
            self._backends = {**self._backends, cluster.name: RayJobs(cluster)}
            if record is not None:
                self._managed = {**self._managed, cluster.name: record}
            self.prober.add(cluster)

    def _leave(self, name: str) -> None:
        with self._lock:
            self._clusters = {k: v for k, v in self._clusters.items() if k != name}
            self._backends = {k: v for k, v in self._backends.items() if k != name}
            self._managed = {k: v for k, v in self._managed.items() if k != name}
            self.prober.remove(name)

    def tick(self) -> list[str]:
        """One turn of the dispatcher's duties: carry creations on (placing the jobs that waited for them), follow
        every active job (failover, loss, retries), place queued jobs, and delete managed clusters idle past their
        TTL.

        Returns:
            The names of the clusters deleted in this turn.
        """
        self.advance_creations()
        for job in self.ledger.active():
            try:
                self.refresh(job.id)
            except RayfleetError as e:  # one job's trouble must not stop the turn
                log.warning("job %s: %s", job.id, e)
        self.place_queued()
        deleted = []
        now = self._clock()
        for name in list(self._managed):
            if self.ledger.active_attempts(name):
                self.ledger.update_managed(name, last_busy_at=now)
                continue
            current = self.ledger.managed_record(name)
            if current is None or current.state != "READY":
                continue
            with self._lock:
                self._managed = {**self._managed, name: current}
            deadline = current.idle_deadline
            provisioner = self._provisioners.get(current.provisioner)
            if deadline is not None and now >= deadline and provisioner is not None:
                self.retire(name)
                deleted.append(name)
            elif deadline is not None and provisioner is not None and self._annotated.get(name) != deadline:
                with contextlib.suppress(ProvisioningError):
                    provisioner.set_idle_deadline(
                        ManagedCluster(name, current.provisioner, current.template, current.namespace), deadline
                    )
                    self._annotated[name] = deadline
        return deleted

    def gc(self, *, everything: bool = False) -> list[str]:
        """Delete managed clusters this fleet owns that nobody needs: past the idle deadline written on them, or
        unknown to / ended in this ledger (left behind by a crash), or all of them with ``everything``.

        Returns:
            The names of the clusters deleted.
        """
        deleted = []
        now = self._clock()
        live = {r.name: r for r in self._live_managed()}  # abandoned creations are FAILED now: not live
        for provisioner in self._provisioners.values():
            for cluster in provisioner.owned():
                record = live.get(cluster.name)
                if record is not None and record.state == "CREATING":
                    continue  # another process may be creating it right now
                expired = cluster.idle_deadline is not None and cluster.idle_deadline <= now
                if not (everything or expired or record is None):
                    continue
                if record is not None and cluster.name in self._managed:
                    self.retire(cluster.name)
                else:
                    provisioner.delete(cluster)
                    if self.ledger.managed_record(cluster.name) is not None:
                        self.ledger.update_managed(cluster.name, state="DELETED", ended_at=now, detail="gc")
                deleted.append(cluster.name)
        return deleted

    def _creation_limit(self, record: ManagedClusterRecord) -> float:
        """How long after its record a creation may still be under way: its template's ready timeout and a margin."""
        provisioner = self._provisioners.get(record.provisioner)
        template = next((t for t in provisioner.templates if t.name == record.template), None) if provisioner else None
        return (template.ready_timeout_s if template else 600.0) + CREATING_MARGIN_S

    def _live_managed(self) -> list[ManagedClusterRecord]:
        """The managed clusters CREATING or READY, read once. A CREATING record whose creator stopped waiting long ago
        (it crashed) is marked FAILED on the way and left out, so it stops counting against ``max_clusters``; `gc`
        deletes whatever of such a cluster exists."""
        now, live = self._clock(), []
        for record in self.ledger.managed():
            if record.state == "CREATING" and now - record.created_at >= self._creation_limit(record):
                self.ledger.update_managed(record.name, state="FAILED", ended_at=now, detail=CREATOR_GONE)
            else:
                live.append(record)
        return live

    def retire(self, name: str) -> None:
        """Save the logs of the cluster's jobs, delete it, and forget it."""
        record = self._managed.get(name) or self.ledger.managed_record(name)
        if record is None:
            raise UnknownClusterError(f"{name} is not a managed cluster", "see 'rayfleet clusters'")
        backend = self._backends.get(name)
        for job in self.ledger.jobs_on(name):
            for attempt in job.attempts:
                if (
                    attempt.cluster == name
                    and backend is not None
                    and self.ledger.saved_logs(attempt.submission_id) is None
                ):
                    with contextlib.suppress(RayfleetError):
                        self.ledger.save_logs(attempt.submission_id, backend.logs(attempt.submission_id))
        provisioner = self._provisioners[record.provisioner]
        provisioner.delete(ManagedCluster(name, record.provisioner, record.template, record.namespace))
        self.ledger.update_managed(name, state="DELETED", ended_at=self._clock())
        self._leave(name)
        log.info("deleted idle cluster %s", name)

    def _drop_hold(self, cluster: str) -> None:
        """Forget the holds of the submission that just failed on ``cluster`` (those placed at the latest time)."""
        with self._lock:
            mine = [h for h in self._holds if h.cluster == cluster]
            if mine:
                latest = max(h.placed_at for h in mine)
                self._holds = [h for h in self._holds if not (h.cluster == cluster and h.placed_at == latest)]

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
    def _fence_metadata(job: JobRecord, attempt: AttemptRecord) -> dict[str, str]:
        return {f"{METADATA_PREFIX}job_id": job.id, f"{METADATA_PREFIX}attempt": str(attempt.n)}

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
        """Ask the cluster of the job's newest attempt for its state, record a change, act on it, return the job.

        Acting on it: an attempt whose reservation timed out is placed again elsewhere; an attempt whose cluster has
        not answered for ``unknown_after_s`` becomes UNKNOWN (and with ``at_least_once`` is placed again); an
        attempt its cluster provably lost (a new Ray session, or the job is gone) is LOST, then placed again if
        ``max_retries`` allows, else the job FAILS with the reason. A stale older attempt that is still alive on a
        cluster that answers again is stopped.
        """
        job = self.ledger.job(job_id)
        for old in job.attempts[:-1]:
            if not old.state.is_terminal():
                self._stop_stale(job, old)
        if job.state is JobState.PROVISIONING:  # its cluster is being created: carry the creation on
            self.advance_creations()
            return self.ledger.job(job_id)
        attempt = job.last_attempt
        if attempt is None or attempt.state.is_terminal() or attempt.cluster not in self._backends:
            return self.ledger.job(job_id) if job.attempts[:-1] else job
        view = AttemptView(attempt.state, attempt.cluster, attempt.created_at, attempt.updated_at, attempt.session)
        rules = Rules(placed_grace_s=self.config.placed_grace_s, unknown_after_s=self.config.unknown_after_s)
        at_least_once, grouped = bool(job.request.get("at_least_once")), job.request.get("group") is not None
        step = follow(view, self._look(attempt), self._clock(), rules, at_least_once=at_least_once, grouped=grouped)
        return self._act(job, attempt, step)

    def _look(self, attempt: AttemptRecord) -> Observation:
        """Ask an attempt's cluster for it once (not at all if the prober knows the cluster is down)."""
        cluster, last_ok = attempt.cluster, self._last_ok.get(attempt.cluster, 0.0)
        if (down := self._known_down(cluster)) is not None:
            return Observation(Seen.UNREACHABLE, message=down.message, last_ok=last_ok)
        try:
            info = self._backends[cluster].info(attempt.submission_id)
        except JobNotFoundError:
            session = None if attempt.state is JobState.PLACED else self.prober.read_session(cluster)
            return Observation(Seen.ABSENT, session=session, last_ok=last_ok)
        except ClusterUnreachableError as e:
            self.snapshots([cluster], max_age=0)  # the prober's verdict from now on: the next turns do not ask again
            return Observation(Seen.UNREACHABLE, message=e.message, last_ok=last_ok)
        self._last_ok[cluster] = self._clock()
        return Observation(Seen.STATUS, status=str(info.status), message=getattr(info, "message", None))

    def _act(self, job: JobRecord, attempt: AttemptRecord, step: Step) -> JobRecord:
        """Carry out `follow`'s step: fence, record, then place again (or fail the job) as it says."""
        if step == WAIT:
            return job
        sid = attempt.submission_id
        if step.fence and not self._backends[attempt.cluster].fence(sid, self._fence_metadata(job, attempt)):
            return job  # the real submission landed just now: the next look finds it
        moved = step.record is None or self.ledger.record(sid, step.record, step.detail)
        job = self.ledger.job(job.id)
        if not moved:
            return job  # another process moved it first
        if step.lost:
            return self._after_loss(job)
        if not step.again:
            return job
        if step.replacing_unknown:
            if job.state is not JobState.UNKNOWN:
                return job
            log.warning("job %s: cluster %s is unreachable; placing it again (at-least-once)", job.id, attempt.cluster)
            return self._again(job, exclude=frozenset({attempt.cluster}), replacing_unknown=True)
        tried = frozenset(a.cluster for a in job.attempts) if step.exclude_tried else frozenset({attempt.cluster})
        return self._again(job, exclude=tried)

    def _after_loss(self, job: JobRecord) -> JobRecord:
        """The newest attempt was lost: place the job again if ``max_retries`` allows, else fail it."""
        attempt = job.last_attempt
        assert attempt is not None
        lost = sum(1 for a in job.attempts if a.state is JobState.LOST)
        allowed = int(job.request.get("max_retries", 0))
        if not retry_after_loss(lost, allowed):
            self.ledger.record_job(
                job.id, JobState.FAILED, f"lost on {attempt.cluster}: {attempt.detail}; max_retries={allowed}"
            )
            return self.ledger.job(job.id)
        log.warning("job %s: %s; placing it again (%d/%d)", job.id, attempt.detail, lost, allowed)
        return self._again(job, exclude=frozenset({attempt.cluster}))

    def _stop_stale(self, job: JobRecord, attempt: AttemptRecord) -> None:
        """An older attempt is still active (its cluster was unreachable when the job was placed again). If its
        cluster answers now, stop it there: the job runs elsewhere."""
        backend = self._backends.get(attempt.cluster)
        if backend is None or self._known_down(attempt.cluster) is not None:
            return
        try:
            status = JobState.from_ray(str(backend.status(attempt.submission_id)))
            if not status.is_terminal():
                backend.stop(attempt.submission_id)
                status = JobState.STOPPED
            self.ledger.record(
                attempt.submission_id, status, f"stale: the job was placed again as attempt {len(job.attempts)}"
            )
        except JobNotFoundError:
            self.ledger.record(attempt.submission_id, JobState.LOST, loss_reason(attempt.cluster, None, None))
        except ClusterError:
            self.snapshots([attempt.cluster], max_age=0)  # still unreachable: the prober says when to try again
            return

    def _known_down(self, cluster: str) -> ClusterUnreachableError | None:
        """Whether the prober knows the cluster is down (re-probed only once its backoff ends). A dead cluster is not
        asked about each job: every such call waits out the job client's retries (about 11 s)."""
        reading = self.prober.cached(cluster)
        if reading is None or not reading.healthy:  # never read by this process, or down: probe, unless backing off
            reading = self.snapshots([cluster])[cluster]
            if not reading.healthy:
                return ClusterUnreachableError(reading.error or "unreachable", cluster=cluster)
        return None

    def _again(self, job: JobRecord, *, exclude: frozenset[str], replacing_unknown: bool = False) -> JobRecord:
        """Place a job again: its newest attempt failed to start (never ran), was lost, or (at-least-once) is
        unknown. Clusters in ``exclude`` are tried last. With no room now, the job waits in the queue."""
        sub = Submission.from_job(job)
        self.prober.invalidate()  # the reading that sent it there was wrong: read every cluster afresh
        history = [(a.cluster, a.detail or a.state.value) for a in job.attempts]
        n = len(job.attempts) + 1
        outcome = self._place(sub, job.id, n, exclude, history, in_ledger=True, replacing_unknown=replacing_unknown)
        if not outcome.settled and not outcome.conflict and exclude:  # the excluded clusters, last
            outcome = self._place(
                sub, job.id, n, frozenset(), history, in_ledger=True, replacing_unknown=replacing_unknown
            )
        if not outcome.settled and not outcome.conflict:
            if replacing_unknown:
                log.warning("job %s: no room elsewhere now; it stays UNKNOWN", job.id)
            elif self.ledger.requeue(job.id, "waiting: no cluster can take it now"):
                log.info("job %s: no cluster can take it now; it waits in the queue", job.id)
        return self.ledger.job(job.id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Poll until the job is terminal. Raises `TimeoutError` when ``timeout`` passes first.

        While the job is queued, this process works the queue (in priority order) as the dispatch loop would; while
        it waits for a new cluster, this process carries the creation on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            job = self.refresh(job_id)  # for a job waiting for its new cluster, this carries the creation on
            if job.state is JobState.QUEUED:
                self.place_queued()
                job = self.ledger.job(job_id)
            if job.state.is_terminal():
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s")
            remaining = None if deadline is None else deadline - time.monotonic()
            time.sleep(min(delay, remaining) if remaining is not None else delay)
            # a cluster being created becomes ready at a moment worth catching: its job is placed on the next look
            delay = min(delay * 1.5, 0.25 if job.state is JobState.PROVISIONING else 1.0)

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
        """The newest attempt's output: from its cluster, or as saved when its managed cluster was deleted."""
        attempt = self.ledger.job(job_id).last_attempt
        if attempt is not None and (saved := self.ledger.saved_logs(attempt.submission_id)) is not None:
            return saved
        backend, sid = self._attempt(job_id)
        return backend.logs(sid)

    def tail(self, job_id: str) -> Iterator[str]:
        backend, sid = self._attempt(job_id)
        return backend.tail(sid)

    def stop(self, job_id: str) -> bool:
        """Stop a job (withdraw it from the queue, or ask its cluster to stop it) and, first, its children: the jobs
        it submitted through rayfleet (nested dispatch). Returns whether the job itself was stopped or withdrawn."""
        for child in self.ledger.children(job_id):
            if not child.state.is_terminal():
                with contextlib.suppress(RayfleetError):
                    self.stop(child.id)
        job = self.ledger.job(job_id)
        if job.state in (JobState.QUEUED, JobState.PROVISIONING):
            return self.ledger.record_job(job_id, JobState.STOPPED, f"stopped while {job.state.value}")
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


def next_in_queue(waiting: Sequence[JobRecord], active: Mapping[str, int]) -> JobRecord:
    """The queued job to place next: the highest priority; then the owner with the fewest active jobs (``active``:
    owner -> count, empty when fair share is off); then the oldest."""
    return min(waiting, key=lambda j: (-j.priority, active.get(j.owner, 0), j.created_at))


def _check_runtime_env(runtime_env: Any) -> None:
    """What Ray's client would refuse at submit time (after the ledger recorded the attempt), refused before."""
    if not isinstance(runtime_env, Mapping):
        raise InvalidRequestError(f"runtime_env={runtime_env!r} is not a mapping", "pass a dict, e.g. {'pip': [...]}")
    for key in ("working_dir", "py_modules"):
        value = runtime_env.get(key)
        for item in [value] if isinstance(value, str) else (value or []):
            if isinstance(item, str) and "://" not in item and not Path(item).expanduser().exists():
                raise InvalidRequestError(
                    f"runtime_env {key} {item!r} does not exist on this machine",
                    f"give an existing local path or a remote URI for {key}",
                )
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**dict(runtime_env))
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(
            f"runtime_env is not valid for Ray: {e}", "see Ray's runtime_env docs (env_vars values must be strings)"
        ) from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        raise InvalidRequestError(f"{name}={value!r} is not a number", f"give {name} in seconds, e.g. 30")
    return float(value)


def _default_owner() -> str:
    """Who submits, for fair share: $RAYFLEET_OWNER, else the user name."""
    try:
        return os.environ.get("RAYFLEET_OWNER") or getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no user name in a bare container
        return ""


def _template(provisioner: Any, name: str) -> ClusterTemplate:
    return next(t for t in provisioner.templates if t.name == name)


def _local_ray_version() -> str | None:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None
