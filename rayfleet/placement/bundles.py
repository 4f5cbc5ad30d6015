"""Node-level fit of a gang: assign every bundle to a node so that all fit at the same time, per Ray's strategies.

``STRICT_PACK`` and ``STRICT_SPREAD`` are decided exactly: one node that holds the sum, or a matching of bundles to
distinct nodes (augmenting paths, so a feasible spread is never missed). ``PACK`` and ``SPREAD`` are best effort in
Ray; here they try a few heuristics in order of preference and return the first assignment that fits. Those
heuristics are greedy (largest bundle first): an answer they give always fits, but when they answer ``None`` a
packing may still exist (bin packing is NP-hard; first-fit-decreasing can miss a feasible packing). Placement then
reports the gang as not fitting, which is the safe side: the job waits or goes elsewhere, it never over-commits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rayfleet.placement.fit import fit_mask, request_vector
from rayfleet.placement.fragmentation import RequestMix
from rayfleet.placement.policies import GPU_SPARE_WEIGHT, _capacity_keys, node_score
from rayfleet.resources import EPSILON, Gang

Assignment = list[int]


def bundle_vectors(keys: Sequence[str], gang: Gang, accelerator: str | None = None) -> np.ndarray | None:
    """The gang's bundles as rows over ``keys`` (bundles x keys); ``None`` when one asks for a key no node has."""
    rows = []
    for bundle in gang.to_ray(accelerator):
        vec = request_vector(keys, bundle)
        if vec is None:
            return None
        rows.append(vec)
    return np.array(rows).reshape(len(rows), len(keys))


def fit_gang(free: np.ndarray, keys: Sequence[str], gang: Gang, accelerator: str | None = None) -> Assignment | None:
    """Assign each bundle of ``gang`` to a row (node) of ``free`` so that all bundles fit together.

    Per strategy:
        - ``STRICT_PACK``: the one node that holds the sum of the bundles, best fit first.
        - ``STRICT_SPREAD``: a distinct node for each bundle (exact: a maximum matching of bundles to nodes).
        - ``PACK``: one node if any holds everything; else greedy best-fit decreasing onto nodes already used, opening
          the node that takes the most of the remaining bundles when none of them has room; else any spread that fits.
        - ``SPREAD``: distinct nodes if possible; else greedy, each bundle to the fitting node with the fewest
          bundles so far; else any packing that fits (Ray's SPREAD is best effort, so sharing is allowed).

    Ties go to the lowest node index and the earliest bundle, so equal inputs give equal answers.

    Args:
        free: free capacity, nodes x keys (not changed).
        keys: the resource names of the columns.
        gang: the bundles and their strategy.
        accelerator: the GPU model chosen for the bundles that allow models (``None``: no model key).

    Returns:
        The node row of each bundle, in bundle order; ``None`` when the gang cannot fit (or the greedy heuristics of
        PACK and SPREAD found no way; see the module's docstring).

    Example:
        >>> from rayfleet.resources import Resources
        >>> free = np.array([[1.0, 4.0], [1.0, 4.0], [0.0, 8.0]])  # columns: GPU, CPU
        >>> fit_gang(free, ["GPU", "CPU"], Gang.of(2, Resources(cpu=1, gpu=1), strategy="STRICT_SPREAD"))
        [0, 1]
    """
    vecs = bundle_vectors(keys, gang, accelerator)
    if vecs is None or free.shape[0] == 0:
        return None
    free = np.asarray(free, dtype=float)
    fitter = _Fitter(free, list(keys), vecs)
    attempts: dict[str, tuple[Callable[[], Assignment | None], ...]] = {
        "STRICT_PACK": (fitter.one_node,),
        "STRICT_SPREAD": (fitter.distinct_nodes,),
        "PACK": (fitter.one_node, fitter.greedy_pack, fitter.distinct_nodes, fitter.greedy_spread),
        "SPREAD": (fitter.distinct_nodes, fitter.greedy_spread, fitter.one_node, fitter.greedy_pack),
    }
    for attempt in attempts[gang.strategy]:
        assignment = attempt()
        if assignment is not None:
            assert fits_together(free, vecs, assignment), "a gang heuristic over-committed a node"
            return assignment
    return None


