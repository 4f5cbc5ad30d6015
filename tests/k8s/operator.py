"""A test operator that plays KubeRay against the test API server: RayCluster objects become REAL local Ray clusters.

It watches ``ray.io/v1`` RayClusters through the official ``kubernetes`` client. For each new one it starts a real
Ray cluster with ``rayfleet.provisioning.local.LocalFleet`` (a child ``ray start --head --block``, stopped by its own
pid), in a background thread so several come up at once, with the resources the RayCluster asks for:

- head: ``rayStartParams`` ``num-cpus``, ``num-gpus``, ``memory`` (bytes) and ``resources`` (a JSON string, also in
  KubeRay's doubly quoted form ``'"{\\"A\\": 1}"'``); where absent, the first container's resource limits (else
  requests): ``cpu`` (rounded up), ``memory``, ``nvidia.com/gpu`` (any ``*/gpu`` key).
- worker groups: FOR NOW each group's ``replicas`` (else ``minReplicas``; times ``numOfHosts``) x the worker's
  resources are FOLDED INTO THE SAME SINGLE LOCAL NODE as the head. A later step will start real worker nodes.
  ``readyWorkerReplicas`` reports the folded count. So node-level fit cannot be tested against these clusters yet.
- accelerator model: ``accelerator_type:<model>`` in a group's ``rayStartParams.resources``, or the node selector
  ``ray.io/accelerator-type: <model>``; the node then declares ``accelerator_type:<model>`` = 1. Two different models
  in one RayCluster cannot be folded into one node: the cluster fails with reason ``UnsupportedSpec``.

Status goes through the ``/status`` subresource, as KubeRay writes it: first ``HeadPodReady`` and
``RayClusterProvisioned`` False (``HeadPodNotFound`` / ``RayClusterPodsProvisioning``); once the dashboard answers,
both True (``HeadPodRunningAndReady`` / ``AllPodRunningAndReadyFirstTime``) with ``lastTransitionTime``,
``state: ready``, ``head.serviceIP: 127.0.0.1``, ``endpoints.dashboard: "<port>"`` (and ``gcs-server``, ``client``,
``metrics``), ``readyWorkerReplicas``, ``desiredWorkerReplicas``. A cluster that cannot start gets ``HeadPodReady``
False with a reason (``UnsupportedSpec``, ``HeadPodStartFailed``, or the injected one) and ``ReplicaFailure`` True.
On DELETED the local cluster is stopped (one being started is cut short).

Knobs, for the whole operator (attributes) or per RayCluster (annotations, which win):
``ready_delay`` / ``test.rayfleet.io/ready-delay-seconds``: wait that long after the dashboard answers;
``never_ready`` / ``test.rayfleet.io/never-ready: "true"``: start NO Ray cluster and leave the status provisioning;
``fail_start`` / ``test.rayfleet.io/fail: "<message>"``: start nothing and report the failure.

Not modelled: spec changes after creation (replicas, suspend), autoscaling, RayJob and RayService reconciliation,
pods and services as objects, finalizers.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from rayfleet.errors import PortInUseError
from rayfleet.provisioning.local import FIRST_BASE, PORT_BLOCK, LocalClusterSpec, LocalFleet, ports_of
from rayfleet.resources import ACCELERATOR_PREFIX
from tests.polling import poll

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayclusters"
ANNOTATION = "test.rayfleet.io/"
ACCELERATOR_NODE_SELECTORS = ("ray.io/accelerator-type",)
DEFAULT_NODE_MEMORY = 1024**3  # declared for a node that declares none: every local cluster would claim the machine
PORT_CEILING = 32768  # Linux's ephemeral range starts here


class UnsupportedSpec(ValueError):
    """The RayCluster asks for something this operator cannot turn into a local cluster."""


# ----- RayCluster -> LocalClusterSpec (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeShape:
    """What one Ray node of a group declares."""

    cpus: float = 0
    gpus: float = 0
    memory: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    accelerator: str | None = None


def _quantity(value: Any, what: str) -> float:
    try:
        return float(parse_quantity(str(value).strip()))
    except (ValueError, TypeError, ArithmeticError):
        raise UnsupportedSpec(f"{what}={value!r} is not a quantity") from None


def parse_resources_param(text: Any) -> dict[str, float]:
    """``rayStartParams.resources``: a JSON object in a string, possibly quoted once more as KubeRay's docs show."""
    value = text
    for _ in range(3):
        if isinstance(value, dict):
            break
        try:
            value = json.loads(value)
        except (TypeError, ValueError):
            raise UnsupportedSpec(f"rayStartParams.resources={text!r} is not a JSON object") from None
    if not isinstance(value, dict):
        raise UnsupportedSpec(f"rayStartParams.resources={text!r} is not a JSON object")
    return {str(k): _quantity(v, f"resources[{k}]") for k, v in value.items()}


