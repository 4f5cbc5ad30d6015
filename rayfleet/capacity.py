"""Live capacity: `ClusterSnapshot` (per-node arrays with the time they were read) and the concurrent `Prober`.

A probe is two cheap HTTP reads of the cluster's dashboard: ``/api/cluster_status`` (per-node used/total, pending
demand, the report's own time) and, on first contact, ``/api/version``. The dashboard renames resource keys
(``accelerator_type:A100`` -> ``acceleratorType:A100``); the original names come from the report's ``nodeTypes``,
or from ``/api/v0/nodes`` when a key is new, and are cached.

A failed answer is classified here (`classify`), for probes and for the job API alike: the credentials refused
(401/403), no answer (connection refused, timeout, DNS), the request refused (other 4xx), the cluster's own error
(5xx). Each class has its error type and a hint that is true for it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import requests

from rayfleet.config import Cluster, warn_if_plain_http
from rayfleet.errors import AuthenticationError, ClusterError, ClusterUnreachableError
from rayfleet.resources import format_bytes
from rayfleet.text import first_line, shorten

log = logging.getLogger(__name__)

IGNORED_PREFIXES = ("node:",)
IGNORED_KEYS = frozenset({"object_store_memory"})
MAX_BACKOFF_S = 30.0
_IGNORED_RENAMED = frozenset({"objectStoreMemory"})
# what `classify` makes of a failed answer, as `ClusterSnapshot.error_kind` says it
AUTH, UNREACHABLE, REFUSED, ERROR = "auth", "unreachable", "refused", "error"
ERROR_KINDS = (AUTH, UNREACHABLE, REFUSED, ERROR)
_TEMPLATE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def camel(key: str) -> str:
    """The dashboard's renaming of a resource key (Ray's ``dashboard.utils.to_camel_case``)."""
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class ClusterSnapshot:
    """One reading of a cluster's capacity, as arrays over its nodes.

    Attributes:
        cluster: the cluster's name.
        taken_at: when the reading was taken (``time.time()`` of this process).
        healthy: whether the cluster answered.
        error: why it did not, if it did not (the message of its `classify` error).
        error_kind: the class of that failure, one of `ERROR_KINDS`: "auth" (credentials refused), "unreachable"
            (no answer), "refused" (the request was refused), "error" (the cluster's own error, or an answer that
            is not Ray's).
        error_hint: what to do about it.
        error_status: the HTTP status of the failed answer, when there was one.
        keys: the resource names (Ray's original names), the columns of ``total`` and ``used``.
        node_ids: the node ids, the rows.
        total: per-node totals, shape (nodes, keys).
        used: per-node usage, shape (nodes, keys).
        pending: resource shapes Ray cannot place yet (tasks, actors, placement-group bundles, pending jobs).
        report_time: the wall time at which the cluster computed this report (it refreshes every few seconds).
        ray_version: the cluster's Ray version, when known.
        session_name: the cluster's Ray session; a restarted head has a new one.
        autoscaler: the autoscaler's report (pending launches, pending and failed nodes), raw.
        node_ips: each node's address from its ``node:<ip>`` resource ("" when unknown), in row order.
    """

    cluster: str
    taken_at: float
    healthy: bool = True
    error: str | None = None
    keys: tuple[str, ...] = ()
    node_ids: tuple[str, ...] = ()
    total: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    used: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    pending: tuple[tuple[Mapping[str, float], int], ...] = ()
    report_time: float | None = None
    ray_version: str | None = None
    session_name: str | None = None
    autoscaler: Mapping[str, Any] = field(default_factory=dict)
    node_ips: tuple[str, ...] = ()
    error_kind: str | None = None
    error_hint: str | None = None
    error_status: int | None = None
    # derived arrays computed once per reading (placement's free-after-pending-demand); not part of its value
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def free(self) -> np.ndarray:
        return np.maximum(self.total - self.used, 0.0)

    def pin(self, node_id: str | None) -> str | None:
        """Ray's per-node resource that pins work to ``node_id`` (``node:<ip>``), or None when that node's address is
        unknown or shared with another node of the cluster (several nodes on one machine).

        Example:
            >>> snap = ClusterSnapshot("a", 0.0, node_ids=("n1", "n2"), node_ips=("10.0.0.1", "10.0.0.2"))
            >>> snap.pin("n2"), ClusterSnapshot("b", 0.0, node_ids=("n1", "n2"), node_ips=("10.0.0.1",) * 2).pin("n1")
            ('node:10.0.0.2', None)
        """
        if node_id is None or node_id not in self.node_ids or len(self.node_ips) != len(self.node_ids):
            return None
        ip = self.node_ips[self.node_ids.index(node_id)]
        return f"node:{ip}" if ip and self.node_ips.count(ip) == 1 else None

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.taken_at)

    def column(self, key: str) -> int | None:
        try:
            return self.keys.index(key)
        except ValueError:
            return None

    def sum(self, key: str, which: str = "total") -> float:
        col = self.column(key)
        if col is None or not len(self.node_ids):
            return 0.0
        return float((self.total if which == "total" else self.free)[:, col].sum())

    def largest_node(self) -> str:
        """A description of the node with the most GPUs, then CPUs, then memory: for error messages."""
        if not self.healthy:
            return f"unknown ({self.error_kind or UNREACHABLE}: {self.error})"
        if not len(self.node_ids):
            return "no nodes"
        order = [self.column(k) for k in ("GPU", "CPU", "memory")]
        rank = [tuple(self.total[i, c] if c is not None else 0.0 for c in order) for i in range(len(self.node_ids))]
        best = max(range(len(rank)), key=lambda i: rank[i])
        return describe_node(dict(zip(self.keys, self.total[best], strict=True)))

    def failure(self) -> ClusterError | None:
        """The typed error this reading stands for (None when healthy): what a caller raises when it needed this
        cluster, e.g. `AuthenticationError` for a cluster that refused rayfleet's credentials."""
        if self.healthy:
            return None
        kind = {AUTH: AuthenticationError, UNREACHABLE: ClusterUnreachableError}.get(self.error_kind or UNREACHABLE)
        return (kind or ClusterError)(
            self.error or "no answer", self.error_hint or "", cluster=self.cluster, status=self.error_status
        )

    @classmethod
    def unreachable(
        cls,
        cluster: str,
        error: str,
        previous: ClusterSnapshot | None = None,
        *,
        kind: str = UNREACHABLE,
        hint: str | None = None,
        status: int | None = None,
    ) -> ClusterSnapshot:
        """A reading of a cluster that did not answer as asked (by default: not at all)."""
        return cls(
            cluster=cluster,
            taken_at=time.time(),
            healthy=False,
            error=error,
            error_kind=kind,
            error_hint=hint,
            error_status=status,
            ray_version=previous.ray_version if previous else None,
            session_name=previous.session_name if previous else None,
        )

    @classmethod
    def failed(cls, failure: ClusterError, previous: ClusterSnapshot | None = None) -> ClusterSnapshot:
        """The reading of a failed probe, carrying its class (`kind_of`), message and hint."""
        return cls.unreachable(
            failure.cluster, failure.message, previous, kind=kind_of(failure), hint=failure.hint, status=failure.status
        )

    @classmethod
    def from_nodes(
        cls,
        cluster: str,
        nodes: Sequence[tuple[str, Mapping[str, float], Mapping[str, float]]],
        *,
        taken_at: float | None = None,
        pending: Iterable[tuple[Mapping[str, float], int]] = (),
        **extra: Any,
    ) -> ClusterSnapshot:
        """Build a snapshot from ``(node_id, total, used)`` rows with Ray resource names (tests, benchmarks, probes)."""
        keys = sorted({k for _, total, _ in nodes for k in total if _counted(k)})
        index = {k: i for i, k in enumerate(keys)}
        total_arr = np.zeros((len(nodes), len(keys)))
        used_arr = np.zeros((len(nodes), len(keys)))
        for row, (_, total, used) in enumerate(nodes):
            for k, v in total.items():
                if k in index:
                    total_arr[row, index[k]] = v
            for k, v in used.items():
                if k in index:
                    used_arr[row, index[k]] = v
        return cls(
            cluster=cluster,
            taken_at=time.time() if taken_at is None else taken_at,
            keys=tuple(keys),
            node_ids=tuple(n for n, _, _ in nodes),
            total=total_arr,
            used=used_arr,
            pending=tuple((dict(shape), int(count)) for shape, count in pending),
            **extra,
        )


# Ray adds resources per placement group to the nodes that hold its bundles (``CPU_group_0_<pg id>``,
# ``bundle_group_<pg id>``; the dashboard renames them ``CPUGroup0<Pg Id>``): they are reservations, not capacity.
_PLACEMENT_GROUP_KEY = re.compile(r"(_group_(\d+_)?[0-9a-f]{20,}|Group\d*[0-9A-Za-z]{20,})$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _counted(key: str) -> bool:
    return key not in IGNORED_KEYS and not key.startswith(IGNORED_PREFIXES) and not _PLACEMENT_GROUP_KEY.search(key)


def describe_node(resources: Mapping[str, float]) -> str:
    parts = []
    for key in ("CPU", "GPU"):
        if resources.get(key):
            parts.append(f"{resources[key]:g} {key}")
    if resources.get("memory"):
        parts.append(format_bytes(resources["memory"]))
    parts += [f"{v:g} {k}" for k, v in sorted(resources.items()) if k not in ("CPU", "GPU", "memory") and v]
    return ", ".join(parts) or "nothing"


def parse_cluster_status(
    cluster: str, payload: Mapping[str, Any], original_names: Mapping[str, str], *, taken_at: float
) -> tuple[ClusterSnapshot, set[str]]:
    """Turn ``/api/cluster_status`` JSON into a snapshot; also return the camel-case keys it could not map back.

    Args:
        cluster: the cluster's name.
        payload: the decoded response.
        original_names: camel-case key -> Ray's original name, from what is already known.
        taken_at: when the request was made.
    """
    status = payload["data"]["clusterStatus"]
    report = status.get("loadMetricsReport") or {}
    names = dict(original_names)
    for shape, _count in report.get("nodeTypes") or []:
        names.update({camel(k): k for k in shape})
    unknown: set[str] = set()
    nodes, ips = [], {}
    for node_id, usage in (report.get("usageByNode") or {}).items():
        total, used = {}, {}
        for key, (node_used, node_total) in usage.items():
            if key.startswith("node:") and _is_ip(address := key.removeprefix("node:")):
                ips[node_id] = address
            if key.startswith(IGNORED_PREFIXES) or key in _IGNORED_RENAMED or _PLACEMENT_GROUP_KEY.search(key):
                continue
            name = names.get(key)
            if name is None:
                unknown.add(key)
                name = key
            total[name], used[name] = float(node_total), float(node_used)
        nodes.append((node_id, total, used))
    nodes.sort()  # rows in node id order
    pending = [(shape, count) for shape, count in report.get("resourceDemand") or []]
    pending += _placement_group_demand(report.get("pgDemand") or [])
    autoscaler = status.get("autoscalerReport") or {}
    snapshot = ClusterSnapshot.from_nodes(
        cluster,
        nodes,
        taken_at=taken_at,
        pending=pending,
        node_ips=tuple(ips.get(node_id, "") for node_id, _, _ in nodes),
        report_time=status.get("time"),
        autoscaler={
            "pending_nodes": autoscaler.get("pendingNodes") or [],
            "pending_launches": autoscaler.get("pendingLaunches") or {},
            "failed_nodes": autoscaler.get("failedNodes") or [],
        },
    )
    return snapshot, unknown


def _placement_group_demand(entries: Iterable[Any]) -> list[tuple[dict[str, float], float]]:
    """Pending placement groups (``pgDemand``: ``[[{"strategy": ..., "bundles": [[{shape}, n], ...]}, count]]``) as
    bundle shapes with counts; anything else in the list is skipped."""
    out = []
    for entry in entries:
        try:
            group, count = entry
            for bundle, n in group.get("bundles") or []:
                shape = {str(k): float(v) for k, v in bundle.items() if isinstance(v, int | float)}
                if shape:
                    out.append((shape, float(n) * float(count)))
        except (TypeError, ValueError, AttributeError):
            continue
    return out


@dataclass
class _Health:
    failures: int = 0
    retry_at: float = 0.0
    last: ClusterSnapshot | None = None
    names: dict[str, str] = field(default_factory=dict)
    version: tuple[str, str] | None = None


class Prober:
    """Reads every cluster's capacity concurrently, caches readings for ``ttl`` seconds, backs off dead clusters.

    An unreachable cluster is marked unhealthy and not probed again until its backoff (1 s, 2 s, 4 s ... 30 s)
    expires; a probe that does not answer within ``timeout`` is abandoned, so a dead cluster never delays
    placement on the others.

    Example:
        >>> prober = Prober([Cluster(name="a", address="http://127.0.0.1:8265")], ttl=2.0, timeout=2.0)
        >>> snapshots = prober.snapshots()          # doctest: +SKIP
    """

    def __init__(
        self,
        clusters: Sequence[Cluster],
        *,
        ttl: float = 2.0,
        timeout: float = 2.0,
        on_version: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.clusters = {c.name: c for c in clusters}
        self.ttl = ttl
        self.timeout = timeout
        self._on_version = on_version
        self._health = {name: _Health() for name in self.clusters}
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="probe")  # threads start on demand

    def add(self, cluster: Cluster) -> None:
        """Probe one more cluster from now on (a cluster created on demand)."""
        with self._lock:
            self.clusters[cluster.name] = cluster
            self._health.setdefault(cluster.name, _Health())

    def remove(self, name: str) -> None:
        """Stop probing a cluster (deleted)."""
        with self._lock:
            self.clusters.pop(name, None)
            self._health.pop(name, None)
            session = self._sessions.pop(name, None)
        if session is not None:
            session.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for session in self._sessions.values():
            session.close()

    def cached(self, name: str) -> ClusterSnapshot | None:
        return self._health[name].last

    def snapshots(
        self, names: Iterable[str] | None = None, *, max_age: float | None = None
    ) -> dict[str, ClusterSnapshot]:
        """Fresh-enough snapshots of the named clusters (all by default), probing those older than ``max_age``."""
        max_age = self.ttl if max_age is None else max_age
        now = time.time()
        wanted = list(self.clusters) if names is None else list(names)
        out: dict[str, ClusterSnapshot] = {}
        to_probe = []
        for name in wanted:
            health = self._health[name]
            last = health.last
            if last is not None and (now - last.taken_at <= max_age or (not last.healthy and now < health.retry_at)):
                out[name] = last
            else:
                to_probe.append(name)
        if to_probe:
            futures = {self._pool.submit(self._probe, name): name for name in to_probe}
            done, not_done = wait(futures, timeout=self.timeout + 0.5)
            for future in done:
                out[futures[future]] = future.result()
            for future in not_done:
                name = futures[future]
                cluster = self.clusters[name]
                out[name] = self._record_failure(name, unreachable(cluster, f"no answer within {self.timeout:g} s"))
        return out

    def invalidate(self, name: str | None = None) -> None:
        """Forget cached readings so the next call probes (after a submission changed the world)."""
        for n in [name] if name else list(self._health):
            health = self._health[n]
            if health.last is not None and health.last.healthy:
                health.last = None

    def read_session(self, name: str) -> str | None:
        """The cluster's Ray session now, read afresh from ``/api/version`` (None if it does not answer). A head
        that restarted has a new session, and has lost its jobs."""
        if name not in self.clusters:
            return None
        try:
            info = self._get(name, "/api/version")
        except (requests.RequestException, ValueError):
            return None
        session = info.get("session_name")
        with self._lock:
            health = self._health.get(name)
            if health is not None and session:
                health.version = (info.get("ray_version", "?"), session)
        return session

    # ----- one probe ----------------------------------------------------------------------------------------------

    def _session(self, name: str) -> requests.Session:
        with self._lock:
            session = self._sessions.get(name)
            if session is None:
                cluster = self.clusters[name]
                warn_if_plain_http(cluster)
                session = requests.Session()
                session.headers.update(cluster.resolved_headers())
                session.verify = cluster.verify_tls
                self._sessions[name] = session
            return session

    def _get(self, name: str, path: str) -> Any:
        cluster = self.clusters[name]
        # verify per request: requests lets $REQUESTS_CA_BUNDLE override a session's verify (a CA path, even False)
        response = self._session(name).get(cluster.address + path, timeout=self.timeout, verify=cluster.verify_tls)
        response.raise_for_status()
        return response.json()

    def _probe(self, name: str) -> ClusterSnapshot:
        health = self._health[name]
        taken_at = time.time()
        self._session(name)  # headers the environment breaks are a ConfigError, not the cluster failing a probe
        try:
            if health.version is None:
                info = self._get(name, "/api/version")
                health.version = (info.get("ray_version", "?"), info.get("session_name", "?"))
                if self._on_version:
                    self._on_version(name, *health.version)
            payload = self._get(name, "/api/cluster_status")
            snapshot, unknown = parse_cluster_status(name, payload, health.names, taken_at=taken_at)
            if unknown:  # a resource key we have not seen: learn original names from the state API, once
                nodes = self._get(name, "/api/v0/nodes?detail=1")["data"]["result"]["result"]
                for node in nodes:
                    health.names.update({camel(k): k for k in node.get("resources_total", {})})
                snapshot, _ = parse_cluster_status(name, payload, health.names, taken_at=taken_at)
        except (requests.RequestException, ValueError, KeyError, TypeError) as e:
            return self._record_failure(name, classify(self.clusters[name], e, request=PROBE, refused_hint=_probe_hint))
        snapshot = _with_version(snapshot, health.version)
        with self._lock:
            health.failures, health.retry_at, health.last = 0, 0.0, snapshot
        return snapshot

    def _record_failure(self, name: str, failure: ClusterError) -> ClusterSnapshot:
        """Back off a cluster that failed a probe. The first failure of a streak is a warning, later ones are info:
        a dispatch loop would otherwise repeat the same warning every backoff."""
        with self._lock:
            health = self._health[name]
            health.failures += 1
            health.version = None  # re-read on reconnect: the head may have restarted
            backoff = min(MAX_BACKOFF_S, 2.0 ** (health.failures - 1))
            health.retry_at = time.time() + backoff
            health.last = ClusterSnapshot.failed(failure, health.last)
            first = health.failures == 1
        if first:
            log.warning("%s", failure.message)
        else:
            log.info("%s; next probe in %.0f s", failure.message, backoff)
        return health.last


def _with_version(snapshot: ClusterSnapshot, version: tuple[str, str] | None) -> ClusterSnapshot:
    if version is None:
        return snapshot
    return replace(snapshot, ray_version=version[0], session_name=version[1])


# ----- classifying failed answers ---------------------------------------------------------------------------------

PROBE = "the capacity probe (GET /api/cluster_status)"


def _probe_hint(cluster: Cluster) -> str:
    return f"check that {cluster.address} is the Ray dashboard of cluster {cluster.name} (Ray 2.8 or later)"


def kind_of(error: ClusterError) -> str:
    """The class of a cluster's error, one of `ERROR_KINDS`."""
    if isinstance(error, AuthenticationError):
        return AUTH
    if isinstance(error, ClusterUnreachableError):
        return UNREACHABLE
    return REFUSED if error.status is not None and _refused(error.status) else ERROR


def _refused(status: int) -> bool:
    """A 4xx that says the request was wrong: not 408 (timeout) nor 429 (too many requests), which pass with time."""
    return 400 <= status < 500 and status not in (408, 429)


def classify(
    cluster: Cluster, error: BaseException, *, request: str, refused_hint: Callable[[Cluster], str]
) -> ClusterError:
    """The typed error for a failed call to ``cluster``: no answer, a status (`http_failure`), or an answer that is
    not what a Ray dashboard sends (``error``: bad JSON or shape).

    Args:
        cluster: the cluster called.
        error: what the call raised (requests', or a decoding error).
        request: what was asked, for the message ("the capacity probe (GET /api/cluster_status)").
        refused_hint: the hint for a refused request (other 4xx), which only the caller knows.
    """
    response = getattr(error, "response", None)
    if isinstance(error, requests.HTTPError) and response is not None:
        return http_failure(cluster, response.status_code, response.text, request=request, refused_hint=refused_hint)
    if isinstance(error, requests.exceptions.SSLError):  # a ConnectionError too, but not one a restart would fix
        reason = getattr(error.__context__, "reason", None) or error
        return ClusterUnreachableError(
            f"cluster {cluster.name} at {cluster.address}: TLS failed (certificate not trusted?): {str(reason)[-160:]}",
            f"set verify_tls for cluster {cluster.name} in the fleet file to the CA bundle that signed its certificate",
            cluster=cluster.name,
        )
    if isinstance(error, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return unreachable(cluster, _transport_reason(error))
    return ClusterError(
        f"cluster {cluster.name} answered {request} with something that is not Ray's: "
        f"{shorten(f'{type(error).__name__}: {error}', 200)}",
        _probe_hint(cluster),
        cluster=cluster.name,
    )


def http_failure(
    cluster: Cluster, status: int, body: str = "", *, request: str, refused_hint: Callable[[Cluster], str]
) -> ClusterError:
    """The typed error for an HTTP status (>= 400) from ``cluster``: 401/403 `AuthenticationError`, other 4xx the
    request refused (``refused_hint`` says what was wrong), 5xx the cluster's own error (retry later)."""
    name = cluster.name
    if status in (401, 403):  # no body: what a server says about credentials is not for a log
        return AuthenticationError(
            f"cluster {name} refused rayfleet's credentials (HTTP {status})",
            auth_hint(cluster),
            cluster=name,
            status=status,
        )
    said = first_line(body, 200)
    said = f": {said}" if said else ""
    if _refused(status):
        return ClusterError(
            f"cluster {name} refused {request} (HTTP {status}){said}",
            refused_hint(cluster),
            cluster=name,
            status=status,
        )
    return ClusterError(
        f"cluster {name} failed to answer {request} (HTTP {status}){said}",
        "the cluster's own error: retry later; if it persists, read dashboard.log in the logs of its head's session",
        cluster=name,
        status=status,
    )


def unreachable(cluster: Cluster, reason: str) -> ClusterUnreachableError:
    return ClusterUnreachableError(
        f"cluster {cluster.name} at {cluster.address} did not answer: {reason}",
        f"check that cluster {cluster.name} is up ('rayfleet local status' for a local fleet) and that "
        f"{cluster.address} is its dashboard (port 8265 by default)",
        cluster=cluster.name,
    )


def auth_hint(cluster: Cluster) -> str:
    """What to set when ``cluster`` refused the credentials: its headers in the fleet file, named by key and by the
    variables they are filled from, never by value."""
    name = cluster.name
    if not cluster.headers:
        return (
            f"the cluster needs a token: set headers: {{Authorization: 'Bearer ${{RAY_AUTH_TOKEN}}'}} for cluster "
            f"{name} in the fleet file, and export RAY_AUTH_TOKEN with the cluster's token"
        )
    keys = ", ".join(sorted(cluster.headers))
    variables = sorted({v for value in cluster.headers.values() for v in _TEMPLATE_VAR.findall(value)})
    source = f"check that {', '.join('$' + v for v in variables)} holds" if variables else "set them to"
    return (
        f"the cluster refused the headers set for cluster {name} in the fleet file ({keys}): {source} the "
        "cluster's current token (Ray reads it as 'Authorization: Bearer <token>' or 'X-Ray-Authorization')"
    )


def _transport_reason(error: BaseException) -> str:
    if isinstance(error, requests.Timeout | TimeoutError):
        return "timed out"
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "reason", None)
        seen = seen if isinstance(seen, BaseException) else None
    text = " ".join(f"{type(e).__name__} {e}" for e in chain)
    if "NameResolutionError" in text or "gaierror" in text or "Name or service not known" in text:
        return "its host name does not resolve (DNS)"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused"
    return "connection failed or host unreachable"