def fits_together(free: np.ndarray, vecs: np.ndarray, assignment: Sequence[int]) -> bool:
    """Whether bundles ``vecs`` placed on rows ``assignment`` of ``free`` fit all at once (no node over-committed)."""
    load = np.zeros_like(free, dtype=float)
    np.add.at(load, np.asarray(assignment, dtype=int), vecs)
    return bool(np.all(load <= free + EPSILON * max(1, len(assignment))))


def distinct_fit_count(free: np.ndarray, keys: Sequence[str], gang: Gang, accelerator: str | None = None) -> int:
    """How many bundles of the gang can be placed each on its own node (for ``STRICT_SPREAD`` reasons)."""
    vecs = bundle_vectors(keys, gang, accelerator)
    if vecs is None or free.shape[0] == 0:
        return 0
    matched = _Fitter(np.asarray(free, dtype=float), list(keys), vecs).matching()
    return sum(1 for node in matched if node >= 0)


def gang_score(
    policy: str,
    free: np.ndarray,
    total: np.ndarray,
    keys: Sequence[str],
    gang: Gang,
    assignment: Sequence[int],
    accelerator: str | None = None,
    *,
    mix: RequestMix | None = None,
) -> float:
    """Score an assignment with the node policy (lower is better), over the nodes the gang touches.

    ``binpack`` and ``cost`` add up each touched node's leftover (as fractions of its size, `policies.binpack`), so
    the cluster whose nodes the gang fills most, leaving the least stranded, wins; a gang that asks for no GPU pays
    for every GPU node it touches. ``spread`` takes the mean of `policies.spread` over the touched nodes.
    ``fragmentation`` adds up `fragmentation.live_growth` against ``mix``.
    """
    vecs = bundle_vectors(keys, gang, accelerator)
    assert vecs is not None, "score only an assignment that fit_gang returned"
    load = np.zeros_like(free, dtype=float)
    np.add.at(load, np.asarray(assignment, dtype=int), vecs)
    rows = np.unique(np.asarray(assignment, dtype=int))
    scores = node_score(policy, mix)(free[rows], total[rows], load[rows], list(keys), gang.total)
    return float(scores.mean() if policy == "spread" else scores.sum())


def best_assignment(
    policy: str,
    free: np.ndarray,
    total: np.ndarray,
    keys: Sequence[str],
    gang: Gang,
    accelerator: str | None = None,
    *,
    mix: RequestMix | None = None,
) -> tuple[Assignment, float] | bool:
    """Where ``policy`` puts the gang on ``free``, with its score (lower is better); when it does not fit there,
    whether it would on ``total`` (every node empty), ``False`` also when it asks for a key no node has.

    A gang of one bundle (a plain job is one) goes to the node the policy scores best among all it fits on, the
    lowest index among equals: every strategy means the same for one bundle, so no heuristic stands in for the
    policy. A gang of several takes `fit_gang`'s assignment, scored by `gang_score`.
    """
    if len(gang.bundles) > 1:
        assignment = fit_gang(free, keys, gang, accelerator)
        if assignment is None:
            return fit_gang(total, keys, gang, accelerator) is not None
        return assignment, gang_score(policy, free, total, keys, gang, assignment, accelerator, mix=mix)
    vec = request_vector(keys, gang.to_ray(accelerator)[0])
    if vec is None:
        return False
    rows = np.flatnonzero(fit_mask(free, vec))
    if not len(rows):
        return bool(fit_mask(total, vec).any())
    scores = node_score(policy, mix)(free[rows], total[rows], vec, keys, gang.bundles[0])
    i = int(np.argmin(scores))
    return [int(rows[i])], float(scores[i])


