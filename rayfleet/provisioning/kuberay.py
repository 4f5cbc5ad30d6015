"""`KubeRayProvisioner`: RayClusters created, watched until ready, and deleted through the official `kubernetes` client.

The only module that imports `kubernetes`. It talks to ``CustomObjectsApi`` directly (the KubeRay python client is
not on PyPI and polls every 5 s) and waits for readiness with a watch on the RayCluster, resumed when it drops.
It deletes only RayClusters whose labels say this fleet owns them.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from tenacity import Retrying

from rayfleet import retry
from rayfleet.config import Cluster, KubeRayConfig
from rayfleet.errors import ProvisioningError
from rayfleet.provisioning.base import ManagedCluster
from rayfleet.templates import (
    ANNOTATION_IDLE_DEADLINE,
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    LABEL_TEMPLATE,
    RAYCLUSTER_API,
    ClusterTemplate,
    render,
)

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = RAYCLUSTER_API
READY_CONDITIONS = ("RayClusterProvisioned", "HeadPodReady")
DEFAULT_DASHBOARD_PORT = "8265"
RBAC_HINT = (
    "grant the fleet's identity a Role in namespace {ns} with: apiGroups ['ray.io'], resources ['rayclusters'], "
    "verbs ['get', 'list', 'watch', 'create', 'patch', 'delete'] and resources ['rayclusters/status'], verbs ['get'] "
    "(see docs/kuberay.md)"
)


def _import_kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError as e:
        raise ImportError("KubeRay provisioning needs the kubernetes client: pip install 'rayfleet[kuberay]'") from e
    return kubernetes


def label_value(text: str) -> str:
    """A valid Kubernetes label value: 63 characters of [A-Za-z0-9._-], starting and ending alphanumeric."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "unknown"


def creator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return label_value(f"{user}-at-{socket.gethostname()}")


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Ready when ``RayClusterProvisioned`` (else ``HeadPodReady``) is True; ``state: ready`` when no conditions."""
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if "RayClusterProvisioned" in conditions:
        return conditions["RayClusterProvisioned"] == "True"
    if "HeadPodReady" in conditions:
        return conditions["HeadPodReady"] == "True"
    return status.get("state") == "ready"


def failure(obj: Mapping[str, Any]) -> str | None:
    """Why a RayCluster failed, if it did (``state: failed`` or a ``ReplicaFailure`` condition)."""
    status = obj.get("status") or {}
    if status.get("state") == "failed":
        return status.get("reason") or "state failed"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return condition.get("message") or condition.get("reason") or "ReplicaFailure"
    return None


def dashboard_url(obj: Mapping[str, Any], access: str, url_template: str | None = None) -> str | None:
    """The dashboard address of a ready RayCluster under an access mode (``None`` if the status lacks it).

    Example:
        >>> dashboard_url({"metadata": {"name": "c", "namespace": "ml"}, "status": {}}, "service_dns")
        'http://c-head-svc.ml.svc:8265'
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "default")
    port = str((status.get("endpoints") or {}).get("dashboard") or DEFAULT_DASHBOARD_PORT)
    if access == "service_dns":
        return f"http://{name}-head-svc.{namespace}.svc:{port}"
    if access == "service_ip":
        ip = (status.get("head") or {}).get("serviceIP") or (status.get("head") or {}).get("podIP")
        return f"http://{ip}:{port}" if ip else None
    if access == "url_template":
        if not url_template:
            raise ValueError("access 'url_template' needs url_template, e.g. https://{name}.ray.example.com")
        return url_template.format(name=name, namespace=namespace, port=port)
    return None  # port_forward: the forwarder knows its local port


