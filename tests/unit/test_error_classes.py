"""Every failed answer from a cluster classified by what it is (no server: the classes, messages, hints and retries
from the errors themselves; tests/integration/test_error_classes_live.py meets them on a real HTTP server)."""

from __future__ import annotations

import socket

import pytest
import requests
from tenacity import retry_if_exception

from rayfleet import retry
from rayfleet.backends.ray_jobs import RayJobs, _Refused
from rayfleet.capacity import (
    AUTH,
    ERROR,
    PROBE,
    REFUSED,
    UNREACHABLE,
    ClusterSnapshot,
    _probe_hint,
    classify,
    http_failure,
    kind_of,
)
from rayfleet.cli.fleet import health_label
from rayfleet.config import Cluster
from rayfleet.errors import (
    AuthenticationError,
    ClusterError,
    ClusterUnreachableError,
    DuplicateSubmissionError,
    JobNotFoundError,
)

OPEN = Cluster(name="gpu-a", address="http://127.0.0.1:8265")
TOKENED = Cluster(name="gpu-b", address="http://127.0.0.1:8266", headers={"Authorization": "Bearer ${GPU_B_TOKEN}"})
SECRET = "s3cret-token-value"


def probe_failure(cluster: Cluster, status: int, body: str = "") -> ClusterError:
    return http_failure(cluster, status, body, request=PROBE, refused_hint=_probe_hint)


def transient(error: BaseException) -> bool:
    """What the job API's retry policies decide about an error (retry.SUBMIT and retry.READ share the predicate)."""
    predicate = retry.SUBMIT["retry"]
    assert isinstance(predicate, retry_if_exception)
    return bool(predicate.predicate(error))


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_authentication_errors_naming_the_cluster_and_the_setting(status: int) -> None:
    error = probe_failure(OPEN, status, body="Unauthorized")

    assert isinstance(error, AuthenticationError) and error.status == status and kind_of(error) == AUTH
    assert error.message == f"cluster gpu-a refused rayfleet's credentials (HTTP {status})"
    assert "set headers: {Authorization: 'Bearer ${RAY_AUTH_TOKEN}'} for cluster gpu-a in the fleet file" in error.hint
    assert not transient(error)  # the same credentials would be refused again: no backoff, no waiting


def test_a_refused_token_names_the_header_and_its_variable_never_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_B_TOKEN", SECRET)
    assert TOKENED.resolved_headers()["Authorization"].endswith(SECRET)  # a value is set, and sent

    error = probe_failure(TOKENED, 403, body=f"token {SECRET} is not valid")  # even a server that echoes it

    assert "headers set for cluster gpu-b in the fleet file (Authorization)" in error.hint
    assert "check that $GPU_B_TOKEN holds the cluster's current token" in error.hint
    assert SECRET not in str(error) and SECRET not in repr(error)


def test_other_4xx_is_the_request_refused_with_what_was_asked_and_not_retried() -> None:
    error = probe_failure(OPEN, 404, body="404: Not Found\n<html>")

    assert type(error) is ClusterError and kind_of(error) == REFUSED
    assert error.message == f"cluster gpu-a refused {PROBE} (HTTP 404): 404: Not Found"
    assert "check that http://127.0.0.1:8265 is the Ray dashboard of cluster gpu-a" in error.hint
    assert not transient(error)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_5xx_and_429_are_the_clusters_own_error_retried_later(status: int) -> None:
    error = probe_failure(OPEN, status, body="Internal Server Error")

    assert type(error) is ClusterError and kind_of(error) == ERROR
    assert error.message.startswith(f"cluster gpu-a failed to answer {PROBE} (HTTP {status})")
    assert error.hint.startswith("the cluster's own error: retry later")
    assert transient(error) is (status >= 500)  # retry.py retries 5xx; a 429 is left to the next probe


