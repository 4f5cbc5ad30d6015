"""What a job asks for: `Submission` (validated), the constants of dispatch, and the checks behind ``validate``."""

from __future__ import annotations

import getpass
import importlib.metadata
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayfleet.errors import InvalidRequestError, LedgerError
from rayfleet.ledger import JobRecord
from rayfleet.placement import Decision, PlacementRequest
from rayfleet.provisioning.base import Provisioner
from rayfleet.resources import Gang, Resources
from rayfleet.templates import ClusterTemplate

log = logging.getLogger(__name__)

JOB_ID_ENV = "RAYFLEET_JOB_ID"  # set in every job's environment: a nested submission records it as its parent
METADATA_PREFIX = "rayfleet."
# A job's launcher waits this long for its reservation before it gives up (exit code 75) and the dispatcher places the
# job again elsewhere: with free capacity counted at placement, a reservation that takes longer is stuck. Placements
# that count on a worker being added (autoscaler headroom, a new cluster) add the template's scale_up_s.
DEFAULT_START_TIMEOUT_S = 3.0
DEFAULT_RESERVATION_TIMEOUT_S = DEFAULT_START_TIMEOUT_S  # the name it had before queued and plain jobs used it
# A job pinned to the node placement chose asks for this much of Ray's per-node node:<ip> resource (1.0 per node).
PIN_AMOUNT = 0.001
# policy="fragmentation" learns the typical request mix again from the ledger after this many new jobs.
MIX_EVERY = 200
# A managed cluster still CREATING this long after its template's ready timeout was left by a creator that crashed.
CREATING_MARGIN_S = 60.0
# A cluster recorded CREATING whose provisioner has not been asked this long after the record was left by a creator
# that stopped in between (crashed, or paused): the loop asks in its place. Asking twice is harmless (the second ask
# finds the cluster, as a retry would), so this only keeps the loop from racing a creator that is about to ask.
ASK_GRACE_S = 5.0
CREATOR_GONE = "creator gone"  # the detail of a creation given up because its creator stopped waiting long ago


@dataclass(frozen=True)
class _Target:
    """Where one attempt goes: a cluster, the node and GPU model placement chose (if it chose one), and how long the
    job may take to reserve its resources there (longer where a worker has to be added first)."""

    cluster: str
    node_id: str | None
    accelerator: str | None
    detail: str | None
    bundle_nodes: tuple[str, ...] | None = None
    scale_up_s: float = 0.0
    pin: str | None = None  # Ray's node:<ip> resource of the node placement chose, when the job is pinned to it


REQUEST_VERSION = 1  # of the request as the ledger stores it (`Submission.to_json`)
_STORED_APART = frozenset({"entrypoint", "runtime_env", "metadata", "parent_id"})  # the ledger's own columns


