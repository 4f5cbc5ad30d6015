"""Fragmentation-aware placement: how much a placement grows the GPU fragmentation of a node, against a request mix.

The measure is the one of Weng et al., "Beware of Fragmentation" (USENIX ATC'23, FGD). Against a *typical request
mix* (shapes with popularity weights), a node's fragmentation is the expected GPU capacity it holds that the next
request cannot use: for each shape, all of the node's idle GPU counts if the shape does not fit there (or asks for no
GPU), else only the idle part of the GPUs with less free than the shape needs. A request goes to the node (and, when
it shares a GPU, to the GPU) whose fragmentation grows least.

rayfleet adds two things to it (docs/placement_quality.md has the measurements):

- GPUs *stranded* for lack of CPU. The mix's GPU requests bring a typical number of CPUs per GPU; a node's idle GPUs
  beyond what its free CPUs can feed at that ratio are stranded, whatever the next request is. FGD sees this only once
  a whole typical shape stops fitting; counting it as it builds up keeps CPU-hungry requests off CPU-poor nodes
  (Alibaba trace: 4.7% -> 4.2% unallocated).
- A *packing plan* for shared GPUs (`rayfleet.placement.packing`): the cutting-stock LP over the mix's sharing
  sizes says which fillings of one GPU pack them best (470 + 470, 650 + 320, 810 + 160, ...). A sharing request goes
  first to a shared GPU it completes as planned, then to a whole GPU, then off the plan; the measure ranks within
  each (4.2% -> 3.89%; it also replaced a lookahead on the gap's least possible waste, which reached 4.07%).

One `NodeState` holds a cluster's free capacity with per-GPU detail (milli-GPU per device, as integers so that
fits are exact); `Fragmentation` scores candidate placements on it in numpy, with per-node caches that the replay
updates incrementally. The live policy (``policy="fragmentation"``) builds a `NodeState` from a snapshot's rows, where
Ray reports only a node's total free GPU, so it assumes fractional GPUs are packed (see `NodeState.from_rows`) and
uses the packing plan only where that is exact (nodes of at most one GPU).

Example:
    >>> mix = RequestMix.of({Shape(cpu_milli=4000, gpu_milli=500, gpus=1): 1.0})
    >>> state = NodeState.empty(cpu_milli=[8000, 8000], memory=[0, 0], gpus=[1, 1], models=["T4", "T4"])
    >>> state.take(0, Shape(cpu_milli=1000, gpu_milli=600, gpus=1), 1000)  # node 0 keeps 0.4 of a GPU free
    >>> frag = Fragmentation(mix, state.models)
    >>> best = frag.best(state, Shape(cpu_milli=1000, gpu_milli=400, gpus=1), np.array([0, 1]))
    >>> int(best.node), int(best.gpu_value)  # the 0.4 left on node 0 is a fragment for the mix: fill it
    (0, 400)
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayfleet.placement.packing import MILLI, OFF_PLAN, WHOLE, PackingPlan
from rayfleet.resources import ACCELERATOR_PREFIX, Resources

log = logging.getLogger(__name__)

COVERAGE = 0.95  # the typical mix: the most frequent shapes covering 95% of requests (the paper's setting)
STRAND_WEIGHT = 1.5  # how much a milli-GPU stranded for lack of CPU counts against one fragmented (see `rank`)
RANK_LEVELS = 30  # `rank` cuts 30 x sigmoid(-growth) to an integer: growths within ~0.13 GPU tie, then fullness
FULL_CPU_WEIGHT = 0.75  # `rank`'s last key, how full the node is: 3/4 the CPUs left, 1/4 the GPUs (`leftover`)


@dataclass(frozen=True)
class Shape:
    """One request as the fragmentation measure sees it.

    Attributes:
        cpu_milli: milli-CPUs.
        gpu_milli: per GPU: below 1000 shares ONE GPU (then ``gpus`` is 1); 1000 means whole GPUs.
        gpus: how many GPUs (0 for a CPU-only request).
        memory: bytes; checked by the fit, ignored by the measure (as in the paper).
        accelerators: allowed GPU models; empty means any.
    """

    cpu_milli: int
    gpu_milli: int = 0
    gpus: int = 0
    memory: int = 0
    accelerators: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.gpus and not 0 < self.gpu_milli <= MILLI:
            raise ValueError(f"gpu_milli={self.gpu_milli} must be in 1..{MILLI} when gpus={self.gpus}")
        if self.gpu_milli < MILLI and self.gpus > 1:
            raise ValueError("a GPU-sharing request takes part of ONE GPU: gpus must be 1")

    @property
    def total_gpu_milli(self) -> int:
        return self.gpu_milli * self.gpus

    @property
    def sharing(self) -> bool:
        return self.gpus == 1 and self.gpu_milli < MILLI

    def without_memory(self) -> Shape:
        return Shape(self.cpu_milli, self.gpu_milli, self.gpus, 0, self.accelerators)

    @classmethod
    def of(cls, resources: Resources) -> Shape:
        """The shape of a rayfleet request: fractional ``gpu`` shares one GPU, whole ``gpu`` takes whole GPUs.

        Example:
            >>> Shape.of(Resources(cpu=2, gpu=0.5))
            Shape(cpu_milli=2000, gpu_milli=500, gpus=1, memory=0, accelerators=frozenset())
        """
        gpu = float(resources.gpu)
        if gpu <= 0:
            milli, count = 0, 0
        elif gpu < 1:
            milli, count = max(1, round(gpu * MILLI)), 1
        else:
            milli, count = MILLI, math.ceil(gpu - 1e-9)
        return cls(round(resources.cpu * MILLI), milli, count, int(resources.memory), resources.accelerators)


@dataclass(frozen=True)
class RequestMix:
    """The typical requests, with popularity weights summing to 1.

    Example:
        >>> mix = RequestMix.typical([Shape(1000)] * 3 + [Shape(1000, 500, 1)], coverage=0.5)
        >>> mix.shapes, mix.weights
        ((Shape(cpu_milli=1000, gpu_milli=0, gpus=0, memory=0, accelerators=frozenset()),), (1.0,))
    """

    shapes: tuple[Shape, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.weights) or not self.shapes:
            raise ValueError("a request mix needs at least one shape and one weight per shape")

    @classmethod
    def of(cls, weighted: Mapping[Shape, float], *, memory: bool = False) -> RequestMix:
        """A mix from shapes and (unnormalised) weights; their memory is dropped unless ``memory``."""
        total = float(sum(weighted.values()))
        if total <= 0:
            raise ValueError("a request mix needs a positive total weight")
        merged: Counter[Shape] = Counter()
        for shape, w in weighted.items():
            merged[shape if memory else shape.without_memory()] += w
        return cls(tuple(merged), tuple(w / total for w in merged.values()))

    @classmethod
    def typical(
        cls, requests: Iterable[Shape | Resources], coverage: float = COVERAGE, *, memory: bool = False
    ) -> RequestMix:
        """The paper's typical pods: the most frequent shapes, in order, until they cover ``coverage`` of requests.

        Ties in frequency are broken by the shape (smaller first) so equal inputs give equal mixes. The paper's
        shapes have no memory; with ``memory`` they keep it, and a node short of memory for a shape counts its idle
        GPUs as fragment for that shape.

        Raises:
            ValueError: ``requests`` is empty.
        """
        shapes = (r if isinstance(r, Shape) else Shape.of(r) for r in requests)
        counts = Counter(s if memory else s.without_memory() for s in shapes)
        if not counts:
            raise ValueError("no requests to learn a mix from")
        total = sum(counts.values())
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], _shape_key(kv[0])))
        kept: dict[Shape, float] = {}
        covered = 0
        for shape, count in ordered:
            if covered >= coverage * total:
                break
            kept[shape] = count
            covered += count
        return cls.of(kept, memory=memory)


def _shape_key(shape: Shape) -> tuple[int, int, int, int, tuple[str, ...]]:
    return (shape.cpu_milli, shape.gpu_milli, shape.gpus, shape.memory, tuple(sorted(shape.accelerators)))


@dataclass
class NodeState:
    """Free capacity of a cluster's nodes with per-GPU detail. The replay changes it with `take`.

    Attributes:
        cpu: free milli-CPUs per node, shape (n,).
        memory: free bytes per node, shape (n,).
        gpus: free milli-GPU of each GPU, sorted descending per node, shape (n, max GPUs); absent GPUs hold 0.
        model: index into ``models`` of each node's GPU model, -1 for none.
        models: the GPU model names.
        per_gpu: each GPU's free share is known (not assumed from a node's total, see `from_rows`).
    """

    cpu: np.ndarray
    memory: np.ndarray
    gpus: np.ndarray
    model: np.ndarray
    models: tuple[str, ...]
    per_gpu: bool = True

    @property
    def size(self) -> int:
        return int(self.cpu.shape[0])

    @classmethod
    def empty(
        cls,
        cpu_milli: Sequence[int],
        memory: Sequence[int],
        gpus: Sequence[int],
        models: Sequence[str | None],
    ) -> NodeState:
        """Idle nodes from their sizes (milli-CPUs, bytes, GPU count, GPU model or ``None``)."""
        names = tuple(sorted({m for m in models if m}))
        width = max([1, *gpus])
        grid = np.zeros((len(gpus), width), dtype=np.int64)
        for i, count in enumerate(gpus):
            grid[i, :count] = MILLI
        index = np.array([names.index(m) if m else -1 for m in models], dtype=np.int64)
        return cls(np.array(cpu_milli, dtype=np.int64), np.array(memory, dtype=np.int64), grid, index, names)

    @classmethod
    def from_rows(cls, free: np.ndarray, total: np.ndarray, keys: Sequence[str]) -> NodeState:
        """The state of snapshot rows (Ray resource names as ``keys``).

        Ray reports a node's total free GPU, not each GPU's; this assumes fractional use is packed: ``floor(free)``
        whole GPUs, one GPU with the fractional rest, and the others taken. That is exact only where no node has more
        than one GPU (``per_gpu``).
        """
        col = {k: i for i, k in enumerate(keys)}
        n = free.shape[0]

        def column(key: str, array: np.ndarray) -> np.ndarray:
            return array[:, col[key]] if key in col else np.zeros(n)

        gpu_free = np.maximum(column("GPU", free), 0.0)
        gpu_total = np.rint(column("GPU", total)).astype(np.int64)
        width = max(1, int(gpu_total.max(initial=0)))
        whole = np.floor(gpu_free + 1e-9).astype(np.int64)
        part = np.rint((gpu_free - whole) * MILLI).astype(np.int64)
        slots = np.arange(width)[None, :]
        grid = np.where(slots < whole[:, None], MILLI, 0) + np.where(slots == whole[:, None], part[:, None], 0)
        grid = np.where(slots < gpu_total[:, None], grid, 0).astype(np.int64)
        names = tuple(sorted(k[len(ACCELERATOR_PREFIX) :] for k in keys if k.startswith(ACCELERATOR_PREFIX)))
        model = np.full(n, -1, dtype=np.int64)
        for m, name in enumerate(names):
            model[column(ACCELERATOR_PREFIX + name, total) > 0] = m
        cpu = np.rint(column("CPU", free) * MILLI).astype(np.int64)
        memory = np.floor(column("memory", free)).astype(np.int64)
        return cls(cpu, memory, grid, model, names, per_gpu=bool((gpu_total <= 1).all()))

    def model_mask(self, allowed: frozenset[str]) -> np.ndarray:
        """Which nodes have a GPU model in ``allowed`` (every node when ``allowed`` is empty)."""
        if not allowed:
            return np.ones(self.size, dtype=bool)
        ok = np.array([m in allowed for m in self.models] + [False])
        return ok[self.model]  # index -1 (no model) reads the trailing False

    def fits(self, shape: Shape) -> np.ndarray:
        """Which nodes can hold ``shape`` now: CPU, memory, GPU model, and enough GPUs with enough free each."""
        ok = (self.cpu >= shape.cpu_milli) & (self.memory >= shape.memory)
        if shape.gpus:
            ok &= (self.gpus >= shape.gpu_milli).sum(axis=1) >= shape.gpus
            if shape.accelerators:
                ok &= self.model_mask(shape.accelerators)
        return ok

    def take(self, node: int, shape: Shape, gpu_value: int) -> None:
        """Place ``shape`` on ``node``: a sharing request on one GPU that has ``gpu_value`` free, else whole GPUs."""
        self.cpu[node] -= shape.cpu_milli
        self.memory[node] -= shape.memory
        if not shape.gpus:
            return
        row = self.gpus[node]
        if shape.sharing:
            j = int(np.flatnonzero(row == gpu_value)[0])
            if row[j] < shape.gpu_milli:
                raise ValueError(f"GPU with {row[j]} milli free cannot take {shape.gpu_milli}")
            row[j] -= shape.gpu_milli
        else:
            whole = np.flatnonzero(row == MILLI)[: shape.gpus]
            if len(whole) < shape.gpus:
                raise ValueError(f"node {node} has {len(whole)} whole GPUs free, not {shape.gpus}")
            row[whole] = 0
        row[:] = np.sort(row)[::-1]


@dataclass(frozen=True)
class Candidates:
    """Where a request could go on the fitting nodes: one row per distinct (node, GPU free value) choice.

    Attributes:
        node: the node of each candidate.
        gpu_value: free milli of the GPU a sharing request would take there (1000 for whole GPUs, 0 for none).
        growth: fragmentation after minus before, in milli-GPU (lower is better): the paper's measure.
        stranding: GPU stranded for lack of CPU after minus before, in milli-GPU (`Fragmentation.stranded`).
        plan: for a sharing request, `PackingPlan.kind` of the GPU it takes (planned partner, whole, off plan); else 0.
    """

    node: np.ndarray
    gpu_value: np.ndarray
    growth: np.ndarray
    stranding: np.ndarray
    plan: np.ndarray

    def score(self, state: NodeState, shape: Shape) -> np.ndarray:
        """rayfleet's `rank` of each candidate of ``shape`` on ``state``."""
        left = leftover(state, self.node, shape, FULL_CPU_WEIGHT)
        return rank(self.growth + STRAND_WEIGHT * self.stranding, left, self.plan)


