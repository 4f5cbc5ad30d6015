"""Groups: several jobs, possibly on different clusters, that all run their commands or none does.

Every member goes through the launcher (`rayfleet.launcher`), which reserves the member's resources in its cluster and
then meets the other members at a rendezvous (a directory or an fsspec URI named by the group): no member runs its
command until every member has reserved, and if one cannot within ``timeout_s``, all withdraw. The protocol is in
docs/groups.md; the member's side is `rayfleet.launcher.settle`, the decision rule `rayfleet.launcher.next_action`.

This module is the dispatcher's side: validate every member before anything is submitted, submit them one by one
with the group's spec, abort the group when a member cannot be submitted, and read the group's decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rayfleet import launcher as launch
from rayfleet.errors import InvalidRequestError, RayfleetError
from rayfleet.jobs import JobHandle
from rayfleet.launcher import ABORT, GO, GroupDecision, Rendezvous, open_store
from rayfleet.resources import Gang, Resources
from rayfleet.states import JobState

if TYPE_CHECKING:
    from rayfleet.dispatch import Dispatcher, Submission

__all__ = ["DEFAULT_GROUP_TIMEOUT_S", "GroupHandle", "GroupMember", "open_group", "submit_group"]

log = logging.getLogger(__name__)

# How long each member's launcher waits, from its own start, for its reservation and then for every other member's.
# It must cover the time to submit every member and start their launchers (about 1-2 s each on an idle cluster).
DEFAULT_GROUP_TIMEOUT_S = 30.0
GROUPS_DIR = "groups"  # the default rendezvous root, beside the ledger file (local fleets)
MANIFEST = "group.json"  # written by the dispatcher into the group's rendezvous: its members' job ids
_LOOPBACK_NAMES = ("localhost",)


@dataclasses.dataclass(frozen=True)
class GroupMember:
    """One job of a group: what `Fleet.submit` takes, minus what the group decides (the reservation timeout).

    A member must reserve something (``resources`` or a ``gang``): its launcher holds that reservation while the
    group decides.

    Example:
        >>> GroupMember("python serve.py", resources={"cpu": 1}, cluster="cpu").cluster
        'cpu'
    """

    entrypoint: str
    resources: Resources | Mapping[str, Any] | None = None
    gang: Gang | Mapping[str, Any] | None = None
    labels: Mapping[str, str] | None = None
    cluster: str | None = None
    runtime_env: Mapping[str, Any] | None = None
    policy: str | None = None
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, value: GroupMember | Mapping[str, Any]) -> GroupMember:
        """A member from a `GroupMember` or a mapping of its fields.

        Raises:
            InvalidRequestError: not a mapping, an unknown key, or no entrypoint.
        """
        if isinstance(value, GroupMember):
            return value
        if not isinstance(value, Mapping):
            raise InvalidRequestError(
                f"{value!r} is not a group member", "give a mapping such as {'entrypoint': ..., 'resources': ...}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in value if k not in fields)
        if unknown:
            raise InvalidRequestError(f"unknown keys {unknown}", f"a member takes: {', '.join(sorted(fields))}")
        if "entrypoint" not in value:
            raise InvalidRequestError("no entrypoint", "give the shell command to run, e.g. 'python train.py'")
        return cls(**value)


def submit_group(
    dispatcher: Dispatcher,
    members: Sequence[GroupMember | Mapping[str, Any]],
    *,
    timeout_s: float = DEFAULT_GROUP_TIMEOUT_S,
    rendezvous: str | Path | None = None,
) -> GroupHandle:
    """Place and submit every member; none runs its command until all have reserved, or none runs at all.

    Every member is validated first: one bad member raises before anything is recorded or submitted. Then members
    are placed and submitted one at a time (each may go to a different cluster). If one cannot be placed or submitted,
    the group is aborted (the members already submitted withdraw without running) and that member's error is raised.

    Args:
        dispatcher: the fleet's dispatcher.
        members: `GroupMember` objects or mappings of their fields.
        timeout_s: how long each member's launcher waits, from its start, for its own reservation and then for the
            others'. A member that reaches it without a decision decides abort.
        rendezvous: where the members meet: a directory every member's cluster can reach, or an fsspec URI
            (``s3://bucket/prefix``; fsspec and its backend must be installed here and on the clusters). Default: the
            ``groups`` directory beside the ledger, when every cluster of the fleet is on this machine.

    Returns:
        A `GroupHandle`.

    Raises:
        InvalidRequestError: a bad member (the message names it), a bad timeout, or no usable rendezvous; nothing
            was submitted.
        NoCapacityError, ClusterError, ...: a member could not be placed or submitted; the group was aborted.

    Example:
        >>> group = submit_group(fleet._dispatcher, [                                       # doctest: +SKIP
        ...     {"entrypoint": "python server.py", "resources": {"gpu": 1}, "cluster": "east"},
        ...     {"entrypoint": "python client.py", "resources": {"cpu": 4}, "cluster": "west"},
        ... ], timeout_s=60)
        >>> group.wait(600), group.decision().outcome                                        # doctest: +SKIP
        ([<JobState.SUCCEEDED: 'SUCCEEDED'>, <JobState.SUCCEEDED: 'SUCCEEDED'>], 'go')
    """
    timeout = _timeout(timeout_s)
    subs = validate_members(dispatcher, members, timeout)
    root = rendezvous_root(dispatcher, rendezvous)
    group_id = f"rg-{uuid.uuid4().hex[:12]}"
    handle = GroupHandle(dispatcher, group_id, root, len(subs), timeout)
    try:
        handle._write_manifest()
    except Exception as e:  # before anything is submitted: the members could not meet there either
        raise InvalidRequestError(
            f"the rendezvous {root} cannot be written: {type(e).__name__}: {e}",
            "give a directory (or fsspec URI) that this machine and every cluster can write, with its credentials",
        ) from e
    for i, sub in enumerate(subs):
        spec = {"uri": root, "id": group_id, "member": i, "size": len(subs), "timeout_s": timeout}
        try:
            job_id = dispatcher.submit(sub.model_copy(update={"group": spec}))
        except Exception as e:
            why = str(getattr(e, "message", e)).splitlines()[0]
            handle._withdraw(f"member {i} could not be submitted: {why}")
            raise
        handle._job_ids.append(job_id)
        handle._write_manifest()
    return handle


def validate_members(
    dispatcher: Dispatcher, members: Sequence[GroupMember | Mapping[str, Any]], timeout_s: float
) -> list[Submission]:
    """Every member as a validated `Submission` (with the group's reservation timeout).

    Raises:
        InvalidRequestError: (or a subclass) naming the first bad member.
    """
    if isinstance(members, (str, bytes, Mapping)) or not isinstance(members, Sequence):
        raise InvalidRequestError(
            f"members={members!r} is not a list of members", "give a list of GroupMember objects or mappings"
        )
    if not members:
        raise InvalidRequestError("a group needs at least one member", "give a list of GroupMember objects")
    subs = []
    for i, value in enumerate(members):
        try:
            member = GroupMember.of(value)
            sub = dispatcher.validate(
                member.entrypoint,
                member.resources,
                runtime_env=member.runtime_env,
                labels=member.labels,
                cluster=member.cluster,
                policy=member.policy,
                metadata=member.metadata,
                gang=member.gang,
                start_timeout_s=timeout_s,
            )
            if sub.gang is None and sub.resources.is_empty:
                raise InvalidRequestError(
                    "asks for no resources",
                    "give it resources or a gang: its launcher holds that reservation while the group decides",
                )
        except InvalidRequestError as e:
            raise _about_member(e, i) from None
        subs.append(sub)
    return subs


def rendezvous_root(dispatcher: Dispatcher, rendezvous: str | Path | None) -> str:
    """Where the group's rendezvous directory goes (see `submit_group`).

    Raises:
        InvalidRequestError: no rendezvous was given and some cluster is not on this machine, or a URI needs fsspec
            and it is not installed.
    """
    if rendezvous is None:
        remote = sorted(c.name for c in dispatcher.clusters if not _on_this_machine(c.address))
        if remote:
            raise InvalidRequestError(
                f"clusters {remote} are not on this machine, so they cannot reach a local rendezvous directory",
                "pass rendezvous='s3://bucket/prefix' (any fsspec URI the clusters can reach) or a shared directory",
            )
        return str(Path(dispatcher.ledger.path).parent / GROUPS_DIR)
    root = str(rendezvous)
    if not root.strip():
        raise InvalidRequestError("the rendezvous is empty", "give a directory or an fsspec URI, or leave it out")
    if launch.is_remote_uri(root) and importlib.util.find_spec("fsspec") is None:
        raise InvalidRequestError(
            f"the rendezvous {root} is a URI, which needs fsspec", "pip install fsspec and its backend (e.g. s3fs)"
        )
    return root


class GroupHandle:
    """A group submitted through a fleet: its members, its decision, waiting and stopping.

    Attributes:
        id: the group's id (``rg-<12 hex>``), also the name of its rendezvous directory.
        uri: the rendezvous root.
        size: the number of members.
    """

    def __init__(
        self, dispatcher: Dispatcher, group_id: str, uri: str, size: int, timeout_s: float, job_ids: Sequence[str] = ()
    ) -> None:
        self._dispatcher = dispatcher
        self.id, self.uri, self.size, self.timeout_s = group_id, uri, size, timeout_s
        self._job_ids = list(job_ids)
        self._rendezvous = Rendezvous(open_store(uri, group_id), size, timeout_s)

    def __repr__(self) -> str:
        decision = self.decision()
        return f"GroupHandle(id={self.id!r}, size={self.size}, decision={decision.outcome if decision else None!r})"

    @property
    def members(self) -> list[JobHandle]:
        """The members submitted, in order (all of them unless `submit_group` raised)."""
        return [JobHandle(self._dispatcher, job_id) for job_id in self._job_ids]

    def decision(self) -> GroupDecision | None:
        """The group's decision (``outcome`` ``"go"`` or ``"abort"``, ``by``, ``reason``), or None while undecided."""
        return self._rendezvous.decision()

    def reservations(self) -> dict[int, dict[str, Any]]:
        """Member index -> what its launcher wrote when it reserved (``at``: wall time, ``placement_group`` ...)."""
        return self._rendezvous.reserved()

    def status(self) -> list[JobState]:
        """Ask every member's cluster for its state (recording changes). A member that ended before the group
        decided (stopped, crashed, could not reach the rendezvous) makes the group abort: it will not run."""
        states = [self._dispatcher.refresh(job_id).state for job_id in self._job_ids]
        ended = [(i, s) for i, s in enumerate(states) if s.is_terminal()]
        if ended and self.decision() is None:
            i, state = ended[0]
            self._withdraw(f"member {i} ended ({state.value}) before the group's decision")
        return states

    def wait(self, timeout: float | None = None) -> list[JobState]:
        """Block until every member is terminal; return their states in order.

        Raises:
            TimeoutError: some member is still active after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while True:
            states = self.status()
            if all(s.is_terminal() for s in states):
                return states
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"group {self.id} is still running after {timeout} s: {[s.value for s in states]}")
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, 1.0)

    def stop(self) -> list[bool]:
        """Abort the group if it has not decided yet (no member will run), then stop every member.

        Returns:
            Per member, whether its cluster accepted the stop.
        """
        try:
            self._rendezvous.propose(ABORT, "stopped by the user", "dispatcher")
        except Exception as e:
            log.warning("group %s: cannot write the abort (%s); stopping its members", self.id, e)
        return [self._stop_member(job_id) for job_id in self._job_ids]

    # ----- internal -------------------------------------------------------------------------------------------------

    def _withdraw(self, reason: str) -> GroupDecision | None:
        """Decide abort (unless the group has decided already); if abort is in force, stop the members submitted."""
        try:
            decision = self._rendezvous.propose(ABORT, reason, "dispatcher")
        except Exception as e:  # the members withdraw at their deadlines anyway; stopping them is faster
            log.warning("group %s: cannot write the abort (%s); stopping its members", self.id, e)
            decision = None
        if decision is not None and decision.outcome == GO:
            log.warning("group %s: %s, but it had already decided go", self.id, reason)
            return decision
        log.info("group %s aborted: %s", self.id, reason)
        for job_id in self._job_ids:
            self._stop_member(job_id)
        return decision

    def _stop_member(self, job_id: str) -> bool:
        with contextlib.suppress(RayfleetError):
            return self._dispatcher.stop(job_id)
        return False

    def _write_manifest(self) -> None:
        manifest = {"id": self.id, "size": self.size, "timeout_s": self.timeout_s, "members": self._job_ids}
        self._rendezvous.store.write(MANIFEST, json.dumps(manifest).encode())


def open_group(dispatcher: Dispatcher, group_id: str, *, rendezvous: str | Path | None = None) -> GroupHandle:
    """The handle of a group submitted earlier (by this process or another), from its rendezvous manifest.

    Raises:
        InvalidRequestError: no such group under the rendezvous root.
    """
    root = rendezvous_root(dispatcher, rendezvous)
    raw = open_store(root, group_id).read(MANIFEST)
    if raw is None:
        raise InvalidRequestError(f"no group {group_id} under {root}", "check the group id and the rendezvous")
    manifest = json.loads(raw)
    return GroupHandle(dispatcher, group_id, root, manifest["size"], manifest["timeout_s"], manifest["members"])


def _timeout(timeout_s: Any) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise InvalidRequestError(f"timeout_s={timeout_s!r}", "give the group's timeout as a number of seconds > 0")
    return float(timeout_s)


def _about_member(error: InvalidRequestError, index: int) -> InvalidRequestError:
    """The same error, its message prefixed with the member it is about."""
    try:
        return type(error)(f"group member {index}: {error.message}", error.hint)
    except TypeError:  # a subclass with another constructor: keep it as it is
        return error


def _on_this_machine(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
