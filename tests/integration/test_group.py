"""Groups on the real local clusters of the session ("cpu": 2 CPUs; "gpu": 2 CPUs, 2 logical A100s): no member runs
its command until every member has reserved, and when one cannot, none runs.

Another user's job (a "blocker", submitted straight to Ray) takes the gpu cluster's GPUs after the fleet has read its
capacity, so the fleet places a member there from a stale reading, as in test_gangs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_placement_groups

from rayfleet import Fleet, Gang, JobState, NoCapacityError, Resources
from rayfleet.group import GroupHandle, open_group
from rayfleet.launcher import (
    ABORT,
    GO,
    GROUP_ABORTED_MARKER,
    GROUP_GO_MARKER,
    GROUP_RESERVED_MARKER,
    RESERVED_MARKER,
)
from tests.integration.conftest import wait_idle
from tests.polling import poll

pytestmark = pytest.mark.integration


@pytest.fixture()
def fleet(fleet_file: Path, ledger_path: Path) -> Iterator[Fleet]:
    """The session's clusters, read once per test and then not again (probe_ttl_s=3600): the stale reading is what
    lets the fleet place a member where another user has just taken the resources."""
    with Fleet.from_file(fleet_file, ledger=ledger_path, probe_ttl_s=3600) as f:
        poll(lambda: all(s.sum("GPU", "free") == s.sum("GPU") for s in f.snapshots(max_age=0).values()), timeout=60)
        wait_idle(f)
        f.snapshots(max_age=0)
        yield f


@pytest.fixture()
def gpu_client(addresses: dict[str, str]) -> JobSubmissionClient:
    return JobSubmissionClient(addresses["gpu"])


def record_start(marker: Path) -> str:
    """A member's command: append the wall time at which it started to ``marker`` (one line per run)."""
    return f"{sys.executable} -c \"import sys, time; open(sys.argv[1], 'a').write(f'{{time.time()}}\\n')\" {marker}"


def starts(marker: Path) -> list[float]:
    return [float(line) for line in marker.read_text().split()] if marker.exists() else []


def members(tmp_path: Path) -> tuple[list[dict], list[Path]]:
    """Member 0 on the cpu cluster (plain resources), member 1 on the gpu cluster (a one-bundle gang)."""
    markers = [tmp_path / "member-0", tmp_path / "member-1"]
    return [
        {"entrypoint": record_start(markers[0]), "resources": {"cpu": 1}, "cluster": "cpu"},
        {
            "entrypoint": record_start(markers[1]),
            "gang": Gang.of(1, Resources(cpu=1, gpu=1)),
            "cluster": "gpu",
        },
    ], markers


def block_gpus(client: JobSubmissionClient, release: Path) -> str:
    """Another user's job holding both GPUs of the gpu cluster until ``release`` exists."""
    job = client.submit_job(
        entrypoint=f"while [ ! -e {release} ]; do sleep 0.1; done", entrypoint_num_gpus=2, entrypoint_num_cpus=0
    )
    poll(lambda: client.get_job_status(job) == "RUNNING", timeout=60)
    return job


def logs(group: GroupHandle) -> list[str]:
    return [m.logs() for m in group.members]


