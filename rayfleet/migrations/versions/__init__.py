"""One Alembic revision per schema change, numbered 0001, 0002, ...: never edited once released."""
