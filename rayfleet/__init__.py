"""rayfleet: dispatch Ray workloads across a fleet of Ray clusters."""

from rayfleet.config import Cluster, FleetConfig
from rayfleet.errors import (
    ClusterError,
    ClusterUnreachableError,
    ConfigError,
    InvalidRequestError,
    InvalidResourcesError,
    JobNotFoundError,
    LedgerError,
    LocalFleetError,
    NoCapacityError,
    PortInUseError,
    RayfleetError,
    UnknownClusterError,
)
from rayfleet.fleet import Fleet
from rayfleet.jobs import JobHandle
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
    "PortInUseError",
    "RayfleetError",
    "Resources",
    "UnknownClusterError",
    "local_fleet",
]
