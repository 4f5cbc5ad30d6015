"""The launcher's report (`rayfleet.report`), parsed from state API rows as Ray 2.60 returns them."""

from __future__ import annotations

import pytest

from rayfleet.launcher import REPORT_KEY, REPORT_VERSION, command_task_name, placement_group_name
from rayfleet.report import LauncherReport, parse_report, speaks_report

CREATED = {"state": "CREATED", "bundles": [{"bundle_id": "x", "node_id": "n1"}, {"bundle_id": "y", "node_id": "n2"}]}


@pytest.mark.parametrize(
    ("groups", "tasks", "expected"),
    [
        ([], [], LauncherReport()),  # the launcher has not created its group yet
        ([{"state": "PENDING", "bundles": [{"node_id": None}]}], [], LauncherReport()),
        ([CREATED], [], LauncherReport(reserved=True, nodes=("n1", "n2"))),
        ([CREATED], [{"state": "PENDING_NODE_ASSIGNMENT"}], LauncherReport(reserved=True, nodes=("n1", "n2"))),
        ([CREATED], [{"state": "RUNNING"}], LauncherReport(reserved=True, nodes=("n1", "n2"), started=True)),
        ([CREATED], [{"state": "SUBMITTED_TO_WORKER"}], LauncherReport(True, ("n1", "n2"), True)),
        # the command ended and its group was removed: it started, so it had been reserved
        ([{"state": "REMOVED", "bundles": []}], [{"state": "FINISHED"}], LauncherReport(reserved=True, started=True)),
        ([], [{"state": "FAILED"}], LauncherReport(reserved=True, started=True)),
    ],
)
def test_parse_report(groups, tasks, expected):
    assert parse_report(groups, tasks) == expected


def test_only_a_job_of_this_channel_version_is_read_through_it():
    assert speaks_report({REPORT_KEY: str(REPORT_VERSION)})
    assert not speaks_report({REPORT_KEY: str(REPORT_VERSION + 1)})
    assert not speaks_report({})
    assert not speaks_report(None)


def test_the_names_the_launcher_gives_are_derived_from_the_submission_id():
    assert placement_group_name("rf-1-1") == "rayfleet:rf-1-1"
    assert command_task_name("rf-1-1") == "rayfleet:rf-1-1:command"
