"""Named retry policies (tenacity), in one place: what is retried, how often, how long."""

from __future__ import annotations

from types import MappingProxyType

import urllib3
from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from rayfleet.errors import ClusterError, ClusterUnreachableError, DuplicateSubmissionError


def _transient(error: BaseException) -> bool:
    """Connection failures and 5xx answers are worth another try; a duplicate id and 4xx are not."""
    if isinstance(error, DuplicateSubmissionError):
        return False
    if isinstance(error, ClusterUnreachableError):
        return True
    return isinstance(error, ClusterError) and error.status is not None and error.status >= 500


# A submission: a few quick tries; the caller makes retries safe with a fixed submission id.
SUBMIT = MappingProxyType(
    dict(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(3) | stop_after_delay(10),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
        reraise=True,
    )
)

# Reads (status, logs, list): idempotent, so a little more patience.
READ = MappingProxyType(
    dict(
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(4) | stop_after_delay(10),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
        reraise=True,
    )
)


# ----- the Kubernetes API ---------------------------------------------------------------------------------------------

TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _kubernetes_transient(error: BaseException) -> bool:
    """429 and 5xx answers (``ApiException.status``) and dropped connections; never 4xx such as 403 or 409."""
    if isinstance(error, TRANSPORT_ERRORS):
        return True
    status = getattr(error, "status", None)
    is_api_error = any(cls.__name__ == "ApiException" for cls in type(error).__mro__)  # 5xx: ServiceException
    return is_api_error and isinstance(status, int) and (status == 429 or status >= 500)


def _retry_after(state: RetryCallState) -> float:
    """Honour a 429's Retry-After (capped at 10 s); otherwise back off exponentially with jitter."""
    error = state.outcome.exception() if state.outcome else None
    headers = getattr(error, "headers", None) or {}
    try:
        return min(10.0, float(headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return _BACKOFF(state)


_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=3.0)

KUBERNETES = MappingProxyType(
    dict(
        retry=retry_if_exception(_kubernetes_transient),
        stop=stop_after_attempt(5) | stop_after_delay(30),
        wait=_retry_after,
        reraise=True,
    )
)
