"""Kubernetes API faults (issue 7, part 3): 409, 410, 429 + Retry-After, 5xx, 401/403/404/422, timeouts, a slow API,
watches that fail or are refused. Retries are bounded, no RayCluster is leaked, and errors say what to do.

The real `kubernetes` client talks to the test API server (tests/k8s/apiserver.py) with injected faults. No Ray
cluster is started here: where a RayCluster must become ready, the test plays the operator and writes its status
through the API (the status subresource), as KubeRay would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from rayfleet import Fleet, JobState, NoCapacityError
from rayfleet.config import KubeRayConfig
from rayfleet.errors import ProvisioningError
from rayfleet.ledger import Ledger
from rayfleet.provisioning.base import ManagedCluster
from rayfleet.provisioning.kuberay import KubeRayProvisioner
from rayfleet.templates import ClusterTemplate, render
from tests.polling import poll

GROUP, VERSION, PLURAL, NS = "ray.io", "v1", "rayclusters", "default"
ONE = "*/namespaces/default/rayclusters/*"  # one RayCluster (GET, DELETE, PATCH)
ALL = "*/namespaces/default/rayclusters"  # the collection (POST, list, watch)
TEMPLATE = {
    "name": "gpu",
    "head": {"cpu": 1, "memory": "1GiB", "ray_cpus": 1},
    "workers": [{"name": "a100", "cpu": 1, "gpu": 1, "accelerator": "A100", "memory": "1GiB", "replicas": 1}],
    "ready_timeout_s": 120,
}
READY_STATUS = {
    "state": "ready",
    "head": {"serviceIP": "127.0.0.1"},
    "endpoints": {"dashboard": "18265"},
    "conditions": [{"type": "RayClusterProvisioned", "status": "True"}],
}


@pytest.fixture()
def provisioner(k8s_api: Any) -> Iterator[KubeRayProvisioner]:
    """A provisioner of fleet 'e2e' with short request timeouts, on the test API server."""
    config = KubeRayConfig(name="k8s", request_timeout_s=0.5, templates=[ClusterTemplate(**TEMPLATE)])
    p = KubeRayProvisioner(config, fleet="e2e", configuration=k8s_api.configuration())
    yield p
    k8s_api.faults.clear()
    p.close()


def objects_api(k8s_api: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api.api_client())


def managed(name: str) -> ManagedCluster:
    return ManagedCluster(name, "k8s", "gpu", NS, time.time())


def create_foreign(k8s_api: Any, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A RayCluster someone else made (through the API, as they would)."""
    manifest = render(ClusterTemplate(**TEMPLATE), name=name, namespace=NS, fleet="x", created_by="someone")
    manifest["metadata"]["labels"] = labels
    return objects_api(k8s_api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, manifest)


