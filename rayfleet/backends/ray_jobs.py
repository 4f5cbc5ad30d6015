"""The only code that talks to Ray's `JobSubmissionClient`; Ray's errors are translated here, in one place.

Ray's client logs to Ray's own stderr handler (``import ray`` attaches it to the ``ray`` logger, which does not
propagate): an INFO line on every submission that ships a package. Its records are handed to the ``rayfleet.ray``
logger instead, so the application's logging decides (hidden by default, ``rayfleet -v`` shows them), and each of
its warnings is passed on once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

import requests
from tenacity import Retrying

from rayfleet import retry
from rayfleet.capacity import classify, http_failure, unreachable
from rayfleet.config import Cluster, warn_if_plain_http
from rayfleet.errors import (
    AttemptFencedError,
    ClusterError,
    DuplicateSubmissionError,
    JobNotFoundError,
)
from rayfleet.launcher import command_task_name, placement_group_name
from rayfleet.report import LauncherReport, parse_report
from rayfleet.text import first_line

FENCE_KEY = "rayfleet.fence"  # metadata of a no-op job that takes a submission id so that no one else can run it
FENCE_ENTRYPOINT = "true"

T = TypeVar("T")

# Inside a Ray job, Ray sets RAY_ADDRESS to its own cluster, and JobSubmissionClient(url) then silently talks to
# that cluster instead of `url`. The client reads these only when it is built.
_REDIRECTING_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# os.environ is one per process, and so is its guard: one thread at a time takes those variables out and puts them
# back (`without_redirecting_env`), so that no thread restores what another has just removed.
_env_lock = threading.Lock()

# The loggers of Ray's job client: `ray.dashboard.modules.dashboard_sdk` and `.job.sdk` (both set to INFO by Ray), and
# the runtime_env packaging they call ("Creating a file package for local module ...")
RAY_CLIENT_LOGGERS = ("ray.dashboard.modules", "ray._private.runtime_env")
RAY_LOG = "rayfleet.ray"  # where their records go
# The oldest Ray whose job API takes every request rayfleet sends: entrypoint_num_cpus/gpus/resources need 2.2,
# entrypoint_memory 2.8 (Ray's JobSubmissionClient.submit_job checks these)
RAY_FLOOR = (2, 8)


class _Once(logging.Filter):
    """Lets each message at ``level`` or above through once per process (a filter lives in logging's registry, on
    the logger or handler it is added to: one per process, like the output it keeps quiet)."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__()
        self.level = level
        self._seen: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        key = (record.name, record.levelno, record.getMessage())
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        return True


def _once(logger: logging.Logger) -> logging.Logger:
    if not any(isinstance(f, _Once) for f in logger.filters):
        logger.addFilter(_Once())
    return logger


# How a cluster's Ray differs from this process's, said once per cluster and version per process (`version_note`)
VERSION_LOG = _once(logging.getLogger("rayfleet.versions"))


class _ToRayfleet(logging.Handler):
    """Hands the records of Ray's client loggers to `RAY_LOG` (and so to the application's handlers), each warning
    once per process."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_Once(logging.WARNING))

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger(RAY_LOG)
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def route_ray_logging() -> None:
    """Send Ray's client loggers (`RAY_CLIENT_LOGGERS`) to `RAY_LOG` instead of the stderr handler that ``import
    ray`` puts on the ``ray`` logger (they stop propagating there). Idempotent; done when Ray's client is imported."""
    for name in RAY_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToRayfleet) for h in logger.handlers):
            logger.addHandler(_ToRayfleet())
        logger.propagate = False


