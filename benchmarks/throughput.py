"""Throughput (issue 4; target: accepted submissions/s >= 2x a direct loop): 200 trivial jobs over 3 local clusters.

In the same run, on the same three local clusters (2 CPUs each, all sharing this machine's cores):

- direct: one single-threaded loop of ``JobSubmissionClient.submit_job`` to one cluster (Ray's own client);
- rayfleet: ``fleet.submit`` from a pool of threads over the three clusters, with the fleet's per-cluster limit on
  submissions in flight (``max_in_flight``, default 4) protecting each head; placement spreads jobs that ask for
  nothing over clusters in turn.

Accepted = the cluster answered the submission (Ray has the job). Completed = every job reached a terminal state, as
Ray reports it (one ``list_jobs`` per cluster per poll for both, so following costs the same). The trivial job is
``true`` with no resources (Ray starts it at once; rayfleet puts no launcher around a job that reserves nothing).

    .venv/bin/python benchmarks/throughput.py [--jobs 200] [--threads 12] [--max-in-flight 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray.job_submission import JobSubmissionClient

from benchmarks import _common
from rayfleet import Fleet, LocalClusterSpec, LocalFleet

SPECS = tuple(LocalClusterSpec(f"c{i}", cpus=2, memory="1GiB") for i in range(3))
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _until_done(clients: dict[str, JobSubmissionClient], ids: dict[str, set[str]], timeout: float = 900) -> float:
    """Seconds until Ray reports every job in ``ids`` (cluster -> submission ids) terminal."""
    started = time.monotonic()
    while True:
        left = 0
        for name, wanted in ids.items():
            states = {j.submission_id: str(j.status) for j in clients[name].list_jobs() if j.submission_id in wanted}
            left += sum(1 for s in wanted if states.get(s) not in TERMINAL)
        if left == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{left} jobs not done after {timeout} s")
        time.sleep(0.5)


def direct(local: LocalFleet, jobs: int) -> dict[str, float]:
    address = local.running[0].address
    client = JobSubmissionClient(address)
    client.submit_job(entrypoint="true")  # the first submission to a fresh cluster is slow (~0.8 s): not measured
    started = time.monotonic()
    ids = [client.submit_job(entrypoint="true") for _ in range(jobs)]
    accepted = time.monotonic() - started
    done = accepted + _until_done({local.running[0].name: client}, {local.running[0].name: set(ids)})
    return {"accepted_s": accepted, "completed_s": done}


def fleet_run(local: LocalFleet, workdir: Path, jobs: int, threads: int, max_in_flight: int) -> dict[str, object]:
    with Fleet.from_file(local.fleet_file, ledger=workdir / "ledger.db", max_in_flight=max_in_flight) as fleet:
        for cluster in fleet.clusters:  # warm every cluster as the direct loop warmed its one
            fleet.submit("true", cluster=cluster.name)
        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            handles = list(pool.map(lambda _: fleet.submit("true"), range(jobs)))
        accepted = time.monotonic() - started
        clients = {c.name: JobSubmissionClient(c.address) for c in local.running}
        ids: dict[str, set[str]] = {c.name: set() for c in local.running}
        for handle in handles:
            attempt = handle.attempts[-1]
            ids[attempt.cluster].add(attempt.submission_id)
        done = accepted + _until_done(clients, ids)
        return {"accepted_s": accepted, "completed_s": done, "per_cluster": {k: len(v) for k, v in ids.items()}}


def _wait_idle(local: LocalFleet) -> None:
    clients = [JobSubmissionClient(c.address) for c in local.running]
    deadline = time.monotonic() + 300
    while any(str(j.status) not in TERMINAL for c in clients for j in c.list_jobs()):
        assert time.monotonic() < deadline, "jobs of the previous phase did not end"
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=12)
    parser.add_argument("--max-in-flight", type=int, default=4)
    args = parser.parse_args()
    begun = time.time()
    load = _common.loadavg()
    with (
        tempfile.TemporaryDirectory(prefix="rf-throughput-") as tmp,
        LocalFleet(SPECS, name="throughput-bench", directory=Path(tmp) / "fleet") as local,
    ):
        plain = direct(local, args.jobs)
        print(f"direct: {plain}", file=sys.stderr)
        _wait_idle(local)
        ours = fleet_run(local, Path(tmp), args.jobs, args.threads, args.max_in_flight)
        print(f"rayfleet: {ours}", file=sys.stderr)
    rate = {
        "direct": {
            "accepted_per_s": round(args.jobs / plain["accepted_s"], 2),
            "completed_per_s": round(args.jobs / plain["completed_s"], 2),
        },
        "rayfleet": {
            "accepted_per_s": round(args.jobs / ours["accepted_s"], 2),  # type: ignore[operator]
            "completed_per_s": round(args.jobs / ours["completed_s"], 2),  # type: ignore[operator]
        },
    }
    ratio = rate["rayfleet"]["accepted_per_s"] / rate["direct"]["accepted_per_s"]
    document = {
        **_common.header("throughput", load),
        "parameters": {
            "jobs": args.jobs,
            "clusters": len(SPECS),
            "threads": args.threads,
            "max_in_flight_per_cluster": args.max_in_flight,
            "entrypoint": "true (no resources)",
        },
        "rates": rate,
        "accepted_ratio": round(ratio, 2),
        "completed_ratio": round(rate["rayfleet"]["completed_per_s"] / rate["direct"]["completed_per_s"], 2),
        "per_cluster": ours["per_cluster"],
        "target": {"accepted_ratio": 2.0, "met": ratio >= 2.0},
        "runtime_s": round(time.time() - begun, 1),
    }
    _common.emit("throughput", document)


if __name__ == "__main__":
    main()
