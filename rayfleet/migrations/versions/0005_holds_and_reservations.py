"""Holds follow the attempt: what an attempt holds until a probe shows it (its bundles, the node each was placed on
and that node's usage then), the latest time it may still be reserving, and its reservation once its launcher
reported it (when, and the node of each bundle).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("bundles", sa.Text))
    op.add_column("attempts", sa.Column("hold_window_s", sa.Float))
    op.add_column("attempts", sa.Column("hold_until", sa.Float))
    op.create_index("attempts_by_hold", "attempts", ["hold_until"])
    op.create_table(
        "reservations",
        sa.Column("submission_id", sa.Text, sa.ForeignKey("attempts.submission_id"), primary_key=True),
        sa.Column("reserved_at", sa.Float, nullable=False),
        sa.Column("nodes", sa.Text, nullable=False),
    )
