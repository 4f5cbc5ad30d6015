"""Fixtures for code that talks to Kubernetes: ``k8s_api`` (a test API server) and ``k8s_operator`` (plays KubeRay).

Tests elsewhere can use them by importing them into their module or conftest:
``from tests.k8s.fixtures import k8s_api, k8s_operator  # noqa: F401``.
"""

from tests.k8s.fixtures import k8s_api, k8s_operator

__all__ = ["k8s_api", "k8s_operator"]
