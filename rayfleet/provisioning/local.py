"""The embedded local fleet: real Ray clusters on this machine, each a child ``ray start --head --block``.

Each cluster gets its own block of ports and its own temp dir, declared CPUs, GPUs (logical GPUs need no hardware),
accelerator model and memory, and binds loopback only. A cluster may also have

- worker nodes: each a child ``ray start --address=<head> --block`` with its own 200 ports inside the cluster's
  block, sharing the head's temp dir; or
- autoscaling: Ray's fake multi-node provider runs the real Ray autoscaler on the head, which adds and removes worker
  "nodes" as local processes (children of the head's autoscaler process).

The fleet stops the processes it started and their descendants, by their id, and whatever else names or writes
into a cluster's own temp dir (what a crashed head left behind); never Ray's own stop command, which stops every
cluster on the machine. A state file in `state_dir` lets another process find and stop the fleet
(``rayfleet local down``). A local fleet file (`load_local_fleet`, ``rayfleet local up -f``) describes the clusters.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from rayfleet.config import read_yaml
from rayfleet.errors import ConfigError, InvalidRequestError, LocalFleetError, PortInUseError
from rayfleet.resources import ACCELERATOR_PREFIX, parse_memory

log = logging.getLogger(__name__)

PORT_BLOCK = 200  # ports per node: 11 named services + 100 worker ports, with room to spare
FIRST_BASE = 24000  # below Linux's ephemeral range (32768+), so the OS does not hand these out to clients
LAST_PORT = 32767
WORKER_PORTS = (100, 199)  # offsets within the block
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
ORPHAN_STOP_S = 2.0  # how long a process a crashed head left behind gets to exit on SIGTERM
PORTS_FREE_S = 5.0  # how long down() waits for the kernel to release a stopped cluster's ports
OBJECT_STORE_BYTES = 100_000_000  # per node; Ray's default is 30% of the machine's memory
_PORT_NAMES = (
    "gcs", "dashboard", "client_server", "node_manager", "object_manager",
    "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent", "metrics_export",
    "autoscaler_metrics", "dashboard_metrics",
)  # fmt: skip
FAKE_HEAD_TYPE = "ray.head.default"  # the head's node type name that Ray's fake provider expects
LOCAL_DIR_ENV = "RAYFLEET_LOCAL_DIR"


def _with_accelerator(resources: Mapping[str, float], accelerator: str | None) -> dict[str, float]:
    out = dict(resources)
    if accelerator:
        out[ACCELERATOR_PREFIX + accelerator] = 1
    return out


@dataclass(frozen=True)
class LocalNodeSpec:
    """A worker node of a local cluster (a second ``ray start`` on this machine that joins the head).

    Attributes:
        cpus: logical CPUs.
        gpus: logical GPUs (no hardware needed).
        accelerator: the GPU model the node declares (``accelerator_type:<model>`` = 1), e.g. ``"A100"``.
        memory: declared memory (bytes or ``"1GiB"``); a node would otherwise claim most of the machine.
        resources: other custom resources of the node, e.g. ``{"worker_only": 1}`` to steer work to it.
    """

    cpus: float
    gpus: int = 0
    accelerator: str | None = None
    memory: int | str = "1GiB"
    resources: Mapping[str, float] = field(default_factory=dict)

    def node_resources(self) -> dict[str, float]:
        return _with_accelerator(self.resources, self.accelerator)


@dataclass(frozen=True)
class LocalWorkerType:
    """A kind of worker node that the autoscaler of a local cluster adds on demand and removes when idle.

    There is no ``memory``: Ray's fake provider refuses a ``memory`` resource for the nodes it starts (``RayParams``
    asserts), so such a node reports Ray's default memory (most of the machine's available memory).

    Attributes:
        cpus: logical CPUs of one node.
        gpus: logical GPUs of one node.
        accelerator: the GPU model the node declares (``accelerator_type:<model>`` = 1).
        resources: other custom resources of one node.
        min_workers: nodes kept at all times (``up()`` waits for them).
        max_workers: the most nodes of this type.
    """

    cpus: float
    gpus: int = 0
    accelerator: str | None = None
    resources: Mapping[str, float] = field(default_factory=dict)
    min_workers: int = 0
    max_workers: int = 1

    def node_resources(self) -> dict[str, float]:
        return _with_accelerator(self.resources, self.accelerator)


@dataclass(frozen=True)
class LocalAutoscaling:
    """Make a local cluster autoscaling, through Ray's fake multi-node provider and the real Ray autoscaler.

    Attributes:
        worker_types: node type name -> what such a node has and how many of them there may be.
        idle_timeout_s: the autoscaler removes a worker node idle this long (Ray checks about every second, so
            removal comes a few seconds later).
    """

    worker_types: Mapping[str, LocalWorkerType]
    idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class LocalClusterSpec:
    """One local cluster to start.

    Attributes:
        name: the cluster's name in the fleet.
        cpus: logical CPUs of the head node.
        gpus: logical GPUs of the head node (no hardware needed).
        accelerator: the GPU model the head declares (``accelerator_type:<model>`` = 1), e.g. ``"A100"``.
        memory: declared memory of the head (bytes or ``"2GiB"``); every local cluster would otherwise claim the
            whole machine.
        resources: other custom resources of the head node.
        labels: labels of the cluster in the fleet.
        workers: worker nodes started with the head and kept until ``down()``.
        autoscaling: make the cluster autoscale (exclusive with ``workers``).
        env: environment variables of the cluster's processes (and so of its jobs), over those every local cluster
            gets: e.g. a ``PATH`` whose ``python`` lacks Ray, to meet what a job meets on such a cluster.

    Example:
        >>> LocalClusterSpec("gang", cpus=1, workers=(LocalNodeSpec(cpus=2), LocalNodeSpec(cpus=2)))  # doctest: +SKIP
        >>> LocalClusterSpec("auto", cpus=1, autoscaling=LocalAutoscaling(                          # doctest: +SKIP
        ...     {"a100": LocalWorkerType(cpus=1, gpus=1, accelerator="A100", max_workers=2)}, idle_timeout_s=30))
    """

    name: str
    cpus: float = 2
    gpus: int = 0
    accelerator: str | None = None
    memory: int | str = "2GiB"
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    workers: tuple[LocalNodeSpec, ...] = ()
    autoscaling: LocalAutoscaling | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def node_resources(self) -> dict[str, float]:
        return _with_accelerator(self.resources, self.accelerator)

    @property
    def nodes_at_start(self) -> int:
        """How many nodes ``up()`` waits for: the head, its workers, and the autoscaler's minimum."""
        minimum = sum(t.min_workers for t in self.autoscaling.worker_types.values()) if self.autoscaling else 0
        return 1 + len(self.workers) + minimum


