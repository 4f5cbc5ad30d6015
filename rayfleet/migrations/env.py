"""Alembic's environment: migrate the connection the ledger passes in, inside the ledger's own transaction.

The ledger opens the database, begins its write transaction and calls Alembic with that connection in
``config.attributes["connection"]``, so two processes opening one new ledger at once cannot both migrate it.
Revisions are written by hand with plain operations, never in batch mode: SQLite's batch mode rebuilds a table, and
a rebuilt ``transitions`` would lose its append-only triggers, which the table description does not hold.
"""

from __future__ import annotations

from alembic import context

from rayfleet.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():  # joins the ledger's transaction: Alembic commits nothing itself
    context.run_migrations()