def test_no_member_runs_before_every_member_has_reserved(
    fleet: Fleet, gpu_client: JobSubmissionClient, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    blocker = block_gpus(gpu_client, release)
    try:
        spec, markers = members(tmp_path)
        started = time.monotonic()
        group = fleet.submit_group(spec, timeout_s=90)
        assert [m.cluster for m in group.members] == ["cpu", "gpu"]

        # member 0 holds its reservation and waits: member 1 cannot reserve while the GPUs are taken
        poll(lambda: 0 in group.reservations(), timeout=60)
        assert group.decision() is None and 1 not in group.reservations()
        # Ray runs both launchers, no command has started: both are STARTING (not Ray's RUNNING), and member 0's
        # launcher reported its reservation (the node its bundle is on)
        first, second = group.members
        poll(lambda: first.status() is JobState.STARTING and second.status() is JobState.STARTING, timeout=60)
        reserved = first.attempts[-1]
        assert reserved.reserved_at is not None and second.attempts[-1].reserved_at is None
        node_ids = fleet.snapshots(max_age=0)["cpu"].node_ids
        (nodes,) = [
            h.reserved_nodes for h in fleet.ledger.holding(time.time()) if h.submission_id == reserved.submission_id
        ]
        assert list(nodes) == [node_ids[0]] and len(node_ids) == 1
        assert group.decision() is None
        released_at = time.time()
        release.touch()  # the GPUs come free: member 1 reserves, and the group goes

        assert group.wait(timeout=120) == [JobState.SUCCEEDED, JobState.SUCCEEDED], logs(group)
        elapsed = time.monotonic() - started
    finally:
        release.touch()
        gpu_client.stop_job(blocker)
    decision = group.decision()
    assert decision is not None and decision.outcome == GO, decision
    runs = [starts(m) for m in markers]
    assert [len(r) for r in runs] == [1, 1], runs  # each command ran exactly once
    reserved = group.reservations()
    last_reserved = max(reserved[i]["at"] for i in (0, 1))
    assert reserved[1]["at"] > released_at
    # neither command started before both were reserved, member 0 included (it had reserved long before)
    assert min(r[0] for r in runs) >= last_reserved > released_at, (runs, reserved)
    for text in logs(group):
        assert GROUP_RESERVED_MARKER in text and GROUP_GO_MARKER in text and RESERVED_MARKER in text
        assert text.index(GROUP_RESERVED_MARKER) < text.index(GROUP_GO_MARKER) < text.index(RESERVED_MARKER)
    print(
        f"\ngroup of 2 on cpu+gpu: submit -> both SUCCEEDED {elapsed:.1f} s; commands started "
        f"{min(r[0] for r in runs) - last_reserved:.2f} s after the last reservation"
    )


def test_when_one_member_cannot_reserve_no_member_runs(
    fleet: Fleet, gpu_client: JobSubmissionClient, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    blocker = block_gpus(gpu_client, release)  # held for the whole test: member 1 can never reserve
    try:
        spec, markers = members(tmp_path)
        started = time.monotonic()
        group = fleet.submit_group(spec, timeout_s=4, rendezvous=tmp_path / "groups")
        assert [m.cluster for m in group.members] == ["cpu", "gpu"]
        states = group.wait(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        release.touch()
        gpu_client.stop_job(blocker)
    member_logs = logs(group)
    assert states == [JobState.FAILED, JobState.FAILED], member_logs
    assert [starts(m) for m in markers] == [[], []]  # no command ran
    decision = group.decision()
    assert decision is not None and decision.outcome == ABORT
    assert "[1] not reserved within 4 s" in decision.reason, decision
    assert set(group.reservations()) == {0}  # member 0 had reserved; it withdrew all the same
    assert GROUP_RESERVED_MARKER in member_logs[0] and GROUP_RESERVED_MARKER not in member_logs[1]
    for handle, text in zip(group.members, member_logs, strict=True):
        assert GROUP_ABORTED_MARKER in text and RESERVED_MARKER not in text, text
        assert len(handle.attempts) == 1  # a group is not failed over member by member
        assert "exit code 75" in (handle.attempts[0].detail or ""), handle.attempts[0].detail
    print(f"\ngroup of 2, member 1 blocked, timeout 4 s: submit -> both FAILED, none ran, in {elapsed:.1f} s")


def test_a_member_that_cannot_be_placed_aborts_the_group(fleet: Fleet, tmp_path: Path) -> None:
    marker, root = tmp_path / "member-0", tmp_path / "groups"
    spec = [
        {"entrypoint": record_start(marker), "resources": {"cpu": 1}, "cluster": "cpu"},
        {"entrypoint": "true", "resources": {"gpu": 8}},  # larger than any node of the fleet
    ]
    with pytest.raises(NoCapacityError, match="larger than any node"):
        fleet.submit_group(spec, timeout_s=60, rendezvous=root)

    (group_dir,) = root.iterdir()
    group = open_group(fleet._dispatcher, group_dir.name, rendezvous=root)
    decision = group.decision()
    assert decision is not None and (decision.outcome, decision.by) == (ABORT, "dispatcher")
    assert "member 1 could not be submitted" in decision.reason
    (first,) = group.members
    assert first.cluster == "cpu"
    assert group.wait(timeout=60)[0] in (JobState.FAILED, JobState.STOPPED), first.logs()
    assert not marker.exists()  # withdrawn (stopped, or it saw the abort), never ran


def test_stopping_a_member_before_the_decision_withdraws_the_whole_group(
    fleet: Fleet, gpu_client: JobSubmissionClient, addresses: dict[str, str], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    blocker = block_gpus(gpu_client, release)
    try:
        spec, markers = members(tmp_path)
        group = fleet.submit_group(spec, timeout_s=90, rendezvous=tmp_path / "groups")
        waiting = group.members[1]
        # member 1's launcher is up and waiting for its placement group (so its SIGTERM handler is in place)
        name = f"rayfleet:{waiting.submission_id}"
        poll(
            lambda: (
                [g.state for g in list_placement_groups(address=addresses["gpu"], filters=[("name", "=", name)])]
                == ["PENDING"]
            ),
            timeout=60,
        )
        poll(lambda: 0 in group.reservations(), timeout=60)
        waiting.stop()
        states = group.wait(timeout=60)
    finally:
        release.touch()
        gpu_client.stop_job(blocker)
    decision = group.decision()
    assert decision is not None and decision.outcome == ABORT, decision
    # member 1's launcher writes the abort on its way out; the dispatcher, seeing member 1 end first, may win the race
    assert (decision.by, decision.by == "dispatcher" or "stopped before the group's decision" in decision.reason) in (
        ("member 1", True),
        ("dispatcher", True),
    ), decision
    # member 0 withdraws itself on seeing the abort (FAILED), or the dispatcher stops it first (STOPPED)
    assert states[1] == JobState.STOPPED and states[0] in (JobState.FAILED, JobState.STOPPED), (states, logs(group))
    assert [starts(m) for m in markers] == [[], []]
    if states[0] == JobState.FAILED:
        assert GROUP_ABORTED_MARKER in group.members[0].logs()