class Submission(BaseModel):
    """A validated request to run one job: frozen, stored in the ledger as versioned JSON and read back as itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entrypoint: str
    resources: Resources = Field(default_factory=Resources)
    runtime_env: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    cluster: str | None = None
    policy: str = "binpack"
    metadata: dict[str, str] = Field(default_factory=dict)
    parent_id: str | None = None
    gang: Gang | None = None
    start_timeout_s: float = Field(default=DEFAULT_START_TIMEOUT_S, gt=0, allow_inf_nan=False)
    queue: bool = False  # when nothing can take it now: wait in the queue instead of failing
    queue_deadline: float | None = None  # when a queued job gives up (wall-clock seconds)
    priority: int = 0
    owner: str = ""
    max_retries: int = Field(default=0, ge=0)  # new attempts after a proven loss of its cluster
    at_least_once: bool = False  # also place it again when its cluster stays unreachable (it may then run twice)
    group: dict[str, Any] | None = None  # the rendezvous of a group of jobs (rayfleet.group)
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # most seconds it may run; then stopped

    def request(
        self, exclude: frozenset[str] = frozenset(), unavailable: Mapping[str, str] | None = None
    ) -> PlacementRequest:
        return PlacementRequest(
            self.resources, dict(self.labels), self.cluster, self.policy, exclude, self.gang, dict(unavailable or {})
        )

    def describe(self) -> str:
        return self.gang.describe() if self.gang is not None else self.resources.describe()

    @property
    def launched(self) -> bool:
        """Whether the job goes through the launcher (it reserves something, so its start must be confirmed)."""
        return self.gang is not None or not self.resources.is_empty

    @property
    def wanted(self) -> Resources | Gang:
        """What the job reserves: its gang, or its resources as the one bundle of a STRICT_PACK reservation."""
        return self.gang if self.gang is not None else self.resources

    def to_json(self) -> dict[str, Any]:
        """What the ledger keeps of the request (the rest has columns of its own), with its version."""
        return {"version": REQUEST_VERSION, **self.model_dump(mode="json", exclude=set(_STORED_APART))}

    @classmethod
    def from_job(cls, job: JobRecord) -> Submission:
        """The submission a ledger job was made from, whichever rayfleet version recorded it.

        Raises:
            LedgerError: the ledger holds a request of a newer version than this rayfleet reads.
        """
        request = dict(job.request)
        version = request.pop("version", 0)
        if version > REQUEST_VERSION:
            raise LedgerError(
                f"job {job.id} was recorded by a newer rayfleet (request version {version}, this one reads "
                f"{REQUEST_VERSION})",
                "upgrade rayfleet on this machine",
            )
        if version == 0:  # recorded before requests were versioned: an older name, and nulls for empty fields
            if "reservation_timeout_s" in request:
                request.setdefault("start_timeout_s", request.pop("reservation_timeout_s"))
            request = {k: v for k, v in request.items() if v is not None or k in ("cluster", "queue_deadline")}
        return cls.model_validate(
            {
                **request,
                "entrypoint": job.entrypoint,
                "runtime_env": job.runtime_env,
                "metadata": dict(job.metadata or {}),
                "parent_id": job.parent_id,
            }
        )


@dataclass(frozen=True)
class _Failed:
    """A creation that failed; ``avoid``: its template was at fault (do not use it again for its jobs at once)."""

    avoid: bool


@dataclass
class _Outcome:
    """How a placement turn ended."""

    submitted: bool
    in_ledger: bool  # the job has been recorded (an attempt was placed, or it waits for a new cluster)
    decision: Decision | None = None
    conflict: bool = False  # another process placed (or stopped) the job first
    provisioning: str | None = None  # the cluster being created for it: the loop places it there once ready

    @property
    def settled(self) -> bool:
        """Whether the job is on its way: submitted, or waiting for its new cluster."""
        return self.submitted or self.provisioning is not None


def next_in_queue(waiting: Sequence[JobRecord], active: Mapping[str, int]) -> JobRecord:
    """The queued job to place next: the highest priority; then the owner with the fewest active jobs (``active``:
    owner -> count, empty when fair share is off); then the oldest."""
    return min(waiting, key=lambda j: (-j.priority, active.get(j.owner, 0), j.created_at))


def _check_runtime_env(runtime_env: Any) -> None:
    """What Ray's client would refuse at submit time (after the ledger recorded the attempt), refused before."""
    if not isinstance(runtime_env, Mapping):
        raise InvalidRequestError(f"runtime_env={runtime_env!r} is not a mapping", "pass a dict, e.g. {'pip': [...]}")
    for key in ("working_dir", "py_modules"):
        value = runtime_env.get(key)
        for item in [value] if isinstance(value, str) else (value or []):
            if isinstance(item, str) and "://" not in item and not Path(item).expanduser().exists():
                raise InvalidRequestError(
                    f"runtime_env {key} {item!r} does not exist on this machine",
                    f"give an existing local path or a remote URI for {key}",
                )
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**dict(runtime_env))
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(
            f"runtime_env is not valid for Ray: {e}", "see Ray's runtime_env docs (env_vars values must be strings)"
        ) from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        raise InvalidRequestError(f"{name}={value!r} is not a number", f"give {name} in seconds, e.g. 30")
    return float(value)


def _default_owner() -> str:
    """Who submits, for fair share: $RAYFLEET_OWNER, else the user name."""
    try:
        return os.environ.get("RAYFLEET_OWNER") or getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no user name in a bare container
        return ""


def _template(provisioner: Provisioner, name: str) -> ClusterTemplate:
    return next(t for t in provisioner.templates if t.name == name)


def _local_ray_version() -> str | None:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None