class _Fitter:
    """The heuristics of `fit_gang` over one ``free`` matrix; each returns an assignment that fits, or ``None``."""

    def __init__(self, free: np.ndarray, keys: list[str], vecs: np.ndarray) -> None:
        self.free = free
        self.vecs = vecs
        self.capacity = _capacity_keys(keys)
        # normalise each key by the largest free amount, so bytes of memory do not outweigh GPUs in the scores
        self.scale = np.where(free.max(axis=0) > 0, free.max(axis=0), 1.0)
        self.gpu = keys.index("GPU") if "GPU" in keys else None
        size = (vecs / self.scale * self.capacity).sum(axis=1)
        self.order = sorted(range(len(vecs)), key=lambda b: (-size[b], b))  # largest first, then bundle order

    def _room(self, rem: np.ndarray) -> np.ndarray:
        return (rem / self.scale * self.capacity).sum(axis=-1)

    def _slack(self, rem: np.ndarray, b: int) -> np.ndarray:
        """Best-fit score of bundle ``b`` on each row of ``rem``: what is left, plus a price for idle GPUs stranded."""
        score = self._room(rem - self.vecs[b])
        if self.gpu is not None and self.vecs[b, self.gpu] == 0:
            score = score + GPU_SPARE_WEIGHT * (rem[:, self.gpu] > EPSILON)
        return score

    def one_node(self) -> Assignment | None:
        need = self.vecs.sum(axis=0)
        rows = np.flatnonzero(fit_mask(self.free, need))
        if not len(rows):
            return None
        room = self._room(self.free[rows] - need)
        if self.gpu is not None and need[self.gpu] == 0:
            room = room + GPU_SPARE_WEIGHT * (self.free[rows, self.gpu] > EPSILON)
        node = int(rows[np.argmin(room)])
        return [node] * len(self.vecs)

    def matching(self) -> list[int]:
        """A maximum matching of bundles to distinct nodes: the node of each bundle, or -1 for unmatched ones.

        Bundles are tried largest first and each prefers its best-fit nodes; augmenting paths (breadth first, so no
        recursion) move earlier bundles when that frees a node, which is why no feasible spread is missed.
        """
        compat = np.all(self.free[None, :, :] + EPSILON >= self.vecs[:, None, :], axis=2)  # bundles x nodes
        prefs: list[list[int]] = []
        for b in range(len(self.vecs)):
            rows = np.flatnonzero(compat[b])
            slack = self._slack(self.free[rows], b)
            prefs.append([int(rows[i]) for i in np.argsort(slack, kind="stable")])
        node_of = [-1] * len(self.vecs)
        bundle_on: dict[int, int] = {}
        for start in self.order:
            parent: dict[int, int] = {}  # node -> the bundle whose path reached it
            queue, head, found = [start], 0, -1
            while head < len(queue) and found < 0:
                b = queue[head]
                head += 1
                for node in prefs[b]:
                    if node in parent:
                        continue
                    parent[node] = b
                    if node not in bundle_on:
                        found = node
                        break
                    queue.append(bundle_on[node])
            node = found
            while node >= 0:  # flip the path: each bundle on it takes the node it reached
                b = parent[node]
                previous = node_of[b]
                node_of[b], bundle_on[node] = node, b
                node = -1 if b == start else previous
        return node_of

    def distinct_nodes(self) -> Assignment | None:
        if len(self.vecs) > self.free.shape[0]:
            return None
        node_of = self.matching()
        return node_of if min(node_of) >= 0 else None

    def greedy_pack(self) -> Assignment | None:
        rem = self.free.copy()
        used = np.zeros(rem.shape[0], dtype=bool)
        node_of = [-1] * len(self.vecs)
        for pos, b in enumerate(self.order):
            fits = fit_mask(rem, self.vecs[b])
            if not fits.any():
                return None
            if (fits & used).any():  # best fit among the nodes already in use
                rows = np.flatnonzero(fits & used)
                node = int(rows[np.argmin(self._slack(rem[rows], b))])
            else:  # open the node that can take the most of the bundles still to place, then the best fit
                rows = np.flatnonzero(fits)
                running = np.cumsum(self.vecs[self.order[pos:]], axis=0)  # this bundle, then the next ones with it
                holds = np.all(rem[rows][:, None, :] + EPSILON >= running[None, :, :], axis=2)
                takes = np.cumprod(holds, axis=1).sum(axis=1)
                node = int(rows[np.lexsort((self._slack(rem[rows], b), -takes))[0]])
            rem[node] -= self.vecs[b]
            used[node] = True
            node_of[b] = node
        return node_of

    def greedy_spread(self) -> Assignment | None:
        rem = self.free.copy()
        count = np.zeros(rem.shape[0])
        node_of = [-1] * len(self.vecs)
        for b in self.order:
            rows = np.flatnonzero(fit_mask(rem, self.vecs[b]))
            if not len(rows):
                return None
            # fewest bundles so far, then the most room left; lexsort's last key is the primary one
            pick = np.lexsort((-self._room(rem[rows] - self.vecs[b]), count[rows]))[0]
            node = int(rows[pick])
            rem[node] -= self.vecs[b]
            count[node] += 1
            node_of[b] = node
        return node_of
