"""`LocalProvisioner`: on-demand clusters on this machine, from the same templates as KubeRay.

A ``static`` template becomes a local cluster with fixed worker nodes; an ``autoscaled`` one becomes a local cluster
run by the real Ray autoscaler on Ray's fake multi-node provider, which adds worker nodes (GPU ones included) as
demand appears and removes them after ``idle_timeout_s``. Each cluster is a `LocalFleet` of one in its own
directory; that directory is the ownership record, so `owned` and `delete` work from any process.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rayfleet.config import Cluster, LocalProvisionerConfig
from rayfleet.errors import LocalFleetError, ProvisioningError
from rayfleet.provisioning.base import ManagedCluster
from rayfleet.provisioning.local import (
    LocalAutoscaling,
    LocalClusterSpec,
    LocalFleet,
    LocalNodeSpec,
    LocalWorkerType,
    RunningCluster,
    _read_state,
    _start_time,
    state_dir,
)
from rayfleet.templates import ClusterTemplate

DEADLINE_FILE = "idle-deadline"
TEMPLATE_FILE = "template"
CREATOR_FILE = "creator"  # "<pid> <start time>" of the process whose thread starts the cluster


def local_spec(template: ClusterTemplate, name: str) -> LocalClusterSpec:
    """The local cluster for a template: its head, and fixed workers (static) or autoscaled worker types."""
    head_cpus = template.head.ray_cpus if template.head.ray_cpus is not None else template.head.cpu
    labels = dict(template.labels)
    if template.autoscaled:
        types = {
            group.name: LocalWorkerType(
                cpus=group.cpu,
                gpus=group.gpu,
                accelerator=group.accelerator,
                resources=dict(group.custom),
                min_workers=group.min_replicas,
                max_workers=group.max_replicas,
            )
            for group in template.workers
        }
        autoscaling = LocalAutoscaling(types, idle_timeout_s=template.idle_timeout_s)
        return LocalClusterSpec(
            name, cpus=head_cpus, memory=template.head.memory, labels=labels, autoscaling=autoscaling
        )
    workers = tuple(
        LocalNodeSpec(cpus=g.cpu, gpus=g.gpu, accelerator=g.accelerator, memory=g.memory, resources=dict(g.custom))
        for g in template.workers
        for _ in range(g.replicas)
    )
    return LocalClusterSpec(name, cpus=head_cpus, memory=template.head.memory, labels=labels, workers=workers)


class LocalProvisioner:
    """Creates local clusters from templates (the embedded fleet's answer to KubeRay).

    Args:
        config: name, caps, templates, and the directory that holds the clusters it owns.
        fleet: the owning fleet's name (its clusters live under ``<directory>/<fleet>/``).
    """

    def __init__(self, config: LocalProvisionerConfig, *, fleet: str) -> None:
        self.config = config
        self.name = config.name
        self.templates: Sequence[ClusterTemplate] = config.templates
        self.max_clusters = config.max_clusters
        self.max_gpus = config.max_gpus
        self.namespace = ""
        base = Path(config.directory) if config.directory else state_dir("provisioned")
        self.directory = base / fleet / config.name
        self._starting: dict[str, tuple[threading.Thread, list[BaseException], LocalFleet]] = {}

    def new_name(self, template: ClusterTemplate) -> str:
        return f"rf-{template.name[:40]}-{uuid.uuid4().hex[:6]}".lower()

    def _template(self, name: str) -> ClusterTemplate:
        return next(t for t in self.templates if t.name == name)

    def create(self, template: ClusterTemplate, name: str) -> ManagedCluster:
        """Start the cluster's processes in the background (on a thread of this process); `poll` says when they are
        ready. The directory made here is the cluster's ownership record; it names the creating process."""
        where = self.directory / name
        try:
            where.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            where.mkdir(mode=0o700)
        except FileExistsError:
            raise ProvisioningError(
                f"local cluster {name} exists already",
                "take another name",
                provisioner=self.name,
                cluster=name,
                status=409,
            ) from None
        (where / TEMPLATE_FILE).write_text(template.name)
        (where / CREATOR_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}")
        fleet = LocalFleet([local_spec(template, name)], name=name, directory=where)
        errors: list[BaseException] = []

        def up() -> None:
            try:
                fleet.up(timeout=template.ready_timeout_s)
            except BaseException as e:  # handed to poll
                errors.append(e)

        thread = threading.Thread(target=up, name=f"local-up-{name}", daemon=True)
        thread.start()
        self._starting[name] = (thread, errors, fleet)
        return ManagedCluster(name, self.name, template.name, "", time.time())

    def poll(self, cluster: ManagedCluster) -> Cluster | None:
        """Ready once ``up`` has finished: in this process, its thread; in another, the fleet file ``up`` writes
        last. A cluster whose creator process is gone before that will never be ready."""
        where = self.directory / cluster.name
        starting = self._starting.get(cluster.name)
        if starting is not None:
            thread, errors, fleet = starting
            if thread.is_alive():
                return None
            del self._starting[cluster.name]
            if errors:
                raise self._failed(cluster.name, str(errors[0]), fleet.dir)
            return self._as_cluster(cluster, fleet.running[0])
        if not where.exists():
            raise ProvisioningError(
                f"local cluster {cluster.name} does not exist", "create it", provisioner=self.name,
                cluster=cluster.name, status=404,
            )  # fmt: skip
        fleet = LocalFleet([], name=cluster.name, directory=where)
        if fleet.fleet_file.exists():
            try:
                running = [c for c in _read_state(fleet.state_file) if c.alive()]
            except LocalFleetError as e:
                raise self._failed(cluster.name, str(e), where) from None
            if not running:
                raise self._failed(cluster.name, "its processes have stopped", where)
            return self._as_cluster(cluster, running[0])
        if not _creator_alive(where / CREATOR_FILE):
            why = "the process creating it stopped before it was ready"
            raise self._failed(cluster.name, why, where, abandoned=True)
        return None

    def _failed(self, name: str, why: str, where: Path, *, abandoned: bool = False) -> ProvisioningError:
        return ProvisioningError(
            f"local cluster {name}: {why}",
            f"see its log in {where}",
            provisioner=self.name,
            cluster=name,
            abandoned=abandoned,
        )

    def _as_cluster(self, cluster: ManagedCluster, running: RunningCluster) -> Cluster:
        template = self._template(cluster.template)
        labels = {**template.labels, **running.labels, "managed": "true", "provisioner": self.name}
        return Cluster(
            name=cluster.name,
            address=running.address,
            labels=labels,
            cost_per_cpu_hour=template.cost_per_cpu_hour,
            cost_per_gpu_hour=template.cost_per_gpu_hour,
        )

    def delete(self, cluster: ManagedCluster) -> None:
        """Stop the cluster's processes (only those its own state file names) and remove its directory."""
        where = self.directory / cluster.name
        starting = self._starting.pop(cluster.name, None)
        if starting is not None:
            starting[0].join(timeout=120)  # let up() finish (or fail) so that down() sees every process
        if not where.exists():
            return
        try:
            LocalFleet([], name=cluster.name, directory=where).down()
        except LocalFleetError as e:
            raise ProvisioningError(
                str(e), "stop its processes by hand", provisioner=self.name, cluster=cluster.name
            ) from None
        shutil.rmtree(where, ignore_errors=True)  # ours: made by create(), its processes are stopped

    def owned(self) -> list[ManagedCluster]:
        out = []
        for where in sorted(self.directory.glob("rf-*")) if self.directory.exists() else []:
            template = (where / TEMPLATE_FILE).read_text() if (where / TEMPLATE_FILE).exists() else ""
            deadline_file = where / DEADLINE_FILE
            deadline = float(deadline_file.read_text()) if deadline_file.exists() else None
            out.append(ManagedCluster(where.name, self.name, template, "", where.stat().st_mtime, deadline))
        return out

    def set_idle_deadline(self, cluster: ManagedCluster, deadline: float | None) -> None:
        path = self.directory / cluster.name / DEADLINE_FILE
        if deadline is None:
            path.unlink(missing_ok=True)
        elif path.parent.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(repr(deadline))
            os.replace(tmp, path)

    def close(self) -> None:
        """Nothing to release: clusters outlive this object until the dispatcher or `gc` deletes them."""


def _creator_alive(path: Path) -> bool:
    """Whether the process named in a creator file still runs (the same process: its start time matches)."""
    try:
        pid, started = path.read_text().split()
    except (OSError, ValueError):
        return False
    return str(_start_time(int(pid))) == started
