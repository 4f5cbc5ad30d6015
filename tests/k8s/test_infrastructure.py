"""The Kubernetes test infrastructure itself: the API server through the real client, faults, and the test operator.

At most one real Ray cluster is started in this file (test_operator_turns_a_raycluster_into_a_real_ray_cluster).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import urllib3
from kubernetes import client, config, dynamic, watch
from kubernetes.client.exceptions import (
    ApiException,
    ConflictException,
    ForbiddenException,
    NotFoundException,
    ServiceException,
    UnauthorizedException,
)

from tests import polling
from tests.k8s.apiserver import KubeAPIServer
from tests.k8s.operator import KubeRayTestOperator, UnsupportedSpec, translate

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
NS = "default"


def raycluster(
    name: str | None = "rc",
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    head_params: dict[str, str] | None = None,
    head_limits: dict[str, str] | None = None,
    workers: list[dict[str, Any]] | None = None,
    generate_name: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": labels or {}, "annotations": annotations or {}}
    if name:
        meta["name"] = name
    if generate_name:
        meta["generateName"] = generate_name
    head_container = {"name": "ray-head", "image": "rayproject/ray:2.60.0", "resources": {"limits": head_limits or {}}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": meta,
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": head_params or {},
                "template": {"spec": {"containers": [head_container]}},
            },
            "workerGroupSpecs": workers or [],
        },
    }


def worker_group(
    name: str,
    replicas: int,
    *,
    params: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    container = {"name": "ray-worker", "resources": {"limits": limits or {}}}
    return {
        "groupName": name,
        "replicas": replicas,
        "minReplicas": 0,
        "maxReplicas": max(replicas, 4),
        "rayStartParams": params or {},
        "template": {"spec": {"containers": [container], **extra}},
    }


def poll(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    return polling.poll(condition, timeout, interval)


@pytest.fixture()
def objects(k8s_api: KubeAPIServer) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s_api.api_client())


def create(objects: client.CustomObjectsApi, body: dict[str, Any], namespace: str = NS) -> dict[str, Any]:
    return objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def status_reason(error: ApiException) -> str:
    return json.loads(error.body)["reason"]


# ----- the API server through the real client ---------------------------------------------------------------------


def test_create_answers_201_and_fills_metadata(objects: client.CustomObjectsApi) -> None:
    body = raycluster("a", labels={"team": "x"})
    body["status"] = {"state": "ready"}  # the status subresource owns .status: a create must not set it
    created, code, _ = objects.create_namespaced_custom_object_with_http_info(GROUP, VERSION, NS, PLURAL, body)
    assert code == 201
    meta = created["metadata"]
    assert meta["name"] == "a" and meta["namespace"] == NS and meta["generation"] == 1
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created
    generated = create(objects, raycluster(None, generate_name="burst-"))
    assert (
        generated["metadata"]["name"].startswith("burst-") and len(generated["metadata"]["name"]) == len("burst-") + 5
    )
    assert generated["metadata"]["uid"] != meta["uid"]
    assert int(generated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


def test_create_rejects_what_a_real_api_server_rejects(objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("a"))
    with pytest.raises(ConflictException) as taken:
        create(objects, raycluster("a"))
    assert status_reason(taken.value) == "AlreadyExists"
    with pytest.raises(ApiException) as bad_name:
        create(objects, raycluster("Not_A_Name"))
    assert bad_name.value.status == 422
    no_kind = raycluster("b")
    del no_kind["kind"]
    with pytest.raises(ApiException) as kindless:
        create(objects, no_kind)
    assert kindless.value.status == 400
    with pytest.raises(ApiException) as schema:  # the CRD declares rayStartParams as map[string]string
        create(objects, raycluster("c", head_params={"num-cpus": 2}))  # type: ignore[dict-item]
    assert schema.value.status == 422 and "num-cpus" in json.loads(schema.value.body)["message"]


def test_get_and_delete(objects: client.CustomObjectsApi) -> None:
    created = create(objects, raycluster("a"))
    assert objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a") == created
    answer = objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert answer["status"] == "Success" and answer["details"]["uid"] == created["metadata"]["uid"]
    with pytest.raises(NotFoundException):
        objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    with pytest.raises(NotFoundException):
        objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")


def test_list_with_label_and_field_selectors(objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("a", labels={"team": "a", "gpu": "A100"}))
    create(objects, raycluster("b", labels={"team": "b"}))
    create(objects, raycluster("c"))
    create(objects, raycluster("d", labels={"team": "a"}), namespace="other")

    def names(**kwargs: str) -> list[str]:
        return [o["metadata"]["name"] for o in objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                                                      **kwargs)["items"]]  # fmt: skip

    assert names() == ["a", "b", "c"]
    assert names(label_selector="team=a") == ["a"]
    assert names(label_selector="team!=a") == ["b", "c"]
    assert names(label_selector="team in (a, b)") == ["a", "b"]
    assert names(label_selector="team notin (a)") == ["b", "c"]
    assert names(label_selector="!team") == ["c"]
    assert names(label_selector="team,gpu") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    everywhere = objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector="team=a")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in everywhere["items"]] == [
        (NS, "a"),
        ("other", "d"),
    ]
    with pytest.raises(ApiException) as bad:
        names(label_selector="team in a")
    assert bad.value.status == 400


def test_merge_patch_changes_metadata_and_spec_but_not_status(objects: client.CustomObjectsApi) -> None:
    created = create(objects, raycluster("a", labels={"keep": "1", "drop": "1"}))
    patch = {"metadata": {"labels": {"drop": None, "new": "2"}}, "spec": {"suspend": True}, "status": {"state": "x"}}
    patched = objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", patch)
    assert patched["metadata"]["labels"] == {"keep": "1", "new": "2"}
    assert patched["spec"]["suspend"] is True and patched["spec"]["headGroupSpec"] == created["spec"]["headGroupSpec"]
    assert "status" not in patched
    assert patched["metadata"]["generation"] == 2
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    again = objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"spec": {"suspend": True}})
    assert again["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]  # a no-op changes nothing
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}, "spec": {"suspend": False}}
    with pytest.raises(ConflictException):
        objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", stale)


def test_json_patch(objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("a", workers=[worker_group("gpu", 1)]))
    ops = [{"op": "test", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1},
           {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}]  # fmt: skip
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", ops, _content_type="application/json-patch+json"
    )
    assert patched["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    with pytest.raises(ApiException) as failed:  # the test operation no longer holds
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, "a", ops, _content_type="application/json-patch+json"
        )
    assert failed.value.status == 422


def test_status_only_through_the_status_subresource(objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("a"))
    body = {"spec": {"suspend": True}, "status": {"state": "ready", "endpoints": {"dashboard": "8265"}}}
    written = objects.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", body)
    assert written["status"] == body["status"]
    assert "suspend" not in written["spec"] and written["metadata"]["generation"] == 1
    read = objects.get_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a")
    assert read["status"]["endpoints"]["dashboard"] == "8265"
    read["status"] = {"state": "suspended"}
    replaced = objects.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", read)
    assert replaced["status"] == {"state": "suspended"}
    with pytest.raises(ConflictException):  # read's resourceVersion is now stale
        objects.replace_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", read)


def test_replace_needs_the_current_resource_version_and_keeps_status(objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("a"))
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"status": {"state": "ready"}})
    current = objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    current["spec"]["suspend"] = True
    current["status"] = {"state": "ignored"}
    replaced = objects.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", current)
    assert replaced["spec"]["suspend"] is True and replaced["status"] == {"state": "ready"}
    with pytest.raises(ConflictException):
        objects.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", current)
    del current["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as missing:
        objects.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", current)
    assert missing.value.status == 422


# ----- watches ----------------------------------------------------------------------------------------------------


def watch_events(objects: client.CustomObjectsApi, **kwargs: Any) -> list[tuple[str, str]]:
    stream = watch.Watch().stream(objects.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, **kwargs)
    return [(e["type"], e["raw_object"]["metadata"]["name"]) for e in stream]


def test_watch_replays_changes_since_a_resource_version(objects: client.CustomObjectsApi) -> None:
    start = create(objects, raycluster("before"))["metadata"]["resourceVersion"]
    create(objects, raycluster("a"))
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"status": {"state": "ready"}})
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert watch_events(objects, resource_version=start, timeout_seconds=1) == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("DELETED", "a"),
    ]
    # without a resourceVersion a watch starts with the objects that exist
    assert watch_events(objects, timeout_seconds=1) == [("ADDED", "before")]


def test_watch_streams_live_events(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    rv = objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []
    w = watch.Watch()

    def consume() -> None:
        for event in w.stream(objects.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, resource_version=rv,
                              timeout_seconds=20):  # fmt: skip
            seen.append((event["type"], event["raw_object"].get("status", {}).get("state", "")))
            if event["type"] == "DELETED":
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    poll(lambda: k8s_api.active_watches == 1)
    create(objects, raycluster("a"))
    objects.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "a", {"status": {"state": "ready"}})
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen == [("ADDED", ""), ("MODIFIED", "ready"), ("DELETED", "ready")]


def test_watch_honours_timeout_seconds(objects: client.CustomObjectsApi) -> None:
    rv = objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["metadata"]["resourceVersion"]
    started = time.monotonic()
    assert watch_events(objects, resource_version=rv, timeout_seconds=1) == []
    assert 0.9 <= time.monotonic() - started < 5


def test_a_label_selected_watch_sees_objects_leave_the_selection(objects: client.CustomObjectsApi) -> None:
    rv = create(objects, raycluster("a", labels={"team": "a"}))["metadata"]["resourceVersion"]
    objects.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"labels": {"team": "b"}}})
    create(objects, raycluster("b", labels={"team": "b"}))
    assert watch_events(objects, resource_version=rv, timeout_seconds=1, label_selector="team=a") == [("DELETED", "a")]
    assert watch_events(objects, resource_version=rv, timeout_seconds=1, label_selector="team=b") == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]


def test_an_expired_resource_version_gets_410(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    old = create(objects, raycluster("a"))["metadata"]["resourceVersion"]
    create(objects, raycluster("b"))
    k8s_api.faults.expire_resource_versions()
    # on the wire: 200 and an ERROR event carrying a Status with code 410, as a real API server sends it
    raw = requests.get(f"{k8s_api.url}/apis/ray.io/v1/namespaces/default/rayclusters",
                       params={"watch": "true", "resourceVersion": old, "timeoutSeconds": "1"}, timeout=5)  # fmt: skip
    event = json.loads(raw.text.splitlines()[0])
    assert raw.status_code == 200 and event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
    with pytest.raises(ApiException) as gone:
        watch_events(objects, resource_version=old, timeout_seconds=1)
    assert gone.value.status == 410
    with pytest.raises(ApiException) as gone_again:  # without a timeout the client retries once, then raises
        watch_events(objects, resource_version=old)
    assert gone_again.value.status == 410


# ----- faults -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exception", "reason"),
    [
        (409, ConflictException, "Conflict"),
        (403, ForbiddenException, "Forbidden"),
        (429, ApiException, "TooManyRequests"),
        (500, ServiceException, "InternalError"),
        (503, ServiceException, "ServiceUnavailable"),
    ],
)
def test_injected_errors_reach_the_client(
    k8s_api: KubeAPIServer, objects: client.CustomObjectsApi, status: int, exception: type, reason: str
) -> None:
    rule = k8s_api.faults.fail("POST", "/apis/ray.io/v1/namespaces/*/rayclusters", status)
    with pytest.raises(exception) as caught:
        create(objects, raycluster("a"))
    assert caught.value.status == status
    body = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["code"] == status and body["reason"] == reason
    if status == 429:
        assert caught.value.headers["Retry-After"] == "1"
    assert rule.hits == 1 and k8s_api.objects() == []  # the failed create stored nothing
    create(objects, raycluster("a"))  # the fault was for one request only
    assert [r.status for r in k8s_api.requests_matching("POST")] == [status, 201]


def test_the_client_retries_reads_that_carry_retry_after(k8s_api: KubeAPIServer) -> None:
    # urllib3's default Retry (which the kubernetes client keeps) retries GET/PUT/DELETE answered 413/429/503 with a
    # Retry-After header; POST and PATCH are not retried. Code under test sees such a fault only with retries off.
    k8s_api.faults.fail("GET", "*/rayclusters", 503, retry_after=0)
    default = client.CustomObjectsApi(k8s_api.api_client())
    assert default.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []
    assert [r.status for r in k8s_api.requests_matching("GET")] == [503, 200]
    k8s_api.faults.fail("GET", "*/rayclusters", 503, retry_after=0)
    configuration = k8s_api.configuration()
    configuration.retries = False
    strict = client.CustomObjectsApi(client.ApiClient(configuration))
    with pytest.raises(ServiceException):
        strict.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)


def test_delayed_responses(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    k8s_api.faults.delay("GET", "*/rayclusters", 0.5, times=1)
    started = time.monotonic()
    objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert time.monotonic() - started >= 0.5
    k8s_api.faults.delay("POST", "*", 2.0, times=1)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        objects.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, raycluster("a"), _request_timeout=0.3)


def test_dropped_watches(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    outcome: dict[str, Any] = {}

    def consume(key: str) -> None:
        try:
            outcome[key] = watch_events(objects, resource_version="1", timeout_seconds=30)
        except Exception as e:
            outcome[key] = e

    clean = threading.Thread(target=consume, args=("clean",), daemon=True)
    clean.start()
    poll(lambda: k8s_api.active_watches == 1)
    assert k8s_api.faults.drop_watches() == 1
    clean.join(timeout=5)
    assert not clean.is_alive() and outcome["clean"] == []  # the stream ended normally, long before its 30 s
    # a watch the client has seen end is no longer counted, so the poll below waits for the next watch itself
    assert k8s_api.active_watches == 0

    abrupt = threading.Thread(target=consume, args=("abrupt",), daemon=True)
    abrupt.start()
    poll(lambda: k8s_api.active_watches == 1)
    assert k8s_api.faults.drop_watches(abrupt=True) == 1
    abrupt.join(timeout=5)
    assert not abrupt.is_alive() and isinstance(outcome["abrupt"], urllib3.exceptions.ProtocolError)
    assert k8s_api.active_watches == 0
    assert len(k8s_api.requests_matching("WATCH")) == 2  # neither drop made the client watch again


def test_injected_watch_errors_do_not_touch_reads(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    k8s_api.faults.fail("WATCH", "*/rayclusters", 403)
    assert objects.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []
    with pytest.raises(ForbiddenException):
        watch_events(objects, timeout_seconds=1)


# ----- discovery and kubeconfig -----------------------------------------------------------------------------------


def test_discovery(k8s_api: KubeAPIServer, objects: client.CustomObjectsApi) -> None:
    api_client = k8s_api.api_client()
    assert client.VersionApi(api_client).get_code().major == "1"
    assert "ray.io" in [g.name for g in client.ApisApi(api_client).get_api_versions().groups]
    names = {r.name for r in objects.get_api_resources(GROUP, VERSION).resources}
    assert {"rayclusters", "rayclusters/status", "rayjobs", "rayjobs/status"} <= names
    rayclusters = dynamic.DynamicClient(api_client).resources.get(api_version="ray.io/v1", kind="RayCluster")
    assert rayclusters.namespaced and "status" in rayclusters.subresources


def test_kubeconfig_context_and_token(k8s_api: KubeAPIServer, tmp_path: Any) -> None:
    k8s_api.require_token = "s3cret"
    path = k8s_api.kubeconfig(tmp_path / "kubeconfig", context="test", token="s3cret")
    loaded = client.CustomObjectsApi(config.new_client_from_config(str(path), context="test"))
    assert loaded.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"] == []
    assert k8s_api.requests[-1].headers["Authorization"] == "Bearer s3cret"
    k8s_api.kubeconfig(tmp_path / "no-token", context="test")
    anonymous = client.CustomObjectsApi(config.new_client_from_config(str(tmp_path / "no-token"), context="test"))
    with pytest.raises(UnauthorizedException):
        anonymous.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)


# ----- the operator: translation (pure) ---------------------------------------------------------------------------


def test_translate_head_ray_start_params() -> None:
    body = raycluster("a", head_params={"num-cpus": "3", "num-gpus": "1", "memory": "2000000000",
                                        "resources": '"{\\"accelerator_type:H100\\": 1, \\"disk\\": 2}"'})  # fmt: skip
    t = translate(body)
    assert (t.spec.cpus, t.spec.gpus, t.spec.memory) == (3, 1, 2_000_000_000)
    assert t.spec.accelerator == "H100" and dict(t.spec.resources) == {"disk": 2}
    assert t.desired_workers == 0


def test_translate_container_limits_and_folds_workers_into_one_node() -> None:
    body = raycluster(
        "a",
        head_limits={"cpu": "1500m", "memory": "1Gi"},
        workers=[
            worker_group("gpu", 2, limits={"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"},
                         nodeSelector={"ray.io/accelerator-type": "A100"}),
            worker_group("cpu", 1, params={"num-cpus": "4", "resources": '{"ssd": 1}'}),
        ],
    )  # fmt: skip
    t = translate(body)
    assert t.spec.cpus == 2 + 2 * 2 + 4  # 1500m rounds up to 2
    assert t.spec.gpus == 2 and t.spec.accelerator == "A100"
    assert t.spec.memory == 1024**3 + 2 * 2 * 1024**3
    assert dict(t.spec.resources) == {"ssd": 1}
    assert t.desired_workers == 3


def test_translate_refuses_two_accelerator_models_in_one_node() -> None:
    body = raycluster("a", workers=[
        worker_group("a100", 1, params={"num-gpus": "1", "resources": '{"accelerator_type:A100": 1}'}),
        worker_group("h100", 1, params={"num-gpus": "1", "resources": '{"accelerator_type:H100": 1}'}),
    ])  # fmt: skip
    with pytest.raises(UnsupportedSpec, match="A100"):
        translate(body)


# ----- the operator against the API server ------------------------------------------------------------------------


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def get(objects: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    return objects.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)


def test_operator_reports_a_failed_start(k8s_operator: KubeRayTestOperator, objects: client.CustomObjectsApi) -> None:
    create(objects, raycluster("broken", annotations={"test.rayfleet.io/fail": "no capacity in zone"}))
    status = poll(lambda: conditions(get(objects, "broken")).get("ReplicaFailure"))
    assert status["status"] == "True" and status["reason"] == "HeadPodStartFailed"
    head = conditions(get(objects, "broken"))["HeadPodReady"]
    assert head["status"] == "False" and head["message"] == "no capacity in zone"
    assert "state" not in get(objects, "broken")["status"]
    create(objects, raycluster("two-models", workers=[
        worker_group("a", 1, params={"resources": '{"accelerator_type:A100": 1}'}),
        worker_group("b", 1, params={"resources": '{"accelerator_type:T4": 1}'}),
    ]))  # fmt: skip
    poll(lambda: conditions(get(objects, "two-models")).get("ReplicaFailure"))
    assert conditions(get(objects, "two-models"))["HeadPodReady"]["reason"] == "UnsupportedSpec"
    assert k8s_operator.started == 0


def test_operator_never_ready(k8s_operator: KubeRayTestOperator, objects: client.CustomObjectsApi) -> None:
    k8s_operator.never_ready = True
    create(objects, raycluster("waiting"))
    head = poll(lambda: conditions(get(objects, "waiting")).get("HeadPodReady"))
    assert head["status"] == "False" and head["reason"] == "HeadPodNotFound"
    assert "state" not in get(objects, "waiting")["status"]
    assert k8s_operator.cluster("waiting").state == "pending"  # type: ignore[union-attr]
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "waiting")
    k8s_operator.wait_for("waiting", "stopped", timeout=10)
    assert k8s_operator.started == 0


def test_operator_survives_a_broken_watch_and_relists_after_410(
    k8s_api: KubeAPIServer, objects: client.CustomObjectsApi, tmp_path: Any
) -> None:
    # its own operator, whose watch requests last long enough not to end by themselves during the test
    operator = KubeRayTestOperator(k8s_api.api_client(), tmp_path, fail_start="on purpose", watch_timeout_s=300)
    with operator:
        poll(lambda: k8s_api.active_watches == 1)
        blocked = k8s_api.faults.fail("WATCH", "*/rayclusters", 503, times=None)  # no new watch gets through
        assert k8s_api.faults.drop_watches(abrupt=True) == 1  # break the open one
        poll(lambda: blocked.hits >= 2)  # the operator retries
        create(objects, raycluster("missed"))  # while it cannot watch
        k8s_api.faults.expire_resource_versions()  # and the history it would resume from is gone
        k8s_api.faults.clear()
        failure = poll(lambda: conditions(get(objects, "missed")).get("ReplicaFailure"))
        assert failure["message"] == "on purpose"  # fail_start: a status, and no Ray cluster
        assert len(k8s_api.requests_matching("GET", "/apis/ray.io/v1/rayclusters")) == 2  # listed again after 410
        assert any("ProtocolError" in e for e in operator.errors)
        assert any("503" in e for e in operator.errors)
        assert operator.started == 0


def test_operator_turns_a_raycluster_into_a_real_ray_cluster(
    k8s_operator: KubeRayTestOperator, objects: client.CustomObjectsApi
) -> None:
    body = raycluster(
        "gpu-a",
        annotations={"test.rayfleet.io/ready-delay-seconds": "1"},
        head_params={"num-cpus": "1"},
        head_limits={"memory": "1Gi"},
        workers=[worker_group("gpu", 1, params={"resources": '"{\\"accelerator_type:A100\\": 1}"'},
                              limits={"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": "2"})],
    )  # fmt: skip
    create(objects, body)
    started = k8s_operator.wait_for("gpu-a", "started", "ready", "failed", timeout=150)
    assert started.state == "started", started.error  # Ray answers, and the 1 s ready delay runs:
    assert requests.get(f"{started.address}/api/version", timeout=5).ok
    assert conditions(get(objects, "gpu-a"))["HeadPodReady"]["status"] != "True"
    ready = poll(lambda: (o := get(objects, "gpu-a")).get("status", {}).get("state") == "ready" and o, timeout=150)
    status = ready["status"]
    assert {t: c["status"] for t, c in conditions(ready).items()} == {"HeadPodReady": "True",
                                                                      "RayClusterProvisioned": "True"}  # fmt: skip
    assert all(c["lastTransitionTime"] for c in status["conditions"])
    assert status["head"]["serviceIP"] == "127.0.0.1"
    assert status["readyWorkerReplicas"] == status["desiredWorkerReplicas"] == 1
    dashboard = f"http://{status['head']['serviceIP']}:{status['endpoints']['dashboard']}"
    assert requests.get(f"{dashboard}/api/version", timeout=5).json()["ray_version"].startswith("2.")
    usage = requests.get(f"{dashboard}/api/cluster_status", timeout=5).json()["data"]["clusterStatus"]
    totals = {k: v[1] for k, v in usage["loadMetricsReport"]["usage"].items()}
    assert totals["CPU"] == 2 and totals["GPU"] == 2 and totals["acceleratorType:A100"] == 1  # head + folded worker
    assert totals["memory"] == 1024**3 + 512 * 1024**2

    managed = k8s_operator.cluster("gpu-a")
    assert managed is not None
    processes = list(managed.fleet.running)  # type: ignore[union-attr]
    assert processes and all(p.alive() for p in processes)
    objects.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "gpu-a")
    k8s_operator.wait_for("gpu-a", "stopped", timeout=60)
    assert not any(p.alive() for p in processes)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{dashboard}/api/version", timeout=5)
    assert k8s_operator.started == 1
