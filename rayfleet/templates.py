"""Cluster templates and their rendering into KubeRay ``RayCluster`` manifests (pure: no I/O, snapshot-tested).

A template is ``static`` (fixed worker replicas, no autoscaler) or ``autoscaled`` (KubeRay's in-tree autoscaler,
workers from ``min_replicas`` to ``max_replicas``, idle workers removed after ``idle_timeout_s``). That is the one
switch: a pipeline stage is static or autoscaled because its template is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rayfleet.resources import ACCELERATOR_PREFIX, Resources, parse_memory

RAYCLUSTER_API = ("ray.io", "v1", "rayclusters")
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_FLEET = "rayfleet.io/fleet"
LABEL_TEMPLATE = "rayfleet.io/template"
LABEL_CREATED_BY = "rayfleet.io/created-by"
ANNOTATION_IDLE_TTL = "rayfleet.io/idle-ttl-seconds"
ANNOTATION_IDLE_DEADLINE = "rayfleet.io/idle-deadline"
DEFAULT_RAY_VERSION = "2.60.0"
GPU_RESOURCE = "nvidia.com/gpu"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HeadSpec(_Frozen):
    """The head pod: its CPU and memory (the head runs the dashboard and GCS; give it no GPU)."""

    cpu: float = Field(default=2, gt=0)
    memory: int = parse_memory("4GiB")
    image: str | None = None
    ray_cpus: float | None = Field(default=None, ge=0, description="logical CPUs Ray offers on the head (0: none)")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)


class WorkerGroup(_Frozen):
    """One worker group: the shape of each worker and how many there are.

    Attributes:
        name: the group name (``groupName``).
        cpu: CPUs per worker.
        gpu: GPUs per worker (whole).
        accelerator: the GPU model, advertised to Ray as ``accelerator_type:<model>`` = 1 per node.
        memory: memory per worker.
        custom: other Ray resources per worker.
        replicas: workers of a static template; the starting count of an autoscaled one.
        min_replicas: the autoscaler's floor (0 scales from zero).
        max_replicas: the autoscaler's ceiling.
        node_selector: Kubernetes node selector for the worker pods.
        tolerations: Kubernetes tolerations for the worker pods.
    """

    name: str
    cpu: float = Field(gt=0)
    gpu: int = Field(default=0, ge=0)
    accelerator: str | None = None
    memory: int = parse_memory("8GiB")
    custom: dict[str, float] = Field(default_factory=dict)
    replicas: int = Field(default=0, ge=0)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    image: str | None = None

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        return parse_memory(value)

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"worker group {self.name}: min_replicas {self.min_replicas} > max_replicas")
        if self.accelerator and not self.gpu:
            raise ValueError(f"worker group {self.name}: accelerator {self.accelerator} given with gpu=0")
        return self

    def ray_resources(self) -> dict[str, float]:
        """What one worker offers Ray, by Ray's resource names (for placement on a cluster not yet created)."""
        out = {"CPU": self.cpu, "memory": float(self.memory), **self.custom}
        if self.gpu:
            out["GPU"] = float(self.gpu)
        if self.accelerator:
            out[ACCELERATOR_PREFIX + self.accelerator] = 1.0
        return out

    def can_hold(self, request: Resources) -> bool:
        """Whether one worker of this group can hold ``request`` (a job must fit on one node)."""
        if request.accelerators and self.accelerator not in request.accelerators:
            return False
        return request.fits(self.ray_resources(), self.accelerator if request.accelerators else None)


