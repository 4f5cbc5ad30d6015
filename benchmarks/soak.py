"""Load soak (issue 7, part 6): thousands of placements and hundreds of real jobs over 3 local clusters, with the
process's memory and open file descriptors sampled throughout, and the ledger checked against Ray at the end.

1. Pure placement: ``place()`` on synthetic snapshots (clusters of mixed CPU/GPU nodes, holds accumulating as a
   dispatcher's would), then ``fleet.explain`` on the live clusters (cached readings, re-probed every ``probe_ttl_s``).
2. Real jobs: ``fleet.submit`` over three local clusters (2 CPUs each), at most ``--in-flight`` unfinished at a time,
   the dispatcher's turn (``fleet.tick()``) between submissions. Most jobs ask for nothing (``true``, submitted as
   is); every fifth asks for 0.5 CPU and goes through the launcher (its start confirmed).
3. The end: every job terminal; every Ray job of ours is a ledger attempt on the same cluster in the same final state,
   no submission id twice; every attempt the ledger calls SUCCEEDED is on its cluster.

RSS, open fds and threads of this process are sampled every second; flat means end ~ start, within noise.

    .venv/bin/python benchmarks/soak.py [--placements 10000] [--explains 2000] [--jobs 200] [--in-flight 24]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray.job_submission import JobSubmissionClient

from benchmarks import _common
from rayfleet import Cluster, Fleet, LocalClusterSpec, LocalFleet, Resources
from rayfleet.capacity import ClusterSnapshot
from rayfleet.ledger import Ledger
from rayfleet.placement import Hold, PlacementRequest, place
from rayfleet.states import JobState

SPECS = tuple(LocalClusterSpec(f"s{i}", cpus=2, memory="1GiB") for i in range(3))


class Sampler:
    """RSS (MiB), open file descriptors and threads of this process, every ``interval`` seconds, on a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, phase: str) -> dict[str, Any]:
        rss = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))  # fmt: skip
        row = {
            "t_s": round(time.monotonic() - self._t0, 1),
            "phase": phase,
            "rss_mib": round(rss / 1024, 1),
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(),
        }
        self.samples.append(row)
        return row

    phase = "start"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample(self.phase)

    def __enter__(self) -> Sampler:
        self.sample("start")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        rows = self.samples if rows is None else rows
        out: dict[str, Any] = {"samples": len(rows)}
        for key in ("rss_mib", "fds", "threads"):
            values = [r[key] for r in rows]
            out[key] = {"start": values[0], "end": values[-1], "max": max(values), "min": min(values)}
        return out


def synthetic_fleet(rng: random.Random) -> tuple[list[Cluster], dict[str, ClusterSnapshot]]:
    """Eight clusters of 20 nodes: CPU nodes and A100/H100 GPU nodes, partly used."""
    clusters, snapshots = [], {}
    for c in range(8):
        name = f"syn{c}"
        nodes = []
        for n in range(20):
            gpus = rng.choice([0, 0, 4, 8])
            total = {"CPU": 32.0, "memory": 128 * 2**30}
            if gpus:
                total |= {"GPU": float(gpus), f"accelerator_type:{rng.choice(['A100', 'H100'])}": 1.0}
            used = {k: (rng.randint(0, int(v)) if k in ("CPU", "GPU") else 0.0) for k, v in total.items()}
            nodes.append((f"{name}-n{n}", total, used))
        clusters.append(Cluster(name=name, address=f"http://127.0.0.1:{30000 + c}", labels={"zone": f"z{c % 3}"}))
        snapshots[name] = ClusterSnapshot.from_nodes(name, nodes)
    return clusters, snapshots


def placements(count: int, rng: random.Random) -> dict[str, Any]:
    clusters, snapshots = synthetic_fleet(rng)
    shapes = [Resources(cpu=1), Resources(cpu=4), Resources(cpu=8, gpu=1), Resources(gpu=2, accelerators={"A100"}),
              Resources(cpu=2, gpu=1, accelerators={"A100", "H100"})]  # fmt: skip
    policies = ["binpack", "spread", "cost"]
    holds: list[Hold] = []
    took, chosen, none = [], Counter(), 0
    for i in range(count):
        request = PlacementRequest(rng.choice(shapes), {}, None, policies[i % 3])
        t0 = time.perf_counter()
        decision = place(request, clusters, snapshots, holds)
        took.append(time.perf_counter() - t0)
        if decision.chosen is None:
            none += 1
            holds = []  # the fleet "drained": start filling again
            continue
        chosen[decision.chosen.cluster] += 1
        option = decision.chosen
        resources = request.resources.to_ray(option.accelerator)
        holds.append(Hold.on(snapshots[option.cluster], option.node_id, resources, time.time()))
        holds = holds[-200:]  # a dispatcher's holds expire; keep the window bounded like hold_ttl_s would
    return {"count": count, "latency_ms": _common.stats_ms(took), "none_fit": none, "by_cluster": dict(chosen)}


