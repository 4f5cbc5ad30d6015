"""Node-level fit over snapshot arrays: what is free after pending demand and holds, and where a request fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayfleet.capacity import ClusterSnapshot
from rayfleet.resources import EPSILON


@dataclass(frozen=True)
class Hold:
    """Resources this dispatcher placed on a cluster that its probes may not show yet.

    Attributes:
        cluster: where it was placed.
        node_id: the node it was placed on, if known.
        resources: Ray resource names -> amounts.
        placed_at: wall time of the placement.
        baseline: the node's usage of each held key when it was placed; a later reading that shows usage grown by
            the held amount (or the request waiting as pending demand) reflects the hold.
    """

    cluster: str
    node_id: str | None
    resources: Mapping[str, float]
    placed_at: float
    baseline: Mapping[str, float] = field(default_factory=dict)

    def reflected_in(self, snapshot: ClusterSnapshot) -> bool:
        """Whether ``snapshot`` already shows this placement, so counting the hold again would count it twice."""
        if any(dict(shape) == dict(self.resources) for shape, _ in snapshot.pending):
            return True
        if self.node_id not in snapshot.node_ids or not self.baseline:
            return False
        row = snapshot.node_ids.index(self.node_id)
        for key, amount in self.resources.items():
            col = snapshot.column(key)
            if col is None or snapshot.used[row, col] + EPSILON < self.baseline.get(key, 0.0) + amount:
                return False
        return True

    @classmethod
    def on(cls, snapshot: ClusterSnapshot, node_id: str | None, resources: Mapping[str, float], now: float) -> Hold:
        """A hold for ``resources`` placed on ``node_id`` of the cluster read in ``snapshot``."""
        baseline = {}
        if node_id in snapshot.node_ids:
            row = snapshot.node_ids.index(node_id)
            baseline = {k: float(snapshot.used[row, c]) for k in resources if (c := snapshot.column(k)) is not None}
        return cls(snapshot.cluster, node_id, dict(resources), now, baseline)


def request_vector(keys: Sequence[str], request: Mapping[str, float]) -> np.ndarray | None:
    """The request as a row over ``keys``; ``None`` when it asks for a key the cluster does not have at all."""
    vec = np.zeros(len(keys))
    index = {k: i for i, k in enumerate(keys)}
    for key, amount in request.items():
        if amount <= 0:
            continue
        i = index.get(key)
        if i is None:
            return None
        vec[i] = amount
    return vec


def fit_mask(free: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """Which rows (nodes) of ``free`` can hold ``vec``."""
    if free.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.all(free + EPSILON >= vec, axis=1)


def _take(free: np.ndarray, keys: Sequence[str], shape: Mapping[str, float], row: int | None, count: int = 1) -> None:
    """Take ``count`` units of ``shape`` from ``free`` in place: on ``row``, or best-fit unit by unit."""
    vec = request_vector(keys, shape)
    if vec is None:
        return
    if row is not None:
        free[row] = np.maximum(free[row] - vec * count, 0.0)
        return
    fits = fit_mask(free, vec)
    slack = (free - vec).sum(axis=1)
    for _ in range(count):
        candidates = np.flatnonzero(fits)
        if not len(candidates):
            return  # cannot be placed now: it waits for the autoscaler, and takes nothing from what is free
        # best fit: the node left with the least, so large holes stay for large requests
        best = int(candidates[np.argmin(slack[candidates])])
        free[best] = np.maximum(free[best] - vec, 0.0)
        fits[best] = bool(np.all(free[best] + EPSILON >= vec))  # only that row changed
        slack[best] = float((free[best] - vec).sum())


def effective_free(snapshot: ClusterSnapshot, holds: Sequence[Hold] = ()) -> np.ndarray:
    """Per-node free capacity: total - used - the cluster's pending demand that fits now - this dispatcher's holds.

    Pending demand that fits on some node is about to take it; demand that fits nowhere waits for new nodes and
    takes nothing. Holds cover submissions the probe does not reflect yet (it lags by up to ~5 s); without them a
    burst of submissions would all land on the same cluster. The part from pending demand depends only on the
    reading, so it is computed once per snapshot.
    """
    base = snapshot.memo.get("free_after_pending")
    if base is None:
        base = snapshot.free.copy()
        for shape, count in snapshot.pending:
            _take(base, snapshot.keys, shape, None, min(int(count), 10_000))
        base.setflags(write=False)
        snapshot.memo["free_after_pending"] = base
    if not holds:
        return base
    free = base.copy()
    rows = {node_id: i for i, node_id in enumerate(snapshot.node_ids)}
    for hold in holds:
        _take(free, snapshot.keys, hold.resources, rows.get(hold.node_id) if hold.node_id else None)
    return free
