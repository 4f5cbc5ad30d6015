"""Unit tests of groups without Ray: the decision rule, the rendezvous storage, a member's side of the protocol with an
injected clock, and the dispatcher's validation of a group before anything is submitted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayfleet import launcher as launch
from rayfleet.config import FleetConfig
from rayfleet.dispatch import Dispatcher
from rayfleet.errors import InvalidRequestError, InvalidResourcesError, UnknownClusterError
from rayfleet.group import GroupHandle, GroupMember, _on_this_machine, rendezvous_root, submit_group, validate_members
from rayfleet.launcher import (
    ABORT,
    GO,
    GROUP_ABORTED_MARKER,
    PROPOSE_ABORT,
    PROPOSE_GO,
    RESERVATION_TIMEOUT_EXIT,
    WAIT,
    WITHDRAW,
    GroupDecision,
    LocalStore,
    Rendezvous,
    RendezvousError,
    SpecError,
    next_action,
    open_store,
    parse_group,
    runner,
    settle,
    wrap,
)

GROUP = {"uri": "/tmp/groups", "id": "rg-1", "member": 1, "size": 2, "timeout_s": 5}


# ----- the decision rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "reserved", "expired", "action"),
    [
        (None, set(), False, WAIT),  # nobody reserved yet
        (None, {0}, False, WAIT),  # I reserved, member 1 not yet
        (None, {0, 1}, False, PROPOSE_GO),  # everyone reserved: decide go
        (None, {0, 1}, True, PROPOSE_GO),  # everyone reserved beats my deadline
        (None, {0}, True, PROPOSE_ABORT),  # my deadline passed without member 1
        (None, {1}, True, PROPOSE_ABORT),  # my own reservation never came
        (ABORT, {0, 1}, False, ABORT),  # a decision is obeyed, whoever made it
        (ABORT, set(), True, ABORT),
        (GO, {0, 1}, False, GO),
        (GO, {1}, False, WAIT),  # go without my reservation cannot happen; never run on it
        (GO, {1}, True, WITHDRAW),
    ],
)
def test_next_action(decision: str | None, reserved: set[int], expired: bool, action: str) -> None:
    assert next_action(decision, reserved, 2, 0, expired) == action


def test_a_group_of_one_goes_as_soon_as_its_member_reserved() -> None:
    assert next_action(None, {0}, 1, 0, expired=False) == PROPOSE_GO


# ----- the spec ----------------------------------------------------------------------------------------------------


def test_wrap_carries_the_group_in_the_spec() -> None:
    _, additions = wrap("true", [{"CPU": 1}], "PACK", 5, group=GROUP)
    spec = json.loads(additions["env_vars"][launch.SPEC_ENV])
    assert spec["group"] == {**GROUP, "timeout_s": 5.0, "poll_s": launch.DEFAULT_GROUP_POLL_S}
    assert "group" not in json.loads(wrap("true", [{"CPU": 1}], "PACK", 5)[1]["env_vars"][launch.SPEC_ENV])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"uri": ""}, "group.uri"),
        ({"id": "../etc"}, "group.id"),
        ({"id": None}, "group.id"),
        ({"size": 0}, "group.size"),
        ({"size": True}, "group.size"),
        ({"member": 2}, r"group.member' must be an index in \[0, 2\)"),
        ({"member": -1}, "group.member"),
        ({"timeout_s": 0}, "group.timeout_s"),
        ({"timeout_s": None}, "group.timeout_s"),
        ({"poll_s": "1"}, "group.poll_s"),
        ({"color": "red"}, "unknown keys"),
    ],
)
def test_parse_group_refuses_bad_input(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_group({**GROUP, **change})
    with pytest.raises(SpecError, match=message):
        wrap("true", [{"CPU": 1}], "PACK", 5, group={**GROUP, **change})


def test_parse_group_refuses_a_non_object() -> None:
    with pytest.raises(SpecError, match="must be an object"):
        parse_group(["rg-1"])


def test_decision_files() -> None:
    decision = GroupDecision(GO, "member 1", "all 2 members reserved", 12.5)
    assert GroupDecision.from_bytes(decision.to_bytes()) == decision
    assert GroupDecision.from_bytes(None) is None
    assert GroupDecision.from_bytes(b"") is None  # being written (O_EXCL fallback): look again
    garbled = GroupDecision.from_bytes(b"{not json")
    assert garbled is not None and garbled.outcome == ABORT  # unreadable: never run on it
    assert GroupDecision.from_bytes(b'{"decision": "maybe", "at": 1}').outcome == ABORT  # type: ignore[union-attr]


# ----- storage -----------------------------------------------------------------------------------------------------


def test_local_store_creates_exclusively(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "g")
    assert store.names() == [] and store.read("decision") is None
    assert store.create("decision", b"first")
    assert not store.create("decision", b"second")
    assert store.read("decision") == b"first"
    store.write("reserved-0", b"a")
    store.write("reserved-0", b"b")
    assert sorted(store.names()) == ["decision", "reserved-0"]  # no temporary files left behind
    assert store.read("reserved-0") == b"b"


def test_exactly_one_of_many_racing_creates_wins(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "g")
    barrier = threading.Barrier(8)
    wins: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        if store.create("decision", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.read("decision") == str(wins[0]).encode()


def test_open_store_paths_and_uris(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path), "rg-1"), LocalStore)
    assert open_store(f"file://{tmp_path}", "rg-1").path == tmp_path / "rg-1"  # type: ignore[union-attr]
    assert launch.is_remote_uri("s3://bucket/groups") and not launch.is_remote_uri("file:///x")
    assert not launch.is_remote_uri("/x/y") and not launch.is_remote_uri("relative/dir")


def test_fsspec_store_on_an_in_memory_filesystem() -> None:
    pytest.importorskip("fsspec")
    store = open_store("memory://rayfleet-tests/groups", "rg-mem")
    assert isinstance(store, launch.FsspecStore)
    assert store.names() == [] and store.read("decision") is None
    store.write("reserved-0", b"x")
    assert store.create("decision", b"go")
    assert not store.create("decision", b"abort")
    assert sorted(store.names()) == ["decision", "reserved-0"] and store.read("decision") == b"go"


# ----- a member's side of the protocol -----------------------------------------------------------------------------


def rendezvous(tmp_path: Path, size: int = 2, timeout_s: float = 5) -> Rendezvous:
    return Rendezvous(LocalStore(tmp_path / "rg-1"), size, timeout_s)


def test_the_last_member_to_reserve_decides_go(tmp_path: Path) -> None:
    group = rendezvous(tmp_path)
    group.announce(0, {"at": 1.0})
    assert group.step(0, expired=False) is None  # waiting for member 1
    group.announce(1, {"at": 2.0})
    decision = group.step(1, expired=False)
    assert (decision.outcome, decision.by) == (GO, "member 1")  # type: ignore[union-attr]
    assert group.step(0, expired=True) == decision  # member 0 obeys it, even past its deadline
    assert set(group.reserved()) == {0, 1} and group.reserved()[1]["at"] == 2.0


def test_a_deadline_without_every_member_decides_abort_and_binds_the_late_member(tmp_path: Path) -> None:
    group = rendezvous(tmp_path, size=3)
    group.announce(0, {})
    decision = group.step(0, expired=True)
    assert decision is not None and (decision.outcome, decision.by) == (ABORT, "member 0")
    assert "member(s) [1, 2] not reserved within 5 s" in decision.reason
    group.announce(1, {})
    group.announce(2, {})  # everyone is reserved now, but too late: the decision stands
    assert group.step(2, expired=False) == decision


def test_abort_and_go_race_for_one_decision(tmp_path: Path) -> None:
    group = rendezvous(tmp_path)
    group.announce(0, {})
    group.announce(1, {})
    first = group.propose(ABORT, "member 0's deadline", "member 0")
    second = group.propose(GO, "all reserved", "member 1")
    assert first == second and first is not None and first.outcome == ABORT


class Clock:
    """A fake monotonic clock that moves only when the code under test waits."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_settle_runs_when_every_member_reserved(tmp_path: Path) -> None:
    group, clock = rendezvous(tmp_path), Clock()
    group.announce(1, {"at": 1.0})
    ready_after = clock.now + 1.0

    def wait_ready(timeout: float) -> bool:
        clock.sleep(timeout)
        return clock.now >= ready_after

    decision, announced = settle(
        group, 0, wait_ready, deadline=clock.now + 5, info=lambda: {"pg": "ab"}, clock=clock, sleep=clock.sleep
    )
    assert (decision.outcome, decision.by, announced) == (GO, "member 0", True)
    assert group.reserved()[0]["pg"] == "ab"
    assert max(clock.waits) <= launch.DEFAULT_GROUP_POLL_S  # it looks often, not once at the end