def explains(fleet: Fleet, count: int) -> dict[str, Any]:
    took = []
    for i in range(count):
        t0 = time.perf_counter()
        decision = fleet.explain({"cpu": 0.5} if i % 2 else {})
        took.append(time.perf_counter() - t0)
        assert decision.options
    return {"count": count, "latency_ms": _common.stats_ms(took)}


def jobs(fleet: Fleet, count: int, in_flight: int, sampler: Sampler) -> dict[str, Any]:
    ledger = fleet.ledger
    ids: list[str] = []
    active: set[str] = set()
    t0 = time.monotonic()
    last_tick = 0.0
    while len(ids) < count or active:
        if len(ids) < count and len(active) < in_flight:
            resources = {"cpu": 0.5} if len(ids) % 5 == 4 else {}
            handle = fleet.submit("true", resources, wait=True)
            ids.append(handle.id)
            active.add(handle.id)
            continue
        if time.monotonic() - last_tick >= 0.5:
            fleet.tick()
            last_tick = time.monotonic()
            active = {j for j in active if not ledger.job(j).state.is_terminal()}
        else:
            time.sleep(0.05)
        if time.monotonic() - t0 > 1800:
            raise TimeoutError(f"{len(active)} jobs still active after 30 min")
    return {"count": len(ids), "wall_s": round(time.monotonic() - t0, 1), "ids": ids}


def consistency(ledger: Ledger, addresses: dict[str, str], ids: list[str]) -> dict[str, Any]:
    wanted = set(ids)
    records = {j: ledger.job(j) for j in ids}
    attempts = {a.submission_id: a for job in records.values() for a in job.attempts}
    on_ray: Counter[str] = Counter()
    disagree = []
    for name, address in addresses.items():
        for job in JobSubmissionClient(address).list_jobs():
            if (job.metadata or {}).get("rayfleet.job_id") not in wanted:
                continue
            sid = str(job.submission_id)
            on_ray[sid] += 1
            attempt = attempts.get(sid)
            if attempt is None or attempt.cluster != name or attempt.state.value != str(job.status):
                disagree.append([sid, name, str(job.status), attempt.state.value if attempt else None])
    states = Counter(job.state.value for job in records.values())
    return {
        "jobs": len(ids),
        "attempts": len(attempts),
        "states": dict(states),
        "not_terminal": sum(1 for job in records.values() if not job.state.is_terminal()),
        "lost": sum(1 for job in records.values() if not job.state.is_terminal() or job.state is JobState.LOST),
        "duplicated_submission_ids": sum(1 for n in on_ray.values() if n > 1),
        "jobs_submitted_more_than_once": sum(
            1 for job in records.values() if sum(1 for a in job.attempts if a.submission_id in on_ray) > 1
        ),
        "ledger_attempts_missing_on_ray": sum(
            1 for sid, a in attempts.items() if a.state is JobState.SUCCEEDED and sid not in on_ray
        ),
        "ray_vs_ledger_disagreements": disagree[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--placements", type=int, default=10000)
    parser.add_argument("--explains", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=24)
    args = parser.parse_args()
    rng = random.Random(7)
    load_at_start = _common.loadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rayfleet-soak-") as scratch, Sampler() as sampler:
        sampler.phase = "placements"
        placed = placements(args.placements, rng)
        sampler.sample("placements done")
        with LocalFleet(SPECS, name=f"soak-{os.getpid()}", directory=Path(scratch) / "local") as local:
            addresses = {c.name: c.address for c in local.running}
            clusters = [Cluster(name=n, address=a) for n, a in addresses.items()]
            with Fleet(clusters, ledger=Path(scratch) / "ledger.db", start_timeout_s=60.0) as fleet:
                sampler.phase = "explain"
                explained = explains(fleet, args.explains)
                before_jobs = sampler.sample("jobs start")
                sampler.phase = "jobs"
                ran = jobs(fleet, args.jobs, args.in_flight, sampler)
                after_jobs = sampler.sample("jobs done")
                checked = consistency(fleet.ledger, addresses, ran.pop("ids"))
        sampler.sample("end")
    job_rows = [r for r in sampler.samples if r["t_s"] >= before_jobs["t_s"] and r["t_s"] <= after_jobs["t_s"]]
    document = {
        "benchmark": "soak",
        "command": _common.command(),
        "date": _common.utc_now(),
        "machine": _common.machine(),
        "source": _common.source(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": _common.loadavg(),
        "wall_s": round(time.monotonic() - started, 1),
        "settings": vars(args),
        "placements": placed,
        "explain": explained,
        "jobs": ran,
        "consistency": checked,
        "process": {"whole_run": sampler.summary(), "during_jobs": sampler.summary(job_rows)},
        "samples": sampler.samples,
    }
    _common.emit("soak", document)
    ok = (
        checked["lost"] == 0
        and checked["duplicated_submission_ids"] == 0
        and not checked["ray_vs_ledger_disagreements"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
