"""The reservation of the running job, for user code started by rayfleet's launcher.

The launcher (``rayfleet.launcher``) reserves a job's bundles as a Ray placement group and runs the user's command in a
task that holds one of them (the driver bundle). From that command::

    import ray
    from rayfleet import reservation

    ray.init()
    r = reservation.current()
    refs = [work.options(scheduling_strategy=r.strategy_for(i)).remote() for i in r.other_bundles()]

Where rayfleet is not installed on the cluster, the same module travels with the job: ``from rayfleet_launcher
import reservation``. Like the launcher, it imports only the standard library and ``ray``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SPEC_ENV = "RAYFLEET_GANG_SPEC"  # the same names as in spec.py (a test checks)
PLACEMENT_GROUP_ENV = "RAYFLEET_PLACEMENT_GROUP_ID"
BUNDLE_INDEX_ENV = "RAYFLEET_BUNDLE_INDEX"


@dataclass(frozen=True)
class Reservation:
    """The job's reservation (of a gang's bundles, or of a plain job's one bundle).

    Attributes:
        placement_group_id: hex id of the placement group.
        bundles: the bundles as requested (resource -> amount), in order.
        strategy: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.
        driver_bundle: the index of the bundle that the user's command itself holds.
    """

    placement_group_id: str
    bundles: tuple[Mapping[str, float], ...]
    strategy: str
    driver_bundle: int

    @property
    def placement_group(self) -> Any:
        """The ``ray.util.placement_group.PlacementGroup`` (usable after ``ray.init()``)."""
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup

        return PlacementGroup(PlacementGroupID(bytes.fromhex(self.placement_group_id)))

    def other_bundles(self) -> list[int]:
        """Indexes of the bundles free for the user's tasks and actors (all but the driver bundle)."""
        return [i for i in range(len(self.bundles)) if i != self.driver_bundle]

    def strategy_for(self, bundle_index: int = -1) -> Any:
        """A scheduling strategy that puts a task or actor on bundle ``bundle_index`` (-1: any bundle). Ask for at
        most the bundle's resources."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(self.placement_group, placement_group_bundle_index=bundle_index)


def reserved() -> bool:
    """Whether this process runs under rayfleet's launcher with a reservation."""
    return bool(os.environ.get(PLACEMENT_GROUP_ENV))


def current() -> Reservation:
    """The reservation of the job this process belongs to.

    Raises:
        LookupError: not started by rayfleet's launcher (no reservation in the environment).
    """
    pg_id = os.environ.get(PLACEMENT_GROUP_ENV)
    if not pg_id:
        raise LookupError(f"no rayfleet reservation: {PLACEMENT_GROUP_ENV} is not set (not run by rayfleet's launcher)")
    spec = json.loads(os.environ.get(SPEC_ENV) or "{}")
    bundles = tuple(dict(b) for b in spec.get("bundles", ()))
    driver = int(os.environ.get(BUNDLE_INDEX_ENV, spec.get("driver_bundle", 0)))
    return Reservation(pg_id, bundles, spec.get("strategy", "PACK"), driver)
