"""What a job's launcher reports to the dispatcher, read from Ray's state API instead of the job's logs.

The launcher (``rayfleet.launcher``, channel version ``REPORT_VERSION``) names its placement group after the attempt's
submission id, and the task that runs the user's command after it too (see `launch.placement_group_name`,
`launch.command_task_name`). One look at both says:

- *reserved*: the placement group is CREATED, and on which node each bundle is (the attempt's reservation record);
- *started*: the command's task exists and has been handed to a worker: the user's command runs (or ran).

The dispatcher writes the version into the job's metadata (``launch.REPORT_KEY``); a job with another version (an
older or newer rayfleet placed it) is not read this way, and Ray's own state is taken as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayfleet.launcher import REPORT_KEY, REPORT_VERSION

# task states (Ray's TaskStatus) of a command task that a worker has started: the user's command runs or has run
_STARTED_TASK_STATES = frozenset(
    {"SUBMITTED_TO_WORKER", "RUNNING", "RUNNING_IN_RAY_GET", "RUNNING_IN_RAY_WAIT", "FINISHED", "FAILED"}
)


@dataclass(frozen=True)
class LauncherReport:
    """One reading of an attempt's launcher.

    Attributes:
        reserved: its placement group is created: the reservation is held.
        nodes: the node of each bundle, in bundle order (empty until reserved).
        started: the task that runs the user's command has started.
    """

    reserved: bool = False
    nodes: tuple[str, ...] = ()
    started: bool = False


def speaks_report(metadata: Mapping[str, str] | None) -> bool:
    """Whether a Ray job's metadata says its launcher reports through this channel version."""
    return (metadata or {}).get(REPORT_KEY) == str(REPORT_VERSION)


def parse_report(groups: Sequence[Mapping[str, Any]], tasks: Sequence[Mapping[str, Any]]) -> LauncherReport:
    """The report from the state API's rows for the attempt's placement group and its command task.

    Example:
        >>> parse_report([{"state": "CREATED", "bundles": [{"node_id": "n1"}]}], [])
        LauncherReport(reserved=True, nodes=('n1',), started=False)
    """
    created = [g for g in groups if g.get("state") == "CREATED"]
    nodes: tuple[str, ...] = ()
    if created:
        nodes = tuple(str(b.get("node_id") or "") for b in created[0].get("bundles") or [])
    started = any(t.get("state") in _STARTED_TASK_STATES for t in tasks)
    # a command that started had its reservation, even once the group is removed again (the command ended)
    return LauncherReport(reserved=bool(created) or started, nodes=nodes, started=started)
