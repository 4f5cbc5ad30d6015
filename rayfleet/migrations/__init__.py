"""The ledger's schema migrations (Alembic): `env.py` runs them on the connection `rayfleet.ledger` opens."""
