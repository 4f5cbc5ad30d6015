"""Placement decision time: `rayfleet.placement.place` against fleet size, over synthetic snapshots.

Builds snapshots with `ClusterSnapshot.from_nodes` for 1, 10 and 100 clusters of 10, 100 and 1000 nodes each
(realistic node shapes, random usage, fixed seed), then times `place` for three request kinds (CPU-only, 1 GPU,
4 GPU of A100|H100) with the binpack policy, and with spread and cost at 10 clusters x 1000 nodes. A "busy" cell adds
pending demand and this dispatcher's holds at 10 x 1000, which `effective_free` walks in Python; a last measurement
shows how a decision grows with one cluster's queued demand (1 cluster x 1000 nodes, 0 to 1000 queued 1-CPU tasks).

Run: .venv/bin/python benchmarks/placement_time.py   (prints JSON; writes benchmarks/results/placement_time.json)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import random
import sys
import time
from collections import Counter
from typing import Any

from _common import command, emit, loadavg, machine, profile_rows, source, stats_ms, utc_now

from rayfleet import Cluster, Resources
from rayfleet.capacity import ClusterSnapshot
from rayfleet.placement import Hold, PlacementRequest, place

GIB = 1024**3
CLUSTER_COUNTS = (1, 10, 100)
NODE_COUNTS = (10, 100, 1000)
TARGET_CELL = (10, 1000)
TARGET_P50_MS = 5.0
MODELS = ("A100", "H100", "L4", "V100")
CPU_SHAPES = (8, 16, 32, 48, 64, 96)
GPU_SHAPES = (0, 2, 4, 8)
GPU_WEIGHTS = (0.5, 0.15, 0.2, 0.15)

REQUESTS = {
    "cpu": Resources(cpu=4, memory="8GiB"),
    "gpu1": Resources(cpu=8, gpu=1, memory="32GiB"),
    "gpu4_a100_h100": Resources(cpu=16, gpu=4, memory="64GiB", accelerators={"A100", "H100"}),
}


def make_node(rng: random.Random, cluster: str, i: int, models: tuple[str, ...]) -> tuple[str, dict, dict]:
    """One node as Ray reports it: CPU, GPU, memory, accelerator_type, object store and node:<ip> (both ignored)."""
    cpus = rng.choice(CPU_SHAPES)
    gpus = rng.choices(GPU_SHAPES, GPU_WEIGHTS)[0] if models else 0
    memory = float(cpus * rng.choice((4, 8)) * GIB)
    total: dict[str, float] = {"CPU": cpus, "memory": memory, "object_store_memory": memory * 0.3}
    total[f"node:10.{i // 65536}.{i // 256 % 256}.{i % 256}"] = 1.0
    if gpus:
        total["GPU"] = gpus
        total[f"accelerator_type:{rng.choice(models)}"] = 1.0
    # usage: a quarter of the nodes full, the rest anywhere between idle and full
    frac = 1.0 if rng.random() < 0.25 else rng.random()
    used: dict[str, float] = {"CPU": float(int(cpus * frac)), "memory": memory * frac}
    if gpus:
        gpu_used = float(int(gpus * (1.0 if frac == 1.0 else rng.random())))
        used["GPU"] = gpu_used
        used[next(k for k in total if k.startswith("accelerator_type:"))] = 0.001 * gpu_used
    return f"{cluster}-node-{i:05d}", total, used


def make_fleet(
    rng: random.Random, n_clusters: int, n_nodes: int
) -> tuple[list[Cluster], dict[str, ClusterSnapshot], float]:
    """Clusters (with prices for the cost policy) and their snapshots; also the seconds `from_nodes` took."""
    clusters, snapshots, build_s = [], {}, 0.0
    for c in range(n_clusters):
        name = f"c{c:03d}"
        # every cluster has CPUs; most have GPUs of one to three models
        models = tuple(rng.sample(MODELS, rng.randint(1, 3))) if rng.random() < 0.8 or c == 0 else ()
        clusters.append(
            Cluster(
                name=name,
                address=f"http://127.0.0.1:{20000 + c}",
                cost_per_cpu_hour=round(rng.uniform(0.02, 0.06), 4),
                cost_per_gpu_hour=round(rng.uniform(1.0, 4.0), 3),
            )
        )
        nodes = [make_node(rng, name, i, models) for i in range(n_nodes)]
        t0 = time.perf_counter()
        snapshots[name] = ClusterSnapshot.from_nodes(name, nodes)
        build_s += time.perf_counter() - t0
    return clusters, snapshots, build_s


def add_pending_and_holds(
    rng: random.Random, snapshots: dict[str, ClusterSnapshot], holds_per_cluster: int
) -> tuple[dict[str, ClusterSnapshot], list[Hold]]:
    """The busy variant: a few pending shapes per cluster (Ray's resourceDemand) and recent holds on nodes."""
    from dataclasses import replace

    out, holds = {}, []
    now = time.time()
    for name, snap in snapshots.items():
        pending = [({"CPU": 4.0}, 10), ({"CPU": 8.0, "GPU": 1.0}, 3), ({"CPU": 64.0, "GPU": 8.0}, 2)]
        out[name] = replace(snap, pending=tuple((dict(s), n) for s, n in pending))
        for _ in range(holds_per_cluster):
            node = rng.choice(snap.node_ids)
            holds.append(Hold(name, node, {"CPU": 2.0, "memory": 4.0 * GIB}, now))
    return out, holds


def time_cell(
    clusters: list[Cluster],
    snapshots: dict[str, ClusterSnapshot],
    policy: str,
    decisions: int,
    holds: list[Hold] | None = None,
    warmup: int = 9,
) -> dict[str, Any]:
    kinds = list(REQUESTS)
    requests = {k: PlacementRequest(REQUESTS[k], policy=policy) for k in kinds}
    gc.collect()  # garbage from building the snapshots must not be collected inside a timed decision
    for i in range(warmup):
        place(requests[kinds[i % len(kinds)]], clusters, snapshots, holds or ())
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    placed: Counter[str] = Counter()
    for i in range(decisions):
        kind = kinds[i % len(kinds)]
        t0 = time.perf_counter()
        decision = place(requests[kind], clusters, snapshots, holds or ())
        samples[kind].append(time.perf_counter() - t0)
        placed[kind] += decision.chosen is not None
    every = [s for k in kinds for s in samples[k]]
    return {
        "policy": policy,
        "ms": stats_ms(every),
        "by_request_ms": {k: stats_ms(samples[k]) for k in kinds},
        "placed_fraction": {k: round(placed[k] / len(samples[k]), 3) for k in kinds},
    }


def profile_cell(
    clusters: list[Cluster],
    snapshots: dict[str, ClusterSnapshot],
    policy: str,
    decisions: int,
    holds: list[Hold] | None = None,
    top: int = 14,
) -> list[dict[str, Any]]:
    """cProfile of ``decisions`` decisions: the functions with the most cumulative time, per decision."""
    kinds = list(REQUESTS)
    requests = [PlacementRequest(REQUESTS[kinds[i % len(kinds)]], policy=policy) for i in range(decisions)]
    profiler = cProfile.Profile()
    profiler.enable()
    for request in requests:
        place(request, clusters, snapshots, holds or ())
    profiler.disable()
    return profile_rows(profiler, decisions, "decision", top)


def pending_scaling(seed: int, counts: tuple[int, ...] = (0, 10, 100, 1000), decisions: int = 30) -> list[dict]:
    """One cluster of 1000 nodes whose report shows ``count`` queued 1-CPU tasks: `effective_free` walks each unit."""
    from dataclasses import replace

    clusters, snapshots, _ = make_fleet(random.Random(f"{seed}-pending"), 1, 1000)
    snap = snapshots[clusters[0].name]
    out = []
    for count in counts:
        busy = {snap.cluster: replace(snap, pending=(({"CPU": 1.0}, count),))}
        result = time_cell(clusters, busy, "binpack", decisions, warmup=3)
        out.append({"pending_units": count, "decisions": decisions, "ms": result["ms"]})
        print(f"  1 x 1000 pending {count:>5}  p50 {result['ms']['p50']:8.3f} ms", file=sys.stderr)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=300, help="timed decisions per cell (>= 200)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--skip-largest", action="store_true", help="skip 100 clusters x 1000 nodes (100k nodes) to save time"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    load_at_start = loadavg()

    cells: list[dict[str, Any]] = []
    target: dict[str, Any] = {}
    profile: list[dict[str, Any]] = []
    profile_busy: list[dict[str, Any]] = []
    for n_clusters in CLUSTER_COUNTS:
        for n_nodes in NODE_COUNTS:
            if args.skip_largest and (n_clusters, n_nodes) == (100, 1000):
                cells.append({"clusters": n_clusters, "nodes_per_cluster": n_nodes, "skipped": "--skip-largest"})
                continue
            rng = random.Random(f"{args.seed}-{n_clusters}-{n_nodes}")
            clusters, snapshots, build_s = make_fleet(rng, n_clusters, n_nodes)
            policies = ("binpack", "spread", "cost") if (n_clusters, n_nodes) == TARGET_CELL else ("binpack",)
            for policy in policies:
                result = time_cell(clusters, snapshots, policy, args.decisions)
                cells.append(
                    {
                        "clusters": n_clusters,
                        "nodes_per_cluster": n_nodes,
                        "variant": "idle snapshots (no pending demand, no holds)",
                        "build_from_nodes_s": round(build_s, 3),
                        **result,
                    }
                )
                print(
                    f"{n_clusters:>3} x {n_nodes:>4} {policy:<8} p50 {result['ms']['p50']:8.3f} ms  "
                    f"p90 {result['ms']['p90']:8.3f}  p99 {result['ms']['p99']:8.3f}",
                    file=sys.stderr,
                )
            if (n_clusters, n_nodes) == TARGET_CELL:
                here = [c for c in cells if (c["clusters"], c["nodes_per_cluster"]) == TARGET_CELL]
                binpack = next(c for c in here if c["policy"] == "binpack")
                target = {
                    "cell": "10 clusters x 1000 nodes, binpack, all request kinds",
                    "p50_ms_target": TARGET_P50_MS,
                    "p50_ms": binpack["ms"]["p50"],
                    "met": binpack["ms"]["p50"] <= TARGET_P50_MS,
                    "p50_ms_by_policy": {c["policy"]: c["ms"]["p50"] for c in here},
                }
                profile = profile_cell(clusters, snapshots, "binpack", 150)
                busy_snaps, holds = add_pending_and_holds(rng, snapshots, holds_per_cluster=20)
                busy = time_cell(clusters, busy_snaps, "binpack", args.decisions, holds)
                cells.append(
                    {
                        "clusters": n_clusters,
                        "nodes_per_cluster": n_nodes,
                        "variant": "busy: 3 pending shapes (15 units) and 20 holds per cluster",
                        "build_from_nodes_s": round(build_s, 3),
                        **busy,
                    }
                )
                profile_busy = profile_cell(clusters, busy_snaps, "binpack", 60, holds)
                print(f"{n_clusters:>3} x {n_nodes:>4} busy     p50 {busy['ms']['p50']:8.3f} ms", file=sys.stderr)

    scaling = pending_scaling(args.seed)

    document = {
        "benchmark": "placement_time",
        "command": command(),
        "date_utc": utc_now(),
        "machine": machine(),
        "source": source(),
        "parameters": {
            "decisions_per_cell": args.decisions,
            "warmup_decisions_per_cell": 9,
            "seed": args.seed,
            "cluster_counts": list(CLUSTER_COUNTS),
            "nodes_per_cluster": list(NODE_COUNTS),
            "requests": {k: r.describe() for k, r in REQUESTS.items()},
            "request_rotation": "the three kinds in turn, so each kind gets a third of the decisions",
            "node_shapes": {
                "cpus": list(CPU_SHAPES),
                "gpus": dict(zip(map(str, GPU_SHAPES), GPU_WEIGHTS, strict=True)),
                "memory": "4 or 8 GiB per CPU",
                "gpu_models": "each cluster has 1-3 of A100/H100/L4/V100 (20% of clusters have no GPU nodes)",
                "usage": "25% of nodes full; the rest uniform between idle and full",
            },
            "pending_scaling": "1 cluster x 1000 nodes, pending ({'CPU': 1}, n) for n in 0/10/100/1000, 30 decisions",
            "snapshot_builder": "ClusterSnapshot.from_nodes (rows include object_store_memory and node:<ip>)",
            "timer": "time.perf_counter around one place() call; gc.collect() before each cell, collector left on",
            "profiles": "cProfile over 150 (idle) and 60 (busy) decisions; cProfile inflates Python-level calls",
        },
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": loadavg(),
        "target": target,
        "cells": cells,
        "profile_10x1000_binpack": profile,
        "profile_10x1000_binpack_busy": profile_busy,
        "pending_scaling_1x1000": scaling,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    emit("placement_time", document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
