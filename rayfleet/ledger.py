"""The ledger: a database recording every job, attempt and state change, before the world changes.

A SQLite file by default, through SQLAlchemy Core; its schema is made and changed by Alembic (`rayfleet.schema`
describes it, `rayfleet/migrations/` changes it). Transitions are append-only and checked against the one state
machine (`rayfleet.states`), inside a write transaction that locks the database first (SQLite's ``BEGIN
IMMEDIATE``), so two processes sharing the file cannot both move an attempt, and a terminal state is final.
"""

from __future__ import annotations

import dataclasses
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

from sqlalchemy import URL, Connection, Engine, create_engine, event, exc, inspect, update

from rayfleet import schema
from rayfleet import statements as q
from rayfleet.errors import JobNotFoundError, LeaseLostError, LedgerError
from rayfleet.resources import Resources
from rayfleet.states import JobState, can_move

LEDGER_ENV = "RAYFLEET_LEDGER"

# Alembic's `op` and `context` are process-wide: two ledgers migrating at once in one process (two new files in two
# threads) would run each other's statements. One migration at a time per process; the file's own lock does the rest.
_MIGRATING = threading.Lock()


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
        path: the SQLite file; created (readable by the user only) with its directory if missing, and migrated to
            this rayfleet's schema.
        clock: wall-clock seconds stamped on records (tests pass one they move by hand).

    Example:
        >>> ledger = Ledger("/tmp/example-ledger.db")       # doctest: +SKIP
        >>> ledger.jobs(limit=10)                            # doctest: +SKIP
    """

    path: Path | str | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False)  # the time stamped on every record
    _engine: Engine = field(init=False, repr=False)
    _db: Connection = field(init=False, repr=False)  # the one connection, used under _lock, always in a transaction
    _lock: threading.RLock = field(init=False, repr=False, default_factory=threading.RLock)
    _fence: threading.local = field(init=False, repr=False, default_factory=threading.local)  # per thread: its lease

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser() if self.path else default_path()
        try:
            self._engine = _engine(self.path)
            self._db = self._engine.connect()
            self._migrate()
        except LedgerError:
            self._discard()
            raise
        except (OSError, ValueError, sqlite3.Error, exc.SQLAlchemyError) as e:  # ValueError: a NUL byte in the path
            self._discard()
            raise LedgerError(
                f"cannot open the ledger at {self.path}: {getattr(e, 'orig', None) or e}",
                f"give a writable file path (Fleet(ledger=...), ledger: in the fleet file, or ${LEDGER_ENV})",
            ) from None

    def _discard(self) -> None:
        """Close what a failed open had opened (no file handle outlives a refused ledger)."""
        if (db := getattr(self, "_db", None)) is not None:
            db.close()
        if (engine := getattr(self, "_engine", None)) is not None:
            engine.dispose()

    # ----- opening and migrations ---------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Bring the schema to this rayfleet's newest revision, in one write transaction (two processes opening a
        new ledger at once: the second finds it done). A ledger from before Alembic (only SQLite's user_version)
        is stamped with the revision that version stands for first. A ledger already at it is only read: opening
        one never waits for another process's write."""
        with self._read() as db:
            if _revision(db) == schema.HEAD:
                return
        with self._tx() as tx, _MIGRATING:
            current = _revision(tx)
            if current == schema.HEAD:
                return
            if current is not None and not (current.isdigit() and int(current) < schema.SCHEMA_VERSION):
                raise LedgerError(
                    f"the ledger at {self.path} has schema revision {current}, not one this rayfleet knows "
                    f"(its newest is {schema.HEAD})",
                    "upgrade rayfleet, or point it at another ledger file",
                )
            try:
                _upgrade(tx, current)
            except exc.SQLAlchemyError:
                raise
            except Exception as e:  # Alembic's own errors: the transaction is undone, the file left as it was
                raise LedgerError(
                    f"cannot migrate the ledger at {self.path} to schema {schema.HEAD}: {type(e).__name__}: {e}",
                    "nothing was changed (the migration is one transaction); point rayfleet at another ledger file "
                    "and report the message",
                ) from e

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return int(_revision(db) or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction: it takes the database's write lock first (waiting up to 30 s for another
        writer), checks this thread's lease if it acts under one, and commits unless an exception leaves it."""
        with self._lock:
            self._db.info["write"] = True  # read by the begin hook: BEGIN IMMEDIATE
            try:
                tx = self._db.begin()
            finally:
                self._db.info.pop("write", None)  # the hook took it, or the begin failed before it ran
            try:
                if (lease := getattr(self._fence, "lease", None)) is not None:
                    self._check(self._db, lease)
                yield self._db
            except _Rollback:
                tx.rollback()
                return
            except BaseException:
                tx.rollback()
                raise
            try:
                tx.commit()
            except BaseException:  # a failed COMMIT (disk full, I/O error) may leave the database's transaction
                tx.rollback()  # open under SQLAlchemy's ended one: drop the connection, the next use opens anew
                self._db.invalidate()
                raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: one consistent view of the ledger, no lock held against writers."""
        with self._lock, self._db.begin():
            yield self._db

    # ----- leases -------------------------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease ``name`` for ``ttl_s`` seconds, or renew it if ``holder`` has it. Returns None while another
        holder's lease has not expired. A new holder (or the same one after its lease expired) gets a new epoch."""
        taken = None
        with self._tx() as tx:
            now = self.clock()
            row = tx.execute(q.lease, {"lease": name}).first()
            if row is not None and row.expires_at > now and row.holder != holder:
                raise _Rollback  # another holder's lease runs
            same = row is not None and row.holder == holder and row.expires_at > now
            taken = Lease(name, holder, row.epoch if same else (row.epoch + 1 if row else 1), now + ttl_s)
            tx.execute(q.put_lease, dataclasses.asdict(taken))
        return taken

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend a lease this process holds. Raises `LeaseLostError` when it expired or another holder took it."""
        with self._tx() as tx:
            self._check(tx, lease)
            now = self.clock()
            tx.execute(q.renew_lease, {"lease": lease.name, "expires_at": now + ttl_s})
        return Lease(lease.name, lease.holder, lease.epoch, now + ttl_s)

    def release_lease(self, lease: Lease) -> None:
        """Give a lease up (it expires now), if this process still holds it."""
        held = {"lease": lease.name, "lease_holder": lease.holder, "lease_epoch": lease.epoch}
        with self._tx() as tx:
            tx.execute(q.release_lease, {**held, "expires_at": self.clock()})

    def lease_holder(self, name: str) -> Lease | None:
        """Who holds the lease ``name`` (even if it has expired), or None if nobody ever took it."""
        with self._read() as db:
            row = db.execute(q.lease, {"lease": name}).first()
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

    def _check(self, tx: Connection, lease: Lease) -> None:
        row = tx.execute(q.lease, {"lease": lease.name}).first()
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
    def _insert_job(tx: Connection, job_id: str, now: float, entrypoint: str, request: Mapping[str, Any],
                    runtime_env: Any, metadata: Any, parent_id: str | None) -> None:  # fmt: skip
        row = {"id": job_id, "created_at": now, "entrypoint": entrypoint, "request": _dump(request)}
        tx.execute(
            q.add_job, {**row, "runtime_env": _dump(runtime_env), "metadata": _dump(metadata), "parent_id": parent_id}
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
                recorded = tx.execute(q.managed_state, {"name": cluster}).scalar() == "CREATING"
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
            except exc.IntegrityError as e:
                raise AttemptConflict(f"attempt {attempt['n']} of job {job_id} exists: {e.orig}") from None

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
    def _effective(tx: Connection, job_id: str) -> tuple[JobState, int]:
        """(the job's state now, the number of its newest attempt or 0). Raises `JobNotFoundError`."""
        own = tx.execute(q.own_state, {"job_id": job_id}).first()
        last = tx.execute(q.newest_attempt, {"job_id": job_id}).first()
        if own is None and last is None:
            if tx.execute(q.job_exists, {"job_id": job_id}).first() is None:
                raise JobNotFoundError(f"no job {job_id!r} in the ledger", "check the id with 'rayfleet jobs'")
            return JobState.QUEUED, 0
        if last is None:
            return JobState(own.state), 0
        if own is not None and own.seq > last.seq:
            return JobState(own.state), last.n
        return JobState(last.state), last.n

    @staticmethod
    def _insert_attempt(tx: Connection, job_id: str, attempt: Mapping[str, Any], now: float) -> None:
        window = attempt.get("hold_window_s")
        row = {k: attempt[k] for k in ("submission_id", "n", "cluster")}  # required: a KeyError names a missing one
        row |= {k: attempt.get(k) for k in ("node_id", "accelerator", "session")}
        bounds = {"hold_window_s": window, "hold_until": None if window is None else now + window}
        tx.execute(
            q.add_attempt,
            {**row, "job_id": job_id, "created_at": now, "bundles": _dump(attempt.get("bundles")), **bounds},
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
            row = tx.execute(q.attempt_state, {"submission_id": submission_id}).first()
            if row is None:
                raise JobNotFoundError(
                    f"no attempt {submission_id!r} in the ledger", "check the id with 'rayfleet jobs'"
                )
            old = JobState(row.state) if row.state else None
            if old == state or not can_move(old, state):
                return False
            now = self.clock()
            _transition(tx, row.job_id, submission_id, state, now, detail)
            if state in (JobState.SUBMITTED, JobState.STARTING):  # each step of the start renews the hold's bound
                tx.execute(q.renew_hold, {"sid": submission_id, "now": now})
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
    def _insert_managed(tx: Connection, cluster: NewCluster, now: float) -> bool:
        live = None if cluster.cap is None else tx.execute(q.live_managed_count, {"provisioner": cluster.provisioner})
        if live is not None and live.scalar_one() >= cluster.cap:
            return False
        row = {"name": cluster.name, "provisioner": cluster.provisioner, "template": cluster.template}
        more = {"namespace": cluster.namespace, "idle_ttl_s": cluster.idle_ttl_s, "created_at": now}
        tx.execute(q.add_managed, {**row, **more, "state": "CREATING"})
        return True

    def update_managed(self, name: str, **fields: Any) -> None:
        """Change a managed cluster's state, address, labels, last_busy_at, ended_at or detail."""
        allowed = {"state", "address", "labels", "ready_at", "last_busy_at", "ended_at", "detail", "asked_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise LedgerError(f"cannot update {sorted(unknown)} of a managed cluster", f"use {sorted(allowed)}")
        if "labels" in fields:
            fields["labels"] = _dump(fields["labels"])
        managed = schema.managed_clusters
        with self._tx() as tx:
            tx.execute(update(managed).where(managed.c.name == name).values(**fields))

    def managed(self, *, live_only: bool = True) -> list[ManagedClusterRecord]:
        """Managed clusters, oldest first; by default those not yet DELETED or FAILED."""
        with self._read() as db:
            rows = db.execute(q.live_managed if live_only else q.all_managed).mappings().all()
        return [ManagedClusterRecord(**{**row, "labels": _load_json(row["labels"]) or {}}) for row in rows]

    def managed_record(self, name: str) -> ManagedClusterRecord | None:
        """One managed cluster, whatever its state."""
        return next((c for c in self.managed(live_only=False) if c.name == name), None)

    def jobs_on(self, cluster: str) -> list[JobRecord]:
        """Jobs with an attempt on ``cluster``."""
        return self._load(q.jobs_on, {"cluster": cluster})

    def save_logs(self, submission_id: str, logs: str, *, final: bool = True) -> None:
        """Keep an attempt's logs: final (it ended, or its cluster is about to be deleted) or a checkpoint of a job
        still running, replaced by the next save."""
        row = {"submission_id": submission_id, "saved_at": self.clock(), "logs": logs, "final": final}
        with self._tx() as tx:
            tx.execute(q.save_logs, row)

    def saved_logs(self, submission_id: str) -> SavedLogs | None:
        """An attempt's saved logs, with when they were saved and whether they are final."""
        with self._read() as db:
            row = db.execute(q.saved_logs_of, {"submission_id": submission_id}).first()
        return None if row is None else SavedLogs(row.logs, row.saved_at, bool(row.final))

    # ----- marks on clusters ----------------------------------------------------------------------------------------

    def mark(self, cluster: str, kind: str, *, by: str, reason: str, session: str | None = None) -> None:
        """Put a mark on a cluster (one of `MARKS`; again: replaced). Every dispatcher sharing the ledger honours it
        from its next decision."""
        if kind not in MARKS:
            raise LedgerError(f"unknown cluster mark {kind!r}", f"use one of {', '.join(MARKS)}")
        row = {"cluster": cluster, "kind": kind, "at": self.clock(), "by": by, "reason": reason, "session": session}
        with self._tx() as tx:
            tx.execute(q.put_mark, row)

    def unmark(self, cluster: str, kinds: Sequence[str]) -> bool:
        """Take marks of these kinds off a cluster. Returns whether it had any."""
        with self._tx() as tx:
            return tx.execute(q.drop_mark, {"cluster": cluster, "kinds": list(kinds)}).rowcount > 0

    def marks(self) -> list[ClusterMark]:
        """Every mark on every cluster, by cluster then kind."""
        with self._read() as db:
            return [ClusterMark(**row) for row in db.execute(q.all_marks).mappings()]

    def record_reservation(self, submission_id: str, nodes: Sequence[str], at: float) -> bool:
        """Record that an attempt's launcher holds its reservation (first report only). Returns whether it was new."""
        with self._tx() as tx:
            row = {"submission_id": submission_id, "reserved_at": at, "nodes": _dump(list(nodes))}
            return tx.execute(q.add_reservation, row).rowcount > 0

    def holding(self, now: float) -> list[HeldAttempt]:
        """Attempts that may still hold resources the probes do not show: placed, not ended, not past their
        ``hold_until``. Indexed by ``hold_until``, so the cost does not grow with the ledger's history."""
        with self._read() as db:
            rows = db.execute(q.holding, {"now": now}).all()
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
        jobs = self._load(q.jobs_whose_own_state, {"state": JobState.QUEUED.value})
        return [j for j in jobs if j.state is JobState.QUEUED]

    def provisioning(self) -> list[JobRecord]:
        """Jobs waiting for a cluster being created for them (`JobRecord.awaits` names it), oldest first."""
        jobs = self._load(q.jobs_whose_own_state, {"state": JobState.PROVISIONING.value})
        return [j for j in jobs if j.state is JobState.PROVISIONING]

    def active(self) -> list[JobRecord]:
        """Jobs with an attempt that is not terminal (any attempt: a stale one on a rejoined cluster counts)."""
        return self._load(q.active_jobs)

    def children(self, job_id: str) -> list[JobRecord]:
        """Jobs submitted from inside this job (nested dispatch)."""
        return self._load(q.children, {"parent_id": job_id})

    def job(self, job_id: str) -> JobRecord:
        """The job with this id. Raises `JobNotFoundError`."""
        jobs = self._load(q.job, {"job_id": job_id})
        if not jobs:
            raise JobNotFoundError(f"no job {job_id!r} in the ledger {self.path}", "list jobs with 'rayfleet jobs'")
        return jobs[0]

    def jobs(self, *, limit: int = 100, active_only: bool = False) -> list[JobRecord]:
        """The newest jobs first; with ``active_only``, those whose state is not terminal."""
        jobs = self._load(q.newest_jobs, {"limit": -1 if active_only else limit})  # -1: no limit
        if active_only:
            jobs = [j for j in jobs if not j.state.is_terminal()][:limit]
        return jobs

    def timeline(self, job_id: str) -> list[Transition]:
        """Every state the job went through, its own (queued, waiting for a cluster, a verdict) and its attempts',
        oldest first."""
        with self._read() as db:
            rows = db.execute(q.timeline, {"job_id": job_id}).all()
        return [Transition(r.at, JobState(r.state), r.n, r.attempt_cluster or r.cluster, r.detail) for r in rows]

    def history(self, submission_id: str) -> list[tuple[JobState, float, str | None]]:
        """Every state an attempt went through, oldest first."""
        with self._read() as db:
            rows = db.execute(q.history, {"submission_id": submission_id}).all()
        return [(JobState(s), at, d) for s, at, d in rows]

    def _load(self, query: Any, params: Mapping[str, Any] | None = None) -> list[JobRecord]:
        """The jobs a query of `rayfleet.statements` selects, each with its own newest state and its attempts."""
        with self._read() as db:
            jobs = db.execute(query, params).all()
            attempts = self._attempts_of(db, [row.id for row in jobs])
        return [
            JobRecord(
                row.id,
                row.created_at,
                row.entrypoint,
                json.loads(row.request),
                _load_json(row.runtime_env),
                _load_json(row.metadata),
                row.parent_id,
                tuple(attempts.get(row.id, ())),
                JobState(row.state or JobState.QUEUED.value),
                row.detail or None,
                row.seq or 0,
                row.cluster or None,
            )
            for row in jobs
        ]

    @staticmethod
    def _attempts_of(db: Connection, ids: Sequence[str]) -> dict[str, list[AttemptRecord]]:
        if not ids:
            return {}
        out: dict[str, list[AttemptRecord]] = {}
        for row in db.execute(q.attempts_of, {"job_ids": list(ids)}):
            out.setdefault(row[1], []).append(AttemptRecord(*row[:7], JobState(row[7]), *row[8:]))
        return out


CORDON = "cordon"  # no new placements; running jobs go on
DRAIN = "drain"  # cordoned, and its jobs are to leave (wait for them, or move those that may be retried)
LAUNCHER_UNFIT = "launcher"  # its python cannot run rayfleet's launcher: no jobs that need the launcher
MARKS = (CORDON, DRAIN, LAUNCHER_UNFIT)


@dataclass(frozen=True)
class ClusterMark:
    """A mark on a cluster (`Ledger.mark`): what, when, by whom, why; ``session``: the cluster's Ray session then."""

    cluster: str
    kind: str
    at: float
    by: str
    reason: str
    session: str | None = None


@dataclass(frozen=True)
class Transition:
    """One state change of a job: when, to what, of which attempt (None: of the job itself), where, and why."""

    at: float
    state: JobState
    attempt: int | None
    cluster: str | None
    detail: str | None


@dataclass(frozen=True)
class SavedLogs:
    """An attempt's logs as saved: the text, when (ledger clock), and whether final or a checkpoint of a job still
    running."""

    text: str
    saved_at: float
    final: bool


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


SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # WAL: durable across process crashes, fsync at checkpoints
    "PRAGMA foreign_keys=ON",
)


def _engine(path: Path) -> Engine:
    """An engine on the SQLite file ``path``, created private if missing, whose write transactions lock first."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    if not path.exists():  # create it private before SQLite does; -wal/-shm files inherit the mode
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    engine = create_engine(
        URL.create("sqlite", database=str(path)), connect_args={"timeout": 30, "check_same_thread": False}
    )

    def prepare(dbapi: sqlite3.Connection, _record: Any) -> None:
        dbapi.isolation_level = None  # the driver begins nothing itself: `begin` below does, the way each needs
        version = dbapi.execute("PRAGMA user_version").fetchone()[0]
        if version > schema.SCHEMA_VERSION:  # before anything changes the file
            raise LedgerError(
                f"the ledger at {path} has schema version {version}, newer than this rayfleet knows "
                f"({schema.SCHEMA_VERSION})",
                "upgrade rayfleet, or point it at another ledger file",
            )
        for pragma in SQLITE_PRAGMAS:
            dbapi.execute(pragma)

    def begin(db: Connection) -> None:  # a writer takes the lock first: no deadlock between two upgrading readers
        db.exec_driver_sql("BEGIN IMMEDIATE" if db.info.pop("write", False) else "BEGIN")

    event.listen(engine, "connect", prepare)
    event.listen(engine, "begin", begin)
    return engine


def _upgrade(tx: Connection, current: str | None) -> None:
    """Run Alembic's revisions from ``current`` (None: a new ledger, or one from before Alembic) to the newest, on
    the write transaction ``tx``, and mirror the schema version in SQLite's user_version."""
    from alembic import command  # only when there is something to migrate: it costs a few hundred ms
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "rayfleet:migrations")
    config.attributes["connection"] = tx
    if current is None and (legacy := tx.exec_driver_sql("PRAGMA user_version").scalar()):
        command.stamp(config, f"{legacy:04d}")
    command.upgrade(config, schema.HEAD)
    tx.exec_driver_sql(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")


def _revision(db: Connection) -> str | None:
    """The schema revision Alembic recorded, or None (a new ledger, or one from before Alembic)."""
    if not inspect(db).has_table("alembic_version"):
        return None
    return db.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _transition(
    tx: Connection,
    job_id: str,
    submission_id: str | None,
    state: JobState,
    at: float,
    detail: str | None,
    cluster: str | None = None,
) -> None:
    """Append one transition: of an attempt (``submission_id``) or of the job itself (None); ``cluster`` is the
    cluster a PROVISIONING job waits for."""
    row = {"job_id": job_id, "submission_id": submission_id, "state": state.value, "at": at, "detail": detail}
    tx.execute(q.add_transition, {**row, "cluster": cluster})


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _load_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)
