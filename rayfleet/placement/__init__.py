"""Pure placement over capacity snapshots: node-level fit (of one request or a gang), scoring policies, and the
decision with its reasons."""

from rayfleet.placement.bundles import fit_gang, gang_score
from rayfleet.placement.fit import Hold, effective_free
from rayfleet.placement.place import Decision, Option, PlacementRequest, place

__all__ = ["Decision", "Hold", "Option", "PlacementRequest", "effective_free", "fit_gang", "gang_score", "place"]
