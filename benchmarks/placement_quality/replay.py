"""One replay: pods arrive one at a time, never leave; each goes where the policy says or is dropped (no retry).

Policies (all score with rayfleet's own code in `rayfleet.placement`):

- ``random``: a uniformly random fitting node; a sharing pod on a random GPU that holds it.
- ``bestfit``: the paper's BestFit: the node with the highest ``int(100 x (1 - leftover))`` (`fragmentation.leftover`);
  a sharing pod on the least free GPU that holds it.
- ``fgd``: the paper's FGD as its simulator scores it: `fragmentation.fgd_score` per node and GPU (an integer, so
  close growths tie).
- ``fragmentation``: rayfleet's policy, `fragmentation.Candidates.score`: the packing plan for a shared GPU, then the
  growth plus the GPU stranded for lack of CPU (cut coarse), then the fullest node, then the lowest index.
  Deterministic.

``bestfit`` and ``fgd`` break ties between nodes in one random node order per seed ("node tie order is randomised"):
with a fresh random pick per decision instead, FGD leaves 10.3% unallocated on the default trace, not 4.7%.
- ``binpack``: rayfleet's existing default node score (`policies.binpack`) over the aggregate arrays a snapshot
  has; GPU by best fit. For reference.
- ``live``: ``policy="fragmentation"`` exactly as the dispatcher runs it: `policies.node_score("fragmentation", mix)`
  over the aggregate arrays (per-node free GPU only, so it assumes packed fractions), then Ray assigns the GPU
  (modelled as best fit).

Multi-cluster (``cluster_of`` given): the dispatcher scores each cluster by its best node, as `place` does, and takes
the best cluster (ties by name). ``node_choice="dispatcher"`` then pins the node it scored (Ray's ``node:<ip>``
resource); ``"ray"`` leaves the node to a model of Ray's default hybrid scheduler inside that cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from rayfleet.placement.fragmentation import (
    MILLI,
    Fragmentation,
    NodeState,
    RequestMix,
    Shape,
    best_fit_gpu,
    fgd_score,
    leftover,
)
from rayfleet.placement.policies import binpack, node_score
from rayfleet.resources import Resources

POLICIES = ("random", "bestfit", "fgd", "fragmentation", "binpack", "live")
RAY_SPREAD_THRESHOLD = 0.5  # Ray's hybrid policy packs nodes below 50% utilisation, then spreads
RAY_TOP_K_FRACTION = 0.2  # and picks at random among the best 20% of nodes
_KEYS = ("CPU", "GPU", "memory")


@dataclass
class Outcome:
    """Per pod, in arrival order: GPU milli requested so far (arrived) and placed so far (allocated)."""

    arrived: np.ndarray
    allocated: np.ndarray
    decide_s: list[float] = field(default_factory=list)  # wall time of each decision
    decide_cpu_s: list[float] = field(default_factory=list)  # its CPU time: what it costs on a loaded machine
    placed: int = 0
    dropped: int = 0


def unallocated_by_arrived(outcome: Outcome, capacity_milli: int) -> dict[int, float]:
    """The paper's curve: 100 - mean allocated % over the pods in each integer arrived % bin."""
    arrived_pct = np.rint(outcome.arrived / capacity_milli * 100).astype(np.int64)
    allocated_pct = outcome.allocated / capacity_milli * 100
    sums = np.bincount(arrived_pct, weights=allocated_pct)
    counts = np.bincount(arrived_pct)
    return {int(b): round(100.0 - float(sums[b] / counts[b]), 4) for b in np.flatnonzero(counts)}


