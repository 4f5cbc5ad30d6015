"""Plot our unallocated-GPU curves next to the FGD paper's published ones, one panel per trace.

Run: .venv/bin/python -m benchmarks.placement_quality.plot
It reads benchmarks/results/placement_quality.json (the baselines) and placement_quality_rayfleet.json (rayfleet's
policy, which replaces the same entry of the first), and writes docs/img/placement_quality.png.

Data: Alibaba cluster-trace-gpu-v2023; published curves from Weng et al., "Beware of Fragmentation: Scheduling
GPU-Sharing Workloads with Fragmentation Gradient Descent", USENIX ATC 2023.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import RESULTS, ROOT
from benchmarks.placement_quality.run import PUBLISHED_NAMES
from benchmarks.placement_quality.trace import PUBLISHED_FILE, data_dir

COLORS = {"random": "tab:gray", "bestfit": "tab:blue", "fgd": "tab:orange", "fragmentation": "tab:red"}
LABELS = {"random": "Random", "bestfit": "BestFit", "fgd": "FGD", "fragmentation": "rayfleet fragmentation"}


def merged_results(
    names: tuple[str, ...] = ("placement_quality", "placement_quality_rayfleet", "placement_quality_live"),
) -> dict[str, Any]:
    """trace -> policy -> summary, from the result files in order (a later file replaces an earlier entry)."""
    results: dict[str, Any] = {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            for trace, policies in json.loads(path.read_text())["results"].items():
                results.setdefault(trace, {}).update(policies)
    return results


def main() -> None:
    target = ROOT / "docs" / "img" / "placement_quality.png"
    results = merged_results()
    published: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    with (data_dir() / PUBLISHED_FILE).open() as f:
        for row in csv.DictReader(f):
            key = (row["workload"].removeprefix("openb_pod_list_"), row["policy"])
            published.setdefault(key, []).append(
                (int(row["arrived_pct"]), float(row["mean_unalloc_pct"]), float(row["sd"]))
            )
    traces = list(results)
    fig, axes = plt.subplots(1, len(traces), figsize=(5.2 * len(traces), 4.2), squeeze=False)
    for ax, trace in zip(axes[0], traces, strict=True):
        for policy, entry in results[trace].items():
            if policy not in COLORS:
                continue
            curve = sorted((int(b), v) for b, v in entry["curve_mean"].items() if 85 <= int(b) <= 130)
            ax.plot(
                [b for b, _ in curve], [v for _, v in curve], color=COLORS[policy], label=f"{LABELS[policy]} (ours)"
            )
            name = PUBLISHED_NAMES.get(policy)
            if name and (trace, name) in published:
                pts = sorted(published[trace, name])
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    yerr=[p[2] for p in pts],
                    color=COLORS[policy],
                    linestyle="none",
                    marker="o",
                    markersize=4,
                    capsize=2,
                    label=f"{LABELS[policy]} (published)",
                )
        ax.set_title(f"{trace}: 1213 nodes, 10 seeds")
        ax.set_xlabel("arrived GPU workload (% of capacity)")
        ax.set_ylabel("unallocated GPUs (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.text(
        0.5,
        0.005,
        "Data: Alibaba cluster-trace-gpu-v2023; published points: Weng et al., USENIX ATC'23 (FGD). "
        "Lines: this replay's mean over seeds 42..51; bars: published sd.",
        ha="center",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    print(target)


if __name__ == "__main__":
    main()
