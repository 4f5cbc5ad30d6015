"""The embedded local fleet: real Ray clusters on this machine, each a child ``ray start --head --block``.

Each cluster gets its own block of ports and its own temp dir, declared CPUs, GPUs (logical GPUs need no hardware),
accelerator model and memory, and binds loopback only. The fleet stops exactly the processes it started, by their
id; never ``ray stop``, which stops every cluster on the machine. A state file lets another process find and stop
the fleet (``rayfleet local down``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from rayfleet.errors import LocalFleetError, PortInUseError
from rayfleet.ledger import default_path as default_ledger_path
from rayfleet.resources import ACCELERATOR_PREFIX, parse_memory

PORT_BLOCK = 200  # ports per cluster: 10 named services + 100 worker ports, with room to spare
FIRST_BASE = 24000  # below Linux's ephemeral range (32768+), so the OS does not hand these out to clients
WORKER_PORTS = (100, 199)  # offsets within the block
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
_PORT_NAMES = (
    "gcs", "dashboard", "client_server", "node_manager", "object_manager",
    "dashboard_agent_listen", "dashboard_agent_grpc", "runtime_env_agent", "metrics_export",
)  # fmt: skip


@dataclass(frozen=True)
class LocalClusterSpec:
    """One local cluster to start.

    Attributes:
        name: the cluster's name in the fleet.
        cpus: logical CPUs.
        gpus: logical GPUs (no hardware needed).
        accelerator: the GPU model the node declares (``accelerator_type:<model>`` = 1), e.g. ``"A100"``.
        memory: declared memory (bytes or ``"2GiB"``); every local cluster would otherwise claim the whole machine.
        resources: other custom resources of the node.
        labels: labels of the cluster in the fleet.
    """

    name: str
    cpus: float = 2
    gpus: int = 0
    accelerator: str | None = None
    memory: int | str = "2GiB"
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    def node_resources(self) -> dict[str, float]:
        out = dict(self.resources)
        if self.accelerator:
            out[ACCELERATOR_PREFIX + self.accelerator] = 1
        return out


DEMO_FLEET = (
    LocalClusterSpec("cpu", cpus=2, labels={"kind": "cpu"}),
    LocalClusterSpec("gpu", cpus=2, gpus=2, accelerator="A100", labels={"kind": "gpu"}),
)


def state_dir(fleet: str = "default") -> Path:
    """Where a local fleet keeps its state file, fleet file and logs."""
    base = os.environ.get("RAYFLEET_LOCAL_DIR") or default_ledger_path().parent / "local"
    return Path(base) / fleet


def ports_of(base: int) -> dict[str, int]:
    ports = {name: base + i for i, name in enumerate(_PORT_NAMES)}
    ports["min_worker"], ports["max_worker"] = base + WORKER_PORTS[0], base + WORKER_PORTS[1]
    return ports


def _taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE or e.errno == errno.EACCES
    return False


def _first_taken(base: int) -> int | None:
    ports = ports_of(base)
    named = [ports[n] for n in _PORT_NAMES]
    workers = range(ports["min_worker"], ports["max_worker"] + 1)
    return next((p for p in [*named, *workers] if _taken(p)), None)


@dataclass
class RunningCluster:
    """A started local cluster, as written in the state file."""

    name: str
    pid: int
    address: str
    port_base: int
    temp_dir: str
    log: str
    labels: dict[str, str]

    def alive(self) -> bool:
        """Whether our ``ray start`` process still runs (and the pid was not reused by something else)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return self.temp_dir in cmdline


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
        self.specs = list(clusters)
        self.name = name
        self.port_base = port_base
        self.dir = Path(directory) if directory else state_dir(name)
        self.running: list[RunningCluster] = []
        self._processes: dict[str, subprocess.Popen[bytes]] = {}  # the ones this object started

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
        """Start every cluster, wait until each accepts jobs, and write the state and fleet files.

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
        bases = self._choose_ports()
        try:
            started = [self._start(spec, base) for spec, base in zip(self.specs, bases, strict=True)]
            self.running = started
            self._write_state()
            deadline = time.monotonic() + timeout
            for cluster in started:
                _wait_ready(cluster, self._processes[cluster.name], deadline)
        except BaseException:
            self.down()
            raise
        self._write_fleet_file()
        return self

    def _choose_ports(self) -> list[int]:
        if self.port_base is not None:
            bases = [self.port_base + i * PORT_BLOCK for i in range(len(self.specs))]
            for spec, base in zip(self.specs, bases, strict=True):
                if (port := _first_taken(base)) is not None:
                    raise PortInUseError(
                        f"port {port} for local cluster {spec.name!r} is already in use",
                        f"stop what listens there (ss -ltnp 'sport = :{port}'), or choose another port base "
                        f"(--port-base / port_base=), or leave it unset to pick free ports",
                    )
            return bases
        bases, base = [], FIRST_BASE
        while len(bases) < len(self.specs):
            if base + PORT_BLOCK > 32768:
                raise PortInUseError("no free block of ports below 32768", "stop other local fleets")
            if _first_taken(base) is None:
                bases.append(base)
            base += PORT_BLOCK
        return bases

    def _start(self, spec: LocalClusterSpec, base: int) -> RunningCluster:
        ports = ports_of(base)
        temp_dir = tempfile.mkdtemp(prefix=f"rf-{spec.name[:10]}-", dir="/tmp")  # short: Ray's socket paths are limited
        log_path = self.dir / f"{spec.name}.log"
        ray = Path(sys.executable).parent / "ray"
        command = [
            str(ray if ray.exists() else shutil.which("ray") or "ray"),
            "start", "--head", "--block",
            f"--port={ports['gcs']}",
            f"--dashboard-port={ports['dashboard']}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={ports['client_server']}",
            f"--node-manager-port={ports['node_manager']}",
            f"--object-manager-port={ports['object_manager']}",
            f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
            f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={ports['runtime_env_agent']}",
            f"--metrics-export-port={ports['metrics_export']}",
            f"--min-worker-port={ports['min_worker']}",
            f"--max-worker-port={ports['max_worker']}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={spec.cpus:g}",
            f"--num-gpus={spec.gpus}",
            f"--memory={parse_memory(spec.memory)}",
            "--object-store-memory=100000000",
            f"--resources={json.dumps(spec.node_resources())}",
            "--include-log-monitor=false",
            "--disable-usage-stats",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(
            # jobs run `python` from PATH: make it this interpreter, which has rayfleet (nested dispatch) and Ray
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # bind 127.0.0.1 only (FACTS.md)
            AUTOSCALER_UPDATE_INTERVAL_S="1",  # capacity reports every second instead of five
            RAY_USAGE_STATS_ENABLED="0",
        )
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._processes[spec.name] = process
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
        )

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

    def down(self) -> list[str]:
        """Stop this fleet's clusters (those started here, or those named in its state file). Returns their names."""
        clusters = self.running or (_read_state(self.state_file) if self.state_file.exists() else [])
        for cluster in clusters:
            process = self._processes.get(cluster.name)
            if (process.poll() is None) if process is not None else cluster.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cluster.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for cluster in clusters:
            process = self._processes.pop(cluster.name, None)
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
            while cluster.alive() and time.monotonic() < deadline:  # started by another process: watch /proc
                time.sleep(0.1)
            # the group is the one we created with start_new_session: its id is our child's pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(cluster.pid, signal.SIGKILL)
            _reap(cluster.pid)
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        for path in (self.state_file, self.fleet_file):
            path.unlink(missing_ok=True)
        self.running = []
        return [c.name for c in clusters]

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


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_ready(cluster: RunningCluster, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Until the dashboard reports the node and the job API answers; fail fast if the process exits."""
    session = requests.Session()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalFleetError(
                f"local cluster {cluster.name!r} exited while starting: {_tail(cluster.log)}",
                f"read {cluster.log}; a port or temp dir clash is the usual cause",
            )
        try:
            status = session.get(cluster.address + "/api/cluster_status", timeout=2).json()
            nodes = status["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]
            if nodes and session.get(cluster.address + "/api/jobs/", timeout=2).ok:
                return
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.25)
    raise LocalFleetError(
        f"local cluster {cluster.name!r} was not ready within {START_TIMEOUT_S:g} s",
        f"read {cluster.log}; the machine may be short of memory or CPU",
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


@contextlib.contextmanager
def local_fleet(
    clusters: Sequence[LocalClusterSpec] = DEMO_FLEET,
    *,
    name: str = "default",
    port_base: int | None = None,
    directory: str | os.PathLike[str] | None = None,
    **fleet_kwargs: Any,
) -> Iterator[Any]:
    """Start a local fleet, yield a `Fleet` over it, and stop it on exit.

    Example:
        >>> with local_fleet() as fleet:                                 # doctest: +SKIP
        ...     fleet.submit("python -c 'print(1)'", {"cpu": 1}).wait(60)
    """
    from rayfleet.fleet import Fleet

    running = LocalFleet(clusters, name=name, port_base=port_base, directory=directory)
    with running:
        fleet = Fleet.from_file(running.fleet_file, **fleet_kwargs)
        try:
            yield fleet
        finally:
            fleet.close()