@dataclass(frozen=True)
class Choice:
    """The best candidate: the node, the free value of the GPU it takes, and the fragmentation growth (milli-GPU)."""

    node: int
    gpu_value: int
    growth: float


@dataclass
class Fragmentation:
    """The fragmentation of nodes against a request mix, and its growth for a candidate placement.

    ``cache`` holds per-node sufficient statistics for the state it was last built on; the replay keeps it current
    with `refresh` after each placement, so a decision costs O(candidates x shapes), not a full recount.
    """

    mix: RequestMix
    models: tuple[str, ...]
    cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        gpu = [(s, w) for s, w in zip(self.mix.shapes, self.mix.weights, strict=True) if s.gpus]
        self._total_weight = float(sum(self.mix.weights))
        self._thresholds = np.array(sorted({s.gpu_milli for s, _ in gpu} or {MILLI}), dtype=np.int64)
        k = {t: i for i, t in enumerate(self._thresholds.tolist())}
        self._k = np.array([k[s.gpu_milli] for s, _ in gpu], dtype=np.int64)
        self._need = np.array([s.gpus for s, _ in gpu], dtype=np.int64)
        self._cpu = np.array([s.cpu_milli for s, _ in gpu], dtype=np.int64)
        self._mem = np.array([s.memory for s, _ in gpu], dtype=np.int64)
        self._uses_memory = bool(self._mem.any())
        self._w = np.array([w for _, w in gpu], dtype=float)
        gpu_milli = float(sum(w * s.total_gpu_milli for s, w in gpu))
        # milli-CPU the typical GPU request brings per milli-GPU; 0 when the mix has no GPU request
        self.cpu_per_gpu = float(sum(w * s.cpu_milli for s, w in gpu)) / gpu_milli if gpu_milli else 0.0
        # access[m, s]: a node of model m may hold shape s; the last row is for nodes without a model
        access = np.ones((len(self.models) + 1, len(gpu)), dtype=bool)
        for j, (s, _) in enumerate(gpu):
            if s.accelerators:
                access[:, j] = [m in s.accelerators for m in self.models] + [False]
        self._access = access
        frequency: Counter[int] = Counter()
        for s, w in gpu:
            if s.sharing:
                frequency[s.gpu_milli] += w
        try:
            self.plan = PackingPlan.of(frequency)
        except RuntimeError as e:  # the LP failed: place without a plan rather than not at all
            log.warning("no packing plan for the request mix: %s", e)
            self.plan = None

    # ----- the measure ----------------------------------------------------------------------------------------------

    def stats(self, gpus: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per node and threshold t: GPUs with >= t free, idle milli on GPUs with < t free; and all idle milli."""
        t = self._thresholds[None, None, :]
        g = gpus[:, :, None]
        count = (g >= t).sum(axis=1)
        below = np.where(g < t, g, 0).sum(axis=1)
        return count, below, gpus.sum(axis=1)

    def value(
        self,
        count: np.ndarray,
        below: np.ndarray,
        idle: np.ndarray,
        cpu: np.ndarray,
        model: np.ndarray,
        memory: np.ndarray | None = None,
    ) -> np.ndarray:
        """Fragmentation (milli-GPU) from the statistics: idle GPU that the mix's shapes cannot use."""
        fit = self._access[model] & (count[:, self._k] >= self._need) & (cpu[:, None] >= self._cpu)
        if self._uses_memory and memory is not None:
            fit &= memory[:, None] >= self._mem
        usable = (idle[:, None] - below[:, self._k]) * fit
        return idle * self._total_weight - usable @ self._w

    def stranded(self, idle: np.ndarray, cpu: np.ndarray) -> np.ndarray:
        """Idle milli-GPU beyond what ``cpu`` free milli-CPUs can feed at the mix's CPUs per GPU."""
        if not self.cpu_per_gpu:
            return np.zeros(np.shape(idle))
        return np.maximum(0.0, idle - np.maximum(cpu, 0) / self.cpu_per_gpu)

    def of(self, state: NodeState) -> np.ndarray:
        """The fragmentation of every node of ``state``."""
        count, below, idle = self.stats(state.gpus)
        return self.value(count, below, idle, state.cpu, state.model, state.memory)

    def prepare(self, state: NodeState) -> None:
        """Build the per-node cache for ``state``."""
        count, below, idle = self.stats(state.gpus)
        self.cache = {"count": count, "below": below, "idle": idle}
        self.cache["frag"] = self.value(count, below, idle, state.cpu, state.model, state.memory)

    def refresh(self, state: NodeState, node: int) -> None:
        """Update the cache after ``node`` of ``state`` changed."""
        one = slice(node, node + 1)
        count, below, idle = self.stats(state.gpus[one])
        self.cache["count"][node], self.cache["below"][node], self.cache["idle"][node] = count[0], below[0], idle[0]
        frag = self.value(count, below, idle, state.cpu[one], state.model[one], state.memory[one])
        self.cache["frag"][node] = frag[0]

    # ----- candidates -----------------------------------------------------------------------------------------------

    def candidates(self, state: NodeState, shape: Shape, rows: np.ndarray) -> Candidates:
        """Every distinct way to place ``shape`` on the fitting ``rows``, with the fragmentation growth of each.

        Uses the cache when it is built (`prepare`), else computes the statistics of ``rows`` on the fly.
        """
        if self.cache:
            count, below, idle, frag = (self.cache[k][rows] for k in ("count", "below", "idle", "frag"))
        else:
            count, below, idle = self.stats(state.gpus[rows])
            frag = self.value(count, below, idle, state.cpu[rows], state.model[rows], state.memory[rows])
        if shape.sharing:
            g = state.gpus[rows]
            distinct = np.ones_like(g, dtype=bool)
            distinct[:, 1:] = g[:, 1:] != g[:, :-1]  # rows are sorted: equal GPUs give equal outcomes
            pick, slot = np.nonzero((g >= shape.gpu_milli) & distinct)
            before = g[pick, slot]
            after = before - shape.gpu_milli
            times = 1
        else:
            pick = np.arange(len(rows))
            before = np.full(len(rows), MILLI if shape.gpus else 0, dtype=np.int64)
            after = np.zeros(len(rows), dtype=np.int64)
            times = shape.gpus
        t = self._thresholds[None, :]
        b, a = before[:, None], after[:, None]
        count_after = count[pick] - times * (b >= t) + times * (a >= t)
        below_after = below[pick] - times * np.where(b < t, b, 0) + times * np.where(a < t, a, 0)
        idle_after = idle[pick] - times * (before - after)
        cpu_after = state.cpu[rows][pick] - shape.cpu_milli
        memory_after = state.memory[rows][pick] - shape.memory
        model = state.model[rows][pick]
        grown = self.value(count_after, below_after, idle_after, cpu_after, model, memory_after) - frag[pick]
        cpu_before = state.cpu[rows][pick]
        stranding = self.stranded(idle_after, cpu_after) - self.stranded(idle[pick], cpu_before)
        if not shape.sharing or self.plan is None:
            plan = np.zeros(len(pick))
        elif state.per_gpu:
            plan = self.plan.kind(before, shape.gpu_milli)
        else:  # the plan needs each GPU's share; neutral, so that clusters scored with and without it compare fairly
            plan = np.full(len(pick), WHOLE)
        return Candidates(rows[pick], before, grown, stranding, plan)

    def best(self, state: NodeState, shape: Shape, rows: np.ndarray) -> Choice | None:
        """The best candidate by `Candidates.score`, then the lowest node index."""
        if not len(rows):
            return None
        c = self.candidates(state, shape, rows)
        score = c.score(state, shape)
        i = int(np.lexsort((c.node, score))[0])
        return Choice(int(c.node[i]), int(c.gpu_value[i]), float(c.growth[i]))


def fgd_score(growth: np.ndarray, levels: int = 100) -> np.ndarray:
    """The FGD paper's node score: ``int(100 x sigmoid(-growth in GPUs))``, 0..100, higher is better (``levels``
    replaces the 100: `rank` cuts coarser).

    The integer cut matters: growths within a few hundredths of a GPU tie, and the tie-break then packs (the paper's
    simulator breaks ties in one fixed node order; rayfleet breaks them by best fit).
    """
    return np.floor(levels / (1.0 + np.exp(np.clip(growth / MILLI, -700.0, 700.0))) + 1e-9)


def rank(growth: np.ndarray, left: np.ndarray, plan: np.ndarray | None = None) -> np.ndarray:
    """One float per candidate, lower is better (below `UNRANKED`), three keys in one number:

    1. the packing plan (`PackingPlan.kind`: a planned partner, then a whole GPU, then off the plan);
    2. the fragmentation growth, cut coarse: ``RANK_LEVELS - int(RANK_LEVELS x sigmoid(-growth in GPUs))``;
    3. the leftover (below 1): fuller nodes first.

    rayfleet passes ``growth + STRAND_WEIGHT x stranding`` (`Candidates.score`); the paper's FGD is the growth alone.
    """
    primary = RANK_LEVELS - fgd_score(growth, RANK_LEVELS)
    first = 0 if plan is None else np.asarray(plan) * (RANK_LEVELS + 1)
    return first + primary + np.clip(left, 0.0, 0.999)


UNRANKED = (OFF_PLAN + 1) * (RANK_LEVELS + 1)  # above every `rank`


def leftover(state: NodeState, nodes: np.ndarray, shape: Shape, cpu_weight: float = 0.5) -> np.ndarray:
    """The paper's best-fit measure (lower is fuller): half the CPU and half the GPU left, over 128 CPUs and 8 GPUs.

    ``cpu_weight`` changes the halves (rayfleet's `rank` uses `FULL_CPU_WEIGHT`)."""
    cpu_left = (state.cpu[nodes] - shape.cpu_milli) / (128 * MILLI)
    gpu_left = (state.gpus[nodes].sum(axis=1) - shape.total_gpu_milli) / (8 * MILLI)
    return cpu_weight * cpu_left + (1.0 - cpu_weight) * gpu_left


def best_fit_gpu(state: NodeState, node: int, shape: Shape) -> int:
    """The GPU a request takes on ``node`` by best fit: the least free GPU that holds a sharing request."""
    if not shape.gpus:
        return 0
    if not shape.sharing:
        return MILLI
    row = state.gpus[node]
    return int(row[row >= shape.gpu_milli].min())


# ----- the live policy: policy="fragmentation" ----------------------------------------------------------------------


def mix_from_config(entries: Iterable[Mapping[str, object] | object]) -> RequestMix | None:
    """A mix from the fleet's ``fragmentation_mix`` entries (cpu, gpu, accelerators, weight); ``None`` when empty."""
    weighted: dict[Shape, float] = {}
    for entry in entries:
        get = entry.get if isinstance(entry, Mapping) else lambda k, d=None, e=entry: getattr(e, k, d)
        resources = Resources(cpu=get("cpu", 0.0), gpu=get("gpu", 0.0), accelerators=get("accelerators", None) or ())
        shape = Shape.of(resources)
        weighted[shape] = weighted.get(shape, 0.0) + float(get("weight", 1.0))  # type: ignore[arg-type]
    return RequestMix.of(weighted) if weighted else None


def mix_from_requests(requests: Iterable[Resources], coverage: float = COVERAGE) -> RequestMix | None:
    """The typical mix of recent requests (e.g. ``[job.resources for job in ledger.jobs(limit=1000)]``)."""
    shapes = [Shape.of(r) for r in requests if not r.is_empty]
    return RequestMix.typical(shapes, coverage) if shapes else None


def learn_mix(configured: Iterable[Mapping[str, object] | object], recent: Iterable[Resources]) -> RequestMix | None:
    """The mix ``policy="fragmentation"`` measures against: the fleet's ``fragmentation_mix`` if set, else the typical
    mix of ``recent`` requests (the dispatcher's ledger), else ``None`` (each request measured against its own shape).

    Pure: the caller keeps the mix and passes it to `rayfleet.placement.place` (``mix=``).

    Example:
        >>> learn_mix([{"cpu": 4, "gpu": 1}], []).shapes
        (Shape(cpu_milli=4000, gpu_milli=1000, gpus=1, memory=0, accelerators=frozenset()),)
        >>> learn_mix([], []) is None
        True
    """
    return mix_from_config(configured) or mix_from_requests(recent)


def live_growth(
    free: np.ndarray,
    total: np.ndarray,
    vec: np.ndarray,
    keys: Sequence[str],
    request: Resources,
    *,
    mix: RequestMix | None = None,
) -> np.ndarray:
    """Node score for ``policy="fragmentation"``, per row (lower is better): `rank` of the fragmentation growth.

    The node-score signature of `rayfleet.placement.policies`, plus the request ``mix`` to measure against (`learn_mix`;
    ``None``: the request's own shape, the fragmentation that would stop the next one like it). `place` takes the
    best node per cluster and ranks clusters by it, so a cluster is scored by the growth at its best node. A CPU-only
    request on a GPU node grows fragmentation when it leaves too few CPUs for the mix's GPU shapes, so it goes
    elsewhere.
    """
    state = NodeState.from_rows(free, total, keys)
    shape = Shape.of(request)
    asked = np.asarray(vec, dtype=float).reshape(-1, len(keys)).max(axis=0)  # a gang scores per-row loads
    if any(k.startswith(ACCELERATOR_PREFIX) and v > 0 for k, v in zip(keys, asked, strict=True)):
        # place() already chose one model for this vector and kept only its rows: measure without the constraint
        shape = Shape(shape.cpu_milli, shape.gpu_milli, shape.gpus, shape.memory, frozenset())
    frag = _measure(mix or RequestMix.of({shape: 1.0}), state.models)
    c = frag.candidates(state, shape, np.arange(state.size))
    # a row place() found fitting with no candidate (the packing assumption was wrong): rank it after all others
    out = np.full(state.size, float(UNRANKED))
    if len(c.node):
        np.minimum.at(out, c.node, c.score(state, shape))
    return out


@functools.lru_cache(maxsize=64)
def _measure(mix: RequestMix, models: tuple[str, ...]) -> Fragmentation:
    """A measure per mix and cluster models, built once: the dispatcher scores many requests against the same mix."""
    return Fragmentation(mix, models)