DEMO_FLEET = (
    LocalClusterSpec("cpu", cpus=2, labels={"kind": "cpu"}),
    LocalClusterSpec("gpu", cpus=2, gpus=2, accelerator="A100", labels={"kind": "gpu"}),
)


# ----- local fleet files (and the CLI's flags) ----------------------------------------------------------------------

_CLUSTER_KEYS = (
    "name",
    "cpus",
    "gpus",
    "accelerator",
    "memory",
    "resources",
    "labels",
    "workers",
    "autoscaling",
    "env",
)
_NODE_KEYS = ("cpus", "gpus", "accelerator", "memory", "resources", "count")
_AUTOSCALING_KEYS = ("worker_types", "idle_timeout_s")
_TYPE_KEYS = ("cpus", "gpus", "accelerator", "resources", "min_workers", "max_workers")
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]{0,61}[a-z0-9])?$")  # as a fleet file's cluster name
_FORMAT_HINT = "the format of a local fleet file is in docs/local.md"


class _Reader:
    """Reads a local fleet definition and collects every problem, so that all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, key: str, problem: str) -> None:
        self.problems.append((key, problem))

    def mapping(self, value: Any, key: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
        """``value`` as a mapping of known keys (unknown ones are problems, with a near miss named)."""
        if not isinstance(value, Mapping):
            self.fail(key, f"must be a mapping, not {_kind(value)}")
            return {}
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                why = f"did you mean {close[0]!r}?" if close else f"the keys are {', '.join(allowed)}"
                self.fail(_join(key, name), f"unknown key ({why})")
        for name in required:
            if name not in value:
                self.fail(_join(key, name), "is required")
        return {k: v for k, v in value.items() if k in allowed}

    def number(self, data: Mapping[str, Any], key: str, name: str, default: float, *, whole: bool = False) -> Any:
        value = data.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if ok and whole and value != int(value):
            ok = False
        if not ok:
            what = "a whole number >= 0" if whole else "a number >= 0"
            self.fail(_join(key, name), f"{name}={value!r} must be {what}")
            return default
        return int(value) if whole else value

    def text(self, data: Mapping[str, Any], key: str, name: str) -> str | None:
        value = data.get(name)
        if value is None:
            return None
        if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
            self.fail(_join(key, name), f"must be a name such as 'A100', not {value!r}")
            return None
        return str(value)

    def memory(self, data: Mapping[str, Any], key: str, default: str) -> int | str:
        value = data.get("memory", default)
        try:
            ok = parse_memory(value) > 0
        except InvalidRequestError:
            ok = False
        if not ok:
            self.fail(_join(key, "memory"), f"must be an amount such as '1GiB' or bytes > 0, not {value!r}")
            return default
        return value

    def amounts(self, data: Mapping[str, Any], key: str) -> dict[str, float]:
        value = data.get("resources", {})
        if not isinstance(value, Mapping):
            self.fail(_join(key, "resources"), f"must be a mapping of name: amount, not {_kind(value)}")
            return {}
        out = {}
        for name, amount in value.items():
            if not isinstance(name, str) or not name or name in ("CPU", "GPU", "memory"):
                self.fail(_join(key, "resources"), f"{name!r} is not a custom resource name (CPU/GPU/memory have keys)")
            elif isinstance(amount, bool) or not isinstance(amount, int | float) or not amount >= 0:
                self.fail(_join(key, f"resources.{name}"), f"must be a number >= 0, not {amount!r}")
            else:
                out[name] = float(amount)
        return out

    def labels(self, data: Mapping[str, Any], key: str, name: str = "labels") -> dict[str, str]:
        """A mapping of text to text: a cluster's ``labels``, or its ``env``."""
        value = data.get(name, {})
        if not isinstance(value, Mapping):
            self.fail(_join(key, name), f"must be a mapping of key: value, not {_kind(value)}")
            return {}
        out = {}
        for item, label in value.items():
            if isinstance(label, bool):
                label = str(label).lower()
            if not isinstance(item, str) or not item or not isinstance(label, str | int | float) or not str(label):
                self.fail(_join(key, f"{name}.{item}"), f"must be a text value, not {_kind(label)}")
            else:
                out[item] = str(label)
        return out

    def cluster(self, value: Any, key: str) -> LocalClusterSpec:
        data = self.mapping(value, key, _CLUSTER_KEYS, required=("name",))
        name = data.get("name")
        if "name" in data and (not isinstance(name, str) or not _CLUSTER_NAME.match(name)):
            self.fail(_join(key, "name"), f"{name!r} must be 1-63 lowercase letters, digits, '-' or '_'")
        if data.get("workers") and "autoscaling" in data:
            self.fail(key, "has both workers and autoscaling (give one: fixed nodes, or worker types that scale)")
        workers: list[LocalNodeSpec] = []
        raw = data.get("workers", [])
        if not isinstance(raw, list):
            self.fail(_join(key, "workers"), f"must be a list of worker nodes, not {_kind(raw)}")
            raw = []
        for i, node in enumerate(raw):
            workers.extend(self.node(node, _join(key, f"workers.{i}")))
        autoscaling = None
        if "autoscaling" in data:
            autoscaling = self.autoscaling(data["autoscaling"], _join(key, "autoscaling"))
        return LocalClusterSpec(
            name if isinstance(name, str) else "",
            cpus=self.number(data, key, "cpus", 2),
            gpus=self.number(data, key, "gpus", 0, whole=True),
            accelerator=self.text(data, key, "accelerator"),
            memory=self.memory(data, key, "2GiB"),
            resources=self.amounts(data, key),
            labels=self.labels(data, key),
            workers=tuple(workers),
            autoscaling=autoscaling,
            env=self.labels(data, key, "env"),
        )

    def node(self, value: Any, key: str) -> list[LocalNodeSpec]:
        """A worker node entry: ``count`` (default 1) identical nodes."""
        data = self.mapping(value, key, _NODE_KEYS)
        count = self.number(data, key, "count", 1, whole=True)
        if count < 1:
            self.fail(_join(key, "count"), "must be at least 1 (leave the entry out for no node)")
        node = LocalNodeSpec(
            cpus=self.number(data, key, "cpus", 1),
            gpus=self.number(data, key, "gpus", 0, whole=True),
            accelerator=self.text(data, key, "accelerator"),
            memory=self.memory(data, key, "1GiB"),
            resources=self.amounts(data, key),
        )
        return [node] * count

    def autoscaling(self, value: Any, key: str) -> LocalAutoscaling | None:
        data = self.mapping(value, key, _AUTOSCALING_KEYS, required=("worker_types",))
        raw = data.get("worker_types", {})
        types = {}
        if "worker_types" in data and (not isinstance(raw, Mapping) or not raw):
            self.fail(_join(key, "worker_types"), "must map a node type name to its cpus, gpus, ... and max_workers")
        if not isinstance(raw, Mapping):
            raw = {}
        for name, kind in raw.items():
            where = _join(key, f"worker_types.{name}")
            kind = self.mapping(kind, where, _TYPE_KEYS)
            worker = LocalWorkerType(
                cpus=self.number(kind, where, "cpus", 1),
                gpus=self.number(kind, where, "gpus", 0, whole=True),
                accelerator=self.text(kind, where, "accelerator"),
                resources=self.amounts(kind, where),
                min_workers=self.number(kind, where, "min_workers", 0, whole=True),
                max_workers=self.number(kind, where, "max_workers", 1, whole=True),
            )
            if worker.max_workers < max(1, worker.min_workers):
                self.fail(_join(where, "max_workers"), "must be at least 1 and at least min_workers")
            types[str(name)] = worker
        idle = self.number(data, key, "idle_timeout_s", 60.0)
        if "idle_timeout_s" in data and idle <= 0:
            self.fail(_join(key, "idle_timeout_s"), "must be more than 0")
        return LocalAutoscaling(types, idle_timeout_s=idle) if types else None

    def raise_if_any(self, source: str | None, hint: str) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            key, problem = self.problems[0]
            raise ConfigError(problem, hint, source=source, key=key or None)
        lines = [f"{len(self.problems)} problems:"]
        lines += [f"  - key {key!r}: {problem}" if key else f"  - {problem}" for key, problem in self.problems]
        raise ConfigError("\n".join(lines), hint, source=source)


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), repr(value))