def version_note(cluster: str, theirs: str, ours: str | None) -> tuple[int, str] | None:
    """How a cluster's Ray version matters to this process (None when it does not): WARNING below `RAY_FLOOR` or
    across a major version, INFO otherwise (Ray's job API works across minor versions, and the launcher runs on the
    cluster's own Ray).

    Example:
        >>> version_note("old", "2.54.0", "2.60.0")[0] == logging.INFO
        True
    """
    if not ours or theirs == ours:
        return None
    their_release, our_release = _release(theirs), _release(ours)
    if their_release is None or our_release is None:
        return logging.INFO, f"cluster {cluster} reports Ray version {theirs!r}, this process has Ray {ours}"
    floor = ".".join(map(str, RAY_FLOOR))
    if their_release < RAY_FLOOR:
        return logging.WARNING, (
            f"cluster {cluster} runs Ray {theirs}, older than {floor}, the oldest whose job API takes every request "
            f"rayfleet sends (entrypoint_memory needs 2.8, entrypoint resources 2.2): such jobs are refused there. "
            f"To fix: upgrade that cluster's Ray to {floor} or later (this process has {ours})"
        )
    if their_release[0] != our_release[0]:
        return logging.WARNING, (
            f"cluster {cluster} runs Ray {theirs}, this process has Ray {ours}: another major version, whose job API "
            f"rayfleet was not built for. To fix: run that cluster on Ray {our_release[0]}.x"
        )
    return logging.INFO, (
        f"cluster {cluster} runs Ray {theirs}, this process has Ray {ours}: Ray's job API works across these "
        "versions, and rayfleet's launcher runs on the cluster's own Ray"
    )


