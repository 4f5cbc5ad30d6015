"""The only code that talks to Ray's `JobSubmissionClient`; Ray's errors are translated here, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

import requests
from tenacity import Retrying

from rayfleet import retry
from rayfleet.config import Cluster, warn_if_plain_http
from rayfleet.errors import (
    AttemptFencedError,
    ClusterError,
    ClusterUnreachableError,
    DuplicateSubmissionError,
    JobNotFoundError,
)
from rayfleet.launcher import command_task_name, placement_group_name
from rayfleet.report import LauncherReport, parse_report

FENCE_KEY = "rayfleet.fence"  # metadata of a no-op job that takes a submission id so that no one else can run it
FENCE_ENTRYPOINT = "true"

T = TypeVar("T")

# Inside a Ray job, Ray sets RAY_ADDRESS to its own cluster, and JobSubmissionClient(url) then silently talks to
# that cluster instead of `url`. The client reads these only when it is built.
_REDIRECTING_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
# os.environ is one per process, and so is its guard: one thread at a time takes those variables out and puts them
# back (`without_redirecting_env`), so that no thread restores what another has just removed.
_env_lock = threading.Lock()


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
        from ray.dashboard.modules import dashboard_sdk
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:  # pragma: no cover - ray is a dependency; this names the fix if it was removed
        raise ImportError("rayfleet needs Ray's job client: pip install 'ray[default]'") from e

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
            formatted = dashboard_sdk.format_authentication_http_error(response.status_code, response.text)
            if formatted:
                raise dashboard_sdk.AuthenticationError(formatted)
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
            return self._call(once, policy=retry.SUBMIT)
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

    def _call(self, fn: Callable[[], T], *, policy: Mapping[str, Any], job: str | None = None) -> T:
        for attempt in Retrying(**policy):
            with attempt:
                try:
                    return fn()
                except Exception as e:
                    raise self._translate(e, job) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, error: Exception, job: str | None) -> Exception:
        name = self.cluster.name
        text = str(error)
        if isinstance(error, ClusterError | JobNotFoundError):
            return error
        if isinstance(error, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError) or (
            "Failed to connect to Ray" in text or "Connection refused" in text or "Cannot connect to host" in text
        ):
            return ClusterUnreachableError(
                f"cluster {name} at {self.cluster.address} did not answer: {type(error).__name__}",
                "check that the cluster is up and the address is its dashboard (port 8265 by default)",
                cluster=name,
            )
        status = _status_of(text)
        if "already exists" in text:
            return DuplicateSubmissionError(
                f"{job} already exists on {name}", "use a new submission id", cluster=name, status=status
            )
        if job is not None and (status == 404 or "does not exist" in text or "not found" in text.lower()):
            return JobNotFoundError(f"job {job} does not exist on cluster {name}", "list jobs with 'rayfleet jobs'")
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        hint = "check the job's runtime_env and entrypoint" if status and status < 500 else "retry later"
        if status in (401, 403):
            hint = "the dashboard refused the credentials: set the cluster's headers (e.g. Authorization: ${TOKEN})"
        return ClusterError(f"cluster {name} refused the request: {first[:300]}", hint, cluster=name, status=status)


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
