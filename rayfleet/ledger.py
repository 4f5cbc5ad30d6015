"""The ledger: a SQLite file recording every job, attempt and state change, before the world changes.

Transitions are append-only and checked against the one state machine (`rayfleet.states`), inside an immediate
transaction, so two processes sharing the file cannot both move an attempt, and a terminal state is final.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayfleet.errors import JobNotFoundError, LeaseLostError, LedgerError
from rayfleet.resources import Resources
from rayfleet.states import TERMINAL, JobState, can_move

# the states in which an attempt may hold resources its cluster's probes do not show yet
HOLDING_STATES = (JobState.PLACED, JobState.SUBMITTED, JobState.STARTING, JobState.RUNNING)

LEDGER_ENV = "RAYFLEET_LEDGER"

MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, attempts, append-only transitions
    """
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        entrypoint  TEXT NOT NULL,
        request     TEXT NOT NULL,            -- JSON: resources, labels, cluster pin, policy
        runtime_env TEXT,                     -- JSON, as given
        metadata    TEXT,                     -- JSON, as given
        parent_id   TEXT
    );
    CREATE TABLE attempts (
        submission_id TEXT PRIMARY KEY,
        job_id        TEXT NOT NULL REFERENCES jobs(id),
        n             INTEGER NOT NULL,
        cluster       TEXT NOT NULL,
        node_id       TEXT,
        accelerator   TEXT,
        created_at    REAL NOT NULL,
        UNIQUE (job_id, n)
    );
    CREATE TABLE transitions (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id        TEXT NOT NULL REFERENCES jobs(id),
        submission_id TEXT REFERENCES attempts(submission_id),
        state         TEXT NOT NULL,
        at            REAL NOT NULL,
        detail        TEXT
    );
    CREATE INDEX transitions_by_attempt ON transitions (submission_id, seq);
    CREATE INDEX transitions_by_job ON transitions (job_id, seq);
    CREATE INDEX jobs_by_time ON jobs (created_at);
    CREATE TRIGGER transitions_append_only_u BEFORE UPDATE ON transitions
        BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
    CREATE TRIGGER transitions_append_only_d BEFORE DELETE ON transitions
        BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
    """,
    # 2: clusters created on demand, and the logs of jobs saved before their cluster is deleted
    """
    CREATE TABLE managed_clusters (
        name         TEXT PRIMARY KEY,
        provisioner  TEXT NOT NULL,
        template     TEXT NOT NULL,
        namespace    TEXT NOT NULL DEFAULT '',
        state        TEXT NOT NULL,           -- CREATING, READY, DELETED, FAILED
        address      TEXT,
        labels       TEXT,                    -- JSON
        idle_ttl_s   REAL NOT NULL,
        created_at   REAL NOT NULL,
        ready_at     REAL,
        last_busy_at REAL,
        ended_at     REAL,
        detail       TEXT
    );
    CREATE TABLE saved_logs (
        submission_id TEXT PRIMARY KEY REFERENCES attempts(submission_id),
        saved_at      REAL NOT NULL,
        logs          TEXT NOT NULL
    );
    """,
    # 3: the Ray session an attempt was submitted into (a new session proves the attempt lost), and lookups by
    # cluster and by parent (stopping a job stops its children)
    """
    ALTER TABLE attempts ADD COLUMN session TEXT;
    CREATE INDEX attempts_by_cluster ON attempts (cluster);
    CREATE INDEX jobs_by_parent ON jobs (parent_id);
    """,
    # 4: the cluster a PROVISIONING job waits for, and when a managed cluster's creation was asked of its provisioner
    # (a CREATING record never asked was left by a creator that stopped in between: the next loop asks)
    """
    ALTER TABLE transitions ADD COLUMN cluster TEXT;
    ALTER TABLE managed_clusters ADD COLUMN asked_at REAL;
    """,
    # 5: holds follow the attempt: what an attempt holds until a probe shows it (its bundles, the node each was
    # placed on and that node's usage then), the latest time it may still be reserving, and its reservation once
    # its launcher reported it (when, and the node of each bundle)
    """
    ALTER TABLE attempts ADD COLUMN bundles TEXT;
    ALTER TABLE attempts ADD COLUMN hold_window_s REAL;
    ALTER TABLE attempts ADD COLUMN hold_until REAL;
    CREATE INDEX attempts_by_hold ON attempts (hold_until);
    CREATE TABLE reservations (
        submission_id TEXT PRIMARY KEY REFERENCES attempts(submission_id),
        reserved_at   REAL NOT NULL,
        nodes         TEXT NOT NULL       -- JSON: the node of each bundle, in bundle order
    );
    """,
    # 6: leases: one holder at a time of a duty (the dispatch loop), with an epoch that grows with each new holder and
    # an expiry; a writer acting under a lease has every transaction checked against it (`Ledger.fenced`)
    """
    CREATE TABLE leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
)


