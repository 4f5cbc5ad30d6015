"""Clusters on demand: headroom, creations recorded with their jobs and carried on by the loop, idle deletion."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from rayfleet import faults
from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster
from rayfleet.dispatch.submission import (
    ASK_GRACE_S,
    CREATING_MARGIN_S,
    CREATOR_GONE,
    Submission,
    _Failed,
    _Target,
    _template,
)
from rayfleet.errors import ProvisioningError, RayfleetError, UnknownClusterError
from rayfleet.ledger import AttemptConflict, JobRecord, ManagedClusterRecord, NewCluster
from rayfleet.lifecycle import Creation as CreationStep
from rayfleet.lifecycle import creation_step
from rayfleet.placement.provision import (
    Creation,
    Headroom,
    ProvisionerState,
    creations,
    headroom,
)
from rayfleet.provisioning.base import ManagedCluster, Provisioner
from rayfleet.states import JobState
from rayfleet.templates import ClusterTemplate

log = logging.getLogger("rayfleet.dispatch")


class Creations:
    """The creations duty of `Dispatcher` (a mixin: the state it uses is the dispatcher's, see `core`)."""

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
            for h in headroom(sub.wanted, managed, snapshots)
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
            for c in creations(sub.wanted, states)
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

    def _ask(self, provisioner: Provisioner, template: ClusterTemplate, name: str) -> None:
        """Ask the provisioner to create a recorded cluster, and record that it was asked."""
        try:
            provisioner.create(template, name)
        except ProvisioningError:
            raise
        except Exception as e:  # not the provisioner's own error (a bug, a full disk): still leave nothing behind
            raise ProvisioningError(f"{type(e).__name__}: {e}", "see the log", provisioner=provisioner.name) from e
        self.ledger.update_managed(name, asked_at=self._clock())
        faults.point("creation.asked")

    def _fail_creation(self, name: str, provisioner: Provisioner, why: str) -> None:
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

    def _poll_creation(self, record: ManagedClusterRecord, provisioner: Provisioner) -> bool | _Failed | None:
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
        made = creations(sub.wanted, state)
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
        for job in self.ledger.jobs_on(name):
            for attempt in job.attempts:
                saved = self.ledger.saved_logs(attempt.submission_id) if attempt.cluster == name else None
                if attempt.cluster == name and (saved is None or not saved.final):
                    self._save_log(attempt, final=True)
        provisioner = self._provisioners[record.provisioner]
        provisioner.delete(ManagedCluster(name, record.provisioner, record.template, record.namespace))
        self.ledger.update_managed(name, state="DELETED", ended_at=self._clock())
        self._leave(name)
        log.info("deleted idle cluster %s", name)
