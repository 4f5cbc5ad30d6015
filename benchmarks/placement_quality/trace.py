"""The Alibaba GPU trace (cluster-trace-gpu-v2023) as the FGD paper replays it: nodes, pods, and per-seed orders.

Protocol (the data's README): pods sorted by name then shuffled with the seed; then copies sampled uniformly with
replacement from the pod list are appended until the total GPU request exceeds 130% of the cluster's GPUs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayfleet.placement.fragmentation import MILLI, NodeState, Shape

DATA = Path("/work/shared/data/alibaba-gpu-v2023")
TRACES = ("default", "gpushare100", "multigpu50")
INFLATION = 1.3
MIB = 1024**2


@dataclass(frozen=True)
class Nodes:
    """The trace's nodes as columns."""

    names: tuple[str, ...]
    cpu_milli: np.ndarray
    memory: np.ndarray  # bytes
    gpus: np.ndarray
    models: tuple[str, ...]  # per node

    @property
    def gpu_milli(self) -> int:
        return int(self.gpus.sum()) * MILLI

    def state(self, rows: np.ndarray | None = None) -> NodeState:
        rows = np.arange(len(self.names)) if rows is None else rows
        return NodeState.empty(
            self.cpu_milli[rows].tolist(),
            self.memory[rows].tolist(),
            self.gpus[rows].tolist(),
            [self.models[i] for i in rows],
        )

    def replicate(self, count: int) -> Nodes:
        """``count`` nodes: the first ``count`` when fewer, else the list repeated (for scaling measurements)."""
        idx = np.arange(count) % len(self.names)
        return Nodes(
            tuple(f"{self.names[i]}-{k // len(self.names)}" for k, i in enumerate(idx)),
            self.cpu_milli[idx],
            self.memory[idx],
            self.gpus[idx],
            tuple(self.models[i] for i in idx),
        )


@dataclass(frozen=True)
class Pods:
    """The pods of one trace file, sorted by name, as indices into a table of distinct shapes."""

    names: tuple[str, ...]
    shape_of: np.ndarray  # per pod: index into shapes
    shapes: tuple[Shape, ...]

    @property
    def gpu_milli(self) -> np.ndarray:
        per_shape = np.array([s.total_gpu_milli for s in self.shapes], dtype=np.int64)
        return per_shape[self.shape_of]


def load_nodes(path: Path = DATA / "openb_node_list_gpu_node.csv") -> Nodes:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return Nodes(
        tuple(r["sn"] for r in rows),
        np.array([int(r["cpu_milli"]) for r in rows], dtype=np.int64),
        np.array([int(r["memory_mib"]) * MIB for r in rows], dtype=np.int64),
        np.array([int(r["gpu"]) for r in rows], dtype=np.int64),
        tuple(r["model"] for r in rows),
    )


def parse_pod(row: dict[str, str]) -> Shape:
    """One CSV row as a `Shape`: ``gpu_milli`` is per GPU, ``gpu_spec`` ("A|B") the allowed models."""
    gpus = int(row["num_gpu"])
    milli = int(row["gpu_milli"]) if gpus else 0
    spec = (row.get("gpu_spec") or "").strip()
    models = frozenset(m for m in spec.split("|") if m)
    return Shape(int(row["cpu_milli"]), milli, gpus, int(row["memory_mib"]) * MIB, models)


def load_pods(trace: str, directory: Path = DATA) -> Pods:
    with (directory / f"openb_pod_list_{trace}.csv").open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["name"])
    table: dict[Shape, int] = {}
    shape_of = np.array([table.setdefault(parse_pod(r), len(table)) for r in rows], dtype=np.int64)
    return Pods(tuple(r["name"] for r in rows), shape_of, tuple(table))


def arrival_order(pods: Pods, capacity_milli: int, seed: int, inflation: float = INFLATION) -> np.ndarray:
    """Pod indices in arrival order: shuffled with ``seed``, then sampled copies until GPU requests > inflation x."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pods.names))
    milli = pods.gpu_milli
    total = int(milli.sum())
    target = inflation * capacity_milli
    extra: list[int] = []
    while total <= target:
        i = int(rng.integers(len(pods.names)))
        extra.append(i)
        total += int(milli[i])
    return np.concatenate([order, np.array(extra, dtype=np.int64)])