class ClusterTemplate(_Frozen):
    """What an on-demand cluster looks like.

    Attributes:
        name: the template's name (a label on every cluster made from it).
        mode: ``static`` (fixed replicas) or ``autoscaled`` (KubeRay's autoscaler between min and max).
        head: the head pod.
        workers: the worker groups.
        idle_timeout_s: the autoscaler removes a worker idle this long (autoscaled only).
        idle_ttl_s: rayfleet deletes the whole cluster once it has run no job for this long.
        ready_timeout_s: how long to wait for the cluster to become ready before deleting it and moving on.
        scale_up_s: how long a new worker usually takes to join (start timeouts allow for it).
        cost_per_cpu_hour / cost_per_gpu_hour: prices, to choose the cheapest template that fits.
        labels: labels of the clusters made from it, for job selectors.
        ray_version: ``spec.rayVersion``; image: the default image of head and workers.
    """

    name: str
    mode: Literal["static", "autoscaled"] = "static"
    head: HeadSpec = Field(default_factory=HeadSpec)
    workers: list[WorkerGroup] = Field(default_factory=list)
    idle_timeout_s: int = Field(default=60, ge=0)
    idle_ttl_s: float = Field(default=600, ge=0)
    ready_timeout_s: float = Field(default=600, gt=0)
    scale_up_s: float = Field(default=120, ge=0)
    cost_per_cpu_hour: float | None = Field(default=None, ge=0)
    cost_per_gpu_hour: float | None = Field(default=None, ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    ray_version: str = DEFAULT_RAY_VERSION
    image: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ClusterTemplate:
        names = [w.name for w in self.workers]
        if len(set(names)) != len(names):
            raise ValueError(f"template {self.name}: worker group names repeat: {names}")
        if self.mode == "static" and any(w.replicas < w.min_replicas for w in self.workers):
            raise ValueError(f"template {self.name}: a static group needs replicas >= min_replicas")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.mode == "autoscaled"

    @property
    def default_image(self) -> str:
        return self.image or f"rayproject/ray:{self.ray_version}"

    def max_workers(self, group: WorkerGroup) -> int:
        return group.max_replicas if self.autoscaled else group.replicas

    def hourly_price(self, request: Resources) -> float:
        """The price of running ``request`` on a cluster of this template (unpriced counts as free)."""
        return request.cpu * (self.cost_per_cpu_hour or 0.0) + request.gpu * (self.cost_per_gpu_hour or 0.0)

    def total_gpus(self) -> int:
        """The most GPUs a cluster of this template can have (for the provisioner's GPU cap)."""
        return sum(w.gpu * self.max_workers(w) for w in self.workers)


def _quantity_cpu(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else f"{int(cpu * 1000)}m"


def _quantity_memory(n: int) -> str:
    for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _container(name: str, image: str, cpu: float, memory: int, gpu: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": _quantity_cpu(cpu), "memory": _quantity_memory(memory)}
    if gpu:
        limits[GPU_RESOURCE] = str(gpu)
    return {"name": name, "image": image, "resources": {"limits": limits, "requests": dict(limits)}}


def render(
    template: ClusterTemplate,
    *,
    name: str,
    namespace: str,
    fleet: str,
    created_by: str,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``RayCluster`` manifest for a cluster made from ``template``. Pure and deterministic.

    Args:
        template: the template.
        name: the RayCluster's name.
        namespace: its namespace.
        fleet: the fleet that owns it (a label; rayfleet only deletes what it owns).
        created_by: who created it (a label), e.g. ``user-at-host``.
        extra_labels: more labels for the RayCluster.

    Returns:
        The manifest as a dict, ready for ``CustomObjectsApi.create_namespaced_custom_object``.
    """
    head_params: dict[str, str] = {"dashboard-host": "0.0.0.0"}
    if template.head.ray_cpus is not None:
        head_params["num-cpus"] = f"{template.head.ray_cpus:g}"
    head_pod = {
        "spec": {
            "containers": [
                _container(
                    "ray-head", template.head.image or template.default_image, template.head.cpu, template.head.memory
                )
            ]
        }
    }
    head_pod["spec"]["containers"][0]["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    workers = []
    for group in template.workers:
        params: dict[str, str] = {}
        resources = dict(group.custom)
        if group.accelerator:
            resources[ACCELERATOR_PREFIX + group.accelerator] = 1
        if resources:
            params["resources"] = json.dumps(resources, sort_keys=True)
        if group.gpu:
            params["num-gpus"] = str(group.gpu)
        pod: dict[str, Any] = {
            "spec": {
                "containers": [
                    _container("ray-worker", group.image or template.default_image, group.cpu, group.memory, group.gpu)
                ]
            }
        }
        if group.node_selector:
            pod["spec"]["nodeSelector"] = dict(sorted(group.node_selector.items()))
        if group.tolerations:
            pod["spec"]["tolerations"] = list(group.tolerations)
        replicas = group.replicas
        workers.append(
            {
                "groupName": group.name,
                "replicas": replicas,
                "minReplicas": group.min_replicas if template.autoscaled else replicas,
                "maxReplicas": group.max_replicas if template.autoscaled else replicas,
                "rayStartParams": params,
                "template": pod,
            }
        )
    spec: dict[str, Any] = {
        "rayVersion": template.ray_version,
        "headGroupSpec": {"rayStartParams": head_params, "template": head_pod},
        "workerGroupSpecs": workers,
    }
    if template.autoscaled:
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": template.idle_timeout_s, "upscalingMode": "Default"}
    labels = {
        LABEL_MANAGED_BY: "rayfleet",
        LABEL_FLEET: fleet,
        LABEL_TEMPLATE: template.name,
        LABEL_CREATED_BY: created_by,
        **dict(extra_labels or {}),
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(sorted(labels.items())),
            "annotations": {ANNOTATION_IDLE_TTL: f"{template.idle_ttl_s:g}"},
        },
        "spec": spec,
    }
