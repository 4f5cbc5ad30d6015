"""Logs saved while a job runs (a checkpoint, replaced by the final save), and marks on clusters that every
dispatcher sharing the ledger honours: cordoned (no new placements), draining (cordoned, its jobs leave), and unfit for
the launcher (its ``python`` cannot run rayfleet's launcher).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the logs saved before this revision were all final: saved when their cluster was about to be deleted
    op.add_column("saved_logs", sa.Column("final", sa.Boolean, nullable=False, server_default=sa.true()))
    op.create_table(
        "cluster_marks",
        sa.Column("cluster", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("session", sa.Text),  # the cluster's Ray session it was made in (a launcher check is redone after)
    )