def mark_ready_when(k8s_api: Any, name: str, condition: Any) -> threading.Thread:
    """Play the operator: once ``condition()`` holds, write a ready status on the RayCluster."""

    def run() -> None:
        poll(condition, timeout=30, interval=0.05)
        objects_api(k8s_api).patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, PLURAL, name, {"status": READY_STATUS}
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def fleet_file(tmp_path: Path, k8s_api: Any, **provisioner: Any) -> Path:
    data = {
        "name": "e2e",
        "provisioners": [
            {
                "name": "k8s",
                "kubeconfig": str(k8s_api.kubeconfig(tmp_path / "kubeconfig", context="test")),
                "context": "test",
                "namespace": NS,
                "request_timeout_s": 0.5,
                "templates": [{**TEMPLATE, "ready_timeout_s": 5}],
                **provisioner,
            }
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ----- 5xx, 429, timeouts: retried, bounded ------------------------------------------------------------------------


def test_a_persistent_500_on_create_is_retried_five_times_then_a_clear_error_and_nothing_exists(
    k8s_api: Any, provisioner: KubeRayProvisioner
) -> None:
    k8s_api.faults.fail("POST", ALL, 500, times=None, message="etcd is unhappy")
    template = provisioner.templates[0]
    started = time.monotonic()

    with pytest.raises(ProvisioningError) as caught:
        provisioner.create(template, "rf-gpu-500500")

    assert time.monotonic() - started < 30  # stop_after_delay(30) bounds it; backoff keeps it far lower
    assert len(k8s_api.requests_matching("POST", ALL)) == 5  # retry.KUBERNETES: stop_after_attempt(5)
    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value) and "etcd is unhappy" in str(caught.value)  # the server's own words
    assert "To fix:" in str(caught.value)
    assert k8s_api.objects(PLURAL, NS) == []


def test_a_429_is_retried_after_the_servers_retry_after(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    k8s_api.faults.fail("GET", ALL, 429, times=1, retry_after=1.5)
    started = time.monotonic()

    assert provisioner.owned() == []

    assert time.monotonic() - started >= 1.4  # it waited as asked (its own backoff would be ~0.2 s)
    assert [r.status for r in k8s_api.requests_matching("GET", ALL)] == [429, 200]


def test_403_and_409_are_not_retried(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    k8s_api.faults.fail("GET", ALL, 403, times=None)

    with pytest.raises(ProvisioningError) as caught:
        provisioner.owned()

    assert len(k8s_api.requests_matching("GET", ALL)) == 1
    assert caught.value.status == 403
    assert "rayclusters" in caught.value.hint and "verbs" in caught.value.hint  # names the missing RBAC rule


def test_a_silent_api_server_fails_a_delete_in_bounded_time(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    create_foreign(k8s_api, "rf-gpu-5110e7", {"app.kubernetes.io/managed-by": "rayfleet", "rayfleet.io/fleet": "e2e"})
    k8s_api.faults.delay("*", ONE, 5.0, times=None)  # never answers within the 0.5 s request timeout
    started = time.monotonic()

    with pytest.raises(ProvisioningError, match="did not answer") as caught:
        provisioner.delete(managed("rf-gpu-5110e7"))

    assert time.monotonic() - started < 15
    assert len(k8s_api.requests_matching("GET", ONE)) == 5
    assert "To fix:" in str(caught.value)


def test_a_slow_create_retried_after_timeouts_makes_exactly_one_raycluster(
    k8s_api: Any, provisioner: KubeRayProvisioner
) -> None:
    k8s_api.faults.delay("POST", ALL, 2.0, times=2)  # the first two answers come after the client gave up

    provisioner.create(provisioner.templates[0], "rf-gpu-510w00")

    poll(lambda: all(r.status is not None for r in k8s_api.requests_matching("POST", ALL)), timeout=15)
    statuses = sorted(r.status for r in k8s_api.requests_matching("POST", ALL))
    assert statuses == [201, 409, 409]  # the retry created it; the late originals met the name taken
    assert [o["metadata"]["name"] for o in k8s_api.objects(PLURAL, NS)] == ["rf-gpu-510w00"]


# ----- clear errors for the statuses that are the user's to fix ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "says"),
    [
        (401, "Unauthorized", "credentials"),
        (404, "the server could not find the requested resource", "CRD rayclusters.ray.io"),
        (422, "spec.headGroupSpec.template: Required value", "template's fields"),
    ],
    ids=["401", "404", "422"],
)
def test_a_refused_create_names_the_status_the_servers_words_and_the_fix(
    k8s_api: Any, provisioner: KubeRayProvisioner, status: int, message: str, says: str
) -> None:
    k8s_api.faults.fail("POST", ALL, status, times=None, message=message)

    with pytest.raises(ProvisioningError) as caught:
        provisioner.create(provisioner.templates[0], "rf-gpu-4xx4xx")

    assert len(k8s_api.requests_matching("POST", ALL)) == 1  # 4xx: no retry
    assert caught.value.status == status
    assert f"HTTP {status}" in caught.value.message and message in caught.value.message
    assert says in caught.value.hint


# ----- 409: a name clash --------------------------------------------------------------------------------------------


def test_409_for_a_raycluster_this_fleet_owns_reuses_it(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    name = "rf-gpu-409409"
    template = provisioner.templates[0]
    ours = render(template, name=name, namespace=NS, fleet="e2e", created_by="earlier-try")
    objects_api(k8s_api).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, ours)  # a lost answer's object

    cluster = provisioner.create(template, name)

    assert cluster.name == name
    assert [r.status for r in k8s_api.requests_matching("POST", ALL)] == [201, 409]
    assert len(k8s_api.objects(PLURAL, NS)) == 1


def test_409_for_someone_elses_raycluster_is_refused_and_it_is_left_alone(
    k8s_api: Any, provisioner: KubeRayProvisioner
) -> None:
    foreign = create_foreign(
        k8s_api, "rf-gpu-f0e1f0", {"app.kubernetes.io/managed-by": "rayfleet", "rayfleet.io/fleet": "other"}
    )

    with pytest.raises(ProvisioningError, match="not this fleet's") as caught:
        provisioner.create(provisioner.templates[0], "rf-gpu-f0e1f0")

    assert caught.value.status == 409  # the dispatcher takes another name on 409
    [stored] = k8s_api.objects(PLURAL, NS)
    assert stored["metadata"]["uid"] == foreign["metadata"]["uid"]
    assert stored["metadata"]["labels"] == foreign["metadata"]["labels"]
    assert k8s_api.requests_matching("DELETE") == []


# ----- watches: 410, 429, 5xx, refused, dropped ---------------------------------------------------------------------


def test_readiness_survives_410_and_429_on_the_watch(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    name = "rf-gpu-410429"
    provisioner.create(provisioner.templates[0], name)
    k8s_api.faults.fail("WATCH", ALL, 410, times=1)
    k8s_api.faults.fail("WATCH", ALL, 429, times=1, retry_after=1)
    watches = lambda: k8s_api.requests_matching("WATCH", ALL)  # noqa: E731
    operator = mark_ready_when(k8s_api, name, lambda: len(watches()) >= 3)  # after both faults, while it watches
    started = time.monotonic()

    cluster = provisioner.wait_ready(managed(name), timeout=30)

    operator.join(timeout=5)
    assert cluster.address == "http://127.0.0.1:18265"
    assert [r.status for r in watches()][:2] == [410, 429]
    assert time.monotonic() - started >= 0.9  # the 429's Retry-After was honoured


def test_a_watch_that_keeps_failing_is_backed_off_not_hammered(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    name = "rf-gpu-503503"
    provisioner.create(provisioner.templates[0], name)
    k8s_api.faults.fail("WATCH", ALL, 503, times=None)

    with pytest.raises(ProvisioningError, match="not ready within 4 s"):
        provisioner.wait_ready(managed(name), timeout=4)

    # pauses of 0.25, 0.5, 1, 2 s: about 5 watches in 4 s (without backoff: thousands)
    assert 3 <= len(k8s_api.requests_matching("WATCH", ALL)) <= 8
    assert len(k8s_api.requests_matching("GET", ONE)) <= 9


def test_readiness_survives_watches_dropped_as_soon_as_they_open(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    name = "rf-gpu-d40bbe"
    provisioner.create(provisioner.templates[0], name)
    stop = threading.Event()

    def drop_every_watch() -> None:
        while not stop.wait(0.02):  # the disruptor's pace, until the test ends it
            k8s_api.faults.drop_watches(abrupt=True)

    dropper = threading.Thread(target=drop_every_watch, daemon=True)
    dropper.start()
    mark_ready_when(k8s_api, name, lambda: len(k8s_api.requests_matching("WATCH", ALL)) >= 3)
    try:
        cluster = provisioner.wait_ready(managed(name), timeout=30)
    finally:
        stop.set()
        dropper.join(timeout=5)

    assert cluster.address == "http://127.0.0.1:18265"
    assert len(k8s_api.requests_matching("WATCH", ALL)) < 40  # resumed with pauses, not in a tight loop


def test_a_watch_refused_403_is_a_clear_error(k8s_api: Any, provisioner: KubeRayProvisioner) -> None:
    k8s_api.faults.fail("WATCH", ALL, 403, times=None)  # a Role without the 'watch' verb
    provisioner.create(provisioner.templates[0], "rf-gpu-403403")
    with pytest.raises(ProvisioningError) as caught:
        provisioner.wait_ready(managed("rf-gpu-403403"), timeout=10)
    assert caught.value.status == 403 and "watch RayCluster" in str(caught.value)
    provisioner.delete(managed("rf-gpu-403403"))


def test_a_raycluster_that_fails_while_starting_is_deleted_and_its_job_fails_with_the_reason(
    k8s_api: Any, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet.from_file(fleet_file(tmp_path, k8s_api), ledger=ledger) as fleet:
        handle = fleet.submit("true", {"gpu": 1})
        [name] = [o["metadata"]["name"] for o in k8s_api.objects(PLURAL, NS)]
        objects_api(k8s_api).patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, PLURAL, name, {"status": {"state": "failed", "reason": "image pull backoff"}}
        )
        assert handle.wait(timeout=30) is JobState.FAILED

    assert (
        f"cluster {name} could not be created" in handle.record.reason and "image pull backoff" in handle.record.reason
    )
    assert k8s_api.objects(PLURAL, NS) == []  # created, then deleted: nothing leaked
    assert [c.state for c in ledger.managed(live_only=False)] == ["FAILED"]
    assert handle.attempts == ()


def test_a_create_whose_answer_is_lost_is_collected_by_gc(k8s_api: Any, tmp_path: Path) -> None:
    """The API creates the RayCluster only after rayfleet gave up waiting (a slow API): the dispatcher's clean-up
    finds nothing yet, the ledger records the cluster FAILED, and `gc` then deletes what landed."""
    k8s_api.faults.delay("POST", ALL, 1.5, times=None)
    path = fleet_file(tmp_path, k8s_api)
    ledger = Ledger(tmp_path / "ledger.db")
    with Fleet.from_file(path, ledger=ledger) as fleet:
        with pytest.raises(NoCapacityError, match="did not answer"):
            fleet.submit("true", {"gpu": 1})
        poll(lambda: all(r.status is not None for r in k8s_api.requests_matching("POST", ALL)), timeout=30)
        landed = [o["metadata"]["name"] for o in k8s_api.objects(PLURAL, NS)]
        assert len(landed) == 1  # five tries, one name: one object
        assert [c.state for c in ledger.managed(live_only=False)] == ["FAILED"]

        assert fleet.gc() == landed

    assert k8s_api.objects(PLURAL, NS) == []


# ----- ownership guards every delete ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels",
    [{}, {"app.kubernetes.io/managed-by": "rayfleet", "rayfleet.io/fleet": "other"}, {"rayfleet.io/fleet": "e2e"}],
    ids=["no-labels", "another-fleet", "not-managed-by-rayfleet"],
)
def test_a_raycluster_this_fleet_does_not_own_is_never_deleted(
    k8s_api: Any, provisioner: KubeRayProvisioner, labels: dict[str, str]
) -> None:
    create_foreign(k8s_api, "rf-gpu-0e0e0e", labels)

    with pytest.raises(ProvisioningError, match="not owned by fleet e2e"):
        provisioner.delete(managed("rf-gpu-0e0e0e"))

    assert provisioner.owned() == []
    assert len(k8s_api.objects(PLURAL, NS)) == 1
    assert k8s_api.requests_matching("DELETE") == []


def test_gc_all_deletes_only_this_fleets_rayclusters(k8s_api: Any, tmp_path: Path) -> None:
    owned = {"app.kubernetes.io/managed-by": "rayfleet", "rayfleet.io/fleet": "e2e"}
    create_foreign(k8s_api, "rf-gpu-a11111", owned)
    create_foreign(k8s_api, "rf-gpu-b22222", {**owned, "rayfleet.io/fleet": "other"})
    create_foreign(k8s_api, "rf-gpu-c33333", {})
    with Fleet.from_file(fleet_file(tmp_path, k8s_api), ledger=tmp_path / "l.db") as fleet:
        assert fleet.gc(everything=True) == ["rf-gpu-a11111"]

    assert sorted(o["metadata"]["name"] for o in k8s_api.objects(PLURAL, NS)) == ["rf-gpu-b22222", "rf-gpu-c33333"]


def test_a_delete_is_conditional_on_the_uid_whose_labels_were_checked(
    k8s_api: Any, provisioner: KubeRayProvisioner
) -> None:
    name = "rf-gpu-u1d000"
    provisioner.create(provisioner.templates[0], name)
    [stored] = k8s_api.objects(PLURAL, NS)

    provisioner.delete(managed(name))

    [request] = k8s_api.requests_matching("DELETE", ONE)
    assert request.body["preconditions"] == {"uid": stored["metadata"]["uid"]}  # a replaced object is not deleted
    assert k8s_api.objects(PLURAL, NS) == []
