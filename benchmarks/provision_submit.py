"""`fleet.submit` of a job that needs a new cluster: time to return (target p50 <= 50 ms), and time to RUNNING.

Each run: a fleet with no cluster and a local provisioner (one template, a 1-CPU head), a job asking for one CPU, so
rayfleet must create a cluster. Measured: how long `submit` takes to return, and how long until the job's state is
RUNNING (or already SUCCEEDED) while this process follows it with `JobHandle.status` (which carries the creation on).
Then the cluster is deleted. Real local Ray clusters; each run starts one (5-9 s on this machine).

With ``--baseline REV`` the same runs are made, in the same session, on the code of git revision REV (checked out in
a temporary worktree, run in a child process), e.g. the last commit before submit stopped blocking on creations.

    .venv/bin/python benchmarks/provision_submit.py [--runs 10] [--baseline fe22cce]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = {"name": "solo", "mode": "static", "head": {"cpu": 1, "memory": "1GiB"}, "workers": []}


def measure(runs: int, workdir: Path) -> dict[str, list[float]]:
    """``runs`` creations from the code importable as ``rayfleet`` now; durations in seconds."""
    from rayfleet import Fleet, JobState
    from rayfleet.config import FleetConfig

    returned, running = [], []
    for n in range(runs):
        config = FleetConfig.build(
            name=f"bench{n}",
            provisioners=[{"kind": "local", "directory": str(workdir / "clusters"), "templates": [TEMPLATE]}],
        )
        with Fleet(config=config, ledger=workdir / f"ledger-{n}.db") as fleet:
            started = time.perf_counter()
            handle = fleet.submit("python -c 'import time; time.sleep(1)'", {"cpu": 1})
            returned.append(time.perf_counter() - started)
            while handle.status() not in (JobState.RUNNING, JobState.SUCCEEDED):
                if handle.record.state.is_terminal():
                    raise RuntimeError(f"run {n}: the job ended {handle.record.state.value}: {handle.record.reason}")
                time.sleep(0.01)
            running.append(time.perf_counter() - started)
            handle.wait(timeout=120)
            fleet.gc(everything=True)
    return {"submit_returned_s": returned, "submit_to_running_s": running}


def baseline(rev: str, runs: int, workdir: Path) -> dict[str, list[float]]:
    """The same runs on the code of ``rev``: a worktree, this script copied in, a child process."""
    tree = workdir / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True, capture_output=True)
    try:
        shutil.copy(__file__, tree / "benchmarks" / "provision_submit.py")
        out = subprocess.run(
            [sys.executable, "benchmarks/provision_submit.py", "--runs", str(runs), "--raw", str(workdir / "old")],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--baseline", help="also measure this git revision, in the same session")
    parser.add_argument("--raw", help=argparse.SUPPRESS)  # a child run: print the samples only
    args = parser.parse_args()
    if args.raw:
        Path(args.raw).mkdir(parents=True, exist_ok=True)
        print(json.dumps(measure(args.runs, Path(args.raw))))
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks import _common

    load_start = _common.loadavg()
    with tempfile.TemporaryDirectory(prefix="rf-provision-") as tmp:
        samples = {"current": measure(args.runs, Path(tmp) / "new")}
        if args.baseline:
            samples[f"baseline {args.baseline}"] = baseline(args.baseline, args.runs, Path(tmp))
    document = _common.header("provision_submit", load_start)
    document["parameters"] = {"runs": args.runs, "template": TEMPLATE, "baseline": args.baseline}
    document["results"] = {
        code: {name: _common.stats_ms(values) for name, values in figures.items()} for code, figures in samples.items()
    }
    p50 = document["results"]["current"]["submit_returned_s"]["p50"]
    document["target"] = {"submit_returned_p50_ms": 50, "met": p50 <= 50}
    _common.emit("provision_submit", document)


if __name__ == "__main__":
    main()
