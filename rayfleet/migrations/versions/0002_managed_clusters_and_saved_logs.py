"""Clusters created on demand, and the logs of jobs saved before their cluster is deleted.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "managed_clusters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("provisioner", sa.Text, nullable=False),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("namespace", sa.Text, nullable=False, server_default=""),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("address", sa.Text),
        sa.Column("labels", sa.Text),
        sa.Column("idle_ttl_s", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("ready_at", sa.Float),
        sa.Column("last_busy_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("detail", sa.Text),
    )
    op.create_table(
        "saved_logs",
        sa.Column("submission_id", sa.Text, sa.ForeignKey("attempts.submission_id"), primary_key=True),
        sa.Column("saved_at", sa.Float, nullable=False),
        sa.Column("logs", sa.Text, nullable=False),
    )
