"""The Ray session an attempt was submitted into (a new session proves it lost), and lookups by cluster and by
parent (stopping a job stops its children).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempts", sa.Column("session", sa.Text))
    op.create_index("attempts_by_cluster", "attempts", ["cluster"])
    op.create_index("jobs_by_parent", "jobs", ["parent_id"])