def group_shape(group: dict[str, Any], where: str) -> NodeShape:
    """The resources one node of a head or worker group declares."""
    params = group.get("rayStartParams") or {}
    containers = (group.get("template") or {}).get("spec", {}).get("containers") or []
    if not containers:
        raise UnsupportedSpec(f"{where}.template.spec.containers is empty")
    container_resources = containers[0].get("resources") or {}
    limits = {**(container_resources.get("requests") or {}), **(container_resources.get("limits") or {})}
    if "num-cpus" in params:
        cpus = _quantity(params["num-cpus"], f"{where}.rayStartParams.num-cpus")
    else:
        cpus = math.ceil(_quantity(limits["cpu"], f"{where} cpu")) if "cpu" in limits else 0
    if "num-gpus" in params:
        gpus = _quantity(params["num-gpus"], f"{where}.rayStartParams.num-gpus")
    else:
        gpus = sum(_quantity(v, f"{where} {k}") for k, v in limits.items() if k.endswith("/gpu"))
    if "memory" in params:
        memory = int(_quantity(params["memory"], f"{where}.rayStartParams.memory"))
    else:
        memory = int(_quantity(limits["memory"], f"{where} memory")) if "memory" in limits else 0
    resources = parse_resources_param(params["resources"]) if "resources" in params else {}
    models = [k[len(ACCELERATOR_PREFIX) :] for k in resources if k.startswith(ACCELERATOR_PREFIX)]
    for model in models:
        del resources[ACCELERATOR_PREFIX + model]
    selector = (group.get("template") or {}).get("spec", {}).get("nodeSelector") or {}
    models += [selector[k] for k in ACCELERATOR_NODE_SELECTORS if k in selector and selector[k] not in models]
    if len(set(models)) > 1:
        raise UnsupportedSpec(f"{where} declares several accelerator models {sorted(set(models))}")
    return NodeShape(cpus, gpus, memory, resources, models[0] if models else None)


def worker_count(group: dict[str, Any]) -> int:
    """How many nodes a worker group asks for now: ``replicas`` (else ``minReplicas``) x ``numOfHosts``."""
    if group.get("suspend"):
        return 0
    replicas = group.get("replicas")
    if replicas is None:
        replicas = group.get("minReplicas") or 0
    low, high = group.get("minReplicas"), group.get("maxReplicas")
    if low is not None:
        replicas = max(replicas, low)
    if high is not None:
        replicas = min(replicas, high)
    return int(replicas) * int(group.get("numOfHosts") or 1)


@dataclass(frozen=True)
class Translation:
    """A RayCluster as one local node, and the worker counts to report."""

    spec: LocalClusterSpec
    desired_workers: int
    min_workers: int
    max_workers: int


