"""The pytest fixtures of the Kubernetes test infrastructure (re-exported by tests/k8s/conftest.py).

Example:
    def test_creates_a_raycluster(k8s_api, k8s_operator):
        objects = kubernetes.client.CustomObjectsApi(k8s_api.api_client())
        objects.create_namespaced_custom_object("ray.io", "v1", "default", "rayclusters", manifest)
        k8s_operator.wait_for(manifest["metadata"]["name"], "ready")
        k8s_api.faults.fail("POST", "*/rayclusters", 409)          # the next create answers 409
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.apiserver import KubeAPIServer
from tests.k8s.operator import KubeRayTestOperator


@pytest.fixture()
def k8s_api() -> Iterator[KubeAPIServer]:
    """A Kubernetes API server on a free loopback port serving ray.io/v1 rayclusters and rayjobs.

    ``.url``, ``.configuration()``, ``.api_client()``, ``.kubeconfig(path, context="test")``, ``.faults``,
    ``.requests`` (every request and its answer), ``.objects(plural, namespace)``.
    """
    with KubeAPIServer() as server:
        yield server


@pytest.fixture()
def k8s_operator(k8s_api: KubeAPIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeRayTestOperator]:
    """A test KubeRay operator on ``k8s_api``: every RayCluster becomes a real local Ray cluster.

    Knobs: ``.ready_delay``, ``.never_ready``, ``.fail_start`` (or per RayCluster, annotations
    ``test.rayfleet.io/ready-delay-seconds``, ``test.rayfleet.io/never-ready``, ``test.rayfleet.io/fail``).
    Every Ray cluster it started is stopped at teardown, whatever happened in the test.
    """
    directory: Path = tmp_path_factory.mktemp("kuberay")
    operator = KubeRayTestOperator(k8s_api.api_client(), directory)
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()
