"""Groups: no member runs its command until every member of the group has reserved. The stores a group's
rendezvous lives in (a directory, or an fsspec URI), its decision rule (`next_action`) and a member's side
(`settle`)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import (
    DEFAULT_GROUP_POLL_S,
    is_remote_uri,
)

GO, ABORT = "go", "abort"
# What a member does next (`next_action`): obey a decision, propose one, or wait.
PROPOSE_GO, PROPOSE_ABORT, WAIT, WITHDRAW = "propose-go", "propose-abort", "wait", "withdraw"
DECISION_FILE = "decision"
RESERVED_PREFIX = "reserved-"


class RendezvousError(RuntimeError):
    """The group's rendezvous storage could not be read or written (for longer than the group can wait)."""


def next_action(decision: str | None, reserved: Sequence[int] | set[int], size: int, me: int, expired: bool) -> str:
    """The group's rule, for member ``me`` of ``size``: what to do now.

    Args:
        decision: the group's decision so far (``"go"``, ``"abort"``) or None.
        reserved: the members whose ``reserved-<i>`` exists.
        expired: whether this member's deadline has passed.

    Returns:
        ``"go"`` / ``"abort"``: obey the decision. ``"propose-go"``: every member is reserved, try to decide go.
        ``"propose-abort"``: no decision and the deadline passed, try to decide abort. ``"wait"``: look again soon.
        ``"withdraw"``: the group went without this member's reservation (the protocol makes that impossible; a member
        that sees it must not run).

    Example:
        >>> next_action(None, {0, 1}, 2, 0, expired=False), next_action(None, {0}, 2, 0, expired=True)
        ('propose-go', 'propose-abort')
    """
    if decision == ABORT:
        return ABORT
    if decision == GO:
        return GO if me in reserved else (WITHDRAW if expired else WAIT)
    if all(i in reserved for i in range(size)):
        return PROPOSE_GO
    return PROPOSE_ABORT if expired else WAIT


@dataclass(frozen=True)
class GroupDecision:
    """The group's one decision. ``by`` says who made it (``member <i>`` or ``dispatcher``), ``at`` is wall time."""

    outcome: str
    by: str
    reason: str
    at: float

    def to_bytes(self) -> bytes:
        return json.dumps({"decision": self.outcome, "by": self.by, "reason": self.reason, "at": self.at}).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> GroupDecision | None:
        """None while there is no decision (or it is still being written); an unreadable one counts as abort, which
        never runs anything."""
        if not data:
            return None
        try:
            raw = json.loads(data)
            if raw["decision"] in (GO, ABORT):
                return cls(raw["decision"], str(raw.get("by", "?")), str(raw.get("reason", "")), float(raw["at"]))
        except (ValueError, KeyError, TypeError):
            pass
        return cls(ABORT, "?", f"the decision file is unreadable: {data[:80]!r}", 0.0)


