"""Choosing what to do when nothing fits now (pure): autoscaler headroom first, then the cheapest template."""

from __future__ import annotations

import sqlite3

import pytest

from rayfleet import Fleet, Gang, Resources
from rayfleet.capacity import ClusterSnapshot
from rayfleet.config import FleetConfig
from rayfleet.errors import NoCapacityError
from rayfleet.ledger import Ledger
from rayfleet.placement.provision import (
    ProvisionerState,
    creations,
    headroom,
    workers_for,
)
from rayfleet.states import JobState
from rayfleet.templates import ClusterTemplate, HeadSpec, WorkerGroup

A100 = WorkerGroup(name="a100", cpu=8, gpu=1, accelerator="A100", memory="64GiB", min_replicas=0, max_replicas=2)
H100X4 = WorkerGroup(name="h100", cpu=32, gpu=4, accelerator="H100", memory="256GiB", max_replicas=1)
CPU = WorkerGroup(name="cpu", cpu=16, memory="64GiB", replicas=2)

AUTO_A100 = ClusterTemplate(name="a100", mode="autoscaled", workers=[A100], cost_per_gpu_hour=3.0)
AUTO_H100 = ClusterTemplate(name="h100", mode="autoscaled", workers=[H100X4], cost_per_gpu_hour=5.0)
STATIC_CPU = ClusterTemplate(name="cpu", mode="static", workers=[CPU], cost_per_cpu_hour=0.05)
CHEAP_A100 = ClusterTemplate(name="cheap-a100", mode="autoscaled", workers=[A100], cost_per_gpu_hour=2.0)


def snap(name: str, workers: int, launching: int = 0) -> ClusterSnapshot:
    nodes = [("head", {"CPU": 2}, {})] + [(f"w{i}", {"CPU": 8, "GPU": 1}, {}) for i in range(workers)]
    return ClusterSnapshot.from_nodes(name, nodes, autoscaler={"pending_launches": {"a100": launching}})


def state(*templates: ClusterTemplate, clusters: int = 0, gpus: int = 0, max_clusters: int = 3, max_gpus: int = 16):
    return ProvisionerState("k8s", templates, max_clusters, max_gpus, clusters, gpus)


@pytest.mark.parametrize(
    ("workers", "launching", "fits", "reason"),
    [
        (0, 0, True, "can add a a100 worker (0 of 2)"),
        (1, 0, True, "(1 of 2)"),
        (1, 1, False, "at its maximum of 2 workers"),
        (2, 0, False, "at its maximum of 2 workers"),
    ],
    ids=["from-zero", "one-up", "one-launching", "full"],
)
def test_headroom_counts_workers_and_launches_against_the_templates_maximum(workers, launching, fits, reason):
    [option] = headroom(Resources(gpu=1), {"c1": AUTO_A100}, {"c1": snap("c1", workers, launching)})
    assert option.fits is fits
    assert reason in option.reason
    assert option.accelerator == ("A100" if fits else None)


def test_headroom_needs_a_worker_group_that_can_hold_the_request_and_an_autoscaled_template():
    options = headroom(
        Resources(gpu=2), {"c1": AUTO_A100, "c2": STATIC_CPU}, {"c1": snap("c1", 0), "c2": snap("c2", 0)}
    )
    assert [(o.cluster, o.fits) for o in options] == [("c1", False)]  # static clusters have no headroom to offer
    assert "no worker group" in options[0].reason
    unhealthy = headroom(Resources(gpu=1), {"c1": AUTO_A100}, {"c1": ClusterSnapshot.unreachable("c1", "down")})
    assert not unhealthy[0].fits


def test_the_cheapest_template_that_can_hold_the_request_comes_first():
    options = creations(Resources(gpu=1, accelerators={"A100", "H100"}), [state(AUTO_H100, AUTO_A100, CHEAP_A100)])
    assert [(o.template, o.fits) for o in options] == [("cheap-a100", True), ("a100", True), ("h100", True)]
    assert options[0].price == 2.0 and options[0].accelerator == "A100"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (Resources(gpu=4), ["h100"]),
        (Resources(gpu=1, accelerators={"H100"}), ["h100"]),
        (Resources(cpu=12), ["cpu", "h100"]),
        (Resources(cpu=1), ["a100", "cpu", "h100"]),  # the head of every template can hold it
        (Resources(gpu=8), []),
    ],
    ids=["four-gpus", "model", "big-cpu", "small-cpu", "too-big"],
)
def test_only_templates_with_a_node_that_can_hold_the_request_fit(request_, expected):
    options = creations(request_, [state(AUTO_A100, AUTO_H100, STATIC_CPU)])
    assert sorted(o.template for o in options if o.fits) == expected


def test_caps_on_clusters_and_gpus_are_respected_with_a_reason():
    at_cap = creations(Resources(gpu=1), [state(AUTO_A100, clusters=3, max_clusters=3)])
    assert not at_cap[0].fits and "cap of 3 clusters" in at_cap[0].reason
    gpus = creations(Resources(gpu=1), [state(AUTO_A100, gpus=15, max_gpus=16)])
    assert not gpus[0].fits and "cap of 16 GPUs (15 in use)" in gpus[0].reason


def test_a_head_that_offers_no_cpus_does_not_hold_cpu_jobs():
    no_head = ClusterTemplate(name="gpu-only", head=HeadSpec(ray_cpus=0), workers=[A100], mode="autoscaled")
    [option] = creations(Resources(cpu=1), [state(no_head)])
    assert option.fits and "a a100 worker" in option.reason


