"""rayfleet: dispatch Ray workloads across a fleet of Ray clusters."""

from rayfleet.config import Cluster, FleetConfig
from rayfleet.errors import (
    AuthenticationError,
    ClusterError,
    ClusterUnreachableError,
    ConfigError,
    InvalidPipelineError,
    InvalidRequestError,
    InvalidResourcesError,
    JobNotFoundError,
    LedgerError,
    LocalFleetError,
    LogsUnavailableError,
    NoCapacityError,
    PipelineError,
    PortInUseError,
    RayfleetError,
    StageFailedError,
    UnknownClusterError,
)
from rayfleet.fleet import Fleet, local_fleet
from rayfleet.group import GroupHandle, GroupMember
from rayfleet.jobs import JobHandle
from rayfleet.pipeline import Pipeline, PipelineResult, Stage, StageRun, StageState
from rayfleet.resources import Gang, Resources
from rayfleet.states import JobState

# The embedded local fleet starts processes and reads /proc (Linux): loaded on first use, not by `import rayfleet`.
_LOCAL = ("LocalAutoscaling", "LocalClusterSpec", "LocalFleet", "LocalNodeSpec", "LocalWorkerType")


def __getattr__(name: str) -> object:
    if name in _LOCAL:
        from rayfleet.provisioning import local

        return getattr(local, name)
    raise AttributeError(f"module 'rayfleet' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Cluster",
    "ClusterError",
    "ClusterUnreachableError",
    "ConfigError",
    "Fleet",
    "FleetConfig",
    "Gang",
    "GroupHandle",
    "GroupMember",
    "InvalidPipelineError",
    "InvalidRequestError",
    "InvalidResourcesError",
    "JobHandle",
    "JobNotFoundError",
    "JobState",
    "LedgerError",
    "LocalAutoscaling",
    "LocalClusterSpec",
    "LocalFleet",
    "LocalFleetError",
    "LocalNodeSpec",
    "LocalWorkerType",
    "LogsUnavailableError",
    "NoCapacityError",
    "Pipeline",
    "PipelineError",
    "PipelineResult",
    "PortInUseError",
    "RayfleetError",
    "Resources",
    "Stage",
    "StageFailedError",
    "StageRun",
    "StageState",
    "UnknownClusterError",
    "local_fleet",
]