class KubeRayProvisioner:
    """Creates RayClusters from templates on one Kubernetes cluster, for one fleet.

    Args:
        config: where and how (context, namespace, access, caps, templates).
        fleet: the owning fleet's name (a label on every RayCluster; only those are ever deleted).
        configuration: an explicit ``kubernetes.client.Configuration`` (tests, custom auth); overrides the context.

    Example:
        >>> provisioner = KubeRayProvisioner(KubeRayConfig(name="gke", context="gke_ml", templates=[...]), fleet="prod")
        ...                                                                     # doctest: +SKIP
        >>> managed = provisioner.create(provisioner.templates[0])              # doctest: +SKIP
        >>> cluster = provisioner.wait_ready(managed, timeout=600)              # doctest: +SKIP
    """

    def __init__(self, config: KubeRayConfig, *, fleet: str, configuration: Any = None) -> None:
        self.config = config
        self.name = config.name
        self.templates: Sequence[ClusterTemplate] = config.templates
        self.max_clusters = config.max_clusters
        self.max_gpus = config.max_gpus
        self.fleet = label_value(fleet)
        self._k8s = _import_kubernetes()
        self._api_client = self._make_client(configuration)
        self._api = self._k8s.client.CustomObjectsApi(self._api_client)
        self._forwards: dict[str, PortForward] = {}

    def _make_client(self, configuration: Any) -> Any:
        """An ApiClient whose own (urllib3) retries are off: retries are rayfleet's, bounded, in one policy."""
        client, kconfig = self._k8s.client, self._k8s.config
        try:
            if configuration is not None:
                c = copy.copy(configuration)
            elif self.config.in_cluster:
                c = client.Configuration()
                kconfig.load_incluster_config(client_configuration=c)
            else:
                c = client.Configuration()
                kconfig.load_kube_config(
                    config_file=self.config.kubeconfig, context=self.config.context, client_configuration=c
                )
        except (kconfig.ConfigException, OSError, TypeError) as e:
            raise ProvisioningError(
                f"cannot load Kubernetes credentials for provisioner {self.name}: {e}",
                "check the context name (kubectl config get-contexts) or the kubeconfig path",
                provisioner=self.name,
            ) from None
        c.retries = 0
        return client.ApiClient(c)

    # ----- Kubernetes calls, with errors translated in one place -----------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, cluster: str | None = None, **kwargs: Any) -> Any:
        ApiException = self._k8s.client.exceptions.ApiException
        try:
            if getattr(fn, "__self__", None) is self._api:  # a slow or silent API server must not hang us
                kwargs.setdefault("_request_timeout", self.config.request_timeout_s)
            for attempt in Retrying(**retry.KUBERNETES):
                with attempt:
                    return fn(*args, **kwargs)
        except (ApiException, *retry.TRANSPORT_ERRORS) as e:
            raise self._translate(e, what, cluster) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, error: BaseException, what: str, cluster: str | None) -> ProvisioningError:
        """The one place where the Kubernetes client's errors become `ProvisioningError` with a status and a fix."""
        if not isinstance(error, self._k8s.client.exceptions.ApiException):
            return ProvisioningError(
                f"the Kubernetes API of {self.name} did not answer while trying to {what}: {type(error).__name__}",
                "check the API server address and the network; the call was retried",
                provisioner=self.name,
                cluster=cluster,
            )
        status = error.status
        said = _status_message(error)
        ns = self.config.namespace
        hints = {
            401: "the API server refused the credentials: refresh them (kubectl get pods -n NS works?) or fix the "
            "kubeconfig user / service account token".replace("NS", ns),
            403: RBAC_HINT.format(ns=ns),
            404: f"check that the KubeRay operator (the CRD rayclusters.ray.io) is installed and namespace {ns} exists",
            409: "another writer changed or holds the object; retry",
            422: "the API server rejected the RayCluster manifest: check the template's fields",
        }
        if status == 403:
            message = f"Kubernetes refused to {what} (403 Forbidden): {said}"
        else:
            message = f"Kubernetes could not {what}: HTTP {status} {said}".rstrip()
        hint = hints.get(status, "check the API server and the namespace; transient errors were retried")
        return ProvisioningError(message, hint, provisioner=self.name, cluster=cluster, status=status)

    def _get(self, name: str) -> dict[str, Any] | None:
        try:
            return self._api.get_namespaced_custom_object(
                GROUP, VERSION, self.config.namespace, PLURAL, name, _request_timeout=self.config.request_timeout_s
            )
        except self._k8s.client.exceptions.ApiException as e:
            if e.status == 404:
                return None
            raise

    def _owned(self, obj: Mapping[str, Any] | None) -> bool:
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        return labels.get(LABEL_MANAGED_BY) == "rayfleet" and labels.get(LABEL_FLEET) == self.fleet

    # ----- the protocol ---------------------------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def new_name(self, template: ClusterTemplate) -> str:
        """A fresh RayCluster name for ``template``: ``rf-<template>-<6 hex>``."""
        return f"rf-{label_value(template.name)[:40]}-{uuid.uuid4().hex[:6]}".lower()

    def create(self, template: ClusterTemplate, name: str) -> ManagedCluster:
        """Create RayCluster ``name`` from ``template``.

        A 409 for a RayCluster this fleet owns (a retry after a lost answer) reuses it; a 409 for anyone else's
        raises `ProvisioningError` with status 409, and the caller takes another name.
        """
        manifest = render(
            template,
            name=name,
            namespace=self.config.namespace,
            fleet=self.fleet,
            created_by=creator(),
            extra_labels=self.config.labels,
        )
        try:
            self._call(f"create RayCluster {name}", self._create, manifest, cluster=name)
        except ProvisioningError as e:
            if e.status != 409:
                raise
            if not self._owned(self._call(f"read RayCluster {name}", self._get, name, cluster=name)):
                raise ProvisioningError(
                    f"RayCluster {name} exists and is not this fleet's",
                    "take another name",
                    provisioner=self.name,
                    cluster=name,
                    status=409,
                ) from None
        return ManagedCluster(name, self.name, template.name, self.config.namespace, time.time())

    def _create(self, manifest: dict[str, Any]) -> Any:
        return self._api.create_namespaced_custom_object(
            GROUP, VERSION, self.config.namespace, PLURAL, manifest, _request_timeout=self.config.request_timeout_s
        )

    def wait_ready(self, cluster: ManagedCluster, timeout: float) -> Cluster:
        """Watch the RayCluster until it is ready (resuming a dropped watch); return it as a fleet `Cluster`.

        A watch that fails (429, 5xx, a dropped connection) or ends at once is resumed after a pause that grows
        (1/4 s, doubling, at most 5 s) or the server's Retry-After, so a sick API server is not hammered.

        Raises:
            ProvisioningError: it failed, was deleted, was not ready in time, or the API refused (e.g. 403 on watch).
        """
        deadline = time.monotonic() + timeout
        obj = self._call(f"read RayCluster {cluster.name}", self._get, cluster.name, cluster=cluster.name)
        failures = 0
        while True:
            if obj is None:
                raise ProvisioningError(
                    f"RayCluster {cluster.name} was deleted while starting",
                    "something else deleted it (a person, or 'rayfleet gc' of a fleet with the same name); "
                    "the job goes to another template or cluster",
                    provisioner=self.name,
                    cluster=cluster.name,
                )
            if (ready := self._ready(cluster, obj)) is not None:
                return ready
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProvisioningError(
                    f"RayCluster {cluster.name} was not ready within {timeout:g} s",
                    "raise the template's ready_timeout_s, or check that the Kubernetes cluster has room for its pods",
                    provisioner=self.name,
                    cluster=cluster.name,
                )
            started = time.monotonic()
            changed, failed, retry_after = self._watch_for_change(cluster.name, obj, remaining)
            if changed is None and (failed or time.monotonic() - started < 1.0):
                failures += 1
                pause = retry_after if retry_after is not None else min(5.0, 0.25 * 2 ** (failures - 1))
                time.sleep(max(0.0, min(pause, 10.0, deadline - time.monotonic())))
            elif changed is not None:
                failures = 0
            obj = changed or self._call(
                f"read RayCluster {cluster.name}", self._get, cluster.name, cluster=cluster.name
            )

    def poll(self, cluster: ManagedCluster) -> Cluster | None:
        """Read the RayCluster once: the fleet `Cluster` when it is ready, None while it starts.

        Raises:
            ProvisioningError: it failed, or the API refused; with status 404 when it does not exist.
        """
        obj = self._call(f"read RayCluster {cluster.name}", self._get, cluster.name, cluster=cluster.name)
        if obj is None:
            raise ProvisioningError(
                f"RayCluster {cluster.name} does not exist",
                "create it (or, if it was deleted while starting, the job goes to another template or cluster)",
                provisioner=self.name,
                cluster=cluster.name,
                status=404,
            )
        return self._ready(cluster, obj)

    def _ready(self, cluster: ManagedCluster, obj: Mapping[str, Any]) -> Cluster | None:
        """The fleet `Cluster` if the RayCluster object is ready, None if not yet; raises if it failed."""
        if (why := failure(obj)) is not None:
            raise ProvisioningError(
                f"RayCluster {cluster.name} failed: {why}",
                "check the KubeRay operator's events for the cluster",
                provisioner=self.name,
                cluster=cluster.name,
            )
        if is_ready(obj) and (address := self._address_of(cluster.name, obj)) is not None:
            return self._as_cluster(cluster, address)
        return None

    def _address_of(self, name: str, obj: Mapping[str, Any]) -> str | None:
        try:
            return self._address(obj)
        except (ValueError, KeyError, IndexError, OSError) as e:  # a template that does not expand, a port in use
            raise ProvisioningError(
                f"cannot make the dashboard address of RayCluster {name}: {type(e).__name__}: {e}",
                "check the provisioner's access and url_template",
                provisioner=self.name,
                cluster=name,
            ) from None

    def _watch_for_change(
        self, name: str, obj: Mapping[str, Any], remaining: float
    ) -> tuple[dict[str, Any] | None, bool, float | None]:
        """The next version of the object from a watch, or ``None`` when the watch ended without one (the caller
        re-reads); whether the watch failed (429, 5xx, a dropped connection); and the server's Retry-After, if any.

        Raises:
            ProvisioningError: the API refused the watch (403 without the watch verb, 401, 404).
        """
        k8s = self._k8s
        version = (obj.get("metadata") or {}).get("resourceVersion")
        watch = k8s.watch.Watch()
        try:
            for event in watch.stream(
                self._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.config.namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=max(1, int(min(remaining, 60))),
                _request_timeout=min(remaining, 60) + 5,
            ):
                changed = event.get("object") or {}
                if event.get("type") == "ERROR":
                    return None, False, None  # (a server that does not raise for it) re-read, then watch from there
                if (changed.get("metadata") or {}).get("name") != name:
                    continue  # some servers ignore field selectors
                if event.get("type") == "DELETED":
                    return None, False, None
                return changed, False, None
        except k8s.client.exceptions.ApiException as e:
            if e.status == 410:  # the resourceVersion expired: re-read, then watch from the new version
                return None, False, None
            if e.status == 429 or (e.status or 0) >= 500:
                return None, True, _retry_after_seconds(e)
            raise self._translate(e, f"watch RayCluster {name}", name) from None
        except retry.TRANSPORT_ERRORS:
            return None, True, None  # the watch dropped or timed out: resume from a fresh read, after a pause
        finally:
            watch.stop()
        return None, False, None

    def _address(self, obj: Mapping[str, Any]) -> str | None:
        if self.config.access == "port_forward":
            name = obj["metadata"]["name"]
            if name not in self._forwards:
                self._forwards[name] = PortForward(self._api_client, name, self.config.namespace)
            return self._forwards[name].url
        return dashboard_url(obj, self.config.access, self.config.url_template)

    def _as_cluster(self, cluster: ManagedCluster, address: str) -> Cluster:
        template = next((t for t in self.templates if t.name == cluster.template), None)
        labels = {**(template.labels if template else {}), "managed": "true", "provisioner": self.name}
        return Cluster(
            name=cluster.name,
            address=address,
            labels=labels,
            cost_per_cpu_hour=template.cost_per_cpu_hour if template else None,
            cost_per_gpu_hour=template.cost_per_gpu_hour if template else None,
        )

    def delete(self, cluster: ManagedCluster) -> None:
        """Delete the RayCluster, only if its labels say this fleet owns it. Deleting a missing one is fine."""
        obj = self._call(f"read RayCluster {cluster.name}", self._get, cluster.name, cluster=cluster.name)
        if obj is None:
            return
        if not self._owned(obj):
            raise ProvisioningError(
                f"RayCluster {cluster.name} is not owned by fleet {self.fleet}; rayfleet does not delete it",
                "delete it yourself if it should go",
                provisioner=self.name,
                cluster=cluster.name,
            )
        forward = self._forwards.pop(cluster.name, None)
        if forward is not None:
            forward.close()
        # the uid precondition makes the ownership check hold at the moment of deletion: if the object was replaced
        # since it was read (by someone else's under the same name), the API server refuses with 409
        uid = (obj.get("metadata") or {}).get("uid")
        try:
            self._call(
                f"delete RayCluster {cluster.name}",
                self._api.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                self.config.namespace,
                PLURAL,
                cluster.name,
                body={"preconditions": {"uid": uid}} if uid else None,
                cluster=cluster.name,
            )
        except ProvisioningError as e:
            if e.status != 404:
                raise

    def owned(self) -> list[ManagedCluster]:
        """The RayClusters of this fleet in the namespace (label selector, checked again here)."""
        selector = f"{LABEL_MANAGED_BY}=rayfleet,{LABEL_FLEET}={self.fleet}"
        listing = self._call(
            "list RayClusters",
            self._api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.config.namespace,
            PLURAL,
            label_selector=selector,
        )
        out = []
        for obj in listing.get("items") or []:
            if not self._owned(obj):
                continue
            meta = obj["metadata"]
            at = _timestamp(meta.get("creationTimestamp")) or 0.0
            out.append(
                ManagedCluster(
                    meta["name"],
                    self.name,
                    (meta.get("labels") or {}).get(LABEL_TEMPLATE, ""),
                    self.config.namespace,
                    at,
                    _timestamp((meta.get("annotations") or {}).get(ANNOTATION_IDLE_DEADLINE)),
                )
            )
        return out

    def set_idle_deadline(self, cluster: ManagedCluster, deadline: float | None) -> None:
        """Write (or clear) the idle deadline on the RayCluster, so any later `rayfleet gc` can act on it."""
        value = None if deadline is None else datetime.fromtimestamp(deadline, timezone.utc).isoformat()
        patch = {"metadata": {"annotations": {ANNOTATION_IDLE_DEADLINE: value}}}
        self._call(
            f"annotate RayCluster {cluster.name}",
            self._api.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            self.config.namespace,
            PLURAL,
            cluster.name,
            patch,
            cluster=cluster.name,
        )

    def close(self) -> None:
        for forward in self._forwards.values():
            forward.close()
        self._forwards.clear()
        self._api_client.close()


