"""Decision time against node count: the replay's node scoring, and the dispatcher's `place` over a snapshot.

The trace's 1213 nodes are first filled by replaying the default trace with ``fragmentation`` up to 70% of their
GPUs. For 600, 1213, 5000 and 10000 nodes that filled state is cut or replicated (node i is node i mod 1213), and the
next 1000 pods of the order are timed, each decision alone (wall and CPU time) and not placed, for:

- ``replay/<policy>``: `Replayer.decide` (per-GPU state in numpy, the fragmentation cache built);
- ``place/<policy>``: `rayfleet.placement.place` on a `ClusterSnapshot` of that state, the dispatcher's whole path
  (for ``fragmentation``: a `NodeState` from the snapshot's rows, then the growth of each fitting node).

Run: .venv/bin/python -m benchmarks.placement_quality.speed   (writes benchmarks/results/placement_quality_speed.json)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks._common import command, emit, loadavg, machine, source, stats_ms, utc_now
from benchmarks.placement_quality.replay import Replayer
from benchmarks.placement_quality.trace import Nodes, arrival_order, load_nodes, load_pods
from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import Cluster
from rayfleet.placement import PlacementRequest, place
from rayfleet.placement.fragmentation import MILLI, NodeState, RequestMix, Shape
from rayfleet.resources import Resources

FILL = 0.7
TIMED = 1000
TARGETS_MS = {"replay/bestfit": 0.2, "replay/fragmentation": 1.0}


def snapshot_of(state: NodeState, nodes: Nodes) -> ClusterSnapshot:
    """``state`` as Ray would report it: per-node totals (from ``nodes``) and usage, GPU summed over devices."""
    rows = []
    for i in range(state.size):
        total = {"CPU": nodes.cpu_milli[i] / MILLI, "GPU": float(nodes.gpus[i]), "memory": float(nodes.memory[i])}
        free = {"CPU": state.cpu[i] / MILLI, "GPU": state.gpus[i].sum() / MILLI, "memory": float(state.memory[i])}
        used = {k: total[k] - free[k] for k in free}
        total[f"accelerator_type:{nodes.models[i]}"] = 1.0
        rows.append((f"node-{i:05d}", total, used))
    return ClusterSnapshot.from_nodes("trace", rows)


def filled(seed: int) -> tuple[Replayer, list[Shape], RequestMix]:
    """The 1213 trace nodes filled to `FILL`, the next `TIMED` requests, and the mix."""
    nodes = load_nodes()
    pods = load_pods("default")
    mix = RequestMix.typical([pods.shapes[i] for i in pods.shape_of])
    order = arrival_order(pods, nodes.gpu_milli, seed)
    filler = Replayer(nodes.state(), pods.shapes, "fragmentation", mix, seed)
    gpu = np.array([s.total_gpu_milli for s in pods.shapes])[pods.shape_of[order]]
    cut = int(np.searchsorted(np.cumsum(gpu), FILL * nodes.gpu_milli))
    filler.run(order[:cut], pods.shape_of)
    return filler, [pods.shapes[pods.shape_of[p]] for p in order[cut : cut + TIMED]], mix


def replicated(state: NodeState, count: int) -> NodeState:
    idx = np.arange(count) % state.size
    return NodeState(
        state.cpu[idx].copy(), state.memory[idx].copy(), state.gpus[idx].copy(), state.model[idx].copy(), state.models
    )


def measure(base: Replayer, timed: list[Shape], mix: RequestMix, node_count: int, seed: int) -> dict[str, Any]:
    state = replicated(base.state, node_count)
    out: dict[str, Any] = {"nodes": node_count, "timed_decisions": len(timed)}
    for policy in ("bestfit", "fragmentation"):
        replayer = Replayer(state, base.shapes, policy, mix, seed)
        wall, cpu = [], []
        for shape in timed:
            t0, c0 = time.perf_counter(), time.thread_time()
            replayer.decide(shape)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[f"replay/{policy}"] = {"wall_ms": stats_ms(wall), "cpu_ms": stats_ms(cpu)}
    snap = snapshot_of(state, load_nodes().replicate(node_count))
    clusters = [Cluster(name="trace", address="http://127.0.0.1:8265")]
    for policy in ("binpack", "fragmentation"):
        wall, cpu = [], []
        for shape in timed:
            resources = Resources(cpu=shape.cpu_milli / MILLI, gpu=shape.total_gpu_milli / MILLI, memory=shape.memory)
            request = PlacementRequest(resources, policy=policy)
            t0, c0 = time.perf_counter(), time.thread_time()
            place(request, clusters, {"trace": snap}, mix=mix)
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[f"place/{policy}"] = {"wall_ms": stats_ms(wall), "cpu_ms": stats_ms(cpu)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="600,1213,5000,10000")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--out", default="placement_quality_speed")
    args = parser.parse_args()
    load_before = loadavg()
    base, timed, mix = filled(args.seed)
    rows = [measure(base, timed, mix, int(n), args.seed) for n in args.nodes.split(",")]
    at_1213 = next((r for r in rows if r["nodes"] == 1213), None)
    targets = {}
    if at_1213:
        for key, limit in TARGETS_MS.items():
            p50 = at_1213[key]["cpu_ms"]["p50"]
            targets[key] = {"p50_cpu_ms": p50, "target_ms": limit, "met": p50 <= limit}
    emit(
        args.out,
        {
            "command": command(),
            "date": utc_now(),
            "machine": machine(),
            "source": source(),
            "loadavg_before": load_before,
            "params": {"fill": FILL, "timed": TIMED, "seed": args.seed, "trace": "default"},
            "targets_at_1213_nodes": targets,
            "by_nodes": rows,
            "loadavg_after": loadavg(),
        },
    )


if __name__ == "__main__":
    main()
