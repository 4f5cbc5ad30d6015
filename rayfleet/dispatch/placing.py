"""Placing a job and submitting one attempt: probe, decide, record, submit, hold."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from rayfleet import faults
from rayfleet import launcher as launch
from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import FLEET_ENV
from rayfleet.dispatch.submission import (
    JOB_ID_ENV,
    METADATA_PREFIX,
    MIX_EVERY,
    PIN_AMOUNT,
    Submission,
    _Outcome,
    _Target,
)
from rayfleet.errors import AttemptFencedError, ClusterError, ClusterUnreachableError, JobNotFoundError, NoCapacityError
from rayfleet.ledger import CORDON, DRAIN, LAUNCHER_UNFIT, AttemptConflict, AttemptRecord, JobRecord
from rayfleet.lifecycle import hold_counts, launcher_mark_holds
from rayfleet.placement import Decision, Hold, place
from rayfleet.placement.fragmentation import learn_mix
from rayfleet.states import JobState

log = logging.getLogger("rayfleet.dispatch")


def decision_unavailable(decision: Decision) -> frozenset[str]:
    """The clusters a decision passed over for a mark (cordoned, draining, unfit): no headroom or wait there either."""
    return frozenset(o.cluster for o in decision.options if o.unavailable)


class Placing:
    """The placing duty of `Dispatcher` (a mixin: the state it uses is the dispatcher's, see `core`)."""

    def snapshots(self, names: list[str] | None = None, *, max_age: float | None = None) -> dict[str, ClusterSnapshot]:
        return self.prober.snapshots(names, max_age=max_age)

    def decide(self, sub: Submission, exclude: frozenset[str] = frozenset()) -> Decision:
        """Probe (through the cache) and place, without changing anything."""
        return self._decide(sub, exclude)[0]

    def _decide(self, sub: Submission, exclude: frozenset[str]) -> tuple[Decision, dict[str, ClusterSnapshot]]:
        names = [sub.cluster] if sub.cluster else None
        snapshots = self.snapshots(names)
        request = sub.request(exclude, self.unavailable(sub, snapshots))
        decision = place(request, self.clusters, snapshots, self._live_holds(snapshots), mix=self._mix)
        return decision, snapshots

    def unavailable(self, sub: Submission, snapshots: Mapping[str, ClusterSnapshot]) -> dict[str, str]:
        """The clusters this job may not use now, by the marks in the ledger (every dispatcher sharing it honours
        them), with why: cordoned or draining; for a job that needs the launcher, a cluster whose ``python`` could
        not run it (until the cluster restarts, or for ``LAUNCHER_RECHECK_S``: then the next such job checks again)."""
        now, out = self._clock(), {}
        for mark in self.ledger.marks():
            when = time.strftime("%H:%M:%S", time.localtime(mark.at))
            if mark.kind in (CORDON, DRAIN):
                verb = "draining" if mark.kind == DRAIN else "cordoned"
                out[mark.cluster] = f"{verb} by {mark.by} at {when}" + (f": {mark.reason}" if mark.reason else "")
            elif mark.kind == LAUNCHER_UNFIT and sub.launched and mark.cluster not in out:
                snap = snapshots.get(mark.cluster)
                session = snap.session_name if snap is not None and snap.healthy else None
                if launcher_mark_holds(mark.at, mark.session, now, session):
                    out[mark.cluster] = f"{mark.reason} (found at {when})"
        return out

    def _pin(self, sub: Submission, snapshot: ClusterSnapshot | None, node_id: str | None) -> str | None:
        """The ``node:<ip>`` resource that keeps a one-bundle job on the node placement chose, or None: pinning is
        off (``pin_node``; by default on for ``policy="fragmentation"``), the job is a gang (its strategy places its
        bundles) or asks for nothing, or the node has no address of its own."""
        wanted = self.config.pin_node if self.config.pin_node is not None else sub.policy == "fragmentation"
        if not wanted or not sub.launched or sub.gang is not None or snapshot is None:
            return None
        return snapshot.pin(node_id)

    def _live_holds(self, snapshots: Mapping[str, ClusterSnapshot]) -> list[Hold]:
        """What attempts placed on these clusters hold that the readings do not show yet, from the ledger: the
        attempts of every process that shares it count, and each counts until its reservation shows
        (`lifecycle.hold_counts`)."""
        holds = []
        for held in self.ledger.holding(self._clock()):
            snap = snapshots.get(held.cluster)
            if snap is None or not snap.healthy:
                continue
            report_time = snap.report_time or snap.taken_at
            for i, bundle in enumerate(held.bundles):
                node = held.reserved_nodes[i] if i < len(held.reserved_nodes) else bundle.get("node")
                hold = Hold(held.cluster, node or None, bundle.get("resources") or {}, held.state_at,
                            bundle.get("baseline") or {})  # fmt: skip
                counts = hold_counts(
                    held.state,
                    reserves=bool(hold.resources),
                    reflected=bool(hold.resources) and hold.reflected_in(snap),
                    reserved_at=held.reserved_at,
                    state_at=held.state_at,
                    report_time=report_time,
                )
                if counts:
                    holds.append(hold)
        return holds

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
                target = self._headroom(sub, snapshots, exclude | decision_unavailable(decision))
            if target is None:
                if replacing_unknown:  # its UNKNOWN attempt may still run: wait for room, do not create for it
                    return _Outcome(False, in_ledger, decision)
                created, in_ledger = self._provision(
                    sub, job_id, snapshots, exclude | decision_unavailable(decision), history, in_ledger=in_ledger,
                    avoid=avoid,
                )  # fmt: skip
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
        healthy = snapshot is not None and snapshot.healthy
        attempt = {
            "submission_id": submission_id,
            "n": n,
            "cluster": target.cluster,
            "node_id": target.node_id,
            "accelerator": target.accelerator,
            "detail": target.detail,
            "session": snapshot.session_name if healthy else None,  # type: ignore[union-attr]
            # what it holds until a reading shows it: the ledger keeps it, so every process sharing it counts it
            "bundles": [
                {"node": node, "resources": dict(res), "baseline": Hold.on(snapshot, node, res, 0.0).baseline}
                for node, res in held
            ]
            if healthy
            else None,
            "hold_window_s": sub.start_timeout_s + target.scale_up_s + self.config.hold_ttl_s,
        }
        if new_job:
            self._add_job(job_id, sub, attempt=attempt)
        else:
            self.ledger.add_attempt(job_id, attempt, replacing_unknown=replacing_unknown)
        faults.point("attempt.recorded")
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
            log.warning("job %s: %s", job_id, e.message)
            raise AttemptConflict(e.message) from None
        except ClusterUnreachableError as e:
            if not self._provably_absent(target.cluster, submission_id):
                self.ledger.record(submission_id, JobState.UNKNOWN, e.message)
                raise
            self.ledger.record(submission_id, JobState.FAILED, f"not submitted: {e.message}")
            self.prober.invalidate(target.cluster)
            history.append((target.cluster, e.message))
            return False
        except ClusterError as e:
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
        self._mix = learn_mix(self.config.fragmentation_mix, () if self.config.fragmentation_mix else recent)

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
        if sub.launched:  # its launcher reports through this channel version (`rayfleet.report`)
            meta[launch.REPORT_KEY] = str(launch.REPORT_VERSION)
        return meta