def _release(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


class _Refused(Exception):
    """A 401/403 from the dashboard, with its status (Ray's own AuthenticationError keeps only text)."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


@functools.cache
def _import_client() -> Any:
    """Ray's `JobSubmissionClient`, with two costs of every call removed (imported here: `import ray` is slow).

    - Every ``submit_job`` with entrypoint resources re-reads ``/api/version`` (twice with memory), although the
      constructor has already read it: later checks compare against the version read then.
    - Every request opens a new connection (``requests.request``): one kept-alive session serves them all.
    Both save about 7 ms of a 25 ms submission on a local cluster (benchmarks/submit_latency.py).
    The class is made once per process (cached).
    """
    try:
        from packaging.version import parse
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - ray is a dependency; this names the fix if it was removed
        raise ImportError("rayfleet needs Ray's job client: pip install 'ray[default]'") from e
    route_ray_logging()

    class KeptAliveJobSubmissionClient(JobSubmissionClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._session = requests.Session()
            super().__init__(*args, **kwargs)

        def _check_connection_and_version(self, min_version: str = "1.9", version_error_message: str | None = None):
            known = getattr(self, "_server_ray_version", None)
            if known is None:
                return super()._check_connection_and_version(min_version, version_error_message)
            if parse(known) < parse(min_version):
                raise RuntimeError(f"Ray version {known} is running on the cluster. {version_error_message or ''}")
            return None

        def _do_request(self, method: str, endpoint: str, *, data: Any = None, json_data: Any = None, **kwargs: Any):
            response = self._session.request(
                method,
                self._address + endpoint,
                cookies=self._cookies,
                data=data,
                json=json_data,
                headers=self._headers,
                verify=self._verify,
                **kwargs,
            )
            if response.status_code in (401, 403):  # what Ray's own check refuses (format_authentication_http_error)
                raise _Refused(response.status_code)
            return response

    return KeptAliveJobSubmissionClient


class RayJobs:
    """Ray's Job Submission API on one cluster, with errors translated and transient failures retried.

    Args:
        cluster: the cluster to talk to.

    Example:
        >>> jobs = RayJobs(Cluster(name="a", address="http://127.0.0.1:8265"))   # doctest: +SKIP
        >>> jobs.submit("rf-1-1", "echo hi")                                     # doctest: +SKIP
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """Ray's client, made on first use. Use it inside `_call`, whose retries cover making it too (retrying here
        as well would multiply the retries: about 11 s per call on a dead cluster)."""
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> Any:
        client_class = _import_client()
        warn_if_plain_http(self.cluster)
        with without_redirecting_env():
            return client_class(
                self.cluster.address, headers=self.cluster.resolved_headers() or None, verify=self.cluster.verify_tls
            )

    # ----- calls --------------------------------------------------------------------------------------------------

    def submit(
        self,
        submission_id: str,
        entrypoint: str,
        *,
        runtime_env: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        entrypoint_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """Submit with a fixed submission id. A retry that meets "already exists" succeeds once the job is found.

        Raises:
            AttemptFencedError: the id is taken by a fence (`fence`): this submission must never run.
        """

        def once() -> str:
            return self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=dict(runtime_env) if runtime_env else None,
                metadata=dict(metadata) if metadata else None,
                **dict(entrypoint_kwargs or {}),
            )

        try:
            return self._call(once, policy=retry.SUBMIT, what=f"the submission of {submission_id}")
        except DuplicateSubmissionError:
            info = self.info(submission_id)  # it exists: our earlier try got through (raises JobNotFoundError if not)
            if (getattr(info, "metadata", None) or {}).get(FENCE_KEY):
                raise AttemptFencedError(
                    f"submission {submission_id} was fenced on {self.cluster.name}: another dispatcher took its id",
                    "nothing to do: the job was placed again by the dispatcher that fenced it",
                    cluster=self.cluster.name,
                ) from None
            return submission_id

    def fence(self, submission_id: str, metadata: Mapping[str, str]) -> bool:
        """Take a submission id with a no-op job, so that a submitter that placed it and stopped (crashed, paused)
        can never start it later: Ray refuses a second job under an existing id. Returns True if the fence took the
        id, False if the submission had landed first (it exists and is not a fence)."""
        try:
            self._call(
                lambda: self.client.submit_job(
                    entrypoint=FENCE_ENTRYPOINT, submission_id=submission_id, metadata={**metadata, FENCE_KEY: "1"}
                ),
                policy=retry.SUBMIT,
                what=f"the fence of {submission_id}",
            )
        except DuplicateSubmissionError:
            info = self.info(submission_id)
            return bool((getattr(info, "metadata", None) or {}).get(FENCE_KEY))  # our own earlier try, or theirs
        return True

    def status(self, submission_id: str) -> str:
        return str(self._call(lambda: self.client.get_job_status(submission_id), policy=retry.READ, job=submission_id))

    def info(self, submission_id: str) -> Any:
        return self._call(lambda: self.client.get_job_info(submission_id), policy=retry.READ, job=submission_id)

    def logs(self, submission_id: str) -> str:
        return str(self._call(lambda: self.client.get_job_logs(submission_id), policy=retry.READ, job=submission_id))

    def stop(self, submission_id: str) -> bool:
        return bool(self._call(lambda: self.client.stop_job(submission_id), policy=retry.READ, job=submission_id))

    def report(self, submission_id: str) -> LauncherReport:
        """What the attempt's launcher reports: its reservation (and the node of each bundle) and whether the
        user's command started (two reads of Ray's state API; see `rayfleet.report`)."""

        def once() -> LauncherReport:
            groups = self._state("placement_groups", placement_group_name(submission_id), detail=True)
            tasks = self._state("tasks", command_task_name(submission_id))
            return parse_report(groups, tasks)

        return self._call(once, policy=retry.READ, job=submission_id)

    def _state(self, kind: str, name: str, *, detail: bool = False) -> list[dict[str, Any]]:
        """The rows of the state API's list of ``kind`` (placement_groups, tasks) named ``name``."""
        query = {"filter_keys": "name", "filter_predicates": "=", "filter_values": name, "limit": 10}
        response = self.client._do_request("GET", f"/api/v0/{kind}?{urlencode({**query, 'detail': int(detail)})}")
        if response.status_code != 200:
            raise RuntimeError(f"state API: status code {response.status_code}: {response.text[:200]}")
        return list(response.json()["data"]["result"]["result"])

    def list(self) -> list[Any]:
        return list(self._call(lambda: self.client.list_jobs(), policy=retry.READ))

    def tail(self, submission_id: str) -> Iterator[str]:
        """Yield log chunks as they are written until the job ends (Ray's async tail, run on its own thread)."""
        chunks: queue.Queue[Any] = queue.Queue(maxsize=64)
        done = object()
        client = self._call(lambda: self.client, policy=retry.READ)

        async def pump() -> None:
            async for chunk in client.tail_job_logs(submission_id):
                chunks.put(chunk)

        def run() -> None:
            try:
                asyncio.run(pump())
            except Exception as e:  # handed to the reader, translated there
                chunks.put(e)
            finally:
                chunks.put(done)

        threading.Thread(target=run, name=f"tail-{submission_id}", daemon=True).start()
        while (item := chunks.get()) is not done:
            if isinstance(item, Exception):
                raise self._translate(item, submission_id) from item
            yield item

    # ----- error translation --------------------------------------------------------------------------------------

    def _call(
        self, fn: Callable[[], T], *, policy: Mapping[str, Any], job: str | None = None, what: str | None = None
    ) -> T:
        """``fn`` with Ray's errors translated, retried by ``policy`` (transient ones only: not credentials refused,
        nor a refused request, which would fail the same way again)."""
        for attempt in Retrying(**policy):
            with attempt:
                try:
                    return fn()
                except Exception as e:
                    raise self._translate(e, job, what) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, error: Exception, job: str | None, what: str | None = None) -> Exception:
        """Ray's error as rayfleet's, by class (`rayfleet.capacity.classify`): credentials refused
        (`AuthenticationError`), no answer (`ClusterUnreachableError`), a duplicate id, a job the cluster does not
        have, the request refused (4xx), the cluster's own error (5xx). ``what`` names the request for the message."""
        cluster, name = self.cluster, self.cluster.name
        what = what or (f"the request for {job}" if job else "the request")
        text = str(error)
        if isinstance(error, ClusterError | JobNotFoundError):
            return error
        status = _status_attribute(error)
        if status is not None and not (status == 404 and job):  # a status of its own (a 404 about a job: below)
            return http_failure(cluster, status, _body(error), request=what, refused_hint=_refused_hint)
        if isinstance(error, requests.RequestException | ConnectionError | TimeoutError) and status is None:
            return classify(cluster, error, request=what, refused_hint=_refused_hint)  # no answer, or not Ray's
        if "Failed to connect to Ray" in text or "Connection refused" in text or "Cannot connect to host" in text:
            return unreachable(cluster, "connection refused" if "refused" in text.lower() else "connection failed")
        status = status or _status_of(text)
        if "already exists" in text:
            return DuplicateSubmissionError(
                f"{job} already exists on {name}", "use a new submission id", cluster=name, status=status
            )
        if job is not None and (status == 404 or "does not exist" in text or "not found" in text.lower()):
            return JobNotFoundError(f"job {job} does not exist on cluster {name}", "list jobs with 'rayfleet jobs'")
        if "is running on the cluster" in text:  # Ray's version check: the cluster is older than an option needs
            return ClusterError(
                f"cluster {name} refused {what}: {first_line(text, 300) or 'no detail'}",
                f"upgrade cluster {name}'s Ray to {'.'.join(map(str, RAY_FLOOR))} or later, or pin the job elsewhere",
                cluster=name,
            )
        if status is not None:
            return http_failure(cluster, status, _after_status(text), request=what, refused_hint=_refused_hint)
        said = first_line(text, 300) or "no detail"
        return ClusterError(f"{what} on cluster {name} failed: {said}", "retry later", cluster=name)