def default_path() -> Path:
    """``$RAYFLEET_LEDGER``, else ``$XDG_DATA_HOME/rayfleet/ledger.db`` (``~/.local/share`` by default)."""
    if env := os.environ.get(LEDGER_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rayfleet" / "ledger.db"


@dataclass(frozen=True)
class AttemptRecord:
    """One Ray submission of a job, as the ledger knows it."""

    submission_id: str
    job_id: str
    n: int
    cluster: str
    node_id: str | None
    accelerator: str | None
    created_at: float
    state: JobState
    updated_at: float
    detail: str | None = None
    session: str | None = None  # the cluster's Ray session when it was submitted
    seq: int = 0  # the ledger's sequence number of its latest transition
    reserved_at: float | None = None  # when its launcher was seen holding its reservation (wall clock)


@dataclass(frozen=True)
class HeldAttempt:
    """An attempt that may hold resources its cluster's probes do not show yet (`Ledger.holding`).

    Attributes:
        submission_id: the attempt.
        cluster: where it was placed.
        bundles: what it holds: ``{"node": id or None, "resources": {...}, "baseline": {...}}`` per bundle.
        hold_until: the latest time (ledger clock) it may still be reserving: its ``hold_window_s`` (the start
            timeout and the slack ``hold_ttl_s``) after it was placed, renewed when it is seen submitted and starting.
        state: its state now.
        state_at: when it entered that state (ledger clock).
        reserved_at: when its reservation was seen (wall clock), if it was.
        reserved_nodes: the node of each bundle once reserved.
    """

    submission_id: str
    cluster: str
    bundles: tuple[Mapping[str, Any], ...]
    hold_until: float
    state: JobState
    state_at: float
    reserved_at: float | None = None
    reserved_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobRecord:
    """A rayfleet job: what was asked, and its attempts (oldest first)."""

    id: str
    created_at: float
    entrypoint: str
    request: Mapping[str, Any]
    runtime_env: Mapping[str, Any] | None
    metadata: Mapping[str, Any] | None
    parent_id: str | None
    attempts: tuple[AttemptRecord, ...] = ()
    job_state: JobState = JobState.QUEUED
    detail: str | None = None
    job_seq: int = 0  # the sequence number of the job's own latest transition (QUEUED, a refusal, a verdict)
    awaits: str | None = None  # the cluster the job's own latest state (PROVISIONING) waits for

    @property
    def resources(self) -> Resources:
        return Resources(**self.request.get("resources", {}))

    @property
    def last_attempt(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def state(self) -> JobState:
        """The newer of the job's own latest state (QUEUED again after a failover found no room, FAILED after a
        loss that may not be retried) and its newest attempt's state."""
        last = self.last_attempt
        return last.state if last is not None and last.seq > self.job_seq else self.job_state

    @property
    def reason(self) -> str | None:
        """What the latest state says about itself."""
        last = self.last_attempt
        return last.detail if last is not None and last.seq > self.job_seq else self.detail

    @property
    def priority(self) -> int:
        return int(self.request.get("priority", 0))

    @property
    def owner(self) -> str:
        return str(self.request.get("owner") or "")


class AttemptConflict(Exception):
    """Another process placed the job's next attempt first, or the job was stopped or finished meanwhile."""


class _Rollback(Exception):
    """Raised inside `Ledger._tx` to undo the transaction without an error."""


@dataclass(frozen=True)
class NewCluster:
    """A managed cluster to record before it is created: its name, where it comes from, and the provisioner's cap
    of live clusters (None: no cap)."""

    name: str
    provisioner: str
    template: str
    namespace: str = ""
    idle_ttl_s: float = 300.0
    cap: int | None = None


@dataclass(frozen=True)
class Lease:
    """A duty held by one process until ``expires_at`` (the ledger's clock); ``epoch`` grows with every new holder,
    so a writer that lost the lease and comes back is refused (`Ledger.fenced`)."""

    name: str
    holder: str
    epoch: int
    expires_at: float


@dataclass
class Ledger:
    """The durable record of jobs on this machine.

    Args:
        path: the SQLite file; created (readable by the user only) with its directory if missing.
        clock: wall-clock seconds stamped on records (tests pass one they move by hand).

    Example:
        >>> ledger = Ledger("/tmp/example-ledger.db")       # doctest: +SKIP
        >>> ledger.jobs(limit=10)                            # doctest: +SKIP
    """

    path: Path | str | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False)  # the time stamped on every record
    _conn: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.RLock = field(init=False, repr=False, default_factory=threading.RLock)
    _fence: threading.local = field(init=False, repr=False, default_factory=threading.local)  # per thread: its lease

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser() if self.path else default_path()
        self._conn = self._open(self.path)

    # ----- opening and migrations ---------------------------------------------------------------------------------

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        try:
            if not path.parent.exists():
                path.parent.mkdir(parents=True, mode=0o700)
            if not path.exists():  # create it private before SQLite does; -wal/-shm files inherit the mode
                os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):  # before anything changes the file
                conn.close()
                raise LedgerError(
                    f"the ledger at {path} has schema version {version}, newer than this rayfleet knows "
                    f"({len(MIGRATIONS)})",
                    "upgrade rayfleet, or point it at another ledger file",
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes, fsync at checkpoints
            conn.execute("PRAGMA foreign_keys=ON")
        except (OSError, ValueError, sqlite3.Error) as e:  # ValueError: a NUL byte in the path
            raise LedgerError(
                f"cannot open the ledger at {path}: {e}",
                f"give a writable file path (Fleet(ledger=...), ledger: in the fleet file, or ${LEDGER_ENV})",
            ) from None
        for number in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == number:  # another process may have migrated
                    for statement in MIGRATIONS[number].split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return conn

    @property
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if (lease := getattr(self._fence, "lease", None)) is not None:
                    self._check(self._conn, lease)
                yield self._conn
            except _Rollback:
                self._conn.execute("ROLLBACK")
                return
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ----- leases -------------------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease ``name`` for ``ttl_s`` seconds, or renew it if ``holder`` has it. Returns None while another
        holder's lease has not expired. A new holder (or the same one after its lease expired) gets a new epoch."""
        taken = None
        with self._tx() as tx:
            now = self.clock()
            row = tx.execute("SELECT holder, epoch, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            if row is not None and row[2] > now and row[0] != holder:
                raise _Rollback  # another holder's lease runs
            epoch = row[1] if row is not None and row[0] == holder and row[2] > now else (row[1] + 1 if row else 1)
            tx.execute(
                "INSERT INTO leases VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                "epoch = excluded.epoch, expires_at = excluded.expires_at",
                (name, holder, epoch, now + ttl_s),
            )
            taken = Lease(name, holder, epoch, now + ttl_s)
        return taken

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend a lease this process holds. Raises `LeaseLostError` when it expired or another holder took it."""
        with self._tx() as tx:
            self._check(tx, lease)
            now = self.clock()
            tx.execute("UPDATE leases SET expires_at = ? WHERE name = ?", (now + ttl_s, lease.name))
        return Lease(lease.name, lease.holder, lease.epoch, now + ttl_s)

    def release_lease(self, lease: Lease) -> None:
        """Give a lease up (it expires now), if this process still holds it."""
        with self._tx() as tx:
            tx.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND epoch = ?",
                (self.clock(), lease.name, lease.holder, lease.epoch),
            )

    def lease_holder(self, name: str) -> Lease | None:
        """Who holds the lease ``name`` (even if it has expired), or None if nobody ever took it."""
        with self._lock:
            row = self._conn.execute("SELECT holder, epoch, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
        return Lease(name, *row) if row else None

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[None]:
        """Within this block, every write of this thread first checks that ``lease`` is still held (same holder and
        epoch, not expired) and raises `LeaseLostError` otherwise: a dispatcher paused past its lease, whose duty
        another took over, cannot act on what that other one now owns."""
        self._fence.lease = lease
        try:
            yield
        finally:
            self._fence.lease = None

    def _check(self, tx: sqlite3.Connection, lease: Lease) -> None:
        row = tx.execute("SELECT holder, epoch, expires_at FROM leases WHERE name = ?", (lease.name,)).fetchone()
        if row is not None and (row[0], row[1]) == (lease.holder, lease.epoch) and row[2] > self.clock():
            return
        if row is not None and (row[0], row[1]) == (lease.holder, lease.epoch):
            why = f"it expired {self.clock() - row[2]:.1f} s ago, unrenewed"
        else:
            why = "nobody has it now" if row is None else f"{row[0]} (epoch {row[1]}) has it now"
        raise LeaseLostError(
            f"the {lease.name} lease of {lease.holder} (epoch {lease.epoch}) is no longer held: {why}",
            "nothing to undo: the write was refused; the dispatcher that holds the lease carries on",
        )

    # ----- writes -------------------------------------------------------------------------------------------------

    def add_job(
        self,
        job_id: str,
        *,
        entrypoint: str,
        request: Mapping[str, Any],
        runtime_env: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        parent_id: str | None = None,
        attempt: Mapping[str, Any] | None = None,
        detail: str | None = None,
    ) -> None:
        """Record a new job, QUEUED (``detail`` says why), or with its first attempt PLACED (``attempt``:
        submission_id, cluster, ...)."""
        now = self.clock()
        with self._tx() as tx:
            self._insert_job(tx, job_id, now, entrypoint, request, runtime_env, metadata, parent_id)
            if attempt is None:
                _transition(tx, job_id, None, JobState.QUEUED, now, detail)
            else:
                self._insert_attempt(tx, job_id, attempt, now)

    @staticmethod
    def _insert_job(tx: sqlite3.Connection, job_id: str, now: float, entrypoint: str, request: Mapping[str, Any],
                    runtime_env: Any, metadata: Any, parent_id: str | None) -> None:  # fmt: skip
        tx.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, now, entrypoint, _dump(request), _dump(runtime_env), _dump(metadata), parent_id),
        )

    def add_provisioning(
        self,
        job_id: str,
        cluster: NewCluster | str,
        detail: str,
        *,
        job: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record that a job waits for a new cluster, and the cluster (CREATING), in one transaction and before the
        provisioner is asked: a crash at any point after it loses neither, and the next loop carries both on.

        Args:
            job_id: the job.
            cluster: the cluster to create, or the name of one being created (CREATING) to wait for as well.
            detail: why the job waits for it.
            job: a new job's fields (those of `add_job`: entrypoint, request, ...); None for a job already recorded,
                which must be QUEUED or PROVISIONING, or have a failed or lost newest attempt.

        Returns:
            False, with nothing recorded, when the provisioner is at its cap of live clusters (or the named cluster
            is no longer being created).

        Raises:
            AttemptConflict: the job was placed, stopped or finished by another process meanwhile.
        """
        now = self.clock()
        with self._tx() as tx:
            if job is not None:
                self._insert_job(tx, job_id, now, **job)
            else:
                state, _ = self._effective(tx, job_id)
                if state not in (JobState.QUEUED, JobState.PROVISIONING, JobState.FAILED, JobState.LOST):
                    raise AttemptConflict(f"job {job_id} is {state.value}: not provisioning a cluster for it")
            if isinstance(cluster, str):  # one being created already
                row = tx.execute("SELECT state FROM managed_clusters WHERE name = ?", (cluster,)).fetchone()
                recorded = row is not None and row[0] == "CREATING"
            else:
                recorded = self._insert_managed(tx, cluster, now)
            if not recorded:
                if job is not None:
                    raise _Rollback
                return False
            name = cluster if isinstance(cluster, str) else cluster.name
            _transition(tx, job_id, None, JobState.PROVISIONING, now, detail, cluster=name)
            return True

    def add_attempt(self, job_id: str, attempt: Mapping[str, Any], *, replacing_unknown: bool = False) -> None:
        """Record the next attempt of a job, PLACED on its cluster, before it is submitted.

        Only one process can do this for a given job and turn: the job must be QUEUED, or its newest attempt must
        have failed or been lost (or be UNKNOWN, with ``replacing_unknown``: at-least-once), and ``n`` must be the
        next number.

        Raises:
            AttemptConflict: another process placed it first, or the job was stopped or finished meanwhile.
        """
        with self._tx() as tx:
            state, last_n = self._effective(tx, job_id)
            movable = {JobState.QUEUED, JobState.PROVISIONING, JobState.FAILED, JobState.LOST} | (
                {JobState.UNKNOWN} if replacing_unknown else set()
            )
            if state not in movable or attempt["n"] != last_n + 1:
                raise AttemptConflict(f"job {job_id} is {state.value} with {last_n} attempts: not placing again")
            try:
                self._insert_attempt(tx, job_id, attempt, self.clock())
            except sqlite3.IntegrityError as e:
                raise AttemptConflict(f"attempt {attempt['n']} of job {job_id} exists: {e}") from None

    def requeue(self, job_id: str, detail: str) -> bool:
        """Put a job whose newest attempt failed or was lost, or whose cluster could not be created, back in the
        queue (the dispatch loop places it). Returns False if it is not in such a state (another process acted
        first, or it was stopped)."""
        with self._tx() as tx:
            state, last_n = self._effective(tx, job_id)
            if state is not JobState.PROVISIONING and (last_n == 0 or state not in (JobState.FAILED, JobState.LOST)):
                return False
            _transition(tx, job_id, None, JobState.QUEUED, self.clock(), detail)
            return True

    @staticmethod
    def _effective(tx: sqlite3.Connection, job_id: str) -> tuple[JobState, int]:
        """(the job's state now, the number of its newest attempt or 0). Raises `JobNotFoundError`."""
        own = tx.execute(
            "SELECT state, seq FROM transitions WHERE job_id = ? AND submission_id IS NULL ORDER BY seq DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        last = tx.execute(
            "SELECT a.n, t.state, t.seq FROM attempts a JOIN transitions t ON t.seq = "
            "(SELECT MAX(seq) FROM transitions WHERE submission_id = a.submission_id) "
            "WHERE a.job_id = ? ORDER BY a.n DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        if own is None and last is None:
            if tx.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise JobNotFoundError(f"no job {job_id!r} in the ledger", "check the id with 'rayfleet jobs'")
            return JobState.QUEUED, 0
        if last is None:
            return JobState(own[0]), 0
        if own is not None and own[1] > last[2]:
            return JobState(own[0]), last[0]
        return JobState(last[1]), last[0]

    @staticmethod
    def _insert_attempt(tx: sqlite3.Connection, job_id: str, attempt: Mapping[str, Any], now: float) -> None:
        tx.execute(
            "INSERT INTO attempts (submission_id, job_id, n, cluster, node_id, accelerator, created_at, session, "
            "bundles, hold_window_s, hold_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                attempt["submission_id"],
                job_id,
                attempt["n"],
                attempt["cluster"],
                attempt.get("node_id"),
                attempt.get("accelerator"),
                now,
                attempt.get("session"),
                _dump(attempt.get("bundles")),
                (window := attempt.get("hold_window_s")),
                None if window is None else now + window,
            ),
        )
        _transition(tx, job_id, attempt["submission_id"], JobState.PLACED, now, attempt.get("detail"))

    def record(self, submission_id: str, state: JobState, detail: str | None = None) -> bool:
        """Move an attempt to ``state`` if the state machine allows it.

        Returns:
            True if the state changed; False if it was already there, or the move is not allowed (a terminal state
            is final: a late or stale observation never undoes it).

        Raises:
            JobNotFoundError: no such attempt.
        """
        with self._tx() as tx:
            row = tx.execute(
                "SELECT a.job_id, t.state FROM attempts a LEFT JOIN transitions t ON t.seq = "
                "(SELECT MAX(seq) FROM transitions WHERE submission_id = a.submission_id) "
                "WHERE a.submission_id = ?",
                (submission_id,),
            ).fetchone()
            if row is None:
                raise JobNotFoundError(
                    f"no attempt {submission_id!r} in the ledger", "check the id with 'rayfleet jobs'"
                )
            job_id, old = row[0], JobState(row[1]) if row[1] else None
            if old == state or not can_move(old, state):
                return False
            now = self.clock()
            _transition(tx, job_id, submission_id, state, now, detail)
            if state in (JobState.SUBMITTED, JobState.STARTING):  # each step of the start renews the hold's bound
                tx.execute(
                    "UPDATE attempts SET hold_until = MAX(hold_until, ? + hold_window_s) "
                    "WHERE submission_id = ? AND hold_window_s IS NOT NULL",
                    (now, submission_id),
                )
            return True

    def record_job(self, job_id: str, state: JobState, detail: str | None = None) -> bool:
        """Record a state of the job itself: FAILED or STOPPED while QUEUED or PROVISIONING (never placed, timed
        out, cancelled), or FAILED after its attempt was LOST and may not be retried. Returns whether the state
        changed."""
        with self._tx() as tx:
            old, _ = self._effective(tx, job_id)
            verdict = old is JobState.LOST and state is JobState.FAILED  # a loss that may not be retried
            waiting = old in (JobState.QUEUED, JobState.PROVISIONING) and state in (JobState.FAILED, JobState.STOPPED)
            if not (waiting or verdict):
                return False
            _transition(tx, job_id, None, state, self.clock(), detail)
            return True

    # ----- managed clusters and saved logs -------------------------------------------------------------------------

    def add_managed(
        self,
        name: str,
        *,
        provisioner: str,
        template: str,
        namespace: str,
        idle_ttl_s: float,
        cap: int | None = None,
    ) -> bool:
        """Record a cluster about to be created (CREATING): before the infrastructure is asked, so none is lost.

        With a ``cap``, only while its provisioner has fewer than ``cap`` clusters CREATING or READY, counted in the
        same transaction, so two threads or processes creating at once cannot both pass the cap. Returns whether it
        was recorded.
        """
        cluster = NewCluster(name, provisioner, template, namespace, idle_ttl_s, cap)
        with self._tx() as tx:
            return self._insert_managed(tx, cluster, self.clock())

    @staticmethod
    def _insert_managed(tx: sqlite3.Connection, cluster: NewCluster, now: float) -> bool:
        if cluster.cap is not None:
            (live,) = tx.execute(
                "SELECT COUNT(*) FROM managed_clusters WHERE provisioner = ? AND state IN ('CREATING', 'READY')",
                (cluster.provisioner,),
            ).fetchone()
            if live >= cluster.cap:
                return False
        tx.execute(
            "INSERT INTO managed_clusters (name, provisioner, template, namespace, state, idle_ttl_s, created_at) "
            "VALUES (?, ?, ?, ?, 'CREATING', ?, ?)",
            (cluster.name, cluster.provisioner, cluster.template, cluster.namespace, cluster.idle_ttl_s, now),
        )
        return True

    def update_managed(self, name: str, **fields: Any) -> None:
        """Change a managed cluster's state, address, labels, last_busy_at, ended_at or detail."""
        allowed = {"state", "address", "labels", "ready_at", "last_busy_at", "ended_at", "detail", "asked_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise LedgerError(f"cannot update {sorted(unknown)} of a managed cluster", f"use {sorted(allowed)}")
        if "labels" in fields:
            fields["labels"] = _dump(fields["labels"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as tx:
            tx.execute(f"UPDATE managed_clusters SET {sets} WHERE name = ?", (*fields.values(), name))

    def managed(self, *, live_only: bool = True) -> list[ManagedClusterRecord]:
        """Managed clusters, oldest first; by default those not yet DELETED or FAILED."""
        where = "WHERE state IN ('CREATING', 'READY')" if live_only else ""
        with self._lock:
            rows = self._conn.execute(f"SELECT * FROM managed_clusters {where} ORDER BY created_at").fetchall()
        return [ManagedClusterRecord(*row[:6], _load_json(row[6]) or {}, *row[7:]) for row in rows]

    def managed_record(self, name: str) -> ManagedClusterRecord | None:
        """One managed cluster, whatever its state."""
        return next((c for c in self.managed(live_only=False) if c.name == name), None)

    def jobs_on(self, cluster: str) -> list[JobRecord]:
        """Jobs with an attempt on ``cluster``."""
        return self._load("WHERE j.id IN (SELECT job_id FROM attempts WHERE cluster = ?)", (cluster,))

    def save_logs(self, submission_id: str, logs: str) -> None:
        """Keep an attempt's final logs (its cluster is about to be deleted)."""
        with self._tx() as tx:
            tx.execute("INSERT OR REPLACE INTO saved_logs VALUES (?, ?, ?)", (submission_id, self.clock(), logs))

    def saved_logs(self, submission_id: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT logs FROM saved_logs WHERE submission_id = ?", (submission_id,)).fetchone()
        return row[0] if row else None

    def record_reservation(self, submission_id: str, nodes: Sequence[str], at: float) -> bool:
        """Record that an attempt's launcher holds its reservation (first report only). Returns whether it was new."""
        with self._tx() as tx:
            cursor = tx.execute(
                "INSERT OR IGNORE INTO reservations VALUES (?, ?, ?)", (submission_id, at, json.dumps(list(nodes)))
            )
            return cursor.rowcount > 0

    def holding(self, now: float) -> list[HeldAttempt]:
        """Attempts that may still hold resources the probes do not show: placed, not ended, not past their
        ``hold_until``. Indexed by ``hold_until``, so the cost does not grow with the ledger's history."""
        active = ", ".join(repr(s.value) for s in HOLDING_STATES)
        with self._lock:
            rows = self._conn.execute(
                "SELECT a.submission_id, a.cluster, a.bundles, a.hold_until, t.state, t.at, r.reserved_at, r.nodes "
                "FROM attempts a JOIN transitions t ON t.seq = "
                "(SELECT MAX(seq) FROM transitions WHERE submission_id = a.submission_id) "
                "LEFT JOIN reservations r ON r.submission_id = a.submission_id "
                f"WHERE a.hold_until > ? AND t.state IN ({active})",
                (now,),
            ).fetchall()
        return [
            HeldAttempt(
                sid,
                cluster,
                tuple(json.loads(bundles or "[]")),
                until,
                JobState(state),
                at,
                reserved,
                tuple(json.loads(nodes)) if nodes else (),
            )
            for sid, cluster, bundles, until, state, at, reserved, nodes in rows
        ]

    def active_attempts(self, cluster: str) -> list[AttemptRecord]:
        """Attempts on ``cluster`` whose state is not terminal."""
        return [
            a
            for job in self.jobs_on(cluster)
            for a in job.attempts
            if a.cluster == cluster and not a.state.is_terminal()
        ]

    # ----- reads --------------------------------------------------------------------------------------------------

    def queued(self) -> list[JobRecord]:
        """Jobs waiting in the queue (QUEUED, never placed or placed back), oldest first."""
        jobs = self._load(
            "WHERE j.id IN (SELECT job_id FROM transitions q WHERE q.submission_id IS NULL AND q.state = 'QUEUED' "
            "AND q.seq = (SELECT MAX(seq) FROM transitions WHERE job_id = q.job_id AND submission_id IS NULL)) "
            "ORDER BY j.created_at",
            (),
        )
        return [j for j in jobs if j.state is JobState.QUEUED]

    def provisioning(self) -> list[JobRecord]:
        """Jobs waiting for a cluster being created for them (`JobRecord.awaits` names it), oldest first."""
        jobs = self._load(
            "WHERE j.id IN (SELECT job_id FROM transitions q WHERE q.submission_id IS NULL "
            "AND q.state = 'PROVISIONING' "
            "AND q.seq = (SELECT MAX(seq) FROM transitions WHERE job_id = q.job_id AND submission_id IS NULL)) "
            "ORDER BY j.created_at",
            (),
        )
        return [j for j in jobs if j.state is JobState.PROVISIONING]

    def active(self) -> list[JobRecord]:
        """Jobs with an attempt that is not terminal (any attempt: a stale one on a rejoined cluster counts)."""
        return self._load(
            "WHERE j.id IN (SELECT a.job_id FROM attempts a JOIN transitions t ON t.seq = "
            "(SELECT MAX(seq) FROM transitions WHERE submission_id = a.submission_id) "
            f"WHERE t.state NOT IN ({', '.join(repr(s.value) for s in TERMINAL)})) ORDER BY j.created_at",
            (),
        )

    def children(self, job_id: str) -> list[JobRecord]:
        """Jobs submitted from inside this job (nested dispatch)."""
        return self._load("WHERE j.parent_id = ? ORDER BY j.created_at", (job_id,))

    def job(self, job_id: str) -> JobRecord:
        """The job with this id. Raises `JobNotFoundError`."""
        jobs = self._load("WHERE j.id = ?", (job_id,))
        if not jobs:
            raise JobNotFoundError(f"no job {job_id!r} in the ledger {self.path}", "list jobs with 'rayfleet jobs'")
        return jobs[0]

    def jobs(self, *, limit: int = 100, active_only: bool = False) -> list[JobRecord]:
        """The newest jobs first; with ``active_only``, those whose state is not terminal."""
        jobs = self._load("ORDER BY j.created_at DESC LIMIT ?", (limit if not active_only else -1,))
        if active_only:
            jobs = [j for j in jobs if not j.state.is_terminal()][:limit]
        return jobs

    def history(self, submission_id: str) -> list[tuple[JobState, float, str | None]]:
        """Every state an attempt went through, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, at, detail FROM transitions WHERE submission_id = ? ORDER BY seq",
                (submission_id,),
            ).fetchall()
        return [(JobState(s), at, d) for s, at, d in rows]

    def _load(self, where: str, params: tuple[Any, ...]) -> list[JobRecord]:
        with self._lock:
            jobs = self._conn.execute(
                f"SELECT j.id, j.created_at, j.entrypoint, j.request, j.runtime_env, j.metadata, j.parent_id, "
                f"(SELECT seq || '|' || state || '|' || COALESCE(cluster, '') || '|' || COALESCE(detail, '') "
                f"FROM transitions t WHERE t.job_id = j.id "
                f"AND t.submission_id IS NULL ORDER BY seq DESC LIMIT 1) FROM jobs j {where}",
                params,
            ).fetchall()
            ids = [row[0] for row in jobs]
            attempts: dict[str, list[AttemptRecord]] = {i: [] for i in ids}
            if ids:
                marks = ",".join("?" * len(ids))
                for row in self._conn.execute(
                    "SELECT a.submission_id, a.job_id, a.n, a.cluster, a.node_id, a.accelerator, a.created_at, "
                    "t.state, t.at, t.detail, a.session, t.seq, r.reserved_at FROM attempts a JOIN transitions t "
                    "ON t.seq = (SELECT MAX(seq) FROM transitions WHERE submission_id = a.submission_id) "
                    "LEFT JOIN reservations r ON r.submission_id = a.submission_id "
                    f"WHERE a.job_id IN ({marks}) ORDER BY a.n",
                    ids,
                ):
                    attempts[row[1]].append(AttemptRecord(*row[:7], JobState(row[7]), *row[8:]))
        out = []
        for jid, created, entrypoint, request, runtime_env, metadata, parent, job_state in jobs:
            seq, state, awaits, detail = (job_state or "0|QUEUED||").split("|", 3)
            out.append(
                JobRecord(
                    jid,
                    created,
                    entrypoint,
                    json.loads(request),
                    _load_json(runtime_env),
                    _load_json(metadata),
                    parent,
                    tuple(attempts[jid]),
                    JobState(state),
                    detail or None,
                    int(seq),
                    awaits or None,
                )
            )
        return out


@dataclass(frozen=True)
class ManagedClusterRecord:
    """A cluster created on demand, as the ledger knows it."""

    name: str
    provisioner: str
    template: str
    namespace: str
    state: str
    address: str | None
    labels: Mapping[str, str]
    idle_ttl_s: float
    created_at: float
    ready_at: float | None
    last_busy_at: float | None
    ended_at: float | None
    detail: str | None
    asked_at: float | None = None  # when its provisioner was asked to create it (None: not yet)

    @property
    def idle_deadline(self) -> float | None:
        """When it may be deleted if it stays idle (None while it has never been idle)."""
        return None if self.last_busy_at is None else self.last_busy_at + self.idle_ttl_s


def _transition(
    tx: sqlite3.Connection,
    job_id: str,
    submission_id: str | None,
    state: JobState,
    at: float,
    detail: str | None,
    cluster: str | None = None,
) -> None:
    """Append one transition: of an attempt (``submission_id``) or of the job itself (None); ``cluster`` is the
    cluster a PROVISIONING job waits for."""
    tx.execute(
        "INSERT INTO transitions (job_id, submission_id, state, at, detail, cluster) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, submission_id, state.value, at, detail, cluster),
    )


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _load_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)