def translate(raycluster: dict[str, Any]) -> Translation:
    """Turn a RayCluster into one local node's LocalClusterSpec.

    Worker groups are FOLDED into the head's node for now (replicas x worker resources added to the head's);
    a later step starts real worker nodes.

    Raises:
        UnsupportedSpec: the spec cannot be expressed as one local node.
    """
    meta, spec = raycluster.get("metadata") or {}, raycluster.get("spec") or {}
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        raise UnsupportedSpec("spec.headGroupSpec is missing")
    shapes = [(group_shape(head, "spec.headGroupSpec"), 1)]
    desired = low = high = 0
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        n = worker_count(group)
        shapes.append((group_shape(group, f"spec.workerGroupSpecs[{i}]"), n))
        desired += n
        low += int(group.get("minReplicas") or 0) * int(group.get("numOfHosts") or 1)
        high += int(group.get("maxReplicas") or n) * int(group.get("numOfHosts") or 1)
    cpus = sum(shape.cpus * n for shape, n in shapes)
    gpus = sum(shape.gpus * n for shape, n in shapes)
    head_memory = shapes[0][0].memory or DEFAULT_NODE_MEMORY  # a worker that declares no memory adds none
    memory = head_memory + sum(shape.memory * n for shape, n in shapes[1:])
    resources: dict[str, float] = {}
    for shape, n in shapes:
        for key, value in shape.resources.items():
            resources[key] = resources.get(key, 0) + value * n
    models = {shape.accelerator for shape, n in shapes if shape.accelerator and n}
    if len(models) > 1:
        raise UnsupportedSpec(
            f"accelerator models {sorted(models)} cannot be folded into one local node (worker groups are folded "
            "into the head for now)"
        )
    name = meta.get("name") or "raycluster"
    local = LocalClusterSpec(
        name=name,
        cpus=math.ceil(cpus),  # `ray start --num-cpus` takes an integer
        gpus=math.ceil(gpus),
        accelerator=next(iter(models), None),
        memory=memory,
        resources={k: v for k, v in resources.items() if v},
        labels={"provider": "kuberay-test", "raycluster": name, "namespace": meta.get("namespace") or ""},
    )
    return Translation(local, desired, low, high)


# ----- ports ------------------------------------------------------------------------------------------------------

_ports_lock = threading.Lock()
_reserved_bases: set[int] = set()  # shared by every operator of this process: clusters start concurrently


def _block_free(base: int) -> bool:
    ports = ports_of(base)
    for port in range(base, ports["max_worker"] + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EACCES):
                    return False
                raise
    return True


