"""A submitting process SIGKILLed mid-burst: how long until a new loop has every job terminal (target <= 15 s), and
that none was lost or ran twice.

Each run: a fresh ledger over two real local clusters (the embedded local fleet, 4 CPUs each); a child process submits
a burst of ``--jobs`` short jobs (``wait=True``; every fourth reserves 0.5 CPU through the launcher, the others ask
for nothing) and is SIGKILLed the moment the ``k``-th job is recorded (k differs per run, 5 to 30). Then a new
`Fleet` on the same ledger, with the default settings (``placed_grace_s`` 5 s), runs its loop (``tick`` every
0.25 s): measured from the new loop's start until the job that was in flight at the kill is terminal, and until
every job the ledger has is terminal (which includes running the burst's jobs themselves: those submitted just
before the kill are still queued in Ray or starting). Each command appends its Ray
submission id to a file, so a command that started twice shows; each job must end SUCCEEDED.

    .venv/bin/python benchmarks/crash_recovery.py [--runs 5] [--jobs 50]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BURST = textwrap.dedent(
    """
    import json, sys
    from rayfleet import Cluster, Fleet
    ledger, clusters, command, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    fleet = Fleet([Cluster(name=k, address=v) for k, v in clusters.items()], ledger=ledger)
    print("ready", flush=True)
    for i in range(n):
        resources = {"cpu": 0.5} if i % 4 == 3 else {}
        print(fleet.submit(command, resources, wait=True).id, flush=True)
    """
)


def marker(path: Path) -> str:
    """A command that appends its Ray submission id to ``path`` (proof that it started, attempt by attempt)."""
    code = (
        "import json, os; c = json.loads(os.environ.get('RAY_JOB_CONFIG_JSON_ENV_VAR') or '{}'); "
        f"open('{path}', 'a').write(c.get('metadata', {{}}).get('job_submission_id', '?') + chr(10))"
    )
    return f'python -c "{code}"'


def one_run(clusters: dict[str, str], workdir: Path, jobs: int, kill_at: int) -> dict:
    from rayfleet import Cluster, Fleet
    from rayfleet.ledger import Ledger

    ledger_path, ran, script = workdir / "ledger.db", workdir / "ran", workdir / "burst.py"
    script.write_text(BURST)
    child = subprocess.Popen(
        [sys.executable, str(script), str(ledger_path), json.dumps(clusters), marker(ran), str(jobs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    watch = Ledger(ledger_path)
    while child.poll() is None and len(watch.jobs(limit=1000)) < kill_at:
        time.sleep(0.002)
    os.kill(child.pid, signal.SIGKILL)
    returned = child.communicate(timeout=30)[0].split()
    ids = {j.id for j in watch.jobs(limit=1000)}
    in_flight = sorted(ids - set(returned))

    started, in_flight_done = time.perf_counter(), None
    with Fleet([Cluster(name=k, address=v) for k, v in clusters.items()], ledger=ledger_path) as fleet:
        while not all(watch.job(j).state.is_terminal() for j in ids):
            if time.perf_counter() - started > 300:
                raise RuntimeError(f"not terminal after 300 s: {[(j, watch.job(j).state) for j in ids]}")
            fleet.tick()
            if in_flight_done is None and all(watch.job(j).state.is_terminal() for j in in_flight):
                in_flight_done = time.perf_counter() - started
            time.sleep(0.25)
        elapsed = time.perf_counter() - started
    runs = collections.Counter(ran.read_text().split() if ran.exists() else [])
    by_job = collections.Counter(sid.rsplit("-", 1)[0] for sid in runs.elements())
    states = collections.Counter(watch.job(j).state.value for j in ids)
    watch.close()
    return {
        "jobs_recorded": len(ids),
        "returned_before_kill": len(returned),
        "in_flight_at_kill": in_flight,
        "to_all_terminal_s": round(elapsed, 3),
        "in_flight_terminal_s": round(in_flight_done if in_flight_done is not None else elapsed, 3),
        "states": dict(states),
        "lost": len(ids) - states.get("SUCCEEDED", 0),
        "ran_twice": sorted(j for j, n in by_job.items() if n > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=50)
    args = parser.parse_args()

    from benchmarks import _common
    from rayfleet import LocalClusterSpec, LocalFleet

    load_start = _common.loadavg()
    specs = (LocalClusterSpec("a", cpus=4, memory="2GiB"), LocalClusterSpec("b", cpus=4, memory="2GiB"))
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="rf-crash-") as tmp,
        LocalFleet(specs, name=f"crash-bench-{os.getpid()}", directory=Path(tmp) / "fleet") as local,
    ):
        clusters = {c.name: c.address for c in local.running}
        for n in range(args.runs):
            kill_at = 5 + (25 * n) // max(1, args.runs - 1)
            workdir = Path(tmp) / f"run-{n}"
            workdir.mkdir()
            results.append({"kill_at_job": kill_at, **one_run(clusters, workdir, args.jobs, kill_at)})
            print(json.dumps(results[-1]), file=sys.stderr)
    times = [r["to_all_terminal_s"] for r in results]
    in_flight = [r["in_flight_terminal_s"] for r in results]
    document = _common.header("crash_recovery", load_start)
    document["parameters"] = {"runs": args.runs, "jobs": args.jobs, "clusters": 2, "placed_grace_s": 5.0}
    document["runs"] = results
    document["to_all_terminal"] = _common.stats_ms(times)
    document["in_flight_terminal"] = _common.stats_ms(in_flight)
    document["target"] = {
        "all_terminal_within_s": 15,
        "met": max(times) <= 15 and all(r["lost"] == 0 and not r["ran_twice"] for r in results),
    }
    _common.emit("crash_recovery", document)


if __name__ == "__main__":
    main()
