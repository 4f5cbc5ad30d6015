"""`Fleet`: the public facade. Build one from clusters or a file, then `submit`, `explain`, `jobs`, `job`."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster, FleetConfig
from rayfleet.dispatch import Dispatcher
from rayfleet.dispatch.submission import _default_owner
from rayfleet.errors import ConfigError, JobNotFoundError, LeaseLostError, RayfleetError, UnknownClusterError
from rayfleet.group import DEFAULT_GROUP_TIMEOUT_S, GroupHandle, GroupMember, submit_group
from rayfleet.jobs import JobHandle
from rayfleet.ledger import CORDON, DRAIN, ClusterMark, Lease, Ledger
from rayfleet.placement import Decision
from rayfleet.resources import Gang, Resources
from rayfleet.states import JobState

if TYPE_CHECKING:
    from rayfleet.provisioning.base import Provisioner
    from rayfleet.provisioning.local import LocalClusterSpec

DISPATCH_LEASE = "dispatch"  # the lease under which one loop per ledger acts (`Fleet.run`)

log = logging.getLogger(__name__)

NOTICE_LIMIT = 1000  # the newest jobs of a Fleet object looked at when it closes


def _provisioner_from(config: Any, fleet: str) -> Provisioner:
    """The provisioner a config entry describes (imported on use: the kubernetes client is optional)."""
    if config.kind == "local":
        from rayfleet.provisioning.local_provisioner import LocalProvisioner

        return LocalProvisioner(config, fleet=fleet)
    from rayfleet.provisioning.kuberay import KubeRayProvisioner

    return KubeRayProvisioner(config, fleet=fleet)


class Fleet:
    """A fleet of Ray clusters that jobs are dispatched across.

    Args:
        clusters: the clusters (`Cluster` objects or mappings of their fields).
        config: a whole `FleetConfig` instead of ``clusters`` and the settings below.
        ledger: the ledger file (default: ``ledger`` of the config, ``$RAYFLEET_LEDGER``, or the user's data dir).
        policy: the default placement policy (``binpack``, ``spread``, ``cost``).
        provisioners: where clusters on demand come from (default: those of the config).
        clock: wall-clock seconds for every timing rule and record (default ``time.time``; tests move their own).

    Example:
        >>> fleet = Fleet(clusters=[Cluster(name="cpu", address="http://127.0.0.1:8265")])    # doctest: +SKIP
        >>> handle = fleet.submit("python -c 'print(42)'", Resources(cpu=1))                 # doctest: +SKIP
        >>> handle.wait(60), handle.cluster                                                   # doctest: +SKIP
        (<JobState.SUCCEEDED: 'SUCCEEDED'>, 'cpu')
    """

    def __init__(
        self,
        clusters: Sequence[Cluster | Mapping[str, Any]] | None = None,
        *,
        config: FleetConfig | None = None,
        ledger: str | os.PathLike[str] | Ledger | None = None,
        policy: str | None = None,
        provisioners: Sequence[Provisioner] | None = None,
        clock: Callable[[], float] | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            if clusters is None:
                raise ConfigError("a fleet needs clusters", "pass clusters=[Cluster(...)] or use Fleet.from_file(path)")
            data: dict[str, Any] = {"clusters": [dict(c) if isinstance(c, Mapping) else c for c in clusters]}
            config = FleetConfig.build(**data, **({"policy": policy} if policy else {}), **settings)
        elif policy or settings:
            config = FleetConfig.build(**{**config.model_dump(), **settings, **({"policy": policy} if policy else {})})
        self.config = config
        if isinstance(ledger, Ledger):
            self.ledger = ledger
        else:
            self.ledger = Ledger(ledger or config.ledger, **({"clock": clock} if clock else {}))
        if provisioners is None:
            provisioners = [_provisioner_from(p, config.name) for p in config.provisioners]
        self._dispatcher = Dispatcher(config, self.ledger, provisioners, clock=clock)
        self._loop: threading.Thread | None = None
        self._stop = threading.Event()
        self._submitted: list[str] = []  # this object's jobs, newest last: named on exit if they still wait
        self._notice = weakref.finalize(self, _notice_waiting, self.ledger, self._submitted)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> Fleet:
        """A fleet from a YAML file (see docs/configuration.md). Raises `ConfigError` naming the file and key."""
        return cls(config=FleetConfig.from_file(path), **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Fleet:
        """The fleet this job was submitted through (nested dispatch), from ``$RAYFLEET_FLEET[_FILE]``."""
        config = FleetConfig.from_env()
        if config is None:
            raise ConfigError(
                "no fleet in the environment ($RAYFLEET_FLEET or $RAYFLEET_FLEET_FILE)",
                "run this inside a job submitted by rayfleet, or set RAYFLEET_FLEET_FILE to a fleet file",
            )
        kwargs.setdefault("provisioners", [])  # a nested job dispatches to clusters; it creates none (no credentials)
        return cls(config=config, **kwargs)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout=30)
        self._dispatcher.close()
        self._notice()  # once: here, or when the object is collected, or at exit

    @property
    def clusters(self) -> list[Cluster]:
        """The clusters jobs can go to now: configured ones, and managed ones that are ready."""
        return self._dispatcher.clusters

    @property
    def managed(self) -> dict[str, Any]:
        """The clusters this fleet created on demand and has not deleted, with their idle deadlines."""
        return self._dispatcher.managed

    def run(self, interval: float = 2.0, *, background: bool = True) -> None:
        """Run the dispatcher's duties every ``interval`` seconds: follow every active job (confirm its start, fail
        it over, notice a lost cluster, retry), place queued jobs, delete managed clusters idle past their TTL. On a
        background thread until `close`, or in this thread (``background=False``).

        One loop per ledger acts at a time: each turn runs under the ledger's ``dispatch`` lease (``lease_ttl_s``),
        renewed every turn. Another process's loop stands by, and takes over once the holder stops renewing; a
        holder that lost the lease (paused past it) has its writes refused (`LeaseLostError`), stops that turn and
        stands by in its turn."""
        if background:
            if self._loop is None or not self._loop.is_alive():
                self._stop.clear()
                self._loop = threading.Thread(target=self._run, args=(interval,), name="rayfleet-dispatch", daemon=True)
                self._loop.start()
            return
        self._run(interval)

    def _run(self, interval: float) -> None:
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        ttl = self._dispatcher.config.lease_ttl_s
        lease: Lease | None = None
        try:
            while not self._stop.is_set():
                lease = self._turn(holder, ttl, lease)
                self._stop.wait(interval)
        finally:
            if lease is not None:
                with contextlib.suppress(RayfleetError):
                    self.ledger.release_lease(lease)

    def _turn(self, holder: str, ttl: float, lease: Lease | None) -> Lease | None:
        """One turn of the loop, under the dispatch lease (taken or renewed first); returns the lease now held."""
        try:
            lease = (
                self.ledger.renew_lease(lease, ttl) if lease else self.ledger.acquire_lease(DISPATCH_LEASE, holder, ttl)
            )
        except LeaseLostError as e:
            log.error("dispatcher %s: %s; standing by", holder, e.message)
            return None
        if lease is None:  # another loop holds it
            return None
        try:
            with self.ledger.fenced(lease):
                self._dispatcher.tick()
        except LeaseLostError as e:
            log.error("dispatcher %s: the turn was stopped: %s", holder, e.message)
            return None
        except RayfleetError as e:  # keep going: the next turn may succeed
            log.warning("dispatcher turn failed: %s", e)
        return lease

    def gc(self, *, everything: bool = False) -> list[str]:
        """Delete leftover managed clusters this fleet owns (see `Dispatcher.gc`); returns their names."""
        return self._dispatcher.gc(everything=everything)

    def tick(self) -> list[str]:
        """One turn of the dispatcher's duties (see `run`); returns the clusters deleted."""
        return self._dispatcher.tick()

    def submit(
        self,
        entrypoint: str,
        resources: Resources | Mapping[str, Any] | None = None,
        *,
        runtime_env: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        cluster: str | None = None,
        policy: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        gang: Gang | Mapping[str, Any] | None = None,
        start_timeout_s: float | None = None,
        wait: bool | float = False,
        priority: int = 0,
        owner: str | None = None,
        max_retries: int = 0,
        at_least_once: bool = False,
        reservation_timeout_s: float | None = None,
        timeout_s: float | None = None,
    ) -> JobHandle:
        """Place a job on the best cluster and submit it through Ray's Job Submission API.

        Returns in milliseconds, once the ledger has recorded the job: accepted by a cluster, queued (``wait``), or
        waiting for a cluster that is being created for it (PROVISIONING); it never waits for a creation or for the
        job to start. The loop (`run`, ``rayfleet dispatch``) or `JobHandle.wait`/`status` carries it on. A job
        that needs resources is started by rayfleet's launcher, which reserves them (a Ray placement group) and
        only then runs the command; if they cannot be reserved within the start timeout, the command never runs
        there and the job is placed again elsewhere (by `JobHandle.wait`/`status` or the dispatch loop, `run`).

        Args:
            entrypoint: the shell command, as for ``ray job submit``.
            resources: what the command needs on one node (`Resources` or a mapping such as ``{"cpu": 2, "gpu": 1}``).
            runtime_env: Ray's runtime_env, passed through (``working_dir``, ``pip``, ``env_vars`` ...).
            labels: every one must match the chosen cluster's labels.
            cluster: pin the job to this cluster.
            policy: ``binpack`` (default), ``spread`` or ``cost``.
            metadata: string pairs stored with the Ray job.
            gang: instead of ``resources``: bundles that must all be reserved at once on one cluster, the first one
                for the command itself.
            start_timeout_s: how long the job may take to reserve its resources where free capacity was counted
                (default ``start_timeout_s`` of the fleet, 3 s); on autoscaler headroom or a new cluster the
                template's ``scale_up_s`` is added.
            wait: when no cluster (and no provisioner) can take it now, queue it in the ledger instead of raising:
                ``True`` to wait as long as it takes, or a number of seconds after which it FAILS. The dispatch loop
                (`run`, ``rayfleet dispatch``) or `JobHandle.wait` places it when room frees up.
            priority: queued jobs with a higher priority are placed first; FIFO within a priority.
            owner: who the job belongs to, for ``fair_share`` (default ``$RAYFLEET_OWNER`` or the user name).
            max_retries: how many times to run it again after its cluster provably lost it (restart, deletion).
            at_least_once: also run it again elsewhere when its cluster stays unreachable past
                ``unknown_after_s`` (it may then run twice; the stale run is stopped when the cluster is back).
            reservation_timeout_s: the former name of ``start_timeout_s``.
            timeout_s: the most seconds the job may run; then the loop (or `JobHandle.wait`/`status`) stops it and
                records it FAILED with that reason.

        Returns:
            A `JobHandle`.

        Raises:
            InvalidRequestError: bad resources, empty entrypoint, unknown pin (nothing recorded or sent).
            NoCapacityError: no cluster can take it (and ``wait`` is off, or it fits no node at all); the error
                lists every cluster and why.
            ClusterUnreachableError: the pinned cluster, or every cluster, does not answer.
            ClusterError: the chosen cluster refused the job.
        """
        sub = self._dispatcher.validate(
            entrypoint,
            resources,
            runtime_env=runtime_env,
            labels=labels,
            cluster=cluster,
            policy=policy,
            metadata=metadata,
            gang=gang,
            start_timeout_s=start_timeout_s,
            reservation_timeout_s=reservation_timeout_s,
            wait=wait,
            priority=priority,
            owner=owner,
            max_retries=max_retries,
            at_least_once=at_least_once,
            timeout_s=timeout_s,
        )
        job_id = self._dispatcher.submit(sub)
        self._submitted.append(job_id)
        del self._submitted[:-NOTICE_LIMIT]
        return JobHandle(self._dispatcher, job_id)

    def submit_group(
        self,
        members: Sequence[GroupMember | Mapping[str, Any]],
        *,
        timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
        rendezvous: str | os.PathLike[str] | None = None,
    ) -> GroupHandle:
        """Submit jobs, possibly on different clusters, that all run their commands or none does: no member starts
        until every member has reserved its resources (see docs/groups.md).

        Raises:
            InvalidRequestError: a bad member ("group member <i>: ..."), timeout or rendezvous; nothing submitted.
            NoCapacityError, ClusterError: a member could not be placed or submitted; the group was aborted.
        """
        return submit_group(self._dispatcher, members, timeout_s=timeout_s, rendezvous=rendezvous)

    def queued(self) -> list[JobHandle]:
        """Jobs waiting in the queue, oldest first."""
        return [JobHandle(self._dispatcher, j.id) for j in self.ledger.queued()]

    def plan(
        self, resources: Resources | Mapping[str, Any] | None = None, *, labels: Mapping[str, str] | None = None
    ) -> tuple[list[Any], list[Any]]:
        """If nothing fits now: the autoscaler headroom and the new clusters that could take the request, best first."""
        sub = self._dispatcher.validate("plan", resources, labels=labels)
        return self._dispatcher.provision_plan(sub, self._dispatcher.snapshots())

    def explain(
        self,
        resources: Resources | Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        cluster: str | None = None,
        policy: str | None = None,
        gang: Gang | Mapping[str, Any] | None = None,
    ) -> Decision:
        """Where a job with these resources (or this gang) would go now, and why every other cluster would not."""
        sub = self._dispatcher.validate("explain", resources, labels=labels, cluster=cluster, policy=policy, gang=gang)
        return self._dispatcher.decide(sub)

    def snapshots(self, *, max_age: float | None = None) -> dict[str, ClusterSnapshot]:
        """The latest capacity reading of every cluster (probing those older than ``max_age`` seconds)."""
        return self._dispatcher.snapshots(max_age=max_age)

    def jobs(self, *, limit: int = 100, active_only: bool = False) -> list[JobHandle]:
        """Jobs in the ledger, newest first; works from any process on this machine."""
        return [JobHandle(self._dispatcher, j.id) for j in self.ledger.jobs(limit=limit, active_only=active_only)]

    def job(self, job_id: str) -> JobHandle:
        """The job with this id (raises `JobNotFoundError`)."""
        self.ledger.job(job_id)
        return JobHandle(self._dispatcher, job_id)

    # ----- marks on clusters, and stopping many jobs at once ------------------------------------------------------

    def cordon(self, cluster: str, reason: str = "", *, by: str | None = None) -> None:
        """No new placements on ``cluster`` (running jobs go on), by every dispatcher sharing the ledger, until
        `uncordon`. Recorded with who did it (default: the user) and why; `explain` and ``rayfleet clusters`` say so."""
        self.ledger.mark(self._known(cluster), CORDON, by=by or _default_owner(), reason=reason)

    def uncordon(self, cluster: str) -> bool:
        """Let placements onto ``cluster`` again (ends a cordon or a drain). Returns whether it was marked."""
        return self.ledger.unmark(self._known(cluster), (CORDON, DRAIN))

    def drain(self, cluster: str, reason: str = "", *, move: bool = False, by: str | None = None) -> list[str]:
        """Cordon ``cluster`` as draining and, with ``move``, move its running jobs that may be retried
        (``max_retries`` left) elsewhere: each is stopped there and placed again. The rest run to their end.
        Returns the ids of the jobs moved; `active_on` says what is left."""
        self.ledger.mark(self._known(cluster), DRAIN, by=by or _default_owner(), reason=reason)
        if not move:
            return []
        why = f"moved off cluster {cluster}, which is being drained" + (f": {reason}" if reason else "")
        return [a.job_id for a in self.ledger.active_attempts(cluster) if self._dispatcher.move(a.job_id, why)]

    def active_on(self, cluster: str) -> list[JobHandle]:
        """The jobs with an attempt not yet ended on ``cluster``."""
        return [JobHandle(self._dispatcher, a.job_id) for a in self.ledger.active_attempts(self._known(cluster))]

    def marks(self) -> dict[str, list[ClusterMark]]:
        """The marks on each cluster (cordoned, draining, cannot run the launcher), by cluster."""
        out: dict[str, list[ClusterMark]] = {}
        for mark in self.ledger.marks():
            out.setdefault(mark.cluster, []).append(mark)
        return out

    def stop_group(self, group_id: str) -> list[str]:
        """Stop every job of a group (`submit_group`), on every cluster. Returns the ids of those stopped."""
        return self._stop_where(lambda sub, job: (sub.group or {}).get("id") == group_id, f"group {group_id!r}")

    def stop_pipeline(self, name: str) -> list[str]:
        """Stop every job of the pipeline ``name`` that has not ended, on every cluster (its runner then stops the
        stages that depend on them). Returns the ids of those stopped."""
        return self._stop_where(lambda sub, job: (job.metadata or {}).get("pipeline") == name, f"pipeline {name!r}")

    def _stop_where(self, member: Callable[[Any, Any], bool], what: str) -> list[str]:
        from rayfleet.dispatch.submission import Submission

        jobs = [j for j in self.ledger.jobs(limit=100_000, active_only=True) if member(Submission.from_job(j), j)]
        if not jobs:
            raise JobNotFoundError(f"no job of {what} is active in the ledger", "list jobs with 'rayfleet jobs'")
        return [j.id for j in jobs if self._dispatcher.stop(j.id)]

    def _known(self, cluster: str) -> str:
        """``cluster``, if the fleet has it (configured or managed); else `UnknownClusterError` naming the near ones."""
        names = [c.name for c in self.clusters]
        if cluster not in names:
            near = difflib.get_close_matches(cluster, names, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UnknownClusterError(
                f"no cluster named {cluster!r} in the fleet", f"{hint}clusters: {', '.join(names)}"
            )
        return cluster


def _notice_waiting(ledger: Ledger, job_ids: list[str]) -> None:
    """Say so when jobs this process submitted still wait (queued, or for a cluster being created) as it lets go of
    them: only a dispatch loop places them, and none runs here any more."""
    states: Counter[str] = Counter()
    for job_id in job_ids:
        try:
            state = ledger.job(job_id).state
        except Exception:  # at exit, the ledger may be gone already: the notice is a courtesy
            return
        if state in (JobState.QUEUED, JobState.PROVISIONING):
            states[state.value] += 1
    if states:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        log.warning(
            "%d job(s) submitted here still wait (%s) and nothing in this process carries them on now: run "
            "'rayfleet dispatch' (or fleet.run()) on ledger %s to place them",
            sum(states.values()), counts, ledger.path,
        )  # fmt: skip


@contextlib.contextmanager
def local_fleet(
    clusters: Sequence[LocalClusterSpec] | None = None,
    *,
    name: str = "default",
    port_base: int | None = None,
    directory: str | os.PathLike[str] | None = None,
    **fleet_kwargs: Any,
) -> Iterator[Fleet]:
    """Start a local fleet (default: the demo fleet, "cpu" and "gpu"), yield a `Fleet` over it, stop it on exit.

    Example:
        >>> with local_fleet() as fleet:                                 # doctest: +SKIP
        ...     fleet.submit("python -c 'print(1)'", {"cpu": 1}).wait(60)
    """
    from rayfleet.provisioning.local import DEMO_FLEET, LocalFleet  # processes and /proc: only when asked for

    running = LocalFleet(DEMO_FLEET if clusters is None else clusters, name=name, port_base=port_base,
                         directory=directory)  # fmt: skip
    with running:
        fleet = Fleet.from_file(running.fleet_file, **fleet_kwargs)
        try:
            yield fleet
        finally:
            fleet.close()
