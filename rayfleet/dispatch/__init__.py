"""The dispatcher: validate, place, record, submit, and follow jobs through their attempts, split by duty."""

from rayfleet.dispatch.core import Dispatcher
from rayfleet.dispatch.submission import (
    DEFAULT_RESERVATION_TIMEOUT_S,
    DEFAULT_START_TIMEOUT_S,
    JOB_ID_ENV,
    METADATA_PREFIX,
    PIN_AMOUNT,
    Submission,
    next_in_queue,
)

__all__ = [
    "DEFAULT_RESERVATION_TIMEOUT_S",
    "DEFAULT_START_TIMEOUT_S",
    "JOB_ID_ENV",
    "METADATA_PREFIX",
    "PIN_AMOUNT",
    "Dispatcher",
    "Submission",
    "next_in_queue",
]
