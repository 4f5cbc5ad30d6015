"""The pure parts of the KubeRay provisioner: readiness, failure, endpoint discovery, label values."""

from __future__ import annotations

import pytest

from rayfleet.provisioning.kuberay import dashboard_url, failure, is_ready, label_value

META = {"metadata": {"name": "rf-gpu-1a2b3c", "namespace": "ml"}}


def cond(kind: str, status: str) -> dict:
    return {"type": kind, "status": status, "lastTransitionTime": "2026-11-28T00:00:00Z"}


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ({}, False),
        ({"state": "ready"}, True),
        ({"state": "ready", "conditions": [cond("HeadPodReady", "False")]}, False),
        ({"conditions": [cond("HeadPodReady", "True")]}, True),
        ({"conditions": [cond("HeadPodReady", "True"), cond("RayClusterProvisioned", "False")]}, False),
        ({"conditions": [cond("HeadPodReady", "True"), cond("RayClusterProvisioned", "True")]}, True),
    ],
    ids=["nothing", "state-only", "head-not-ready-beats-state", "head-ready", "workers-pending", "provisioned"],
)
def test_readiness_follows_conditions_then_the_deprecated_state(status: dict, ready: bool) -> None:
    assert is_ready({**META, "status": status}) is ready


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ({"state": "ready"}, None),
        ({"state": "failed", "reason": "head pod crashed"}, "head pod crashed"),
        ({"conditions": [{"type": "ReplicaFailure", "status": "True", "message": "quota exceeded"}]}, "quota exceeded"),
    ],
    ids=["fine", "failed-state", "replica-failure"],
)
def test_failures_are_reported_with_their_reason(status: dict, why: str | None) -> None:
    assert failure({**META, "status": status}) == why


READY = {**META, "status": {"head": {"serviceIP": "10.96.0.12"}, "endpoints": {"dashboard": "8265"}}}


@pytest.mark.parametrize(
    ("obj", "access", "template", "url"),
    [
        (READY, "service_ip", None, "http://10.96.0.12:8265"),
        (READY, "service_dns", None, "http://rf-gpu-1a2b3c-head-svc.ml.svc:8265"),
        (READY, "url_template", "https://{name}.{namespace}.ray.example.com", "https://rf-gpu-1a2b3c.ml.ray.example.com"),
        ({**META, "status": {"head": {"serviceIP": "10.0.0.1"}, "endpoints": {"dashboard": "18265"}}}, "service_ip",
         None, "http://10.0.0.1:18265"),
        ({**META, "status": {}}, "service_ip", None, None),
        ({**META, "status": {}}, "service_dns", None, "http://rf-gpu-1a2b3c-head-svc.ml.svc:8265"),
    ],
    ids=["service-ip", "service-dns", "url-template", "custom-port", "ip-not-yet-known", "dns-default-port"],
)  # fmt: skip
def test_dashboard_address_by_access_mode(obj: dict, access: str, template: str | None, url: str | None) -> None:
    assert dashboard_url(obj, access, template) == url


def test_url_template_access_without_a_template_is_an_error_naming_the_fix() -> None:
    with pytest.raises(ValueError, match="url_template"):
        dashboard_url(READY, "url_template", None)


@pytest.mark.parametrize(
    ("text", "value"),
    [("alice@laptop.local", "alice-laptop.local"), ("-x-", "x"), ("", "unknown"), ("a" * 80, "a" * 63)],
)
def test_label_values_are_valid_kubernetes_label_values(text: str, value: str) -> None:
    assert label_value(text) == value
