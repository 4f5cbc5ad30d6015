"""Markdown tables for docs/placement_quality.md from the result files: published against ours, splits, speed.

Run: .venv/bin/python -m benchmarks.placement_quality.report
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks._common import RESULTS
from benchmarks.placement_quality.plot import merged_results
from benchmarks.placement_quality.run import GOALS, published

NAMES = {
    "random": "Random",
    "bestfit": "BestFit",
    "fgd": "FGD (simulator's score, fixed tie order)",
    "fragmentation": "rayfleet `fragmentation`",
    "binpack": "rayfleet `binpack` (existing default)",
    "live": "rayfleet `fragmentation` via `place()` (aggregate view)",
}


def quality_table(results: dict[str, Any]) -> str:
    lines = [
        "| trace | policy | ours: mean ± sd (10 seeds) | published mean ± sd | diff | tolerance | within |",
        "|---|---|---|---|---|---|---|",
    ]
    table = published()
    for trace, policies in results.items():
        fgd = table[trace, "06-FGD", 100][0]
        for policy in NAMES:
            cell = policies.get(policy, {}).get("bins", {}).get("100")
            if not cell:
                continue
            ours = f"{cell['mean']:.2f} ± {cell['sd']:.2f} (n={cell['n']})"
            if "published" in cell:
                pub = f"{cell['published']:.2f} ± {cell['published_sd']:.2f}"
                within = "yes" if cell["within"] else "**no**"
                lines.append(
                    f"| {trace} | {NAMES[policy]} | {ours} | {pub} | {cell['diff']:+.2f} | {cell['tolerance']:.2f} "
                    f"| {within} |"
                )
            else:
                goal = GOALS.get(trace, fgd)
                met = "goal met" if cell["mean"] <= goal else "goal missed"
                lines.append(
                    f"| {trace} | {NAMES[policy]} | {ours} | FGD {fgd:.2f} | {cell['mean'] - fgd:+.2f} "
                    f"| goal <= {goal:.2f} | {met} |"
                )
    return "\n".join(lines)


def timing_table(results: dict[str, Any]) -> str:
    lines = [
        "| trace | policy | decision p50 CPU ms | p90 | 10 seeds: CPU s (sum) | wall s (sum over seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for trace, policies in results.items():
        for policy, e in policies.items():
            if "decision_cpu_ms_p50" in e:
                lines.append(
                    f"| {trace} | {policy} | {e['decision_cpu_ms_p50']:.3f} | {e['decision_cpu_ms_p90']:.3f} "
                    f"| {e['cpu_seconds_all_seeds']:.0f} | {e['seconds_all_seeds']:.0f} |"
                )
    return "\n".join(lines)


def split_table() -> str:
    lines = [
        "| split | node chosen by | policy | unallocated % at arrived 100 (mean ± sd, seeds) |",
        "|---|---|---|---|",
    ]
    for path in sorted(RESULTS.glob("placement_quality_split_*.json")):
        doc = json.loads(path.read_text())
        split, choice = doc["params"]["split"], doc["params"]["node_choice"]
        for _trace, policies in doc["results"].items():
            for policy, e in policies.items():
                cell = e["bins"].get("100")
                if cell:
                    seeds = e["seeds"]
                    lines.append(
                        f"| {split} | {choice} | {policy} | {cell['mean']:.2f} ± {cell['sd']:.2f} "
                        f"({seeds[0]}..{seeds[-1]}) |"
                    )
    return "\n".join(lines)


def speed_table() -> str:
    path = RESULTS / "placement_quality_speed.json"
    if not path.exists():
        return ""
    doc = json.loads(path.read_text())
    keys = ("replay/bestfit", "replay/fragmentation", "place/binpack", "place/fragmentation")
    lines = ["| nodes | " + " | ".join(f"{k} p50 (p90) CPU ms" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in doc["by_nodes"]:
        cells = [f"{row[k]['cpu_ms']['p50']:.3f} ({row[k]['cpu_ms']['p90']:.3f})" for k in keys]
        lines.append(f"| {row['nodes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    results = merged_results()
    print("## Quality at arrived = 100%\n")
    print(quality_table(results))
    print("\n## Replay timings\n")
    print(timing_table(results))
    print("\n## Multi-cluster\n")
    print(split_table())
    print("\n## Decision time against node count\n")
    print(speed_table())


if __name__ == "__main__":
    main()
