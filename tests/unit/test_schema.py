"""The schema: `rayfleet.schema` (what the ledger queries) is what the Alembic revisions make, and the revisions
form one line that the ledger runs to its newest, once, whoever opens a new ledger first."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from rayfleet import schema
from rayfleet.errors import LedgerError
from rayfleet.ledger import Ledger


def scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", "rayfleet:migrations")
    return ScriptDirectory.from_config(config)


def differences(path: Path) -> list[Any]:
    """What Alembic's autogenerate would change in the database at ``path`` to match `rayfleet.schema`."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), schema.metadata)
    finally:
        engine.dispose()


def test_the_revisions_form_one_line_numbered_in_order_up_to_head():
    revisions = list(reversed(list(scripts().walk_revisions())))
    assert scripts().get_heads() == [schema.HEAD]
    assert [r.revision for r in revisions] == [f"{n:04d}" for n in range(1, schema.SCHEMA_VERSION + 1)]
    assert [r.down_revision for r in revisions] == [None, *(r.revision for r in revisions[:-1])]


def test_the_described_schema_is_what_the_migrations_make(tmp_path):
    Ledger(tmp_path / "l.db").close()
    assert differences(tmp_path / "l.db") == []


def test_the_comparison_sees_a_column_the_migrations_do_not_make(tmp_path):
    Ledger(tmp_path / "l.db").close()
    with sqlite3.connect(tmp_path / "l.db") as conn:
        conn.execute("ALTER TABLE jobs ADD COLUMN stray TEXT")
    assert [(d[0], d[3].name) for d in differences(tmp_path / "l.db")] == [("remove_column", "stray")]


def open_at_once(paths: list[Path]) -> tuple[list[Ledger], list[BaseException]]:
    """Open a ledger on each path, each in its own thread, all released at once: the ledgers, and what was raised."""
    start = threading.Barrier(len(paths))
    opened: list[Ledger] = []
    errors: list[BaseException] = []

    def open_it(path: Path) -> None:
        start.wait()
        try:
            opened.append(Ledger(path))
        except BaseException as e:  # collected, and asserted by the caller
            errors.append(e)

    threads = [threading.Thread(target=open_it, args=(path,)) for path in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return opened, errors


def test_ledgers_opened_at_once_on_a_new_file_migrate_it_once(tmp_path):
    path = tmp_path / "new.db"
    opened, errors = open_at_once([path] * 6)
    try:
        assert errors == []
        assert [ledger.schema_version for ledger in opened] == [schema.SCHEMA_VERSION] * 6
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(schema.HEAD,)]
    finally:
        for ledger in opened:
            ledger.close()


@pytest.mark.parametrize("revision", ["0099", "f00dcafe"])
def test_a_ledger_of_an_unknown_revision_is_refused_and_left_as_it_was(tmp_path, revision):
    Ledger(tmp_path / "l.db").close()
    with sqlite3.connect(tmp_path / "l.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    with pytest.raises(LedgerError) as info:
        Ledger(tmp_path / "l.db")
    assert f"schema revision {revision}, not one this rayfleet knows (its newest is {schema.HEAD})" in str(info.value)
    assert "To fix: upgrade rayfleet" in str(info.value)
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(revision,)]


def test_ledgers_migrating_different_new_files_at_once_in_one_process_each_get_their_own(tmp_path):
    # Alembic's op and context are process-wide: without one migration at a time, each thread ran the others' DDL
    opened: list[Ledger] = []
    errors: list[BaseException] = []
    for round_ in range(5):
        more, failed = open_at_once([tmp_path / f"r{round_}-{n}.db" for n in range(4)])
        opened, errors = opened + more, errors + failed
    try:
        assert errors == []
        assert sorted(ledger.schema_version for ledger in opened) == [schema.SCHEMA_VERSION] * 20
    finally:
        for ledger in opened:
            ledger.close()


def test_a_ledger_at_the_newest_schema_opens_while_another_process_writes(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long write of another process would
    try:
        ledger = Ledger(path)  # only reads its revision: no wait for the writer (before, it waited out 30 s)
        try:
            assert ledger.jobs() == []
        finally:
            ledger.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def open_files(path: Path) -> list[str]:
    """This process's open file descriptors on ``path`` or its -wal/-shm companions."""
    fds = Path("/proc/self/fd")
    return [str(fd) for fd in fds.iterdir() if str(path) in os.path.realpath(fd) if fd.exists()]


def test_a_refused_ledger_leaves_no_file_open(tmp_path):
    Ledger(tmp_path / "l.db").close()
    conn = sqlite3.connect(tmp_path / "l.db")
    conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.commit()
    conn.close()
    assert open_files(tmp_path / "l.db") == []
    with pytest.raises(LedgerError):
        Ledger(tmp_path / "l.db")
    assert open_files(tmp_path / "l.db") == []