def reserve_port_base(avoid: Iterable[int] = ()) -> int:
    """A free block of ports for one local cluster, from the top of the range down.

    LocalFleet picks free blocks from the bottom up, but only checks that nothing listens yet: two clusters started
    at the same moment would both see the same block free. So this operator reserves blocks (process-wide) and
    takes them from the other end.
    """
    avoid = set(avoid)
    with _ports_lock:
        top = FIRST_BASE + ((PORT_CEILING - FIRST_BASE) // PORT_BLOCK - 1) * PORT_BLOCK
        for base in range(top, FIRST_BASE - 1, -PORT_BLOCK):
            if base not in _reserved_bases and base not in avoid and _block_free(base):
                _reserved_bases.add(base)
                return base
    raise PortInUseError("no free block of ports for a test Ray cluster", "stop other local clusters")


def release_port_base(base: int | None) -> None:
    with _ports_lock:
        _reserved_bases.discard(base)  # type: ignore[arg-type]


# ----- the operator -----------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ManagedCluster:
    """One RayCluster object (by uid) and the local Ray cluster the operator made for it.

    ``state``: pending (seen; never_ready leaves it here) -> starting (``ray start`` runs) -> started (Ray answers;
    ready_delay runs) -> ready (status written), or failed; then stopping -> stopped once the RayCluster is deleted.
    """

    namespace: str
    name: str
    uid: str
    generation: int = 1
    state: str = "pending"
    translation: Translation | None = None
    fleet: LocalFleet | None = None
    port_base: int | None = None
    dashboard_port: int | None = None
    error: str | None = None
    states: list[str] = field(default_factory=lambda: ["pending"])
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    @property
    def address(self) -> str | None:
        """The dashboard's URL, once started."""
        return f"http://127.0.0.1:{self.dashboard_port}" if self.dashboard_port else None

    @property
    def pids(self) -> list[int]:
        fleet = self.fleet
        return [c.pid for c in fleet.running] if fleet is not None else []

    def set_state(self, state: str) -> None:
        self.state = state
        self.states.append(state)


class KubeRayTestOperator:
    """Plays KubeRay for RayClusters in the test API server (see the module's docstring).

    Args:
        api_client: a ``kubernetes.client.ApiClient`` for the test API server (its own: the operator's threads use it).
        directory: where the local clusters keep their state files and logs.
        namespace: watch one namespace (None: all).
        ready_delay: seconds to wait after a cluster's dashboard answers before reporting it ready.
        never_ready: start no Ray cluster and never report readiness.
        fail_start: a message: start no Ray cluster and report this failure.
        start_timeout: how long one Ray cluster may take to start.
        watch_timeout_s: ``timeoutSeconds`` of each watch request (the loop re-watches from the last resourceVersion).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        directory: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        ready_delay: float = 0.0,
        never_ready: bool = False,
        fail_start: str | None = None,
        start_timeout: float = 120.0,
        watch_timeout_s: int = 5,
    ) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.directory = Path(directory)
        self.namespace = namespace
        self.ready_delay = ready_delay
        self.never_ready = never_ready
        self.fail_start = fail_start
        self.start_timeout = start_timeout
        self.watch_timeout_s = watch_timeout_s
        self.clusters: dict[str, ManagedCluster] = {}  # by uid
        self.errors: list[str] = []  # what went wrong in the background (transient watch errors included)
        self.started = 0  # Ray clusters that came up
        self.attempts = 0  # `ray start` heads launched (a failed start is tried again on other ports)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self._stoppers: list[threading.Thread] = []
        self._synced = threading.Event()

    # -- lifecycle

    def start(self, timeout: float = 10.0) -> KubeRayTestOperator:
        """Start watching; returns once the first list is done (so objects created afterwards are seen)."""
        self._thread = threading.Thread(target=self._run, name="kuberay-test-operator", daemon=True)
        self._thread.start()
        atexit.register(self.stop)
        if not self._synced.wait(timeout):
            self.stop()
            raise RuntimeError(f"the test operator could not list RayClusters within {timeout} s: {self.errors}")
        return self

    def stop(self) -> list[str]:
        """Stop watching and stop every local Ray cluster this operator started. Returns the RayClusters' names."""
        self._stopping.set()
        atexit.unregister(self.stop)
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout=self.watch_timeout_s + 10)
        with self._lock:
            clusters = list(self.clusters.values())
        stoppers = [self._stop_in_background(mc) for mc in clusters]
        for thread in [*self._stoppers, *stoppers]:
            thread.join(timeout=self.start_timeout + 30)
        return [mc.name for mc in clusters if mc.states[-1] == "stopped"]

    def __enter__(self) -> KubeRayTestOperator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests

    def cluster(self, name: str, namespace: str = "default") -> ManagedCluster | None:
        """The most recent cluster made for the RayCluster ``namespace/name``."""
        with self._lock:
            found = [mc for mc in self.clusters.values() if (mc.namespace, mc.name) == (namespace, name)]
        return found[-1] if found else None

    def wait_for(self, name: str, *states: str, namespace: str = "default", timeout: float = 120.0) -> ManagedCluster:
        """Poll until the cluster of ``namespace/name`` is in one of ``states``; AssertionError after ``timeout``."""

        def seen() -> str:
            mc = self.cluster(name, namespace)
            state = f"{mc.states}; {mc.error}" if mc else "never seen"
            return f"RayCluster {namespace}/{name} not in {states} within {timeout} s: {state}; " + (
                f"operator errors: {self.errors[-3:]}"
            )

        def ready() -> ManagedCluster | None:
            mc = self.cluster(name, namespace)
            return mc if mc is not None and mc.state in states else None

        return poll(ready, timeout=timeout, interval=0.05, describe=seen)

    # -- the watch loop

    def _run(self) -> None:
        rv: str | None = None
        while not self._stopping.is_set():
            try:
                if rv is None:
                    listing = self._list()
                    rv = listing["metadata"]["resourceVersion"]
                    self._reconcile(listing["items"])
                    self._synced.set()
                w = watch.Watch()
                self._watch = w
                if self._stopping.is_set():
                    break
                for event in w.stream(*self._list_call(), resource_version=rv, timeout_seconds=self.watch_timeout_s):
                    obj = event["raw_object"]
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if event["type"] in ("ADDED", "MODIFIED") and obj["metadata"]["uid"] not in self.clusters:
                        self._add(obj)
                    elif event["type"] == "DELETED":
                        self._deleted(obj["metadata"]["uid"])
                    if self._stopping.is_set():
                        break
            except ApiException as e:
                if e.status == 410:
                    rv = None  # too old: list again, and reconcile what was missed
                else:
                    self._error(f"watch: {e.status} {e.reason}")
                    self._stopping.wait(0.2)
            except Exception as e:  # a dropped stream (ProtocolError), the server going away, Watch.stop()
                if not self._stopping.is_set():
                    self._error(f"watch: {type(e).__name__}: {e}")
                    self._stopping.wait(0.2)

    def _list_call(self) -> tuple[Any, ...]:
        if self.namespace is None:
            return (self.api.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        return (self.api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL)

    def _list(self) -> dict[str, Any]:
        call, *args = self._list_call()
        return call(*args)

    def _reconcile(self, items: list[dict[str, Any]]) -> None:
        present = {obj["metadata"]["uid"] for obj in items}
        with self._lock:
            gone = [uid for uid, mc in self.clusters.items() if uid not in present and mc.state != "stopped"]
        for uid in gone:
            self._deleted(uid)
        for obj in items:
            if obj["metadata"]["uid"] not in self.clusters:
                self._add(obj)

    def _error(self, message: str) -> None:
        self.errors.append(message)

    # -- one cluster

    def _add(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        mc = ManagedCluster(meta.get("namespace") or "", meta["name"], meta["uid"], int(meta.get("generation") or 1))
        with self._lock:
            if self._stopping.is_set():
                return
            self.clusters[mc.uid] = mc
        mc.thread = threading.Thread(target=self._provision, args=(mc, obj), name=f"provision-{mc.name}", daemon=True)
        mc.thread.start()

    def _knobs(self, obj: dict[str, Any]) -> tuple[float, bool, str | None]:
        notes = obj["metadata"].get("annotations") or {}
        delay = float(notes.get(ANNOTATION + "ready-delay-seconds", self.ready_delay))
        never = notes.get(ANNOTATION + "never-ready", str(self.never_ready)).lower() == "true"
        fail = notes.get(ANNOTATION + "fail", self.fail_start)
        return delay, never, fail

    def _provision(self, mc: ManagedCluster, obj: dict[str, Any]) -> None:
        try:
            delay, never, fail = self._knobs(obj)
            try:
                mc.translation = translate(obj)
            except UnsupportedSpec as e:
                self._failed(mc, "UnsupportedSpec", str(e))
                return
            self._set_condition(mc, "HeadPodReady", False, "HeadPodNotFound", "the head is being created")
            self._set_condition(mc, "RayClusterProvisioned", False, "RayClusterPodsProvisioning", "starting")
            if not self._write_status(mc, self._status(mc)):
                return
            if fail is not None:
                self._failed(mc, "HeadPodStartFailed", fail)
                return
            if never:
                return  # stays pending, with no Ray cluster, until deleted
            if not self._start_ray(mc):
                return
            mc.set_state("started")  # Ray is up; the status says so after ready_delay
            if mc.cancelled.wait(delay) or self._stopping.is_set():
                return
            if not self._dashboard_answers(mc):
                self._failed(mc, "HeadPodStartFailed", f"the dashboard at {mc.address} does not answer")
                return
            self._set_condition(mc, "HeadPodReady", True, "HeadPodRunningAndReady", "")
            self._set_condition(mc, "RayClusterProvisioned", True, "AllPodRunningAndReadyFirstTime", "")
            if self._write_status(mc, self._status(mc, ready=True)):
                mc.set_state("ready")
        except Exception as e:
            if not (mc.cancelled.is_set() or self._stopping.is_set()):
                self._error(f"{mc.namespace}/{mc.name}: {type(e).__name__}: {e}")
                with contextlib.suppress(Exception):
                    self._failed(mc, "HeadPodStartFailed", f"{type(e).__name__}: {e}")

    def _start_ray(self, mc: ManagedCluster, attempts: int = 3) -> bool:
        """Start the local Ray cluster; False when cancelled or failed (status written).

        A start that fails is tried again on another block of ports (as KubeRay recreates a failed head pod): on a
        shared machine another process may take a port between the check and ``ray start``.
        """
        assert mc.translation is not None
        fleet_name = f"k8s-{mc.namespace}-{mc.name}-{mc.uid[:8]}"
        tried: list[int] = []
        failures: list[str] = []
        while len(failures) < attempts:
            base = reserve_port_base(avoid=tried)
            tried.append(base)
            fleet = LocalFleet([mc.translation.spec], name=fleet_name, port_base=base,
                               directory=self.directory / fleet_name)  # fmt: skip
            with mc.lock:
                if mc.cancelled.is_set() or self._stopping.is_set():
                    release_port_base(base)
                    return False
                mc.fleet, mc.port_base = fleet, base
                mc.set_state("starting")
            with self._lock:
                self.attempts += 1
            try:
                fleet.up(timeout=self.start_timeout)
            except Exception as e:
                mc.fleet = None
                release_port_base(base)
                if mc.cancelled.is_set() or self._stopping.is_set():
                    return False
                failures.append(f"{type(e).__name__}: {e}")
                self._error(f"{mc.namespace}/{mc.name}: start on ports {base}: {failures[-1]}")
                continue
            with self._lock:
                self.started += 1
            mc.dashboard_port = ports_of(base)["dashboard"]
            return not (mc.cancelled.is_set() or self._stopping.is_set())  # if cancelled, the stopper downs it
        self._failed(mc, "HeadPodStartFailed", f"{attempts} starts failed; the last: {failures[-1]}")
        return False

    def _dashboard_answers(self, mc: ManagedCluster, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not mc.cancelled.is_set():
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{mc.address}/api/version", timeout=2).ok:
                    return True
            mc.cancelled.wait(0.2)
        return False

    def _failed(self, mc: ManagedCluster, reason: str, message: str) -> None:
        mc.error = f"{reason}: {message}"
        mc.set_state("failed")
        self._set_condition(mc, "HeadPodReady", False, reason, message)
        self._set_condition(mc, "RayClusterProvisioned", False, "RayClusterPodsProvisioning", message)
        self._set_condition(mc, "ReplicaFailure", True, reason, message)
        self._write_status(mc, self._status(mc))

    def _deleted(self, uid: str) -> None:
        with self._lock:
            mc = self.clusters.get(uid)
        if mc is not None and mc.state not in ("stopping", "stopped"):
            self._stoppers.append(self._stop_in_background(mc))

    def _stop_in_background(self, mc: ManagedCluster) -> threading.Thread:
        thread = threading.Thread(target=self._stop_cluster, args=(mc,), name=f"stop-{mc.name}", daemon=True)
        thread.start()
        return thread

    def _stop_cluster(self, mc: ManagedCluster) -> None:
        with mc.lock:
            if mc.cancelled.is_set() and mc.state in ("stopping", "stopped"):
                return
            mc.cancelled.set()
            starting = mc.state == "starting"
            mc.set_state("stopping")
        fleet = mc.fleet
        if starting and fleet is not None:
            # cut a start short: our own `ray start` process, by pid (its up() then fails fast and cleans up)
            for running in list(fleet.running):
                if running.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(running.pid, signal.SIGTERM)
        if mc.thread is not None and mc.thread is not threading.current_thread():
            mc.thread.join(timeout=self.start_timeout + 30)
        if mc.fleet is not None:
            try:
                mc.fleet.down()
            except Exception as e:
                self._error(f"{mc.namespace}/{mc.name}: down: {type(e).__name__}: {e}")
        release_port_base(mc.port_base)
        mc.set_state("stopped")

    # -- status

    def _set_condition(self, mc: ManagedCluster, kind: str, status: bool, reason: str, message: str) -> None:
        value = "True" if status else "False"
        old = mc.conditions.get(kind)
        since = old["lastTransitionTime"] if old and old["status"] == value else _now()
        mc.conditions[kind] = {"type": kind, "status": value, "reason": reason, "message": message,
                               "lastTransitionTime": since}  # fmt: skip

    def _status(self, mc: ManagedCluster, ready: bool = False) -> dict[str, Any]:
        t = mc.translation
        desired = t.desired_workers if t else 0
        status: dict[str, Any] = {
            "conditions": list(mc.conditions.values()),
            "desiredWorkerReplicas": desired,
            "readyWorkerReplicas": desired if ready else 0,
            "availableWorkerReplicas": desired if ready else 0,
            "minWorkerReplicas": t.min_workers if t else 0,
            "maxWorkerReplicas": t.max_workers if t else 0,
            "observedGeneration": mc.generation,
            "lastUpdateTime": _now(),
        }
        if t is not None:
            status.update(desiredCPU=f"{t.spec.cpus:g}", desiredGPU=str(t.spec.gpus),
                          desiredMemory=str(int(t.spec.memory)), desiredTPU="0")  # fmt: skip
        if ready and mc.port_base is not None:
            ports = ports_of(mc.port_base)
            status["state"] = "ready"
            status["head"] = {"serviceIP": "127.0.0.1", "podIP": "127.0.0.1", "serviceName": f"{mc.name}-head-svc",
                              "podName": f"{mc.name}-head-{mc.uid[:5]}"}  # fmt: skip
            status["endpoints"] = {
                "dashboard": str(ports["dashboard"]),
                "gcs-server": str(ports["gcs"]),
                "client": str(ports["client_server"]),
                "metrics": str(ports["metrics_export"]),
            }
        return status

    def _write_status(self, mc: ManagedCluster, status: dict[str, Any], attempts: int = 20) -> bool:
        """Patch ``/status`` (retrying conflicts, throttling and 5xx); False when the RayCluster is gone."""
        for attempt in range(attempts):
            if self._stopping.is_set() or mc.cancelled.is_set():
                return False
            try:
                self.api.patch_namespaced_custom_object_status(
                    GROUP, VERSION, mc.namespace, PLURAL, mc.name, {"status": status}
                )
                return True
            except ApiException as e:
                if e.status == 404:
                    self._deleted(mc.uid)
                    return False
                if e.status not in (409, 429, 500, 502, 503, 504) or attempt == attempts - 1:
                    self._error(f"{mc.namespace}/{mc.name}: status: {e.status} {e.reason}")
                    return False
                mc.cancelled.wait(min(0.05 * 2**attempt, 1.0))
            except Exception as e:
                self._error(f"{mc.namespace}/{mc.name}: status: {type(e).__name__}: {e}")
                mc.cancelled.wait(0.2)
        return False
