"""Time from a new RayCluster's ready condition to its job being accepted by Ray (issue 3; target <= 1 s).

A real `kubernetes` client against the project's test Kubernetes API server, and the test operator that turns each
RayCluster into a real local Ray cluster. For each run a job that fits nowhere makes rayfleet create a RayCluster;
a thread reads the API server's store directly (no HTTP, every millisecond) and notes when the status first became
ready. Then: when rayfleet saw it (the ledger's ``ready_at``; `JobHandle.wait` reads the RayCluster every 0.25 s
while its job waits for it), and when Ray accepted the job (its SUBMITTED transition).

    .venv/bin/python benchmarks/ready_to_submit.py [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common
from rayfleet import Fleet
from rayfleet.config import FleetConfig
from rayfleet.ledger import Ledger
from rayfleet.provisioning.kuberay import is_ready
from tests.k8s.apiserver import KubeAPIServer
from tests.k8s.operator import KubeRayTestOperator

TEMPLATE = {
    "name": "gpu",
    "mode": "static",
    "head": {"cpu": 1, "memory": "1GiB", "ray_cpus": 1},
    "workers": [{"name": "a100", "cpu": 1, "gpu": 1, "accelerator": "A100", "memory": "1GiB", "replicas": 1}],
    "idle_ttl_s": 0,
}


def one_run(server: KubeAPIServer, workdir: Path, n: int) -> dict[str, float]:
    kubeconfig = server.kubeconfig(workdir / f"kubeconfig-{n}", context="test")
    config = FleetConfig.build(
        name="bench",
        provisioners=[{"name": "k8s", "kubeconfig": str(kubeconfig), "context": "test", "templates": [TEMPLATE]}],
    )
    ledger = Ledger(workdir / f"ledger-{n}.db")
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch_store() -> None:
        while not stop.is_set():
            for obj in server.objects("rayclusters", "default"):
                name = obj["metadata"]["name"]
                if name not in seen and is_ready(obj):
                    seen[name] = time.time()
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_store, daemon=True)
    watcher.start()
    with Fleet(config=config, ledger=ledger) as fleet:
        handle = fleet.submit("true", {"gpu": 1})  # returns at once; wait() carries the creation on
        handle.wait(timeout=120)
        stop.set()
        watcher.join()
        [record] = ledger.managed()
        ready = seen[handle.cluster]
        submitted = next(at for state, at, _ in ledger.history(handle.submission_id) if state.value == "SUBMITTED")
        result = {"ready_to_seen_s": record.ready_at - ready, "ready_to_submitted_s": submitted - ready}
        fleet._dispatcher.retire(handle.cluster)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    started = time.time()
    load_start = _common.loadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="rf-ready-") as tmp, KubeAPIServer() as server:
        operator = KubeRayTestOperator(server.api_client(), Path(tmp) / "operator")
        operator.start()
        try:
            for n in range(args.runs):
                runs.append(one_run(server, Path(tmp), n))
                print(f"run {n}: {runs[-1]}", file=sys.stderr)
        finally:
            operator.stop()
    seen = _common.stats_ms([r["ready_to_seen_s"] for r in runs])
    submitted = _common.stats_ms([r["ready_to_submitted_s"] for r in runs])
    document = {
        "benchmark": "ready_to_submit",
        "command": _common.command(),
        "date_utc": _common.utc_now(),
        "machine": _common.machine(),
        "source": _common.source(),
        "loadavg_at_start": load_start,
        "loadavg_at_end": _common.loadavg(),
        "parameters": {"runs": args.runs, "template": TEMPLATE, "access": "service_ip", "api": "tests/k8s apiserver"},
        "ready_to_watch_seen_ms": seen,
        "ready_to_job_accepted_ms": submitted,
        "target": {"p50_ms": 1000, "met": submitted["p50"] <= 1000},
        "runs": runs,
        "runtime_s": round(time.time() - started, 1),
    }
    _common.emit("ready_to_submit", document)


if __name__ == "__main__":
    main()
