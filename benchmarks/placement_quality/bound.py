"""How low can unallocated GPUs go at arrived = 100%? A lower bound for any placement, from a packing LP.

Take the pods that arrived by arrived = 100% (their GPU requests add up to the cluster's GPUs). Any placement, even
one that knows every pod in advance and drops pods on purpose, allocates at most what the best packing of them into
the cluster's GPUs allocates, with CPU, memory, nodes and arrival order ignored (each only makes packing harder) and a
multi-GPU pod counted as separate whole GPUs. That packing's LP relaxation (Gilmore-Gomory column generation: a
pattern is one GPU's filling with sharing pods, priced by a bounded knapsack) gives an upper bound on allocated
milli-GPU, so ``100 - bound`` is a lower bound on unallocated GPU % at arrived = 100% (at the crossing itself; the
reported figure averages the pods in the 100% bin, within a few hundredths of it).

A second figure bounds a placement that drops no sharing pod (as rayfleet and FGD never refuse one that fits): the
sharing pods take at least the cutting-stock LP's number of GPUs (`packing.fewest_gpus`), whole-GPU pods at most the
rest.

    .venv/bin/python -m benchmarks.placement_quality.bound                  # default trace, seeds 42..51
    .venv/bin/python -m benchmarks.placement_quality.bound --trace gpushare100 --out placement_quality_bound_gpushare100
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from scipy.optimize import linprog

from benchmarks._common import emit, header, loadavg
from benchmarks.placement_quality.run import seeds_arg
from benchmarks.placement_quality.trace import arrival_order, load_nodes, load_pods
from rayfleet.placement.fragmentation import MILLI
from rayfleet.placement.packing import best_filling, fewest_gpus


def arrived_by_full(trace: str, seed: int, capacity: int) -> tuple[Counter[int], int]:
    """The pods that arrived by arrived = 100%: sharing pods (milli-GPU size -> count), and whole GPUs asked for."""
    pods = load_pods(trace)
    arrived, sharing, whole = 0, Counter[int](), 0
    for pod in arrival_order(pods, capacity, seed):
        shape = pods.shapes[pods.shape_of[pod]]
        arrived += shape.total_gpu_milli
        if arrived > capacity:
            break
        if shape.sharing:
            sharing[shape.gpu_milli] += 1
        else:
            whole += shape.gpus
    return sharing, whole


def most_allocated(sizes: list[int], counts: list[int], whole: int, gpus: int) -> float:
    """The LP relaxation's most milli-GPU allocated: whole GPUs (up to ``whole``) and GPUs filled with sharing pods
    (at most ``counts`` of each of ``sizes``), ``gpus`` GPUs in all."""
    size = np.array(sizes, dtype=float)
    patterns = [np.eye(len(sizes))[i] * min(counts[i], MILLI // s) for i, s in enumerate(sizes)]
    while True:
        a = np.array(patterns).T  # items x patterns
        n = a.shape[1]
        # variables: one per pattern, then y = whole GPUs used; maximise allocated (linprog minimises)
        objective = -np.concatenate([size @ a, [MILLI]])
        rows = np.vstack([np.ones(n + 1), np.hstack([a, np.zeros((len(sizes), 1))])])
        limits = np.concatenate([[gpus], counts])
        solved = linprog(objective, A_ub=rows, b_ub=limits, bounds=[(0, None)] * n + [(0, whole)], method="highs")
        duals = -solved.ineqlin.marginals  # >= 0: the price of one GPU, then of one pod of each size
        limits = np.minimum(counts, MILLI // np.asarray(sizes))
        value, pattern = best_filling(size - duals[1:], np.asarray(sizes), limits)
        if value <= duals[0] + 1e-6:
            return float(-solved.fun)
        patterns.append(pattern.astype(float))


def allocated_placing_all_shared(sizes: list[int], counts: list[int], whole: int, gpus: int) -> float:
    """The most milli-GPU allocated when every sharing pod is placed: all of theirs, and whole GPUs (up to ``whole``)
    on the GPUs the fewest-GPU packing of them leaves."""
    x, _ = fewest_gpus(sizes, [float(c) for c in counts])
    return float(np.dot(sizes, counts)) + min(whole, gpus - float(x.sum())) * MILLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default="default")
    parser.add_argument("--seeds", type=seeds_arg, default=list(range(42, 52)))
    parser.add_argument("--out", default="placement_quality_bound")
    args = parser.parse_args()
    load, capacity = loadavg(), load_nodes().gpu_milli
    per_seed = {}
    for seed in args.seeds:
        sharing, whole = arrived_by_full(args.trace, seed, capacity)
        sizes = sorted(sharing, reverse=True)
        allocated = most_allocated(sizes, [sharing[s] for s in sizes], whole, capacity // MILLI)
        bound = round(100 - allocated / capacity * 100, 3)
        all_shared = allocated_placing_all_shared(sizes, [sharing[s] for s in sizes], whole, capacity // MILLI)
        per_seed[seed] = {
            "sharing_pods": sum(sharing.values()),
            "whole_gpus": whole,
            "bound_pct": bound,
            "bound_all_shared_placed_pct": round(100 - all_shared / capacity * 100, 3),
        }
        print(seed, per_seed[seed], flush=True)
    bounds = [v["bound_pct"] for v in per_seed.values()]
    placing_all = [v["bound_all_shared_placed_pct"] for v in per_seed.values()]
    emit(
        args.out,
        {
            **header("placement_quality_bound", load),
            "params": {"trace": args.trace, "seeds": args.seeds},
            "results": {
                "per_seed": per_seed,
                "mean_bound_pct": round(float(np.mean(bounds)), 3),
                "mean_bound_all_shared_placed_pct": round(float(np.mean(placing_all)), 3),
            },
        },
    )


if __name__ == "__main__":
    main()
