"""The ledger's tables, as SQLAlchemy Core describes them: what `rayfleet.ledger` queries.

The schema itself is made and changed only by the Alembic revisions in `rayfleet/migrations/versions/` (one per
change, never edited once released); this description must match their result, which
``tests/unit/test_schema.py`` checks by comparing it with a freshly migrated database.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    true,
)

# the revision of the newest migration, and the schema version it makes (SQLite's PRAGMA user_version mirrors it, so
# an older rayfleet that knows only user_version still refuses a ledger newer than itself)
HEAD = "0007"
SCHEMA_VERSION = int(HEAD)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("entrypoint", Text, nullable=False),
    Column("request", Text, nullable=False),  # JSON: the versioned `Submission`
    Column("runtime_env", Text),  # JSON, as given
    Column("metadata", Text),  # JSON, as given
    Column("parent_id", Text),  # the job this one was submitted from (nested dispatch)
    Index("jobs_by_time", "created_at"),
    Index("jobs_by_parent", "parent_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("submission_id", Text, primary_key=True),
    Column("job_id", Text, ForeignKey("jobs.id"), nullable=False),
    Column("n", Integer, nullable=False),
    Column("cluster", Text, nullable=False),
    Column("node_id", Text),
    Column("accelerator", Text),
    Column("created_at", Float, nullable=False),
    Column("session", Text),  # the cluster's Ray session it was submitted into: a new session proves it lost
    Column("bundles", Text),  # JSON: per bundle, the node it was placed on, its resources and that node's usage then
    Column("hold_window_s", Float),  # how long after each step of its start it may still be reserving
    Column("hold_until", Float),  # the latest time it may still be reserving
    UniqueConstraint("job_id", "n"),
    Index("attempts_by_cluster", "cluster"),
    Index("attempts_by_hold", "hold_until"),
)

# append-only (a trigger refuses UPDATE and DELETE): the history of every job and attempt
transitions = Table(
    "transitions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Text, ForeignKey("jobs.id"), nullable=False),
    Column("submission_id", Text, ForeignKey("attempts.submission_id")),  # None: a state of the job itself
    Column("state", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("detail", Text),
    Column("cluster", Text),  # the cluster a PROVISIONING job waits for
    Index("transitions_by_attempt", "submission_id", "seq"),
    Index("transitions_by_job", "job_id", "seq"),
    sqlite_autoincrement=True,
)

managed_clusters = Table(
    "managed_clusters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("provisioner", Text, nullable=False),
    Column("template", Text, nullable=False),
    Column("namespace", Text, nullable=False, server_default=""),
    Column("state", Text, nullable=False),  # CREATING, READY, DELETED, FAILED
    Column("address", Text),
    Column("labels", Text),  # JSON
    Column("idle_ttl_s", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("ready_at", Float),
    Column("last_busy_at", Float),
    Column("ended_at", Float),
    Column("detail", Text),
    Column("asked_at", Float),  # when its provisioner was asked to create it (None: not yet)
)

saved_logs = Table(
    "saved_logs",
    metadata,
    Column("submission_id", Text, ForeignKey("attempts.submission_id"), primary_key=True),
    Column("saved_at", Float, nullable=False),
    Column("logs", Text, nullable=False),
    Column("final", Boolean, nullable=False, server_default=true()),  # False: a checkpoint of a job still running
)

reservations = Table(
    "reservations",
    metadata,
    Column("submission_id", Text, ForeignKey("attempts.submission_id"), primary_key=True),
    Column("reserved_at", Float, nullable=False),
    Column("nodes", Text, nullable=False),  # JSON: the node of each bundle, in bundle order
)

leases = Table(
    "leases",
    metadata,
    Column("name", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("expires_at", Float, nullable=False),
)

cluster_marks = Table(
    "cluster_marks",
    metadata,
    Column("cluster", Text, primary_key=True),
    Column("kind", Text, primary_key=True),  # `rayfleet.ledger.MARKS`
    Column("at", Float, nullable=False),
    Column("by", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("session", Text),
)
