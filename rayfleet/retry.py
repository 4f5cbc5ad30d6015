"""Named retry policies (tenacity), in one place: what is retried, how often, how long."""

from __future__ import annotations

from tenacity import retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from rayfleet.errors import ClusterError, ClusterUnreachableError, DuplicateSubmissionError


def _transient(error: BaseException) -> bool:
    """Connection failures and 5xx answers are worth another try; a duplicate id and 4xx are not."""
    if isinstance(error, DuplicateSubmissionError):
        return False
    if isinstance(error, ClusterUnreachableError):
        return True
    return isinstance(error, ClusterError) and error.status is not None and error.status >= 500


# A submission: a few quick tries; the caller makes retries safe with a fixed submission id.
SUBMIT = dict(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(3) | stop_after_delay(10),
    wait=wait_exponential_jitter(multiplier=0.2, max=2.0),
    reraise=True,
)

# Reads (status, logs, list): idempotent, so a little more patience.
READ = dict(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(4) | stop_after_delay(10),
    wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
    reraise=True,
)
