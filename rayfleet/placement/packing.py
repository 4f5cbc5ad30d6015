"""A packing plan for shared GPUs: which fillings of one GPU the request mix should end in.

GPU-sharing requests (``gpu=0.47``) pack into GPUs like items into bins, and what a GPU ends with idle is lost. The
request mix says how often each size comes; the cutting-stock LP over those frequencies (Gilmore-Gomory: a
*pattern* is one GPU's filling, e.g. 650 + 320, and the LP finds the mix of patterns that packs every size in the
fewest GPUs) says which partners each size should get. On the Alibaba trace it pairs 470 with 470 and 650 with 320,
and keeps the rare 160s for the 190 gap an 810 leaves: a first-fit or best-fit packer spends them elsewhere.

Online, a request goes preferably to a GPU already shared whose filling so far is part of a planned pattern that still
has room for it; else to a whole GPU (which starts a new pattern); only then off the plan. This is known as
pattern-based online bin packing for a known item distribution; it needs no knowledge of future requests, only of the
mix (`rayfleet.placement.fragmentation.RequestMix`).

Example:
    >>> plan = PackingPlan.of({810: 4, 160: 1, 470: 2, 320: 1, 650: 1})
    >>> sorted(plan.patterns)  # (size, count) per pattern
    [((470, 2),), ((650, 1), (320, 1)), ((810, 1),), ((810, 1), (160, 1))]
    >>> plan.kind([190, 530, 1000, 350], 160).tolist()  # 160 beside an 810: planned; beside a 470: not
    [0, 2, 1, 2]
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MILLI = 1000  # a whole GPU, in milli-GPU
SLACK = 2  # milli: a GPU's free share read from a snapshot may be off by rounding (3 x 1/3 is 3 x 333, not 1000)
PLANNED, WHOLE, OFF_PLAN = 0, 1, 2  # `PackingPlan.kind`: lower goes first


@dataclass(frozen=True)
class PackingPlan:
    """The planned fillings of one GPU for a mix of sharing sizes, and which GPUs each size may join.

    Attributes:
        sizes: the sharing sizes planned for (milli-GPU, largest first).
        patterns: the LP's fillings in use, each as ((size, count), ...).
        share: how many GPUs of each pattern the LP uses, per request of the mix (same order as ``patterns``).
        joins: ``joins[f, k]``: a GPU with ``f`` milli free (give or take `SLACK`) has used what a part of a planned
            pattern uses, and that pattern has room for one more ``sizes[k]`` besides it.
    """

    sizes: tuple[int, ...]
    patterns: tuple[tuple[tuple[int, int], ...], ...]
    share: tuple[float, ...]
    joins: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def of(cls, frequency: Mapping[int, float]) -> PackingPlan | None:
        """The plan for sharing sizes (milli-GPU, 1..999) that come with the given frequencies; ``None`` if none."""
        demand: dict[int, float] = {}
        for s, w in frequency.items():
            if 0 < int(s) < MILLI and w > 0:
                demand[int(s)] = demand.get(int(s), 0.0) + float(w)
        if not demand:
            return None
        sizes = sorted(demand, reverse=True)
        total = sum(demand.values())
        x, patterns = fewest_gpus(sizes, [demand[s] / total for s in sizes])
        used = [(float(v), p) for v, p in zip(x, patterns, strict=True) if v > 1e-6 * x.sum()]
        filled = tuple(tuple((s, int(n)) for s, n in zip(sizes, p, strict=True) if n) for _, p in used)
        return cls(tuple(sizes), filled, tuple(v for v, _ in used), _joins(sizes, filled))

    def kind(self, free: Sequence[int] | np.ndarray, size: int) -> np.ndarray:
        """Per GPU with ``free`` milli free: `PLANNED` (shared, and ``size`` completes it as planned), `WHOLE`
        (untouched: starts a pattern) or `OFF_PLAN`. All `PLANNED` for a size the plan does not know."""
        free = np.asarray(free, dtype=np.int64)
        if size not in self.sizes:
            return np.full(free.shape, PLANNED)
        fits = self.joins[np.clip(free, 0, MILLI), self.sizes.index(size)]
        return np.where(free >= MILLI, WHOLE, np.where(fits, PLANNED, OFF_PLAN))


def fewest_gpus(sizes: Sequence[int], demand: Sequence[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The cutting-stock LP: how many GPUs of each filling (pattern) pack ``demand`` of each size in the fewest GPUs.

    Column generation: start from one-size patterns, then add the pattern the current dual prices value most (a
    knapsack), until none is worth more than the GPU it takes. Returns the GPUs per pattern and the patterns (counts
    per size).
    """
    from scipy.optimize import linprog  # imported here: only the fragmentation policy needs it

    size = np.asarray(sizes, dtype=np.int64)
    patterns = [np.eye(len(sizes), dtype=np.int64)[i] * (MILLI // s) for i, s in enumerate(sizes)]
    while True:
        a = np.array(patterns).T  # sizes x patterns
        solved = linprog(
            np.ones(a.shape[1]), A_ub=-a, b_ub=-np.asarray(demand, dtype=float), bounds=(0, None), method="highs"
        )
        if solved.status != 0:
            raise RuntimeError(f"packing LP failed: {solved.message}")
        prices = -solved.ineqlin.marginals
        value, pattern = best_filling(prices, size, MILLI // size)
        if value <= 1 + 1e-9 or any((pattern == p).all() for p in patterns):
            return solved.x, patterns
        patterns.append(pattern)


def best_filling(values: np.ndarray, sizes: np.ndarray, limits: np.ndarray) -> tuple[float, np.ndarray]:
    """The filling of one GPU of highest value: at most ``limits[i]`` items of ``sizes[i]`` (milli-GPU) within 1000
    milli, each worth ``values[i]``. A bounded knapsack, one copy of an item at a time over all capacities at once.

    Example:
        >>> best_filling(np.array([1.0, 0.6]), np.array([810, 470]), np.array([1, 2]))
        (1.2, array([0, 2]))
    """
    best = np.full(MILLI + 1, -np.inf)
    best[0] = 0.0
    took = np.zeros((MILLI + 1, len(sizes)), dtype=np.int64)
    for i, (size, value, limit) in enumerate(zip(sizes.tolist(), values.tolist(), limits.tolist(), strict=True)):
        if value <= 0:
            continue
        for _ in range(int(limit)):
            gain = best[:-size] + value
            better = np.flatnonzero(gain > best[size:] + 1e-12)
            if not len(better):
                break
            best[better + size] = gain[better]
            took[better + size] = took[better]
            took[better + size, i] += 1
    c = int(np.argmax(best))
    return round(float(best[c]), 12), took[c]


def _joins(sizes: Sequence[int], patterns: Sequence[tuple[tuple[int, int], ...]]) -> np.ndarray:
    """``joins[f, k]``: some pattern holds a part summing to ``1000 - f`` (within `SLACK`) and, besides it, one more
    ``sizes[k]``. Read-only."""
    joins = np.zeros((MILLI + 1, len(sizes)), dtype=bool)
    index = {s: k for k, s in enumerate(sizes)}
    for pattern in patterns:
        for part in itertools.product(*(range(n + 1) for _, n in pattern)):
            used = sum(s * m for (s, _), m in zip(pattern, part, strict=True))
            for (s, n), m in zip(pattern, part, strict=True):
                if m < n:
                    joins[MILLI - used, index[s]] = True
    near = joins.copy()
    for d in range(1, SLACK + 1):
        near[d:] |= joins[:-d]
        near[:-d] |= joins[d:]
    near.flags.writeable = False
    return near