def test_no_answer_is_unreachable_with_the_address_and_where_to_look() -> None:
    refused = requests.ConnectionError("HTTPConnectionPool: Max retries exceeded")
    refused.__context__ = ConnectionRefusedError(111, "Connection refused")
    dns = requests.ConnectionError("HTTPConnectionPool(host='ray.example', port=8265)")
    dns.__context__ = socket.gaierror(-2, "Name or service not known")

    errors = {what: classify(OPEN, e, request=PROBE, refused_hint=_probe_hint) for what, e in
              [("refused", refused), ("dns", dns), ("timeout", requests.Timeout("read timed out"))]}  # fmt: skip

    assert all(isinstance(e, ClusterUnreachableError) and kind_of(e) == UNREACHABLE for e in errors.values())
    assert errors["refused"].message == "cluster gpu-a at http://127.0.0.1:8265 did not answer: connection refused"
    assert errors["dns"].message.endswith("did not answer: its host name does not resolve (DNS)")
    assert errors["timeout"].message.endswith("did not answer: timed out")
    assert "check that cluster gpu-a is up ('rayfleet local status' for a local fleet)" in errors["refused"].hint
    assert "http://127.0.0.1:8265 is its dashboard" in errors["refused"].hint
    assert transient(errors["refused"])


def test_an_answer_that_is_not_rays_is_an_error_naming_the_address() -> None:
    error = classify(OPEN, ValueError("Expecting value: line 1 column 1"), request=PROBE, refused_hint=_probe_hint)

    assert type(error) is ClusterError and kind_of(error) == ERROR
    assert error.message.startswith(f"cluster gpu-a answered {PROBE} with something that is not Ray's")


def test_a_failed_reading_carries_its_class_and_stands_for_its_typed_error() -> None:
    snap = ClusterSnapshot.failed(probe_failure(OPEN, 401))

    assert not snap.healthy and snap.error_kind == AUTH and snap.error_status == 401
    assert snap.error == "cluster gpu-a refused rayfleet's credentials (HTTP 401)"
    assert snap.error_hint == probe_failure(OPEN, 401).hint
    assert isinstance(snap.failure(), AuthenticationError) and snap.failure().hint == snap.error_hint
    assert health_label(snap) == "auth refused (HTTP 401)"
    assert snap.largest_node() == "unknown (auth: cluster gpu-a refused rayfleet's credentials (HTTP 401))"
    assert health_label(ClusterSnapshot.failed(probe_failure(OPEN, 404))) == "refused (HTTP 404)"
    assert health_label(ClusterSnapshot.unreachable("x", "timed out")) == "unreachable"  # the default kind
    assert ClusterSnapshot.from_nodes("ok", []).failure() is None


# ----- the job API: Ray's errors as RayJobs translates them ----------------------------------------------------------


def translate(error: Exception, job: str | None = "rf-1-1", what: str | None = None) -> Exception:
    return RayJobs(OPEN)._translate(error, job, what)


def test_the_job_apis_401_is_an_authentication_error() -> None:
    error = translate(_Refused(401), what="the submission of rf-1-1")  # what the kept-alive client raises on 401

    assert isinstance(error, AuthenticationError) and error.status == 401
    assert error.message == "cluster gpu-a refused rayfleet's credentials (HTTP 401)"
    assert "for cluster gpu-a in the fleet file" in error.hint


def test_the_job_apis_refusal_says_what_was_refused_and_why() -> None:
    ray_said = RuntimeError("Request failed with status code 400: Failed to validate runtime_env: bad pip spec.")

    error = translate(ray_said, what="the submission of rf-1-1")

    assert type(error) is ClusterError and error.status == 400 and kind_of(error) == REFUSED
    assert error.message == (
        "cluster gpu-a refused the submission of rf-1-1 (HTTP 400): Failed to validate runtime_env: bad pip spec"
    )
    assert error.hint.startswith("the request was wrong for this cluster: check the job's entrypoint, runtime_env")
    assert not transient(error)


def test_the_job_apis_5xx_is_the_clusters_error_and_retried() -> None:
    error = translate(RuntimeError("Request failed with status code 500: No available agent to submit job."))

    assert type(error) is ClusterError and error.status == 500 and kind_of(error) == ERROR
    assert "No available agent to submit job" in error.message and transient(error)


def test_the_job_apis_other_answers_keep_their_classes() -> None:
    duplicate = translate(RuntimeError("status code 500: ... status code 400: Job with submission_id x already exists"))
    missing = translate(RuntimeError("Request failed with status code 404: Job rf-1-1 does not exist."))
    down = translate(ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265."), job=None)
    answer = requests.Response()
    answer.status_code = 404
    gone = translate(requests.HTTPError("404 Client Error", response=answer))  # a 404 of its own, about a job

    assert isinstance(duplicate, DuplicateSubmissionError) and duplicate.status == 400
    assert isinstance(missing, JobNotFoundError) and isinstance(gone, JobNotFoundError)
    assert isinstance(down, ClusterUnreachableError) and down.message.startswith("cluster gpu-a at http://127.0.0.1")