class Replayer:
    """Replays one arrival order on one node state with one policy."""

    def __init__(
        self,
        state: NodeState,
        shapes: tuple[Shape, ...],
        policy: str,
        mix: RequestMix,
        seed: int,
        cluster_of: np.ndarray | None = None,
        node_choice: str = "dispatcher",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        self.state = state
        self.shapes = shapes
        self.policy = policy
        self.rng = np.random.default_rng(seed + 7919)  # tie-breaking stream, apart from the order's
        self.tie_order = self.rng.permutation(state.size)
        self.cluster_of = cluster_of
        self.node_choice = node_choice
        self.frag = Fragmentation(mix, state.models) if policy in ("fgd", "fragmentation") else None
        if self.frag is not None:
            self.frag.prepare(state)
        self.total_cpu = state.cpu.astype(float).copy()
        self.total_mem = state.memory.astype(float).copy()
        self.total_gpu = (state.gpus > 0).sum(axis=1).astype(float)
        self._totals = np.column_stack([self.total_cpu / MILLI, self.total_gpu, self.total_mem])
        # what a snapshot has: CPU, GPU, memory, and accelerator_type:<model> = 1 on the nodes of each model
        self._live_keys = (*_KEYS, *(f"accelerator_type:{m}" for m in state.models))
        models = np.zeros((state.size, len(state.models)))
        has = state.model >= 0
        models[np.flatnonzero(has), state.model[has]] = 1.0
        self._live_total = np.column_stack([self._totals, models])
        self._live_models = models
        # as a dispatcher configured with the trace's typical mix scores a node
        self._live_score = node_score("fragmentation", mix) if policy == "live" else None
        self._resources = {
            s: Resources(cpu=s.cpu_milli / MILLI, gpu=s.total_gpu_milli / MILLI, memory=s.memory) for s in shapes
        }

    # ----- scoring: keys for np.lexsort (last key primary), per fitting node, and the GPU each would take ----------

    def _score(self, shape: Shape, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None]:
        """Candidate nodes, their sort keys, and the GPU each takes (``None``: chosen on the node afterwards)."""
        state = self.state
        if self.policy == "random":
            return rows, [self.rng.random(len(rows))], None
        if self.policy == "bestfit":
            score = np.floor((1.0 - leftover(state, rows, shape)) * 100 + 1e-9)
            return rows, [self.tie_order[rows], -score], None
        if self.policy in ("binpack", "live"):
            free = np.column_stack(
                [state.cpu[rows] / MILLI, state.gpus[rows].sum(axis=1) / MILLI, state.memory[rows].astype(float)]
            )
            vec = np.array([shape.cpu_milli / MILLI, shape.total_gpu_milli / MILLI, float(shape.memory)])
            if self.policy == "binpack":
                score = binpack(free, self._totals[rows], vec, _KEYS, self._resources[shape])
            else:
                free = np.column_stack([free, self._live_models[rows]])
                vec = np.concatenate([vec, np.zeros(len(self.state.models))])
                assert self._live_score is not None
                score = self._live_score(free, self._live_total[rows], vec, self._live_keys, self._resources[shape])
            return rows, [rows, score], None
        assert self.frag is not None
        c = self.frag.candidates(state, shape, rows)
        if self.policy == "fgd":
            score = fgd_score(c.growth)
            # per node: the GPU with the highest score, the first such one
            order = np.lexsort((np.arange(len(score)), -score, c.node))
            first = np.ones(len(order), dtype=bool)
            first[1:] = c.node[order][1:] != c.node[order][:-1]
            pick = order[first]
            return c.node[pick], [self.tie_order[c.node[pick]], -score[pick]], c.gpu_value[pick]
        # fragmentation: rayfleet's rank, per node its best GPU, ties to the lowest index
        score = c.score(state, shape)
        order = np.lexsort((c.node, score, c.node))
        first = np.ones(len(order), dtype=bool)
        first[1:] = c.node[order][1:] != c.node[order][:-1]
        pick = order[first]
        return c.node[pick], [c.node[pick], score[pick]], c.gpu_value[pick]

    def _gpu_on(self, node: int, shape: Shape, gpu: np.ndarray | None, i: int) -> int:
        """The free value of the GPU the pod takes on ``node``: the policy's, else random or best fit."""
        if gpu is not None:
            return int(gpu[i])
        if self.policy == "random" and shape.sharing:
            row = self.state.gpus[node]
            options = row[row >= shape.gpu_milli]
            return int(options[self.rng.integers(len(options))])
        return best_fit_gpu(self.state, node, shape)

    # ----- choosing --------------------------------------------------------------------------------------------------

    def decide(self, shape: Shape) -> tuple[int, int] | None:
        """The node and the free value of the GPU a pod of ``shape`` takes, or ``None`` to drop it."""
        rows = np.flatnonzero(self.state.fits(shape))
        if not len(rows):
            return None
        nodes, keys, gpu = self._score(shape, rows)
        order = np.lexsort(keys)
        if self.cluster_of is None:
            i = int(order[0])
            return int(nodes[i]), self._gpu_on(int(nodes[i]), shape, gpu, i)
        # the dispatcher: best node of each cluster, clusters ranked by that node's score (primary key), then name
        clusters = self.cluster_of[nodes[order]]
        _, first = np.unique(clusters, return_index=True)  # first = best position of each cluster in the order
        best = order[first]
        primary = keys[-1][best]
        winner = int(best[np.lexsort((self.cluster_of[nodes[best]], primary))[0]])
        if self.node_choice == "dispatcher":
            return int(nodes[winner]), self._gpu_on(int(nodes[winner]), shape, gpu, winner)
        cluster = self.cluster_of[nodes[winner]]
        inside = np.flatnonzero(self.cluster_of[nodes] == cluster)
        i = int(inside[self._ray_pick(nodes[inside], cluster)])
        node = int(nodes[i])
        return node, best_fit_gpu(self.state, node, shape)

    def _ray_pick(self, rows: np.ndarray, cluster: int) -> int:
        """A model of Ray's hybrid policy: score utilisation (0 below 50%), pick at random in the best 20%."""
        s = self.state
        used = np.column_stack(
            [
                1 - s.cpu[rows] / np.maximum(self.total_cpu[rows], 1),
                1 - s.gpus[rows].sum(axis=1) / np.maximum(self.total_gpu[rows] * MILLI, 1),
                1 - s.memory[rows] / np.maximum(self.total_mem[rows], 1),
            ]
        ).max(axis=1)
        score = np.where(used < RAY_SPREAD_THRESHOLD, 0.0, used)
        size = int((self.cluster_of == cluster).sum())
        k = max(1, int(RAY_TOP_K_FRACTION * size))
        top = np.lexsort((self.rng.random(len(rows)), score))[:k]
        return int(top[self.rng.integers(len(top))])

    def run(self, order: np.ndarray, shape_of: np.ndarray, timing: bool = False) -> Outcome:
        gpu_milli = np.array([s.total_gpu_milli for s in self.shapes], dtype=np.int64)
        arrived = np.cumsum(gpu_milli[shape_of[order]])
        allocated = np.zeros(len(order), dtype=np.int64)
        outcome = Outcome(arrived, allocated)
        placed_milli = 0
        clock, cpu_clock = time.perf_counter, time.thread_time
        for step, pod in enumerate(order):
            shape = self.shapes[shape_of[pod]]
            t0, c0 = (clock(), cpu_clock()) if timing else (0.0, 0.0)
            choice = self.decide(shape)
            if timing:
                outcome.decide_cpu_s.append(cpu_clock() - c0)
                outcome.decide_s.append(clock() - t0)
            if choice is None:
                outcome.dropped += 1
            else:
                node, value = choice
                self.state.take(node, shape, value)
                if self.frag is not None:
                    self.frag.refresh(self.state, node)
                placed_milli += shape.total_gpu_milli
                outcome.placed += 1
            allocated[step] = placed_milli
        return outcome
