"""`Dispatcher`: the one owner of a fleet's state (clusters, holds, lock, clock) and its loop's turn (`tick`).

Its duties live in modules named for them, as mixins that use this state: `placing` (decide and submit one attempt),
`queue`, `creations` (clusters on demand), `following` (refresh, fail over, retry), `logs` (saved as jobs run, read
back). The timing rules are pure functions in `rayfleet.lifecycle`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rayfleet.backends.ray_jobs import VERSION_LOG, RayJobs, version_note
from rayfleet.capacity import Prober
from rayfleet.config import POLICIES, Cluster, FleetConfig
from rayfleet.dispatch.creations import Creations
from rayfleet.dispatch.following import Following
from rayfleet.dispatch.logs import Logs
from rayfleet.dispatch.placing import Placing
from rayfleet.dispatch.queue import Queue
from rayfleet.dispatch.submission import (
    JOB_ID_ENV,
    METADATA_PREFIX,
    Submission,
    _check_runtime_env,
    _default_owner,
    _local_ray_version,
    _number,
)
from rayfleet.errors import InvalidRequestError, ProvisioningError, RayfleetError, UnknownClusterError
from rayfleet.ledger import Ledger, ManagedClusterRecord
from rayfleet.placement.fragmentation import RequestMix
from rayfleet.provisioning.base import ManagedCluster, Provisioner
from rayfleet.resources import Gang, Resources

log = logging.getLogger("rayfleet.dispatch")


class Dispatcher(Placing, Queue, Creations, Following, Logs):
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
        provisioners: Sequence[Provisioner] = (),
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        # every timing rule reads this clock (the ledger's by default): tests move it instead of sleeping
        self._clock = clock or ledger.clock
        self._provisioners: dict[str, Provisioner] = {p.name: p for p in provisioners}
        self._clusters: dict[str, Cluster] = {c.name: c for c in config.clusters}
        for cluster in config.clusters:  # a header the environment breaks is the fleet's definition, said now
            cluster.resolved_headers()
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
        self._mix: RequestMix | None = None  # this fleet's own: another Fleet in the process has its own
        self._learn_mix()
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._last_ok: dict[str, float] = {}  # when each cluster last answered a job call
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
        timeout_s: float | None = None,
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
        if timeout_s is not None:
            run_for = _number(timeout_s, "timeout_s")
            if not run_for > 0 or run_for == float("inf"):
                raise InvalidRequestError(f"timeout_s={timeout_s!r}", "give a finite number of seconds > 0, or None")
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
            timeout_s=None if timeout_s is None else float(timeout_s),
        )

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
        self.checkpoint_logs()
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

    def _check_version(self, cluster: str, version: str, session: str) -> None:
        """Say how the cluster's Ray differs from this process's (`version_note`: a warning only when it matters),
        through logging, once per cluster and version per process (`VERSION_LOG` lets each message through once)."""
        note = version_note(cluster, version, _local_ray_version())
        if note is not None:
            VERSION_LOG.log(*note)