def parse_local_fleet(data: Any, *, source: str | None = None) -> list[LocalClusterSpec]:
    """The clusters of a local fleet definition (a file's parsed YAML: ``{"clusters": [...]}``).

    Raises:
        ConfigError: naming the file and every offending key at once.
    """
    reader = _Reader()
    top = reader.mapping(data, "", ("clusters",), required=("clusters",))
    raw = top.get("clusters", [])
    if "clusters" in top and (not isinstance(raw, list) or not raw):
        reader.fail("clusters", f"must be a non-empty list of clusters, not {_kind(raw)}")
        raw = []
    specs = [reader.cluster(c, f"clusters.{i}") for i, c in enumerate(raw)]
    names = [s.name for s in specs if s.name]
    for name in sorted({n for n in names if names.count(n) > 1}):
        reader.fail("clusters", f"the name {name!r} is given to more than one cluster")
    reader.raise_if_any(source, f"correct it in {source or 'the definition'}; {_FORMAT_HINT}")
    return specs


def load_local_fleet(path: str | os.PathLike[str]) -> list[LocalClusterSpec]:
    """The clusters of a local fleet file (YAML; see docs/local.md).

    Raises:
        ConfigError: the file is unreadable, not YAML, or has problems (all of them named, with their keys).
    """
    return parse_local_fleet(read_yaml(path, "local fleet file", _FORMAT_HINT), source=str(path))


def parse_local_cluster(data: Mapping[str, Any], *, source: str) -> LocalClusterSpec:
    """One cluster from a mapping of the file format's cluster keys (the CLI's ``--cluster``)."""
    reader = _Reader()
    spec = reader.cluster(data, "")
    reader.raise_if_any(source, _FORMAT_HINT)
    return spec


def parse_local_node(data: Mapping[str, Any], *, source: str) -> list[LocalNodeSpec]:
    """Worker nodes from a mapping of the file format's worker keys, ``count`` included (the CLI's ``--worker``)."""
    reader = _Reader()
    nodes = reader.node(data, "")
    reader.raise_if_any(source, _FORMAT_HINT)
    return nodes


