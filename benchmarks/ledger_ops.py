"""The ledger's own cost: each operation the dispatcher's hot path runs, on a SQLite file in a temporary directory.

Times opening a new ledger (its migrations) and an existing one, the writes of one job's life (the job with its
first attempt PLACED, then SUBMITTED, STARTING, RUNNING, SUCCEEDED), and the reads the loop repeats (one job, the
newest 100, the holds of 300 starting attempts, a queue of 300). With ``--against DIR``, the same measurement runs
on the rayfleet in DIR too (for example a `git worktree` of an older commit), in the same session, so two versions
are compared on one machine at one time.

Run: .venv/bin/python benchmarks/ledger_ops.py [--against DIR]   (writes benchmarks/results/ledger_ops.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, emit, header, loadavg, stats_ms

HELD = 300  # attempts holding resources while they start: a burst the loop must count on every decision


def timed(n: int, fn: Callable[[int], object]) -> dict[str, float | int]:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t0)
    return stats_ms(samples)


def measure(repeats: int) -> dict[str, Any]:
    """Every operation's timing, on the rayfleet this process imports."""
    t0 = time.perf_counter()
    from rayfleet.ledger import Ledger  # the import is part of a CLI command's cost
    from rayfleet.states import JobState as S

    out: dict[str, Any] = {"import_ms": round((time.perf_counter() - t0) * 1000, 3)}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        Ledger(d / "first.db").close()
        out["first_open_in_process_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        out["open_new"] = timed(repeats, lambda i: Ledger(d / f"new{i}.db").close())
        out["open_existing"] = timed(repeats, lambda i: Ledger(d / f"new{i}.db").close())

        ledger = Ledger(d / "ops.db")

        def attempt(i: int) -> dict[str, Any]:
            bundles = [{"node": "n1", "resources": {"CPU": 1}, "baseline": {}}]
            return {"submission_id": f"j{i}-1", "n": 1, "cluster": "c", "hold_window_s": 3600, "bundles": bundles}

        request = {"v": 1, "resources": {"cpu": 1.0}}
        out["add_job_placed"] = timed(
            HELD, lambda i: ledger.add_job(f"j{i}", entrypoint="true", request=request, attempt=attempt(i))
        )
        out["record_submitted"] = timed(HELD, lambda i: ledger.record(f"j{i}-1", S.SUBMITTED))
        out["record_starting"] = timed(HELD, lambda i: ledger.record(f"j{i}-1", S.STARTING))
        out["holding_300"] = timed(repeats, lambda i: ledger.holding(time.time()))
        out["job"] = timed(HELD, lambda i: ledger.job(f"j{i}"))
        out["jobs_newest_100"] = timed(repeats, lambda i: ledger.jobs(limit=100))
        out["record_running"] = timed(HELD, lambda i: ledger.record(f"j{i}-1", S.RUNNING))
        out["record_succeeded"] = timed(HELD, lambda i: ledger.record(f"j{i}-1", S.SUCCEEDED))
        for i in range(HELD):
            ledger.add_job(f"q{i}", entrypoint="true", request=request, detail="no room")
        out["queued_300"] = timed(repeats, lambda i: ledger.queued())
        ledger.close()
    return out


def run_in(tree: Path, repeats: int) -> dict[str, Any]:
    """`measure` in a fresh interpreter that imports rayfleet from ``tree`` (its working directory, first on the
    path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = f"import json, sys; sys.path.insert(1, {str(Path(__file__).parent)!r}); import ledger_ops; "
    code += f"out = ledger_ops.measure({repeats}); import rayfleet; "
    code += "print(json.dumps({'rayfleet': rayfleet.__file__, **out}))"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, help="another rayfleet tree to measure the same way, for comparison")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    load = loadavg()
    document = header("ledger_ops", load)
    document["this"] = run_in(ROOT, args.repeats)
    if args.against:
        document["against"] = {"tree": str(args.against), **run_in(args.against.resolve(), args.repeats)}
        this, other = document["this"], document["against"]
        document["ratio_p50"] = {
            k: round(this[k]["p50"] / other[k]["p50"], 2)
            for k in this
            if isinstance(this[k], dict) and isinstance(other.get(k), dict) and other[k]["p50"] > 0
        }
    document["loadavg_at_end"] = loadavg()
    emit("ledger_ops", document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
