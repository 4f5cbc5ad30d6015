"""rayfleet: dispatch Ray workloads across a fleet of Ray clusters."""

from rayfleet.config import Cluster, FleetConfig
from rayfleet.errors import (
    ClusterError,
    ClusterUnreachableError,
    ConfigError,
    InvalidPipelineError,
    InvalidRequestError,
    InvalidResourcesError,
    JobNotFoundError,
    LedgerError,
    LocalFleetError,
    NoCapacityError,
    PipelineError,
    PortInUseError,
    RayfleetError,
    StageFailedError,
    UnknownClusterError,
)
from rayfleet.fleet import Fleet
from rayfleet.group import GroupHandle, GroupMember
from rayfleet.jobs import JobHandle
from rayfleet.pipeline import Pipeline, PipelineResult, Stage, StageRun, StageState
from rayfleet.provisioning.local import (
    LocalAutoscaling,
    LocalClusterSpec,
    LocalFleet,
    LocalNodeSpec,
    LocalWorkerType,
    local_fleet,
)
from rayfleet.resources import Gang, Resources
from rayfleet.states import JobState

__version__ = "0.1.0"

__all__ = [
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
