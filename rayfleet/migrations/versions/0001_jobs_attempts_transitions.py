"""Jobs, their attempts, and the append-only transitions of both.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("entrypoint", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("runtime_env", sa.Text),
        sa.Column("metadata", sa.Text),
        sa.Column("parent_id", sa.Text),
    )
    op.create_table(
        "attempts",
        sa.Column("submission_id", sa.Text, primary_key=True),
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("cluster", sa.Text, nullable=False),
        sa.Column("node_id", sa.Text),
        sa.Column("accelerator", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("job_id", "n"),
    )
    op.create_table(
        "transitions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("submission_id", sa.Text, sa.ForeignKey("attempts.submission_id")),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("detail", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("transitions_by_attempt", "transitions", ["submission_id", "seq"])
    op.create_index("transitions_by_job", "transitions", ["job_id", "seq"])
    op.create_index("jobs_by_time", "jobs", ["created_at"])
    if op.get_bind().dialect.name == "sqlite":
        for verb, suffix in (("UPDATE", "u"), ("DELETE", "d")):
            op.execute(
                f"CREATE TRIGGER transitions_append_only_{suffix} BEFORE {verb} ON transitions "
                "BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END"
            )
