"""Scoring policies: lower is better. Each scores the nodes a request fits on; `place` takes the best node per cluster
and ranks clusters by (cluster-level key, best node score, name)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import MappingProxyType

import numpy as np

from rayfleet.config import Cluster
from rayfleet.placement.fragmentation import RequestMix, live_growth
from rayfleet.resources import ACCELERATOR_PREFIX, Resources

GPU_SPARE_WEIGHT = 4.0  # a CPU-only job on a GPU node strands its GPUs: pay heavily for it


def _leftover_fraction(free: np.ndarray, total: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Per node and key, the fraction of the node's total left free after placing ``vec``; 0 where total is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(total > 0, (free - vec) / total, 0.0)
    return frac


def _capacity_keys(keys: Sequence[str]) -> np.ndarray:
    """1 for keys that measure capacity, 0 for markers such as ``accelerator_type:A100`` (1 per node, never used up)."""
    return np.array([0.0 if k.startswith(ACCELERATOR_PREFIX) else 1.0 for k in keys])


def binpack(
    free: np.ndarray, total: np.ndarray, vec: np.ndarray, keys: Sequence[str], request: Resources
) -> np.ndarray:
    """Best fit: the node left with the least free (as fractions of its size), so large holes stay for large jobs.

    A job that asks for no GPU pays `GPU_SPARE_WEIGHT` for each idle GPU node it would sit on.
    """
    score = (_leftover_fraction(free, total, vec) * _capacity_keys(keys)).sum(axis=1)
    if request.gpu == 0 and "GPU" in keys:
        g = keys.index("GPU")
        score = score + GPU_SPARE_WEIGHT * (total[:, g] > 0)
    return score


def spread(free: np.ndarray, total: np.ndarray, vec: np.ndarray, keys: Sequence[str], request: Resources) -> np.ndarray:
    """Worst fit: the node left with the most free, so load spreads over nodes and clusters."""
    mask = _capacity_keys(keys)
    frac = _leftover_fraction(free, total, vec) * mask
    counted = ((total > 0) * mask).sum(axis=1)
    return -(frac.sum(axis=1) / np.maximum(counted, 1))


NodeScore = Callable[[np.ndarray, np.ndarray, np.ndarray, Sequence[str], Resources], np.ndarray]

NODE_SCORES: MappingProxyType[str, NodeScore] = MappingProxyType(
    {"binpack": binpack, "spread": spread, "cost": binpack, "fragmentation": live_growth}
)


def node_score(policy: str, mix: RequestMix | None = None) -> NodeScore:
    """The node score of ``policy``; for ``fragmentation``, bound to the request ``mix`` it measures against.

    Example:
        >>> node_score("binpack") is binpack
        True
    """
    score = NODE_SCORES[policy]
    return functools.partial(live_growth, mix=mix) if score is live_growth else score


def cluster_key(policy: str, cluster: Cluster, request: Resources) -> float:
    """The cluster-level part of the ranking: the hourly price for ``cost``, nothing for the others.

    A cluster without prices counts as free (on-premises).
    """
    if policy != "cost":
        return 0.0
    return request.cpu * (cluster.cost_per_cpu_hour or 0.0) + request.gpu * (cluster.cost_per_gpu_hour or 0.0)