# ----- gangs on clusters made or grown for them ---------------------------------------------------------------------

GANG2 = Gang.of(2, Resources(cpu=4, gpu=1), strategy="STRICT_SPREAD")


def test_a_gang_plans_one_new_worker_per_bundle_within_the_groups_maximum():
    assert workers_for(AUTO_A100, GANG2) == (2, "A100", ("a100", "a100"))
    three = Gang.of(3, Resources(cpu=4, gpu=1), strategy="SPREAD")
    assert "cannot add a worker for every bundle" in workers_for(AUTO_A100, three)  # max 2 A100 workers
    assert "STRICT_PACK" in workers_for(AUTO_A100, Gang.of(2, Resources(gpu=1), strategy="STRICT_PACK"))
    assert "no worker group" in workers_for(STATIC_CPU, GANG2)


def test_gpu_bundles_of_a_gang_get_workers_of_one_model():
    mixed = ClusterTemplate(
        name="mixed",
        mode="autoscaled",
        workers=[
            WorkerGroup(name="a100", cpu=8, gpu=1, accelerator="A100", memory="64GiB", max_replicas=1),
            WorkerGroup(name="h100", cpu=8, gpu=1, accelerator="H100", memory="64GiB", max_replicas=1),
        ],
    )
    assert isinstance(workers_for(mixed, GANG2), str)  # one of each model: not one model for both
    assert workers_for(mixed, Gang.of(1, Resources(gpu=1, accelerators={"H100"}))) == (1, "H100", ("h100",))


def test_gang_headroom_needs_room_for_every_bundle_at_once():
    [ok] = headroom(GANG2, {"c1": AUTO_A100}, {"c1": snap("c1", 0)})
    assert ok.fits and ok.accelerator == "A100" and "add 2 workers" in ok.reason
    [short] = headroom(GANG2, {"c1": AUTO_A100}, {"c1": snap("c1", 1)})
    assert not short.fits and "needs 2 more workers, has room for 1" in short.reason


def test_gang_creations_price_every_bundle_and_respect_the_caps():
    options = creations(GANG2, [state(AUTO_A100, CHEAP_A100, STATIC_CPU)])
    assert [(o.template, o.fits, o.workers) for o in options][:2] == [("cheap-a100", True, 2), ("a100", True, 2)]
    assert options[0].price == pytest.approx(4.0)
    capped = creations(GANG2, [state(AUTO_A100, clusters=3)])
    assert not capped[0].fits and "cap of 3 clusters" in capped[0].reason


def cap_of_one(tmp_path):
    return FleetConfig.build(
        name="cap",
        provisioners=[
            {
                "kind": "local",
                "directory": str(tmp_path / "clusters"),
                "max_clusters": 1,
                "templates": [{"name": "gen", "mode": "autoscaled", "workers": [{"name": "g", "cpu": 1, "gpu": 1}]}],
            }
        ],
    )


def test_a_creation_under_way_elsewhere_counts_against_the_cap(tmp_path):
    # another process has recorded a cluster it is creating (CREATING, not READY) from a template this fleet does not
    # know: at max_clusters 1, this fleet must not start a second one, and says why
    other = Ledger(tmp_path / "ledger.db")
    assert other.add_managed("elsewhere", provisioner="local", template="old", namespace="", idle_ttl_s=60, cap=1)
    with (
        Fleet(config=cap_of_one(tmp_path), ledger=Ledger(tmp_path / "ledger.db")) as fleet,
        pytest.raises(NoCapacityError, match="at its cap of 1 clusters"),
    ):
        fleet.submit("true", {"gpu": 1})
    # recorded before any creation, so no record means nothing was created
    assert [(c.name, c.state) for c in other.managed(live_only=False)] == [("elsewhere", "CREATING")]
    assert other.jobs() == []  # and the refused job left nothing behind
    other.close()


def test_a_job_waits_for_a_creation_under_way_whose_template_holds_it(tmp_path, caplog):
    other = Ledger(tmp_path / "ledger.db")
    assert other.add_managed("elsewhere", provisioner="local", template="gen", namespace="", idle_ttl_s=60, cap=1)
    with Fleet(config=cap_of_one(tmp_path), ledger=Ledger(tmp_path / "ledger.db")) as fleet:
        job = fleet.submit("true", {"gpu": 1})
        assert (job.record.state, job.record.awaits, job.cluster) == (JobState.PROVISIONING, "elsewhere", None)
        assert "still wait" not in caplog.text
    assert [(c.name, c.state) for c in other.managed(live_only=False)] == [("elsewhere", "CREATING")]
    # closing the fleet while its job still waits says so, and names what carries it on
    assert "1 job(s) submitted here still wait (1 PROVISIONING)" in caplog.text
    assert "rayfleet dispatch" in caplog.text
    other.close()


def test_a_creation_abandoned_long_ago_frees_its_place_under_the_cap(tmp_path):
    path = tmp_path / "ledger.db"
    other = Ledger(path)
    assert other.add_managed("crashed", provisioner="local", template="gen", namespace="", idle_ttl_s=60, cap=1)
    with sqlite3.connect(path) as conn:  # its creator died an hour ago, past any ready timeout
        conn.execute("UPDATE managed_clusters SET created_at = created_at - 3600")
    with Fleet(config=cap_of_one(tmp_path), ledger=Ledger(path)) as fleet:
        _, made = fleet.plan({"gpu": 1})
    assert [(c.template, c.fits) for c in made] == [("gen", True)]
    [record] = other.managed(live_only=False)
    assert (record.state, record.detail) == ("FAILED", "creator gone")
    other.close()
