"""Submission latency: `Fleet.submit` against a direct `JobSubmissionClient.submit_job` to the same cluster.

Starts a local fleet of 4 real Ray clusters (64 logical CPUs each, so no job ever pends) with a ledger in a temp
dir, warms every cluster up, then measures pairs of submissions of ``true`` (1 CPU) in three phases:

- warm: the probe cache is warm (``probe_ttl_s`` = 600, longer than the phase, and one probe done just before), so a
  submit places from cache;
- cold: the probe cache is invalidated before every rayfleet submit (outside the timed region), so every submit
  probes all 4 clusters concurrently before placing;
- cold_pinned (only with --pinned; for information, no target): as cold, but rayfleet is pinned to the cluster it
  chose most in the cold phase, so it probes only that cluster: roughly what a cold submit costs when the probes do
  not compete for this machine's two cores (as with clusters on separate hosts).

Each pair is one rayfleet submit (not pinned: it places over all 4 clusters) and one direct submit to the cluster
rayfleet chose for the pair's rayfleet submission; the order inside a pair alternates, to cancel drift. The time is
until the call returns: for rayfleet, accepted by Ray and recorded in the ledger. Between phases the jobs drain and
the machine settles. Where rayfleet's time goes is measured by wrapping its stages in this process (no file of
rayfleet is changed); the probe alone is timed on a quiet fleet; a cProfile of extra cold submissions shows the calls.

Run: .venv/bin/python benchmarks/submit_latency.py   (prints JSON; writes benchmarks/results/submit_latency.json)
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import command, emit, loadavg, machine, profile_rows, source, stats_ms, utc_now

import rayfleet
from rayfleet import Fleet, LocalClusterSpec, local_fleet
from rayfleet.backends.ray_jobs import RayJobs
from rayfleet.capacity import Prober
from rayfleet.dispatch import Dispatcher
from rayfleet.ledger import Ledger

CLUSTERS = 4
CPUS = 64
ENTRYPOINT = "true"
TARGETS = {"warm": 1.15, "cold": 1.5}
PROBE_TTL_S = 600.0  # longer than a phase, so the warm phase never probes
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_busy(interval: float = 1.0) -> float:
    """The fraction of all CPUs busy over ``interval`` seconds, from /proc/stat."""

    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total0, idle0 = read()
    time.sleep(interval)
    total1, idle1 = read()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def settle(limit_s: float, busy_below: float = 0.35) -> dict[str, float]:
    """Wait until the machine is quiet (two seconds in a row under ``busy_below`` CPU), at most ``limit_s``."""
    t0 = time.monotonic()
    quiet = 0
    busy = 1.0
    while time.monotonic() - t0 < limit_s and quiet < 2:
        busy = cpu_busy()
        quiet = quiet + 1 if busy < busy_below else 0
    return {"waited_s": round(time.monotonic() - t0, 1), "cpu_busy_last_s": round(busy, 2)}


# ----- stage timing --------------------------------------------------------------------------------------------------


class Stages:
    """Wall time spent in rayfleet's stages during one submission (main thread only), by wrapping their methods.

    The stages are siblings inside `Dispatcher.submit` (none calls another), so total minus their sum is the glue.
    """

    WRAPPED: tuple[tuple[type, str, str], ...] = (
        (Dispatcher, "validate", "validate"),
        (Prober, "snapshots", "probe (Prober.snapshots)"),
        (Dispatcher, "_live_holds", "holds"),
        (Ledger, "add_job", "ledger add_job"),
        (Ledger, "record", "ledger record"),
        (RayJobs, "submit", "Ray submit (RayJobs.submit)"),
    )

    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()  # Prober._get paths, from every thread
        self._gets_lock = threading.Lock()
        self.current: dict[str, float] = defaultdict(float)
        self._main = threading.get_ident()

    def install(self) -> None:
        for cls, name, label in self.WRAPPED:
            setattr(cls, name, self._wrap(getattr(cls, name), label))
        get = Prober._get

        def counted_get(prober: Prober, name: str, path: str) -> Any:
            with self._gets_lock:
                self.gets[path.split("?")[0]] += 1
            return get(prober, name, path)

        Prober._get = counted_get  # type: ignore[method-assign]
        place_module = sys.modules["rayfleet.placement.place"]
        dispatch_module = sys.modules["rayfleet.dispatch.placing"]
        dispatch_module.place = self._wrap(place_module.place, "place")  # type: ignore[attr-defined]

    def _wrap(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._main:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[label] += time.perf_counter() - t0

        return timed

    def take_gets(self) -> dict[str, int]:
        with self._gets_lock:
            out, self.gets = dict(self.gets), Counter()
        return out

    def take(self) -> dict[str, float]:
        out, self.current = dict(self.current), defaultdict(float)
        return out


# ----- the run -------------------------------------------------------------------------------------------------------


def direct_clients(fleet: Fleet) -> dict[str, Any]:
    from ray.job_submission import JobSubmissionClient

    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # would redirect the client
        os.environ.pop(key, None)
    return {c.name: JobSubmissionClient(c.address) for c in fleet.clusters}


def submit_rayfleet(fleet: Fleet, pin: str | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    handle = fleet.submit(ENTRYPOINT, {"cpu": 1}, cluster=pin)
    elapsed = time.perf_counter() - t0
    return elapsed, handle.cluster


def submit_direct(client: Any) -> float:
    t0 = time.perf_counter()
    client.submit_job(entrypoint=ENTRYPOINT, entrypoint_num_cpus=1)
    return time.perf_counter() - t0


def drain(clients: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Wait until no job on any cluster is PENDING or RUNNING; returns the counts seen last and the wait."""
    t0 = time.monotonic()
    counts: Counter[str] = Counter()
    while time.monotonic() - t0 < timeout:
        counts = Counter(str(j.status) for c in clients.values() for j in c.list_jobs())
        if not any(s.split(".")[-1] not in TERMINAL for s in counts.elements()):
            break
        time.sleep(1.0)
    return {"waited_s": round(time.monotonic() - t0, 1), "statuses": {k.split(".")[-1]: v for k, v in counts.items()}}


