"""The `Provisioner` protocol: where on-demand clusters come from, and the record of one it made."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rayfleet.config import Cluster
from rayfleet.templates import ClusterTemplate


@dataclass(frozen=True)
class ManagedCluster:
    """A cluster a provisioner created for this fleet.

    Attributes:
        name: its name, in the provisioner and in the fleet.
        provisioner: the provisioner that owns it.
        template: the template it was made from.
        namespace: where it lives (Kubernetes namespace; empty for local clusters).
        created_at: wall time of creation.
        idle_deadline: when it may be deleted if still idle, as written on the cluster itself (None: not idle).
    """

    name: str
    provisioner: str
    template: str
    namespace: str = ""
    created_at: float = 0.0
    idle_deadline: float | None = None


@runtime_checkable
class Provisioner(Protocol):
    """Creates, readies and deletes clusters from templates. Implementations: KubeRay, local."""

    name: str
    templates: Sequence[ClusterTemplate]
    max_clusters: int
    max_gpus: int

    namespace: str

    def new_name(self, template: ClusterTemplate) -> str:
        """A fresh, valid name for a cluster of ``template`` (recorded in the ledger before creation)."""
        ...

    def create(self, template: ClusterTemplate, name: str) -> ManagedCluster:
        """Start creating cluster ``name``; return at once (it is not ready yet). A name clash raises with 409."""
        ...

    def set_idle_deadline(self, cluster: ManagedCluster, deadline: float | None) -> None:
        """Record on the cluster itself when it may be deleted if idle, so a later `rayfleet gc` can act."""
        ...

    def poll(self, cluster: ManagedCluster) -> Cluster | None:
        """Without blocking: the cluster as a fleet `Cluster` (with its dashboard address) once it is ready, None
        while it is starting. Works from any process, not only the one that created it.

        Raises:
            ProvisioningError: it failed, or its creation can no longer finish (the caller deletes it); with status
                404 when it does not exist (never created, or deleted).
        """
        ...

    def delete(self, cluster: ManagedCluster) -> None:
        """Delete a cluster this provisioner owns (never one it does not)."""
        ...

    def owned(self) -> list[ManagedCluster]:
        """Every cluster this provisioner owns for this fleet, as the infrastructure reports it."""
        ...
