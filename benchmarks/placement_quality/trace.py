"""The Alibaba GPU trace (cluster-trace-gpu-v2023) as the FGD paper replays it: nodes, pods, and per-seed orders.

Protocol (the data's README): pods sorted by name then shuffled with the seed; then copies sampled uniformly with
replacement from the pod list are appended until the total GPU request exceeds 130% of the cluster's GPUs.

The data is read from ``$RAYFLEET_SHARED_DATA/alibaba-gpu-v2023/``; without the variable, from
``shared/data/alibaba-gpu-v2023/`` beside the repository (``<repo>/../shared/data``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayfleet.placement.fragmentation import MILLI, NodeState, Shape

SHARED_DATA_ENV = "RAYFLEET_SHARED_DATA"  # the directory that holds alibaba-gpu-v2023/
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # beside the repository
TRACE_DIR = "alibaba-gpu-v2023"
NODES_FILE = "openb_node_list_gpu_node.csv"
PUBLISHED_FILE = "fgd_published_unallocated_gpu_pct.csv"  # the FGD paper's means, per trace, policy and arrived %
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


def data_dir() -> Path:
    """The trace's directory: ``$RAYFLEET_SHARED_DATA/alibaba-gpu-v2023``, else `SHARED_DATA` ``/alibaba-gpu-v2023``.

    Raises:
        FileNotFoundError: the directory is absent; the message says where it looked and how to point elsewhere.
    """
    configured = os.environ.get(SHARED_DATA_ENV)
    path = (Path(configured) if configured else SHARED_DATA) / TRACE_DIR
    if not path.is_dir():
        where = f"${SHARED_DATA_ENV}={configured}" if configured else f"the default, {SHARED_DATA}"
        raise FileNotFoundError(
            f"the Alibaba GPU trace (cluster-trace-gpu-v2023) is not at {path} (looked in {where}). "
            f"Put the trace's directory {TRACE_DIR}/ ({NODES_FILE}, openb_pod_list_<trace>.csv, {PUBLISHED_FILE}) "
            f"there, or set {SHARED_DATA_ENV} to the directory that holds {TRACE_DIR}/."
        )
    return path


def load_nodes(path: Path | None = None) -> Nodes:
    """The trace's nodes, from ``path`` (default: `NODES_FILE` in `data_dir`)."""
    with (path or data_dir() / NODES_FILE).open() as f:
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


def load_pods(trace: str, directory: Path | None = None) -> Pods:
    """The pods of one trace file, in ``directory`` (default: `data_dir`)."""
    with ((directory or data_dir()) / f"openb_pod_list_{trace}.csv").open() as f:
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
