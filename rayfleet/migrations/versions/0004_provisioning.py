"""The cluster a PROVISIONING job waits for, and when a managed cluster's creation was asked of its provisioner (a
CREATING record never asked was left by a creator that stopped in between: the next loop asks).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transitions", sa.Column("cluster", sa.Text))
    op.add_column("managed_clusters", sa.Column("asked_at", sa.Float))
