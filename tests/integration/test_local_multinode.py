"""Local clusters with more than one node: fixed workers that join a head, and an autoscaling GPU cluster.

One cluster of each kind, started once for this module (each costs about 1 GiB and 10-20 s on 2 cores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import requests
from ray.job_submission import JobStatus, JobSubmissionClient

from rayfleet import LocalAutoscaling, LocalClusterSpec, LocalFleet, LocalNodeSpec, LocalWorkerType
from tests.polling import poll

pytestmark = pytest.mark.integration

MULTINODE = LocalClusterSpec(
    "gang",
    cpus=1,
    memory="1GiB",
    workers=(
        LocalNodeSpec(cpus=1, memory="512MiB", resources={"worker_only": 1}),
        LocalNodeSpec(cpus=2, gpus=1, accelerator="T4", memory="768MiB"),
    ),
)
AUTOSCALING = LocalClusterSpec(
    "elastic",
    cpus=1,
    memory="1GiB",
    autoscaling=LocalAutoscaling(
        {"a100": LocalWorkerType(cpus=1, gpus=1, accelerator="A100", max_workers=1)}, idle_timeout_s=5
    ),
)
RAYLET = str(Path(ray.__file__).parent / "core/src/ray/raylet/raylet")
PRINT_GPUS = "python -c \"import os; print('visible', os.environ.get('CUDA_VISIBLE_DEVICES'))\""


def _fleet(spec: LocalClusterSpec) -> Iterator[LocalFleet]:
    running = LocalFleet([spec], name=f"{spec.name}-{os.getpid()}")
    with running:
        yield running


@pytest.fixture(scope="module")
def multinode() -> Iterator[LocalFleet]:
    yield from _fleet(MULTINODE)


@pytest.fixture(scope="module")
def autoscaling() -> Iterator[LocalFleet]:
    yield from _fleet(AUTOSCALING)


def nodes(address: str) -> dict[str, dict[str, list[float]]]:
    """Node id -> resource -> [used, total], as the dashboard reports them."""
    status = requests.get(f"{address}/api/cluster_status", timeout=5).json()
    return status["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]


def wait_job(client: JobSubmissionClient, job_id: str, timeout: float = 90) -> JobStatus:
    poll(lambda: client.get_job_status(job_id).is_terminal(), timeout=timeout)
    return client.get_job_status(job_id)


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def tree(roots: list[int]) -> dict[int, int]:
    """The roots and all their descendants: pid -> start time."""
    table = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := stat(int(p)))}
    found, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][2]
        todo += [child for child, (_, parent, _) in table.items() if parent == pid]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # it has exited since
        return ""


def running(pid: int, started: int) -> bool:
    """Whether the process still runs (a zombie has exited; only its parent has not collected it yet)."""
    now = stat(pid)
    return now is not None and now[2] == started and now[0] != "Z"


def test_workers_join_the_head_and_take_work_only_they_can_do(multinode: LocalFleet) -> None:
    cluster = multinode.running[0]
    by_node = nodes(cluster.address)

    assert len(by_node) == 3 and len(cluster.workers) == 2
    totals = sorted((r["CPU"][1], r.get("GPU", [0, 0])[1], r["memory"][1]) for r in by_node.values())
    assert totals == [(1, 0, 512 * 2**20), (1, 0, 2**30), (2, 1, 768 * 2**20)]
    (worker_only_node,) = [node for node, r in by_node.items() if "workerOnly" in r]  # the dashboard camel-cases keys
    assert any("acceleratorType:T4" in r for r in by_node.values())

    client = JobSubmissionClient(cluster.address)
    job_id = client.submit_job(entrypoint="python -c 'print(6 * 7)'", entrypoint_resources={"worker_only": 1})

    assert wait_job(client, job_id) == JobStatus.SUCCEEDED
    assert "42" in client.get_job_logs(job_id)
    assert client.get_job_info(job_id).driver_node_id == worker_only_node


def test_gpu_worker_is_added_for_a_gpu_job_and_removed_when_idle(autoscaling: LocalFleet) -> None:
    cluster = autoscaling.running[0]
    assert [r.get("GPU", [0, 0])[1] for r in nodes(cluster.address).values()] == [0]  # the head alone, no GPU

    client = JobSubmissionClient(cluster.address)
    job_id = client.submit_job(entrypoint=PRINT_GPUS, entrypoint_num_gpus=1)
    added = poll(lambda: next((n for n, r in nodes(cluster.address).items() if "acceleratorType:A100" in r), None))

    assert wait_job(client, job_id) == JobStatus.SUCCEEDED
    assert "visible 0" in client.get_job_logs(job_id)
    assert client.get_job_info(job_id).driver_node_id == added
    poll(lambda: added not in nodes(cluster.address), timeout=60)  # idle_timeout_s=5, then the autoscaler's next pass
    assert len(nodes(cluster.address)) == 1


def test_two_autoscaling_clusters_scale_up_at_once(autoscaling: LocalFleet, tmp_path: Path) -> None:
    """Fake nodes take OS-assigned ports (not the fixed 52365), so a second autoscaling cluster can run beside one."""
    second = LocalClusterSpec("elastic-2", cpus=1, memory="1GiB", autoscaling=AUTOSCALING.autoscaling)
    with LocalFleet([second], name=f"second-{os.getpid()}", directory=tmp_path) as other:
        clients = [JobSubmissionClient(f.running[0].address) for f in (autoscaling, other)]
        jobs = [c.submit_job(entrypoint=PRINT_GPUS, entrypoint_num_gpus=1) for c in clients]
        assert [wait_job(c, j) for c, j in zip(clients, jobs, strict=True)] == [JobStatus.SUCCEEDED] * 2
        assert all("visible 0" in c.get_job_logs(j) for c, j in zip(clients, jobs, strict=True))
    # leave the shared cluster as the next test expects it: its idle GPU node removed again
    poll(lambda: len(nodes(autoscaling.running[0].address)) == 1, timeout=60)


def test_down_from_the_state_file_stops_heads_workers_and_fake_nodes(
    multinode: LocalFleet, autoscaling: LocalFleet
) -> None:
    """Last in this module: it stops both shared clusters (as ``rayfleet local down`` would, from another object)."""
    elastic = autoscaling.running[0]
    client = JobSubmissionClient(elastic.address)
    job = client.submit_job(entrypoint="sleep 600", entrypoint_num_gpus=1)  # keeps a fake GPU node up through down()
    poll(lambda: client.get_job_status(job) == JobStatus.RUNNING, timeout=90)

    recorded = [c.pid for f in (multinode, autoscaling) for c in f.running]
    recorded += [w.pid for c in multinode.running for w in c.workers]
    processes = tree(recorded)
    (monitor,) = [p for p in tree([elastic.pid]) if "autoscaler/_private/monitor.py" in cmdline(p)]
    fake_raylets = [p for p in tree([monitor]) if cmdline(p).startswith(RAYLET)]
    assert len(recorded) == 4 and len(fake_raylets) == 1

    for fleet in (multinode, autoscaling):
        assert LocalFleet([], name=fleet.name).down() == [fleet.running[0].name]

    assert [p for p, started in processes.items() if running(p, started)] == []
    assert not any(os.path.exists(c.temp_dir) for f in (multinode, autoscaling) for c in f.running)