def test_settle_aborts_at_the_deadline_when_the_reservation_never_comes(tmp_path: Path) -> None:
    group, clock = rendezvous(tmp_path, timeout_s=3), Clock()
    group.announce(1, {})

    def never(timeout: float) -> bool:
        clock.sleep(timeout)
        return False

    start = clock.now
    decision, announced = settle(group, 0, never, deadline=start + 3, clock=clock, sleep=clock.sleep)
    assert (decision.outcome, announced) == (ABORT, False)
    assert "member(s) [0] not reserved within 3 s" in decision.reason
    assert clock.now == pytest.approx(start + 3)  # not a poll later
    assert 0 not in group.reserved()


def test_settle_obeys_an_abort_while_still_reserving(tmp_path: Path) -> None:
    group, clock = rendezvous(tmp_path), Clock()
    group.propose(ABORT, "member 1 could not be submitted", "dispatcher")
    decision, announced = settle(group, 0, lambda t: False, deadline=clock.now + 60, clock=clock, sleep=clock.sleep)
    assert (decision.by, announced) == ("dispatcher", False)
    assert clock.now < 101  # at once, not at its deadline


class BrokenStore(LocalStore):
    def read(self, name: str) -> bytes | None:
        raise OSError("the share is gone")


def test_settle_gives_up_when_the_rendezvous_keeps_failing(tmp_path: Path) -> None:
    group, clock = Rendezvous(BrokenStore(tmp_path / "g"), 2, 2.0), Clock()
    start = clock.now
    with pytest.raises(RendezvousError, match="the share is gone"):
        settle(group, 0, lambda t: True, deadline=start + 2, clock=clock, sleep=clock.sleep)
    assert clock.now >= start + 2 + 2.0  # retried through the deadline and a grace period of the timeout


