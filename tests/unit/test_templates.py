"""Cluster templates rendered into RayCluster manifests, compared with saved manifests (snapshot tests).

To accept an intended change of the rendering: RAYFLEET_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_templates.py,
then review the diff of tests/unit/snapshots/ like any code change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from rayfleet import Resources
from rayfleet.templates import ClusterTemplate, HeadSpec, WorkerGroup, render

SNAPSHOTS = Path(__file__).parent / "snapshots"

STATIC_CPU = ClusterTemplate(
    name="cpu-ingest",
    mode="static",
    head=HeadSpec(cpu=2, memory="4GiB"),
    workers=[WorkerGroup(name="cpu", cpu=8, memory="32GiB", replicas=4)],
    cost_per_cpu_hour=0.04,
)
AUTOSCALED_GPU = ClusterTemplate(
    name="gpu-gen",
    mode="autoscaled",
    head=HeadSpec(cpu=2, memory="8GiB", ray_cpus=0),
    workers=[
        WorkerGroup(
            name="a100",
            cpu=12,
            gpu=1,
            accelerator="A100",
            memory="85GiB",
            min_replicas=0,
            max_replicas=8,
            node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"},
            tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        )
    ],
    idle_timeout_s=120,
    idle_ttl_s=900,
    cost_per_gpu_hour=2.9,
    image="rayproject/ray:2.60.0-gpu",
)


@pytest.mark.parametrize("template", [STATIC_CPU, AUTOSCALED_GPU], ids=lambda t: t.name)
def test_rendered_manifest_matches_the_saved_one(template: ClusterTemplate) -> None:
    manifest = render(
        template, name=f"rf-{template.name}-0001", namespace="ml", fleet="prod", created_by="alice-at-box"
    )
    path = SNAPSHOTS / f"raycluster-{template.name}.yaml"
    if os.environ.get("RAYFLEET_UPDATE_SNAPSHOTS"):
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    assert manifest == yaml.safe_load(path.read_text())


def test_rendering_is_deterministic() -> None:
    a = render(AUTOSCALED_GPU, name="x", namespace="n", fleet="f", created_by="u")
    b = render(AUTOSCALED_GPU, name="x", namespace="n", fleet="f", created_by="u")
    assert a == b


def test_static_templates_pin_min_and_max_to_replicas_and_have_no_autoscaler() -> None:
    spec = render(STATIC_CPU, name="x", namespace="n", fleet="f", created_by="u")["spec"]
    group = spec["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 4, 4)
    assert "enableInTreeAutoscaling" not in spec


def test_autoscaled_templates_scale_from_zero_with_the_idle_timeout() -> None:
    spec = render(AUTOSCALED_GPU, name="x", namespace="n", fleet="f", created_by="u")["spec"]
    group = spec["workerGroupSpecs"][0]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (0, 0, 8)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120


def test_every_manifest_carries_the_ownership_labels() -> None:
    labels = render(STATIC_CPU, name="x", namespace="n", fleet="prod", created_by="alice")["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "rayfleet"
    assert labels["rayfleet.io/fleet"] == "prod"
    assert labels["rayfleet.io/template"] == "cpu-ingest"
    assert labels["rayfleet.io/created-by"] == "alice"


@pytest.mark.parametrize(
    ("request_", "fits"),
    [
        (Resources(cpu=8, gpu=1, accelerators={"A100", "H100"}), True),
        (Resources(cpu=8, gpu=1), True),
        (Resources(cpu=8, gpu=2), False),
        (Resources(cpu=8, gpu=1, accelerators={"H100"}), False),
        (Resources(cpu=16), False),
        (Resources(memory="100GiB"), False),
    ],
    ids=["allowed-model", "any-model", "two-gpus", "other-model", "too-many-cpus", "too-much-memory"],
)
def test_a_worker_group_holds_a_request_only_if_one_worker_can(request_: Resources, fits: bool) -> None:
    assert AUTOSCALED_GPU.workers[0].can_hold(request_) is fits


def test_prices_and_gpu_totals() -> None:
    assert AUTOSCALED_GPU.hourly_price(Resources(cpu=4, gpu=2)) == pytest.approx(5.8)
    assert AUTOSCALED_GPU.total_gpus() == 8
    assert STATIC_CPU.total_gpus() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": [{"name": "w", "cpu": 1, "min_replicas": 3, "max_replicas": 1}]},
        {"workers": [{"name": "w", "cpu": 1, "accelerator": "A100"}]},
        {"workers": [{"name": "w", "cpu": 1}, {"name": "w", "cpu": 2}]},
        {"workers": [{"name": "w", "cpu": 0}]},
        {"mode": "sometimes"},
        {"head": {"memory": "lots"}},
    ],
    ids=["min-above-max", "model-without-gpu", "duplicate-groups", "zero-cpu", "bad-mode", "bad-memory"],
)
def test_invalid_templates_are_refused(kwargs: dict) -> None:
    with pytest.raises((ValidationError, ValueError)):
        ClusterTemplate(name="t", **kwargs)
