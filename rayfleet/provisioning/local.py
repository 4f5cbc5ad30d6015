"""The embedded local fleet: real Ray clusters on this machine, each a child ``ray start --head --block``.

Each cluster gets its own block of ports and its own temp dir, declared CPUs, GPUs (logical GPUs need no hardware),
accelerator model and memory, and binds loopback only. A cluster may also have

- worker nodes: each a child ``ray start --address=<head> --block`` with its own 200 ports inside the cluster's
  block, sharing the head's temp dir; or
- autoscaling: Ray's fake multi-node provider runs the real Ray autoscaler on the head, which adds and removes worker
  "nodes" as local processes (children of the head's autoscaler process).

The fleet stops exactly the processes it started and their descendants, by their id; never Ray's own stop command,
which stops every cluster on the machine. A state file lets another process find and stop the fleet
(``rayfleet local down``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
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

from rayfleet.errors import LocalFleetError, PortInUseError
from rayfleet.ledger import default_path as default_ledger_path
from rayfleet.resources import ACCELERATOR_PREFIX, parse_memory

PORT_BLOCK = 200  # ports per node: 11 named services + 100 worker ports, with room to spare
FIRST_BASE = 24000  # below Linux's ephemeral range (32768+), so the OS does not hand these out to clients
LAST_PORT = 32767
WORKER_PORTS = (100, 199)  # offsets within the block
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
OBJECT_STORE_BYTES = 100_000_000  # per node; Ray's default is 30% of the machine's memory
_PORT_NAMES = (
    "gcs", "dashboard", "client_server", "node_manager", "object_manager",
    "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent", "metrics_export",
    "autoscaler_metrics", "dashboard_metrics",
)  # fmt: skip
FAKE_HEAD_TYPE = "ray.head.default"  # the head's node type name that Ray's fake provider expects


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


def state_dir(fleet: str = "default") -> Path:
    """Where a local fleet keeps its state file, fleet file and logs."""
    base = os.environ.get("RAYFLEET_LOCAL_DIR") or default_ledger_path().parent / "local"
    return Path(base) / fleet


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
        self._processes: dict[int, subprocess.Popen[bytes]] = {}  # pid -> the ones this object started

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
        if self.state_file.exists() and any(c.alive() for c in _read_state(self.state_file)):
            raise LocalFleetError(
                f"local fleet {self.name!r} is already up ({self.state_file})",
                f"stop it with 'rayfleet local down --name {self.name}', or choose another name",
            )
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
                    cluster.workers.append(self._start_worker(cluster, index, node))
                    self._write_state()
                    _wait_ready(cluster, self._processes_of(cluster), 1 + index, deadline, timeout)
            for cluster, spec in zip(self.running, self.specs, strict=True):
                _wait_ready(cluster, self._processes_of(cluster), spec.nodes_at_start, deadline, timeout)
        except BaseException:
            self.down()
            raise
        finally:
            _release(blocks)  # bound by Ray now (or given up)
        self._write_fleet_file()
        return self

    def _choose_ports(self) -> list[int]:
        sizes = [1 + len(spec.workers) for spec in self.specs]  # blocks per cluster
        if self.port_base is not None:
            bases = [self.port_base + sum(sizes[:i]) * PORT_BLOCK for i in range(len(self.specs))]
            for spec, base, size in zip(self.specs, bases, sizes, strict=True):
                if (port := _first_taken(base, size)) is not None:
                    raise PortInUseError(
                        f"port {port} for local cluster {spec.name!r} is already in use",
                        f"stop what listens there (ss -ltnp 'sport = :{port}'), or choose another port base "
                        f"(--port-base / port_base=), or leave it unset to pick free ports",
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

    def _start_worker(self, cluster: RunningCluster, index: int, node: LocalNodeSpec) -> RunningWorker:
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
        return RunningWorker(self._spawn(command, log_path, _environment()).pid, str(log_path))

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

        Worker nodes go first (fixed workers, and the autoscaler with the nodes it added), then the heads, then
        SIGKILL to whatever of theirs is left. Which processes are theirs is decided before any signal, from the
        process groups we created and the ``/proc`` parent links from our pids: once a parent exits its children
        are re-parented to init and the links are gone.
        """
        clusters = self.running or (_read_state(self.state_file) if self.state_file.exists() else [])
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
        # the autoscaler (a child of the head) and the fake nodes it started (its descendants)
        autoscalers = [
            p for c in clusters if c.autoscaling and c.pid in heads for p in _children(table, c.pid, "monitor.py")
        ]
        fake_nodes = _family(table, autoscalers, []).keys() - set(autoscalers)

        deadline = time.monotonic() + timeout_s
        self._terminate([*workers, *autoscalers, *fake_nodes], deadline, family)
        self._terminate(heads, deadline, family)
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for pid, started in family.items():  # a descendant that left the group
            if _start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        for pid in [c.pid for c in clusters] + [w.pid for c in clusters for w in c.workers]:
            if (process := self._processes.pop(pid, None)) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=2)  # reap our child (killed above)
            else:
                _reap(pid)
        # SIGKILL is asynchronous: return only once every process of theirs has exited (zombies count as exited)
        gone_by = time.monotonic() + 10
        while time.monotonic() < gone_by and any(_start_time(p) == s for p, s in family.items()):
            time.sleep(0.05)
        for cluster in clusters:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        for path in (self.state_file, self.fleet_file):
            path.unlink(missing_ok=True)
        self.running = []
        return [c.name for c in clusters]

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