@pytest.mark.parametrize("late", [None, 2])
def test_members_in_threads_all_reach_the_same_decision(tmp_path: Path, late: int | None) -> None:
    """Three members settle at once on real time: all go together, or (one never reserves) all abort together."""
    group, results = rendezvous(tmp_path, size=3, timeout_s=1.0), {}
    events = [threading.Event() for _ in range(3)]

    def member(i: int) -> None:
        results[i] = settle(group, i, events[i].wait, deadline=time.monotonic() + 1.0, poll_s=0.02)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for i, event in enumerate(events):
        if i != late:
            event.set()
    for t in threads:
        t.join(timeout=10)
    outcomes = {decision.outcome for decision, _ in results.values()}
    assert len(results) == 3 and len({d for d, _ in results.values()}) == 1  # one decision, obeyed by all
    assert outcomes == ({GO} if late is None else {ABORT})


def test_a_launcher_that_starts_after_the_decision_never_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for outcome in (GO, ABORT):
        group = {**GROUP, "uri": str(tmp_path / outcome), "timeout_s": 5.0}
        Rendezvous(open_store(group["uri"], group["id"]), 2, 5).propose(outcome, "decided", "member 0")
        assert runner._join_group(group) == (None, RESERVATION_TIMEOUT_EXIT)
        assert GROUP_ABORTED_MARKER in capsys.readouterr().out
    fresh = {**GROUP, "uri": str(tmp_path / "fresh"), "timeout_s": 5.0}
    joined, _ = runner._join_group(fresh)
    assert joined is not None


# ----- the dispatcher's side: validation before anything is submitted -----------------------------------------------


@pytest.fixture()
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    from rayfleet.ledger import Ledger

    config = FleetConfig.build(
        clusters=[{"name": "a", "address": "http://127.0.0.1:9"}, {"name": "b", "address": "http://localhost:9"}]
    )
    d = Dispatcher(config, Ledger(tmp_path / "ledger.db"))
    yield d
    d.close()