def _status_message(error: Any) -> str:
    """What the API server said: the ``message`` of the Status in the body, else the HTTP reason."""
    try:
        message = json.loads(error.body or "{}").get("message")
    except (TypeError, ValueError, AttributeError):
        message = None
    return str(message or error.reason or "").strip()[:300]


def _retry_after_seconds(error: Any) -> float | None:
    """A 429/5xx answer's Retry-After in seconds (capped at 10 like the KUBERNETES policy); None without one."""
    headers = getattr(error, "headers", None) or {}
    try:
        return max(0.0, min(10.0, float(headers.get("Retry-After", ""))))
    except (TypeError, ValueError):
        return None


def _timestamp(text: str | None) -> float | None:
    """An RFC 3339 time (``2026-11-28T14:00:00Z``) as a Unix time; None for none or a malformed one."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class PortForward:
    """A local port forwarded to a RayCluster's head pod dashboard (for laptops), via the Kubernetes API."""

    def __init__(self, api_client: Any, cluster: str, namespace: str, remote_port: int = 8265) -> None:
        self._k8s = _import_kubernetes()
        self._core = self._k8s.client.CoreV1Api(api_client)
        self.cluster, self.namespace, self.remote_port = cluster, namespace, remote_port
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name=f"port-forward-{cluster}", daemon=True).start()

    def head_pod(self) -> str:
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=f"ray.io/cluster={self.cluster},ray.io/node-type=head"
        )
        if not pods.items:
            raise ProvisioningError(
                f"no head pod for RayCluster {self.cluster}",
                "wait until the cluster is ready, or check its pods: kubectl get pods -l ray.io/cluster=NAME",
                provisioner="port-forward",
            )
        return pods.items[0].metadata.name

    def _accept(self) -> None:
        while not self._closed:
            try:
                local, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(local,), daemon=True).start()

    def _pipe(self, local: socket.socket) -> None:
        from kubernetes.stream import portforward

        forward = portforward(
            self._core.connect_get_namespaced_pod_portforward,
            self.head_pod(),
            self.namespace,
            ports=str(self.remote_port),
        )
        remote = forward.socket(self.remote_port)

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=copy, args=(remote, local), daemon=True).start()
        copy(local, remote)

    def close(self) -> None:
        self._closed = True
        self._server.close()