class LocalStore:
    """A rendezvous directory on a filesystem every member can reach: this machine's (the local fleet) or a shared
    mount. The decision's exclusive create is a hard link of a complete temporary file (atomic, and never seen half
    written); where links are not supported, ``O_CREAT | O_EXCL``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r})"

    def _temp(self, data: bytes) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        temp = self.path / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def write(self, name: str, data: bytes) -> None:
        """Write (or replace) ``name`` atomically."""
        os.replace(self._temp(data), self.path / name)

    def create(self, name: str, data: bytes) -> bool:
        """Create ``name`` only if it does not exist; False when it does."""
        temp = self._temp(data)
        try:
            os.link(temp, self.path / name)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: O_EXCL (a reader may briefly see it empty, and waits)
            try:
                fd = os.open(self.path / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.path) if not n.startswith(".")]
        except FileNotFoundError:
            return []


class FsspecStore:
    """A rendezvous under an fsspec URI (``s3://bucket/prefix``, ``gs://...``, ``memory://...``). fsspec (and the
    backend's package) must be installed where the URI is used; it is imported only here. The decision's exclusive
    create is ``pipe_file(mode="create")``: atomic where the backend turns it into a conditional write (s3fs:
    ``If-None-Match: *``; gcsfs: ``ifGenerationMatch=0``), a check-then-write that two writers can race elsewhere."""

    def __init__(self, uri: str) -> None:
        fsspec = importlib.import_module("fsspec")  # optional: the launcher needs it only for URIs with a scheme
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri)

    def __repr__(self) -> str:
        return f"FsspecStore({self.uri!r})"

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def write(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def create(self, name: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._path(name), data, mode="create")
        except FileExistsError:
            return False
        return True

    def read(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        self.fs.invalidate_cache(self.root)  # listings are cached by some backends: members must see new files
        try:
            return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []


def open_store(uri: str, group_id: str) -> LocalStore | FsspecStore:
    """The rendezvous of group ``group_id`` under ``uri``: a local directory (a path, or ``file://``), or an fsspec
    location (a URI with another scheme)."""
    if is_remote_uri(uri):
        return FsspecStore(f"{uri.rstrip('/')}/{group_id}")
    return LocalStore(Path(uri.removeprefix("file://")).expanduser() / group_id)


class Rendezvous:
    """One group's rendezvous, as seen by a member or the dispatcher: who has reserved, and the one decision.

    Args:
        store: where the group's files are (`LocalStore` or `FsspecStore`).
        size: the number of members.
        timeout_s: how long each member waits from its start (for messages).
    """

    def __init__(self, store: Any, size: int, timeout_s: float) -> None:
        self.store, self.size, self.timeout_s = store, size, timeout_s

    def decision(self) -> GroupDecision | None:
        return GroupDecision.from_bytes(self.store.read(DECISION_FILE))

    def reserved(self) -> dict[int, dict[str, Any]]:
        """Member index -> what it wrote when it reserved."""
        out = {}
        for name in self.store.names():
            index = name[len(RESERVED_PREFIX) :]
            if name.startswith(RESERVED_PREFIX) and index.isdigit() and int(index) < self.size:
                with contextlib.suppress(ValueError, TypeError):
                    out[int(index)] = json.loads(self.store.read(name) or b"{}")
        return out

    def announce(self, member: int, info: Mapping[str, Any]) -> None:
        """Member ``member`` holds its reservation (and keeps it until the decision)."""
        self.store.write(f"{RESERVED_PREFIX}{member}", json.dumps({"member": member, **info}).encode())

    def propose(self, outcome: str, reason: str, by: str) -> GroupDecision | None:
        """Try to make the decision; return the one in force (ours, or the one that won the race)."""
        self.store.create(DECISION_FILE, GroupDecision(outcome, by, reason, time.time()).to_bytes())
        return self.decision()

    def step(self, member: int, expired: bool) -> GroupDecision | None:
        """One turn of member ``member``'s rule (`next_action`): the decision to obey, or None to look again."""
        decision = self.decision()
        reserved = set(self.reserved()) if decision is None or decision.outcome == GO else set()
        action = next_action(decision.outcome if decision else None, reserved, self.size, member, expired)
        if action in (GO, ABORT):
            return decision
        if action == WITHDRAW:
            return GroupDecision(ABORT, f"member {member}", "the group went without this member's reservation", 0.0)
        if action == PROPOSE_GO:
            return self.propose(GO, f"all {self.size} members reserved", f"member {member}")
        if action == PROPOSE_ABORT:
            missing = [i for i in range(self.size) if i not in reserved]
            return self.propose(
                ABORT, f"member(s) {missing} not reserved within {self.timeout_s:g} s", f"member {member}"
            )
        return None


def settle(
    rendezvous: Rendezvous,
    member: int,
    wait_ready: Callable[[float], bool],
    *,
    deadline: float,
    info: Callable[[], Mapping[str, Any]] = dict,
    poll_s: float = DEFAULT_GROUP_POLL_S,
    grace_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[GroupDecision, bool]:
    """Member ``member``'s side of the protocol, from "placement group created" to the group's decision.

    Waits for its reservation (``wait_ready(t)``: whether it became ready within ``t`` seconds), then writes
    ``reserved-<member>`` (with ``info()``), and follows `Rendezvous.step` until there is a decision. Storage errors
    are retried until ``deadline + grace_s`` (default: the timeout again).

    Returns:
        The decision, and whether this member announced its reservation.

    Raises:
        RendezvousError: the storage kept failing past the grace period: the member must withdraw without running.
    """
    grace = rendezvous.timeout_s if grace_s is None else grace_s
    ready = announced = False
    details: dict[str, Any] | None = None
    while True:
        if not ready:
            ready = wait_ready(max(0.0, min(poll_s, deadline - clock())))
            if ready:
                details = {"at": time.time(), **info()}
        try:
            if details is not None and not announced:
                rendezvous.announce(member, details)
                announced = True
            decision = rendezvous.step(member, expired=clock() >= deadline)
            if decision is not None:
                return decision, announced
        except Exception as e:
            if clock() >= deadline + grace:
                raise RendezvousError(f"the group's rendezvous {rendezvous.store!r} failed: {e}") from e
        if ready or clock() >= deadline:
            sleep(poll_s)