@pytest.mark.parametrize(
    ("members", "error", "message"),
    [
        ([], InvalidRequestError, "at least one member"),
        ("python x.py", InvalidRequestError, "not a list of members"),
        ([{"entrypoint": "a", "resources": {"cpu": 1}}, "b"], InvalidRequestError, "group member 1: 'b' is not"),
        ([{"entrypoint": "a", "cpu": 1}], InvalidRequestError, r"group member 0: unknown keys \['cpu'\]"),
        ([{"resources": {"cpu": 1}}], InvalidRequestError, "group member 0: no entrypoint"),
        ([{"entrypoint": "a"}], InvalidRequestError, "group member 0: asks for no resources"),
        (
            [{"entrypoint": " ", "resources": {"cpu": 1}}],
            InvalidRequestError,
            "group member 0: the entrypoint is empty",
        ),
        (
            [{"entrypoint": "a", "resources": {"cpu": 1}}, {"entrypoint": "b", "resources": {"cpu": -1}}],
            InvalidResourcesError,
            "group member 1: ",
        ),
        (
            [{"entrypoint": "a", "resources": {"cpu": 1}}, {"entrypoint": "b", "gang": {"bundles": []}}],
            InvalidResourcesError,
            "group member 1: a gang needs at least one bundle",
        ),
        (
            [GroupMember("a", resources={"cpu": 1}), GroupMember("b", resources={"cpu": 1}, cluster="nope")],
            UnknownClusterError,
            "group member 1: no cluster named 'nope'",
        ),
    ],
)
def test_a_bad_member_is_refused_before_anything_is_submitted(
    dispatcher: Dispatcher, members: list, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        submit_group(dispatcher, members, timeout_s=5)
    assert dispatcher.ledger.jobs() == []


@pytest.mark.parametrize("timeout_s", [0, -1, True, "5", None])
def test_a_bad_timeout_is_refused(dispatcher: Dispatcher, timeout_s: object) -> None:
    with pytest.raises(InvalidRequestError, match="timeout_s"):
        submit_group(dispatcher, [{"entrypoint": "a", "resources": {"cpu": 1}}], timeout_s=timeout_s)  # type: ignore[arg-type]


def test_members_keep_their_fields_and_take_the_group_timeout(dispatcher: Dispatcher) -> None:
    subs = validate_members(
        dispatcher,
        [
            {"entrypoint": "a", "resources": {"cpu": 1}, "labels": {"k": "v"}, "cluster": "b"},
            GroupMember("b", gang={"bundles": [{"cpu": 1}, {"cpu": 1}], "strategy": "SPREAD"}, policy="spread"),
        ],
        7.5,
    )
    assert (subs[0].cluster, dict(subs[0].labels), subs[0].resources.cpu) == ("b", {"k": "v"}, 1)
    assert subs[1].gang is not None and subs[1].gang.strategy == "SPREAD" and subs[1].policy == "spread"
    timeouts = {getattr(s, "start_timeout_s", None) or getattr(s, "reservation_timeout_s", None) for s in subs}
    assert timeouts == {7.5}  # the group's timeout is each member's reservation timeout


def test_the_default_rendezvous_is_beside_the_ledger_for_a_fleet_on_this_machine(dispatcher: Dispatcher) -> None:
    assert rendezvous_root(dispatcher, None) == str(Path(dispatcher.ledger.path).parent / "groups")
    assert rendezvous_root(dispatcher, "/shared/nfs/groups") == "/shared/nfs/groups"


def test_a_fleet_with_remote_clusters_needs_a_rendezvous_they_can_reach(tmp_path: Path) -> None:
    from rayfleet.ledger import Ledger

    config = FleetConfig.build(
        clusters=[{"name": "here", "address": "http://127.0.0.1:9"}, {"name": "far", "address": "http://10.1.2.3:8265"}]
    )
    d = Dispatcher(config, Ledger(tmp_path / "ledger.db"))
    try:
        with pytest.raises(InvalidRequestError, match=r"clusters \['far'\] are not on this machine"):
            submit_group(d, [{"entrypoint": "a", "resources": {"cpu": 1}}], timeout_s=5)
        assert rendezvous_root(d, "/mnt/shared") == "/mnt/shared"  # the user says every cluster mounts it
    finally:
        d.close()


def test_a_uri_rendezvous_needs_fsspec_here(dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fsspec" else real(name, *a))
    with pytest.raises(InvalidRequestError, match="needs fsspec"):
        rendezvous_root(dispatcher, "s3://bucket/groups")
    assert rendezvous_root(dispatcher, "file:///tmp/groups") == "file:///tmp/groups"


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("http://127.0.0.1:8265", True),
        ("http://localhost:8265", True),
        ("http://[::1]:8265", True),
        ("http://127.0.0.2:8265", True),
        ("http://10.0.0.5:8265", False),
        ("https://ray.example.com", False),
    ],
)
def test_on_this_machine(address: str, local: bool) -> None:
    assert _on_this_machine(address) is local


def test_the_dispatcher_aborts_a_group_that_has_not_decided(dispatcher: Dispatcher, tmp_path: Path) -> None:
    handle = GroupHandle(dispatcher, "rg-abc", str(tmp_path), 2, 5.0)
    assert handle.decision() is None and handle.members == []
    decision = handle._withdraw("member 1 could not be submitted: no capacity")
    assert decision is not None and (decision.outcome, decision.by) == (ABORT, "dispatcher")
    assert handle.decision() == decision
    # a member that reserves afterwards obeys it
    group = Rendezvous(open_store(str(tmp_path), "rg-abc"), 2, 5.0)
    group.announce(0, {})
    group.announce(1, {})
    assert group.step(0, expired=False) == decision


def test_the_dispatcher_cannot_abort_a_group_that_went(dispatcher: Dispatcher, tmp_path: Path) -> None:
    handle = GroupHandle(dispatcher, "rg-went", str(tmp_path), 1, 5.0)
    group = Rendezvous(open_store(str(tmp_path), "rg-went"), 1, 5.0)
    group.announce(0, {})
    went = group.step(0, expired=False)
    assert went is not None and went.outcome == GO
    assert handle._withdraw("too late") == went
    assert handle.decision() == went


def test_an_unwritable_rendezvous_is_refused_before_anything_is_submitted(
    dispatcher: Dispatcher, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    with pytest.raises(InvalidRequestError, match="cannot be written"):
        submit_group(dispatcher, [{"entrypoint": "a", "resources": {"cpu": 1}}], timeout_s=5, rendezvous=not_a_dir)
    assert dispatcher.ledger.jobs() == []