def run_phase(
    name: str,
    fleet: Fleet,
    clients: dict[str, Any],
    stages: Stages,
    pairs: int,
    gap_s: float,
    cold: bool,
    pin: str | None = None,
) -> dict[str, Any]:
    prober = fleet._dispatcher.prober
    rayfleet_s: list[float] = []
    direct_s: list[float] = []
    by_position: dict[str, list[float]] = defaultdict(list)
    stage_samples: list[dict[str, float]] = []
    chosen: Counter[str] = Counter()
    last_cluster = pin or fleet.clusters[0].name
    load_before = loadavg()
    stages.take_gets()
    for i in range(pairs):
        order = ("rayfleet", "direct") if i % 2 == 0 else ("direct", "rayfleet")
        for position, arm in enumerate(order, 1):
            if arm == "rayfleet":
                if cold:
                    prober.invalidate()
                stages.take()
                elapsed, last_cluster = submit_rayfleet(fleet, pin)
                rayfleet_s.append(elapsed)
                stage_samples.append({**stages.take(), "total": elapsed})
                chosen[last_cluster] += 1
            else:  # the cluster rayfleet chose last (binpack keeps choosing the same one: see clusters_chosen)
                elapsed = submit_direct(clients[last_cluster])
                direct_s.append(elapsed)
            by_position[f"{arm} {'first' if position == 1 else 'second'} in pair"].append(elapsed)
            time.sleep(gap_s)  # let the job's supervisor start before the next timed call
    rf, dr = stats_ms(rayfleet_s), stats_ms(direct_s)
    pair_ratios = [r / d for r, d in zip(rayfleet_s, direct_s, strict=True)]
    own = [s["total"] - s.get("Ray submit (RayJobs.submit)", 0.0) for s in stage_samples]
    labels = sorted({k for s in stage_samples for k in s})
    stage_ms = {k: stats_ms([s.get(k, 0.0) for s in stage_samples]) for k in labels}
    # the stages are siblings (none calls another), so what they do not cover is rayfleet's own glue
    other = [s["total"] - sum(v for k, v in s.items() if k != "total") for s in stage_samples]
    stage_ms["other (total - stages)"] = stats_ms(other)
    ratio_p50 = rf["p50"] / dr["p50"]
    log(f"{name}: rayfleet p50 {rf['p50']:.1f} ms, direct p50 {dr['p50']:.1f} ms, ratio {ratio_p50:.2f}")
    return {
        "phase": name,
        "probe_cache": "invalidated before every rayfleet submit"
        if cold
        else f"warm (probe_ttl_s={PROBE_TTL_S:g}, probed just before the phase)",
        "rayfleet_pinned_to": pin,
        "pairs": pairs,
        "rayfleet_ms": rf,
        "direct_ms": dr,
        "ratio_p50": round(ratio_p50, 3),
        "ratio_p90": round(rf["p90"] / dr["p90"], 3),
        "ratio_p50_bootstrap_90ci": bootstrap_ratio_ci(rayfleet_s, direct_s),
        "median_of_pair_ratios": round(statistics.median(pair_ratios), 3),
        "rayfleet_own_ms": stats_ms(own),  # everything but the Ray call: validate, probe, place, ledger, glue
        "ratio_from_own_time": round((dr["p50"] + stats_ms(own)["p50"]) / dr["p50"], 3),
        "overhead_p50_ms": round(rf["p50"] - dr["p50"], 3),
        "target_ratio_p50": TARGETS.get(name),
        "met": ratio_p50 <= TARGETS[name] if name in TARGETS else None,
        "p50_ms_by_position": {k: stats_ms(v)["p50"] for k, v in sorted(by_position.items())},
        "rayfleet_stage_ms": stage_ms,
        "probe_http_reads_per_rayfleet_submit": {k: round(v / pairs, 2) for k, v in stages.take_gets().items()},
        "samples_ms": {
            "rayfleet": [round(x * 1000, 2) for x in rayfleet_s],
            "direct": [round(x * 1000, 2) for x in direct_s],
        },
        "clusters_chosen": dict(chosen),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def bootstrap_ratio_ci(rayfleet_s: list[float], direct_s: list[float], n: int = 2000) -> list[float]:
    """A 90% interval for p50(rayfleet) / p50(direct), resampling the pairs (fixed seed)."""
    rng = np.random.default_rng(0)
    rf, dr = np.asarray(rayfleet_s), np.asarray(direct_s)
    idx = rng.integers(0, len(rf), size=(n, len(rf)))
    ratios = np.median(rf[idx], axis=1) / np.median(dr[idx], axis=1)
    return [round(float(x), 3) for x in np.percentile(ratios, [5, 95])]


def probe_times(fleet: Fleet, n: int) -> dict[str, Any]:
    """What a cold submit pays before placing: a probe of all clusters at once, of one, and one bare HTTP read."""
    import requests

    prober = fleet._dispatcher.prober
    first = fleet.clusters[0]
    samples: dict[str, list[float]] = defaultdict(list)
    with requests.Session() as session:
        for _ in range(n):
            for label, call in (
                (f"Prober.snapshots, all {CLUSTERS} clusters concurrently", lambda: prober.snapshots(max_age=0)),
                ("Prober.snapshots, one cluster", lambda: prober.snapshots([first.name], max_age=0)),
                (
                    "bare GET /api/cluster_status, one cluster (kept-alive session)",
                    lambda: session.get(first.address + "/api/cluster_status", timeout=5).json(),
                ),
                (
                    "bare GET /api/healthz, one cluster (the dashboard's HTTP floor)",
                    lambda: session.get(first.address + "/api/healthz", timeout=5).content,
                ),
            ):
                t0 = time.perf_counter()
                call()
                samples[label].append(time.perf_counter() - t0)
            time.sleep(0.05)
    return {label: stats_ms(v) for label, v in samples.items()}


def profile_cold(fleet: Fleet, n: int, gap_s: float, top: int = 25) -> list[dict[str, Any]]:
    """cProfile (main thread) of ``n`` cold rayfleet submits: the calls with the most cumulative time."""
    prober = fleet._dispatcher.prober
    profiler = cProfile.Profile()
    for _ in range(n):
        prober.invalidate()
        profiler.enable()
        fleet.submit(ENTRYPOINT, {"cpu": 1})
        profiler.disable()
        time.sleep(gap_s)
    return profile_rows(profiler, n, "submit", top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30, help="timed rayfleet/direct pairs per phase (>= 30)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up submissions of each kind per cluster")
    parser.add_argument("--gap", type=float, default=1.3, help="seconds after every timed submit (job starts cost CPU)")
    parser.add_argument("--profile", type=int, default=12, help="extra cold submissions under cProfile (0: none)")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=45.0, help="most seconds to wait for a quiet machine")
    parser.add_argument(
        "--pinned", action="store_true", help="add a cold phase with rayfleet pinned (probes one cluster; no target)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    load_at_start = loadavg()

    specs = [LocalClusterSpec(f"bench{i}", cpus=CPUS, memory="4GiB") for i in range(CLUSTERS)]
    stages = Stages()
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp:
        log(f"starting {CLUSTERS} local clusters ...")
        t0 = time.perf_counter()
        with local_fleet(
            specs,
            name="bench-submit",
            directory=Path(tmp) / "fleet",
            ledger=Path(tmp) / "ledger.db",
            probe_ttl_s=PROBE_TTL_S,
        ) as fleet:
            startup_s = time.perf_counter() - t0
            log(f"fleet up in {startup_s:.1f} s: {', '.join(c.address for c in fleet.clusters)}")
            clients = direct_clients(fleet)

            # warm-up: every cluster gets direct and pinned rayfleet submits (the first to a fresh cluster ~0.8 s)
            warm_first: dict[str, dict[str, float]] = {}
            for name, client in clients.items():
                firsts = [submit_direct(client) for _ in range(args.warmup)]
                t = time.perf_counter()
                for _ in range(args.warmup):
                    fleet.submit(ENTRYPOINT, {"cpu": 1}, cluster=name)
                warm_first[name] = {
                    "direct_first_ms": round(firsts[0] * 1000, 1),
                    "rayfleet_pinned_mean_ms": round((time.perf_counter() - t) / args.warmup * 1000, 1),
                }
            for _ in range(args.warmup):
                fleet.submit(ENTRYPOINT, {"cpu": 1})
            fleet.snapshots(max_age=0)  # one probe of every cluster: the cache is warm for the warm phase
            log(f"warm-up done; draining: {drain(clients, args.drain_timeout)}")

            stages.install()
            phases = []
            plan = [("warm", False), ("cold", True)] + ([("cold_pinned", True)] if args.pinned else [])
            for name, cold in plan:
                # cold_pinned: a pinned submit probes only its cluster, as if the 4 probes ran on 4 separate machines
                pin = Counter(phases[-1]["clusters_chosen"]).most_common(1)[0][0] if name == "cold_pinned" else None
                quiet = settle(args.settle)
                log(f"settled before the {name} phase: {quiet}")
                fleet.snapshots(max_age=0)
                phases.append(run_phase(name, fleet, clients, stages, args.pairs, args.gap, cold, pin))
                phases[-1]["settle_before"] = quiet
                phases[-1]["drain_after"] = drain(clients, args.drain_timeout)
                log(f"{name} phase done; drained: {phases[-1]['drain_after']}")

            log(f"settled before the probe timings: {settle(15.0)}")
            probes = probe_times(fleet, 30)

            profile = profile_cold(fleet, args.profile, args.gap) if args.profile else []
            ledger_jobs = len(fleet.jobs(limit=100000))
        log("fleet stopped")

    document = {
        "benchmark": "submit_latency",
        "command": command(),
        "date_utc": utc_now(),
        "machine": machine(),
        "source": source(),
        "parameters": {
            "clusters": CLUSTERS,
            "cluster_spec": {"cpus": CPUS, "memory": "4GiB", "gpus": 0},
            "entrypoint": ENTRYPOINT,
            "resources": "rayfleet {'cpu': 1}; direct entrypoint_num_cpus=1 (both send a version check + POST)",
            "pairs_per_phase": args.pairs,
            "warmup_per_cluster": args.warmup,
            "sleep_after_each_submit_s": args.gap,
            "probe_ttl_s": PROBE_TTL_S,
            "policy": "binpack (default); rayfleet not pinned",
            "direct_target": "the cluster rayfleet chose for the previous rayfleet submit (same cluster)",
            "order": "alternating within pairs: rayfleet first on even pairs, direct first on odd pairs",
            "timer": "time.perf_counter around the call; rayfleet returns after Ray accepted and the ledger recorded",
            "ledger": "SQLite in a temp dir",
            "quiet_machine": "before each phase, wait (at most --settle s) for 2 s in a row under 35% CPU busy",
        },
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": loadavg(),
        "fleet_startup_s": round(startup_s, 1),
        "warmup": warm_first,
        "targets": {
            k: {
                "target_ratio_p50": TARGETS[k],
                "ratio_p50": p["ratio_p50"],
                "ratio_p50_bootstrap_90ci": p["ratio_p50_bootstrap_90ci"],
                "met": p["met"],
            }
            for k, p in zip(("warm", "cold"), phases[:2], strict=True)
        },
        "phases": phases,
        "probe_ms": probes,
        "profile_cold_main_thread": profile,
        "ledger_jobs": ledger_jobs,
        "rayfleet_version": rayfleet.__version__,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    emit("submit_latency", document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