def _refused_hint(cluster: Cluster) -> str:
    return "the request was wrong for this cluster: check the job's entrypoint, runtime_env and resources"


def _status_attribute(error: BaseException) -> int | None:
    """The HTTP status an error carries as an attribute: ours (`_Refused`), requests' (``response``), aiohttp's."""
    response = getattr(error, "response", None)
    for status in (getattr(error, "status", None), getattr(response, "status_code", None)):
        if isinstance(status, int) and status >= 400:
            return status
    return None


def _body(error: BaseException) -> str:
    response = getattr(error, "response", None)
    return str(getattr(response, "text", "") or "")


def _after_status(text: str) -> str:
    """Ray's "Request failed with status code 400: <body>." without its wrapping."""
    _, sep, rest = text.rpartition("status code ")
    return rest[3:].lstrip(":").strip().rstrip(".") if sep else text


def _status_of(text: str) -> int | None:
    marker = "status code "
    codes = []
    start = 0
    while (i := text.find(marker, start)) >= 0:
        digits = text[i + len(marker) : i + len(marker) + 3]
        if digits.isdigit():
            codes.append(int(digits))
        start = i + 1
    # Ray wraps the agent's answer: "status code 500: ... status code 400: ... already exists"; the inner one is real
    return codes[-1] if codes else None


@contextlib.contextmanager
def without_redirecting_env() -> Iterator[None]:
    """Run a block with RAY_ADDRESS / RAY_API_SERVER_ADDRESS removed (and restored after)."""
    with _env_lock:
        saved = {k: os.environ.pop(k) for k in _REDIRECTING_ENV if k in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)