def state_root() -> Path:
    """Where local fleets keep their directories: ``$RAYFLEET_LOCAL_DIR``, else ``$XDG_DATA_HOME/rayfleet/local``
    (``~/.local/share`` by default). Never derived from the ledger's path: a fleet started with one
    ``RAYFLEET_LEDGER`` must be found (and stopped) from a shell that has another, or none."""
    if env := os.environ.get(LOCAL_DIR_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rayfleet" / "local"


def state_dir(fleet: str = "default") -> Path:
    """Where a local fleet keeps its state file, fleet file and logs."""
    return state_root() / fleet


def ports_of(base: int) -> dict[str, int]:
    """The ports of one node whose block starts at ``base`` (a worker node uses the node-level ones)."""
    ports = {name: base + i for i, name in enumerate(_PORT_NAMES)}
    ports["min_worker"], ports["max_worker"] = base + WORKER_PORTS[0], base + WORKER_PORTS[1]
    return ports


def _taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as servers bind: a port whose old connections linger in TIME_WAIT (a cluster just stopped) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE or e.errno == errno.EACCES
    return False


# Port blocks being started, machine-wide: between choosing a free block and Ray binding its ports there are
# seconds (workers start after their head), in which another process's fleet would find the block free too.
_RESERVATIONS = Path(tempfile.gettempdir()) / "rayfleet-port-blocks"


@contextlib.contextmanager
def _reservation_lock() -> Iterator[None]:
    _RESERVATIONS.mkdir(exist_ok=True)
    with open(_RESERVATIONS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reserved(base: int) -> bool:
    """Whether a live process reserved the block at ``base`` (a reservation of a dead process is void)."""
    try:
        pid = int((_RESERVATIONS / str(base)).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def _reserve(bases: Iterable[int]) -> None:
    for base in bases:
        (_RESERVATIONS / str(base)).write_text(f"{os.getpid()}\n")


def _release(bases: Iterable[int]) -> None:
    for base in bases:
        path = _RESERVATIONS / str(base)
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(path.read_text().split()[0]) == os.getpid():
                path.unlink()


def _first_taken(base: int, nodes: int = 1) -> int | None:
    """The first port in use (or reserved by a fleet being started) among the blocks of ``nodes`` nodes, or None."""
    for node in range(nodes):
        if _reserved(base + node * PORT_BLOCK):
            return base + node * PORT_BLOCK
        ports = ports_of(base + node * PORT_BLOCK)
        named = [ports[n] for n in _PORT_NAMES]
        workers = range(ports["min_worker"], ports["max_worker"] + 1)
        if (port := next((p for p in [*named, *workers] if _taken(p)), None)) is not None:
            return port
    return None


@dataclass
class RunningWorker:
    """A worker node's ``ray start`` process, as written in the state file."""

    pid: int
    log: str


@dataclass
class RunningCluster:
    """A started local cluster, as written in the state file.

    Every node of the cluster runs with ``--temp-dir=<temp_dir>``, which is how a pid from the state file is
    recognised as still ours (not reused by something else).
    """

    name: str
    pid: int
    address: str
    port_base: int
    temp_dir: str
    log: str
    labels: dict[str, str]
    workers: list[RunningWorker] = field(default_factory=list)
    autoscaling: bool = False

    def __post_init__(self) -> None:  # from the state file, the workers are dicts
        self.workers = [w if isinstance(w, RunningWorker) else RunningWorker(**w) for w in self.workers]

    def alive(self) -> bool:
        """Whether our head's ``ray start`` process still runs (and the pid was not reused by something else)."""
        return _is_ours(self.pid, self.temp_dir)


def _is_ours(pid: int, temp_dir: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return temp_dir in cmdline


class LocalFleet:
    """Starts and stops N real Ray clusters on this machine.

    Args:
        clusters: what to start (default: a "cpu" cluster and a "gpu" cluster with 2 logical A100s).
        name: the fleet's name; its state lives in ``state_dir(name)``.
        port_base: the first port of the first cluster's block; ``None`` picks free blocks.
        directory: where to keep the state instead of ``state_dir(name)``.

    ``up()`` and ``down()`` may come from different processes: ``LocalFleet(specs, name="lab").up()`` leaves the
    clusters running after this process ends (for the CLI: ``rayfleet --fleet <fleet_file>``), and
    ``LocalFleet(name="lab").down()`` (or ``rayfleet local down --name lab``) stops them. `local_fleet` stops them
    when its block ends.

    Example:
        >>> with LocalFleet([LocalClusterSpec("a", cpus=1)]) as running:      # doctest: +SKIP
        ...     print(running.fleet_file)
    """

    def __init__(
        self,
        clusters: Sequence[LocalClusterSpec] = DEMO_FLEET,
        *,
        name: str = "default",
        port_base: int | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        names = [c.name for c in clusters]
        if len(set(names)) != len(names):
            raise LocalFleetError(f"duplicate cluster names in {names}", "give every local cluster its own name")
        for spec in clusters:
            if spec.workers and spec.autoscaling:
                raise LocalFleetError(
                    f"local cluster {spec.name!r} has both fixed workers and autoscaling",
                    "give it either workers= or autoscaling= (as worker types with min_workers)",
                )
        self.specs = list(clusters)
        self.name = name
        self.port_base = port_base
        self.dir = Path(directory) if directory else state_dir(name)
        self.running: list[RunningCluster] = []
        self.leftovers_stopped = 0  # processes of a crashed previous run that up() stopped first
        self._processes: dict[int, subprocess.Popen[bytes]] = {}  # pid -> the ones this object started

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> LocalFleet:
        """The fleet a local fleet file describes (see `load_local_fleet`); ``kwargs`` as for the constructor."""
        return cls(load_local_fleet(path), **kwargs)

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def fleet_file(self) -> Path:
        return self.dir / "fleet.yaml"

    def __enter__(self) -> LocalFleet:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ----- up -----------------------------------------------------------------------------------------------------

    def up(self, timeout: float = START_TIMEOUT_S) -> LocalFleet:
        """Start every cluster, wait until each has all its nodes and accepts jobs, and write the state and fleet files.

        Heads start together; each cluster's workers then start one by one, each once the previous node has joined.

        Raises:
            LocalFleetError: the fleet is already up, or a cluster did not start (its log is named).
            PortInUseError: an explicitly chosen port is taken.
        """
        if self.state_file.exists():
            previous = _read_state(self.state_file)
            if any(c.alive() for c in previous):
                raise LocalFleetError(
                    f"local fleet {self.name!r} is already up ({self.state_file})",
                    f"stop it with 'rayfleet local down --name {self.name}', or choose another name",
                )
            self._stop_previous(previous)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _reservation_lock():
            bases = self._choose_ports()
            blocks = [b + k * PORT_BLOCK for b, spec in zip(bases, self.specs, strict=True)
                      for k in range(1 + len(spec.workers))]  # fmt: skip
            _reserve(blocks)
        try:
            self.running = []
            for spec, base in zip(self.specs, bases, strict=True):
                self.running.append(self._start_head(spec, base))
                self._write_state()
            deadline = time.monotonic() + timeout
            for cluster, spec in zip(self.running, self.specs, strict=True):
                _wait_ready(cluster, self._processes_of(cluster), 1, deadline, timeout)
                for index, node in enumerate(spec.workers, 1):  # one at a time (see _start_worker)
                    cluster.workers.append(self._start_worker(cluster, index, node, spec.env))
                    self._write_state()
                    _wait_ready(cluster, self._processes_of(cluster), 1 + index, deadline, timeout)
            for cluster, spec in zip(self.running, self.specs, strict=True):
                _wait_ready(cluster, self._processes_of(cluster), spec.nodes_at_start, deadline, timeout)
        except BaseException:
            self._stop(self.running, STOP_TIMEOUT_S)
            raise
        finally:
            _release(blocks)  # bound by Ray now (or given up)
        self._write_fleet_file()
        return self

    def _stop_previous(self, previous: Sequence[RunningCluster]) -> None:
        """A previous run whose heads are gone (a crash) may have left processes behind, holding its ports: stop them
        (they are this fleet's own, found by its clusters' temp dirs) before starting again."""
        left = _members(_process_table(), [c.temp_dir for c in previous])
        if left:
            log.info(
                "local fleet %r: stopping %d processes left by its previous run (its heads had stopped)",
                self.name,
                len(left),
            )
        self.leftovers_stopped = len(left)
        self._stop(previous, timeout_s=5.0)

    def _choose_ports(self) -> list[int]:
        sizes = [1 + len(spec.workers) for spec in self.specs]  # blocks per cluster
        if self.port_base is not None:
            bases = [self.port_base + sum(sizes[:i]) * PORT_BLOCK for i in range(len(self.specs))]
            for spec, base, size in zip(self.specs, bases, sizes, strict=True):
                if (port := _first_taken(base, size)) is not None:
                    holder = _fleet_holding(port)
                    stop = (
                        f"run 'rayfleet local down --name {holder}'"
                        if holder
                        else f"stop what listens there (ss -ltnp 'sport = :{port}')"
                    )
                    raise PortInUseError(
                        f"port {port} for local cluster {spec.name!r} is already in use"
                        + (f" (by local fleet {holder!r})" if holder else ""),
                        f"{stop}, or choose another port base (--port-base / port_base=), or leave it unset to pick "
                        "free ports",
                    )
            return bases
        bases, base = [], FIRST_BASE
        for size in sizes:
            while True:
                if base + size * PORT_BLOCK > LAST_PORT + 1:
                    raise PortInUseError("no free block of ports below 32768", "stop other local fleets")
                if _first_taken(base, size) is None:
                    break
                base += PORT_BLOCK
            bases.append(base)
            base += size * PORT_BLOCK
        return bases

    def _start_head(self, spec: LocalClusterSpec, base: int) -> RunningCluster:
        ports = ports_of(base)
        temp_dir = tempfile.mkdtemp(prefix=f"rf-{spec.name[:10]}-", dir="/tmp")  # short: Ray's socket paths are limited
        log_path = self.dir / f"{spec.name}.log"
        command = [
            *_ray_start(), "--head",
            f"--port={ports['gcs']}",
            f"--dashboard-port={ports['dashboard']}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={ports['client_server']}",
            *_node_options(ports, temp_dir, spec.cpus, spec.gpus, spec.memory, spec.node_resources()),
        ]  # fmt: skip
        env = _environment()
        env.update(  # Prometheus ports of the autoscaler and the dashboard; fixed 44217 and 44227 by default
            AUTOSCALER_METRIC_PORT=str(ports["autoscaler_metrics"]),
            DASHBOARD_METRIC_PORT=str(ports["dashboard_metrics"]),
        )
        env.update(spec.env)
        if spec.autoscaling:
            config = self.dir / f"{spec.name}.autoscaling.yaml"
            _atomic_write(config, yaml.safe_dump(_autoscaling_config(spec, ports["gcs"]), sort_keys=False))
            command.append(f"--autoscaling-config={config}")
            env["RAY_FAKE_CLUSTER"] = "1"  # required by the fake provider; also gives the head a fixed node id
        process = self._spawn(command, log_path, env)
        labels = {
            "provider": "local",
            **({"accelerator": spec.accelerator} if spec.accelerator else {}),
            **spec.labels,
        }
        return RunningCluster(
            spec.name,
            process.pid,
            f"http://127.0.0.1:{ports['dashboard']}",
            base,
            temp_dir,
            str(log_path),
            labels,
            autoscaling=spec.autoscaling is not None,
        )

    def _start_worker(
        self, cluster: RunningCluster, index: int, node: LocalNodeSpec, env: Mapping[str, str]
    ) -> RunningWorker:
        """Start worker ``index`` (1, 2, ...) of ``cluster`` in the ``index``-th block of ports after the head's.

        It shares the head's temp dir, so it also shares its session dir. That is what makes job logs work: a job's
        driver on a worker writes its log into its node's session dir, but the worker's dashboard agent, which serves
        that log, connects to Ray as a driver would, and a driver on this machine picks the head node (same address),
        so it reads the head's session dir. (With a temp dir per worker, such a job's logs came back empty.)
        Nodes sharing a session dir pick their socket and log file names ("raylet.1", ...) by looking at what
        exists, so two starting at once can pick the same (seen: both raylets took ``sockets/raylet.1`` and one
        aborted with "bind: Address already in use"): ``up()`` starts workers one at a time.
        """
        ports = ports_of(cluster.port_base + index * PORT_BLOCK)
        log_path = self.dir / f"{cluster.name}-worker{index}.log"
        command = [
            sys.executable, "-c", _WORKER_START, "start", "--block",
            f"--address=127.0.0.1:{ports_of(cluster.port_base)['gcs']}",
            *_node_options(ports, cluster.temp_dir, node.cpus, node.gpus, node.memory, node.node_resources()),
        ]  # fmt: skip
        return RunningWorker(self._spawn(command, log_path, {**_environment(), **env}).pid, str(log_path))

    def _spawn(self, command: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group (id = its pid), so down() can kill all of it
            )
        self._processes[process.pid] = process
        return process

    def _processes_of(self, cluster: RunningCluster) -> list[subprocess.Popen[bytes]]:
        pids = [cluster.pid, *(w.pid for w in cluster.workers)]
        return [self._processes[pid] for pid in pids if pid in self._processes]

    def _write_state(self) -> None:
        data = {"name": self.name, "clusters": [asdict(c) for c in self.running]}
        _atomic_write(self.state_file, json.dumps(data, indent=2))

    def _write_fleet_file(self) -> None:
        data = {
            "clusters": [{"name": c.name, "address": c.address, "labels": c.labels} for c in self.running],
            "probe_ttl_s": 1.0,
        }
        _atomic_write(self.fleet_file, yaml.safe_dump(data, sort_keys=False))

    # ----- down ---------------------------------------------------------------------------------------------------

    def down(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop this fleet's clusters (those started here, or those named in its state file). Returns their names.

        ``timeout_s``: how long the SIGTERMed processes get to exit before the SIGKILL (a cluster whose head or raylet
        was killed has nothing left to shut down cleanly: a short one does).

        Everything of a cluster goes, orphans of a crashed head included (see `_stop`); then its ports are checked.

        Raises:
            LocalFleetError: a process of a cluster did not exit even after SIGKILL (the state file is kept).
            PortInUseError: a port of a cluster's block is still taken once all its processes have exited.
        """
        clusters = self.running or (_read_state(self.state_file) if self.state_file.exists() else [])
        self._stop(clusters, timeout_s)
        for cluster in clusters:
            if (port := _port_in_use(cluster, PORTS_FREE_S)) is not None:
                raise PortInUseError(
                    f"port {port} of local cluster {cluster.name!r} is still in use after all its processes stopped",
                    f"see what holds it with ss -ltnp 'sport = :{port}' (no process of the cluster is left: none "
                    f"names or writes into {cluster.temp_dir}); stop that, or let 'rayfleet local up' pick free ports",
                )
        return [c.name for c in clusters]

    def _stop(self, clusters: Sequence[RunningCluster], timeout_s: float) -> None:
        """Stop every process of ``clusters``, then remove their temp dirs and this fleet's state and fleet files.

        Worker nodes go first (fixed workers, and the autoscaler with the nodes it added), then the heads, then the
        orphans, then SIGKILL to whatever of theirs is left. Which processes are theirs is decided before any signal,
        from the process groups we created and the ``/proc`` parent links from our pids (once a parent exits its
        children are re-parented to init and the links are gone), and from each cluster's temp dir: every process of
        a cluster names it on its command line or writes a log file under it. That finds what a crashed head left
        behind, which no link or group leads to (job drivers run in sessions of their own; Ray's agents outlive
        their raylet); the temp dir is the cluster's own (``mkdtemp``), so no other cluster's process matches.
        """
        table = _process_table()
        heads = [c.pid for c in clusters if self._alive(c.pid, c.temp_dir)]
        workers = [w.pid for c in clusters for w in c.workers if self._alive(w.pid, c.temp_dir)]
        # the groups we created with start_new_session (their ids are our children's pids): while the leader lives and
        # is ours, or is gone (its group may hold orphans); not if the pid now belongs to something else
        groups = [
            pid
            for c in clusters
            for pid in (c.pid, *(w.pid for w in c.workers))
            if pid in heads or pid in workers or pid not in table
        ]
        family = _family(table, [*heads, *workers], groups)
        temp_dirs = [c.temp_dir for c in clusters]
        orphans = {p: s for p, s in _members(table, temp_dirs).items() if p not in family}
        family.update(orphans)
        # the autoscaler (a child of the head) and the fake nodes it started (its descendants)
        autoscalers = [
            p for c in clusters if c.autoscaling and c.pid in heads for p in _children(table, c.pid, "monitor.py")
        ]
        fake_nodes = _family(table, autoscalers, []).keys() - set(autoscalers)

        deadline = time.monotonic() + timeout_s
        self._terminate([*workers, *autoscalers, *fake_nodes], deadline, family)
        self._terminate(heads, deadline, family)
        # an orphan has lost its raylet or GCS and so has nothing to shut down cleanly (measured: Ray's workers, the
        # job supervisor and a driver outlived a SIGTERM by 15 s): a short wait, then the SIGKILL below
        self._terminate(orphans, min(deadline, time.monotonic() + ORPHAN_STOP_S), family)
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        _kill(family)  # a descendant that left the group, an orphan
        for pid in [c.pid for c in clusters] + [w.pid for c in clusters for w in c.workers]:
            if (process := self._processes.pop(pid, None)) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=2)  # reap our child (killed above)
            else:
                _reap(pid)
        # SIGKILL is asynchronous: return only once every process of theirs has exited (zombies count as exited),
        # including any a dying raylet started meanwhile (found the same way)
        gone_by = time.monotonic() + 10
        while time.monotonic() < gone_by:
            if any(_start_time(p) == s for p, s in family.items()):
                time.sleep(0.05)
                continue
            if not (stray := _members(_process_table(), temp_dirs)):
                break
            _kill(stray)
            family.update(stray)
        left = sorted(
            {p for p, s in family.items() if _start_time(p) == s} | _members(_process_table(), temp_dirs).keys()
        )
        if left:
            raise LocalFleetError(
                f"local fleet {self.name!r}: processes {left} of its clusters did not exit after SIGKILL",
                f"see them with 'ps -o pid,stat,args -p {','.join(map(str, left))}'; once they are gone, run "
                f"'rayfleet local down --name {self.name}' again",
            )
        for cluster in clusters:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        for path in (self.state_file, self.fleet_file):
            path.unlink(missing_ok=True)
        self.running = []

    def _alive(self, pid: int, temp_dir: str) -> bool:
        process = self._processes.get(pid)
        return process.poll() is None if process is not None else _is_ours(pid, temp_dir)

    def _terminate(self, pids: Iterable[int], deadline: float, family: Mapping[int, int]) -> None:
        """SIGTERM each of ``pids`` and wait (until ``deadline``) for them to exit."""
        pids = list(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            if (process := self._processes.get(pid)) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
            while pid in family and _start_time(pid) == family[pid] and time.monotonic() < deadline:
                time.sleep(0.1)  # not our child: watch /proc

    # ----- status -------------------------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Each cluster of the state file: name, address, pid, whether its process lives and its dashboard answers."""
        out = []
        for cluster in _read_state(self.state_file) if self.state_file.exists() else []:
            answering = False
            if cluster.alive():
                with contextlib.suppress(requests.RequestException):
                    answering = requests.get(cluster.address + "/api/version", timeout=1).ok
            out.append({"name": cluster.name, "address": cluster.address, "pid": cluster.pid,
                        "alive": cluster.alive(), "answering": answering})  # fmt: skip
        return out


def _ray_start() -> list[str]:
    ray = Path(sys.executable).parent / "ray"
    return [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start", "--block"]


# `ray start --address` (a worker node) refuses to run when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("Multi-node Ray
# clusters are not supported on Windows and OSX"), yet that variable is what keeps a node on 127.0.0.1: without it Ray
# rewrites 127.0.0.1 (in --address and --node-ip-address) to the machine's address, where the head does not listen.
# So a worker runs Ray's own CLI with that one check passing: the CLI module gets a copy of ray_constants that says
# multi-node is enabled; the rest of Ray still reads 0 and binds 127.0.0.1.
_WORKER_START = """\
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as cli
cli.ray_constants = types.ModuleType(constants.__name__)
cli.ray_constants.__dict__.update(vars(constants), ENABLE_RAY_CLUSTER=True)
sys.argv[0] = "ray"
sys.exit(cli.main())
"""


def _node_options(
    ports: Mapping[str, int], temp_dir: str, cpus: float, gpus: int, memory: int | str, resources: Mapping[str, float]
) -> list[str]:
    """The ``ray start`` options every node (head or worker) of a local cluster needs.

    Every per-node port is explicit: several defaults are fixed numbers (the dashboard agent's 52365) that two nodes
    on one machine would both take.
    """
    return [
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--min-worker-port={ports['min_worker']}",
        f"--max-worker-port={ports['max_worker']}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={cpus:g}",
        f"--num-gpus={gpus}",
        f"--memory={parse_memory(memory)}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--resources={json.dumps(dict(resources))}",
        "--include-log-monitor=false",
        "--disable-usage-stats",
    ]


def _environment() -> dict[str, str]:
    """The environment of every ``ray start`` (and so of the autoscaler and the fake nodes it starts)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        # jobs run `python` from PATH: make it this interpreter, which has rayfleet (nested dispatch) and Ray
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # bind 127.0.0.1 only
        AUTOSCALER_UPDATE_INTERVAL_S="1",  # capacity reports (and autoscaler decisions) every second instead of five
        RAY_USAGE_STATS_ENABLED="0",
        # Ray 2.60 turns token auth on for `ray start` whenever ~/.ray/auth_token exists, and any `ray.init()` without
        # an address writes that file: then every dashboard call gets 401. Local clusters listen on loopback only.
        RAY_AUTH_MODE="disabled",
    )
    return env


def _autoscaling_config(spec: LocalClusterSpec, gcs_port: int) -> dict[str, Any]:
    """The cluster config for Ray's autoscaler with the fake multi-node provider (the package lacks Ray's example).

    What the fake provider does (Ray 2.60, read and measured): it starts each node inside the head's autoscaler
    process (``monitor.py``) with ``ray._private.node.Node``, so a node's raylet, agents and log monitor are children
    of the autoscaler, in the head's process group, with the head's environment (so they bind 127.0.0.1 too). Every
    port of such a node is 0, so the OS picks an ephemeral one (32768+, outside our blocks), and so are its worker
    ports; the dashboard agent's fixed 52365 is not used. Nodes share the head's temp dir and get node ids
    ``fff...00001``, ``fff...00002`` ... (the head is ``fff...00000`` under RAY_FAKE_CLUSTER=1) in every cluster,
    which does no harm since each cluster has its own GCS: two autoscaling local clusters ran at once, each scaling a
    GPU node up and down and running drivers that call ``ray.init()``. The type's resources become the node's, except
    CPU, GPU and object_store_memory; a ``memory`` resource is refused (an assert in ``RayParams``), so a fake node
    reports most of the machine's memory.
    """
    assert spec.autoscaling is not None
    head = {"CPU": spec.cpus, "GPU": spec.gpus, **spec.node_resources()}
    types: dict[str, Any] = {FAKE_HEAD_TYPE: {"resources": head, "node_config": {}, "max_workers": 0}}
    for name, kind in spec.autoscaling.worker_types.items():
        resources = {"CPU": kind.cpus, "GPU": kind.gpus, **kind.node_resources()}
        types[name] = {
            "resources": {**resources, "object_store_memory": OBJECT_STORE_BYTES},
            "node_config": {},
            "min_workers": kind.min_workers,
            "max_workers": kind.max_workers,
        }
    return {
        "cluster_name": spec.name,
        "max_workers": sum(t.max_workers for t in spec.autoscaling.worker_types.values()),
        "idle_timeout_minutes": spec.autoscaling.idle_timeout_s / 60,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{gcs_port}",  # the provider assumes port 6379 otherwise
            "use_node_id_as_ip": True,  # fake nodes share an IP; the autoscaler tells them apart by node id
            "disable_node_updaters": True,  # no SSH setup of nodes
            "disable_launch_config_check": True,
        },
        "auth": {},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


# ----- processes, by id, from /proc -------------------------------------------------------------------------------


def _stat(pid: int | str) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of a live process; None if gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def _start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[2] if stat else None


def _process_table() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent pid, process group, start time)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            table[int(entry)] = stat
    return table


def _family(table: Mapping[int, tuple[int, int, int]], roots: Iterable[int], groups: Iterable[int]) -> dict[int, int]:
    """The ``roots``, the members of ``groups``, and their descendants: pid -> start time (to spot pid reuse)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    group_ids = set(groups)
    todo = [pid for pid in roots if pid in table] + [pid for pid, (_, g, _) in table.items() if g in group_ids]
    found: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return {pid: table[pid][2] for pid in found}


def _children(table: Mapping[int, tuple[int, int, int]], parent: int, marker: str) -> list[int]:
    """The children of ``parent`` whose command line contains ``marker``."""
    out = []
    for pid, (ppid, _, _) in table.items():
        if ppid == parent:
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(pid)
    return out


def _kill(processes: Mapping[int, int]) -> None:
    """SIGKILL each process of ``processes`` (pid -> start time) that is still the same process."""
    for pid, started in processes.items():
        if _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _members(table: Mapping[int, tuple[int, int, int]], temp_dirs: Sequence[str]) -> dict[int, int]:
    """The processes of the clusters with these temp dirs, found without parent links: each has an option naming a
    temp dir on its command line (``--temp-dir=<temp dir>``, ``--log_dir=<temp dir>/session_...``) or has a file under
    one open for writing (Ray's agents and workers write their logs there, a job's driver its output). A reader
    (``tail -f`` of a log) is not one, nor is this process or its ancestors (a job that stops its own cluster).
    pid -> start time."""
    if not temp_dirs:
        return {}
    pattern = re.compile("|".join(rf"^--[\w-]+={re.escape(d)}(/|$)" for d in temp_dirs))
    spared, pid = set(), os.getpid()
    while pid in table and pid not in spared:
        spared.add(pid)
        pid = table[pid][0]
    return {
        pid: started
        for pid, (_, _, started) in table.items()
        if pid not in spared and (_names(pid, pattern) or _writes_under(pid, temp_dirs))
    }


def _names(pid: int, pattern: re.Pattern[str]) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return any(pattern.search(arg) for arg in cmdline.split("\0"))


def _writes_under(pid: int, directories: Sequence[str]) -> bool:
    """Whether the process has a file under one of ``directories`` open for writing (removed files count too)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if not any(target.startswith(d + "/") for d in directories):
                continue
            flags = next(line for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines() if "flags" in line)
        except (OSError, StopIteration):
            continue
        if int(flags.split()[1], 8) & (os.O_WRONLY | os.O_RDWR):
            return True
    return False


def _port_in_use(cluster: RunningCluster, wait_s: float) -> int | None:
    """The first port of the cluster's blocks that something still holds after up to ``wait_s`` (the sockets of a
    killed process may linger in the kernel a moment); a block that another fleet has reserved since (it is
    starting there) is not looked at."""
    deadline = time.monotonic() + wait_s
    for node in range(1 + len(cluster.workers)):
        base = cluster.port_base + node * PORT_BLOCK
        ports = ports_of(base)
        for port in [*(ports[n] for n in _PORT_NAMES), *range(ports["min_worker"], ports["max_worker"] + 1)]:
            while not _reserved(base) and _taken(port):
                if time.monotonic() > deadline:
                    return port
                time.sleep(0.1)
    return None


def _fleet_holding(port: int) -> str | None:
    """The name of the local fleet (in `state_root`) whose state file gives it the block holding ``port``, if any."""
    with contextlib.suppress(OSError):
        for state in sorted(state_root().glob("*/state.json")):
            with contextlib.suppress(LocalFleetError):
                for c in _read_state(state):
                    if c.port_base <= port < c.port_base + (1 + len(c.workers)) * PORT_BLOCK:
                        return state.parent.name
    return None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _node_count(session: requests.Session, address: str) -> int:
    status = session.get(address + "/api/cluster_status", timeout=2).json()
    return len(status["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"])


def _wait_ready(
    cluster: RunningCluster,
    processes: Sequence[subprocess.Popen[bytes]],
    nodes: int,
    deadline: float,
    timeout: float,
) -> None:
    """Until the dashboard reports ``nodes`` nodes and the job API answers; fail fast if a process exits."""
    session = requests.Session()
    seen = 0
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                log = {w.pid: w.log for w in cluster.workers}.get(process.pid, cluster.log)
                raise LocalFleetError(
                    f"local cluster {cluster.name!r}: a node exited while starting: {_tail(log)}",
                    f"read {log}; a port or temp dir clash is the usual cause",
                )
        try:
            seen = _node_count(session, cluster.address)
            if seen >= nodes and session.get(cluster.address + "/api/jobs/", timeout=2).ok:
                return
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.25)
    raise LocalFleetError(
        f"local cluster {cluster.name!r} was not ready within {timeout:g} s ({seen} of {nodes} nodes up)",
        f"read {cluster.log} (and its workers' logs next to it); the machine may be short of memory or CPU",
    )


def _tail(path: str, lines: int = 5) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read_state(path: Path) -> list[RunningCluster]:
    try:
        data = json.loads(path.read_text())
        return [RunningCluster(**c) for c in data["clusters"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LocalFleetError(f"the state file {path} is unreadable: {e}", f"remove {path} if no fleet runs") from None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
