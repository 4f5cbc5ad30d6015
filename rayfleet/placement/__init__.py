"""Pure placement over capacity snapshots: node-level fit, scoring policies, and the decision with its reasons."""

from rayfleet.placement.fit import Hold, effective_free
from rayfleet.placement.place import Decision, Option, PlacementRequest, place

__all__ = ["Decision", "Hold", "Option", "PlacementRequest", "effective_free", "place"]
