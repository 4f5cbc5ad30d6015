"""Unit tests for `rayfleet.ledger` on a SQLite file in tmp_path (SQLite is a library: no server involved)."""

from __future__ import annotations

import re
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy

from rayfleet.errors import JobNotFoundError, LedgerError
from rayfleet.ledger import (
    CORDON,
    DRAIN,
    LAUNCHER_UNFIT,
    LEDGER_ENV,
    AttemptConflict,
    Ledger,
    NewCluster,
    SavedLogs,
    default_path,
)
from rayfleet.resources import Resources
from rayfleet.schema import SCHEMA_VERSION
from rayfleet.states import JobState
from tests.unit.legacy_schema import LEGACY_MIGRATIONS

S = JobState
REQUEST = {"resources": {"cpu": 2, "memory": 1024}, "labels": {"cloud": "gcp"}, "policy": "binpack"}


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path):
    ledger = Ledger(path)
    yield ledger
    ledger.close()


def attempt(n: int = 1, cluster: str = "a", job: str = "j1", **extra) -> dict:
    return {"submission_id": f"{job}-{n}", "n": n, "cluster": cluster, **extra}


def add(ledger: Ledger, job: str = "j1", *, queued: bool = False, attempt_extra: dict | None = None, **kwargs) -> None:
    first = None if queued else attempt(job=job, **(attempt_extra or {}))
    ledger.add_job(job, entrypoint="python train.py", request=REQUEST, attempt=first, **kwargs)


# ----- writing jobs and attempts ----------------------------------------------------------------------------------


def test_add_job_with_a_first_attempt_records_it_placed(ledger):
    ledger.add_job(
        "j1",
        entrypoint="python train.py",
        request=REQUEST,
        runtime_env={"pip": ["torch"]},
        metadata={"team": "ml"},
        parent_id="j0",
        attempt=attempt(node_id="node-7", accelerator="A100"),
    )

    job = ledger.job("j1")
    assert (job.id, job.entrypoint, job.parent_id) == ("j1", "python train.py", "j0")
    assert job.request == REQUEST
    assert job.runtime_env == {"pip": ["torch"]}
    assert job.metadata == {"team": "ml"}
    assert job.resources == Resources(cpu=2, memory=1024)
    assert job.state is S.PLACED
    (only,) = job.attempts
    assert job.last_attempt == only
    assert (only.submission_id, only.job_id, only.n, only.cluster) == ("j1-1", "j1", 1, "a")
    assert (only.node_id, only.accelerator, only.state) == ("node-7", "A100", S.PLACED)


def test_add_job_without_an_attempt_records_it_queued(ledger):
    add(ledger, queued=True)
    job = ledger.job("j1")
    assert job.state is S.QUEUED
    assert job.attempts == ()
    assert job.last_attempt is None
    assert (job.runtime_env, job.metadata, job.parent_id) == (None, None, None)


def test_a_failed_add_job_leaves_nothing_behind(ledger):
    with pytest.raises(KeyError):
        ledger.add_job("j1", entrypoint="x", request=REQUEST, attempt={"submission_id": "j1-1", "n": 1})  # no cluster
    with pytest.raises(JobNotFoundError):
        ledger.job("j1")
    assert ledger.history("j1-1") == []


def test_add_attempt_makes_the_newest_attempt_the_jobs_state(ledger):
    add(ledger)
    ledger.record("j1-1", S.FAILED, "node died")
    ledger.add_attempt("j1", attempt(n=2, cluster="b"))

    job = ledger.job("j1")
    assert [(a.n, a.cluster, a.state) for a in job.attempts] == [(1, "a", S.FAILED), (2, "b", S.PLACED)]
    assert job.state is S.PLACED
    assert job.attempts[0].detail == "node died"


def test_add_attempt_for_a_queued_job_places_it(ledger):
    add(ledger, queued=True)
    ledger.add_attempt("j1", attempt())
    assert ledger.job("j1").state is S.PLACED


# ----- recording transitions --------------------------------------------------------------------------------------


def test_record_an_allowed_move_returns_true_and_changes_the_state(ledger):
    add(ledger)
    assert ledger.record("j1-1", S.SUBMITTED) is True
    assert ledger.record("j1-1", S.RUNNING, "started") is True
    attempt_ = ledger.job("j1").last_attempt
    assert (attempt_.state, attempt_.detail) == (S.RUNNING, "started")


def test_record_a_repeated_state_is_a_no_op(ledger):
    add(ledger)
    ledger.record("j1-1", S.RUNNING)
    assert ledger.record("j1-1", S.RUNNING) is False
    assert [s for s, _, _ in ledger.history("j1-1")] == [S.PLACED, S.RUNNING]


def test_record_a_repeated_unknown_state_is_a_no_op(ledger):
    add(ledger)
    ledger.record("j1-1", S.UNKNOWN)
    assert ledger.record("j1-1", S.UNKNOWN) is False
    assert [s for s, _, _ in ledger.history("j1-1")] == [S.PLACED, S.UNKNOWN]


def test_record_a_move_the_state_machine_forbids_returns_false(ledger):
    add(ledger)
    ledger.record("j1-1", S.RUNNING)
    assert ledger.record("j1-1", S.SUBMITTED) is False
    assert ledger.job("j1").state is S.RUNNING


@pytest.mark.parametrize("terminal", [S.SUCCEEDED, S.FAILED, S.STOPPED, S.LOST], ids=lambda s: s.value)
def test_a_terminal_state_is_final(ledger, terminal):
    add(ledger)
    assert ledger.record("j1-1", terminal) is True
    late = [ledger.record("j1-1", state, "late observation") for state in JobState]
    assert late == [False] * len(JobState)
    assert ledger.job("j1").state is terminal
    assert [s for s, _, _ in ledger.history("j1-1")] == [S.PLACED, terminal]


def test_record_an_unknown_attempt_raises_job_not_found(ledger):
    with pytest.raises(JobNotFoundError) as info:
        ledger.record("nope-1", S.RUNNING)
    assert str(info.value).startswith("no attempt 'nope-1' in the ledger")
    assert "To fix:" in str(info.value)
    assert isinstance(info.value, KeyError)


def test_record_job_moves_a_queued_job(ledger):
    add(ledger, queued=True)
    assert ledger.record_job("j1", S.FAILED, "no cluster can ever fit it") is True
    job = ledger.job("j1")
    assert (job.state, job.detail) == (S.FAILED, "no cluster can ever fit it")


def test_record_job_refuses_moves_the_state_machine_forbids(ledger):
    add(ledger, queued=True)
    assert ledger.record_job("j1", S.RUNNING) is False
    assert ledger.record_job("j1", S.STOPPED) is True
    assert ledger.record_job("j1", S.FAILED) is False  # terminal is final
    assert ledger.job("j1").state is S.STOPPED


def test_record_job_for_an_unknown_job_raises_job_not_found(ledger):
    with pytest.raises(JobNotFoundError, match="To fix:"):
        ledger.record_job("nope", S.FAILED)


# ----- reading ----------------------------------------------------------------------------------------------------


def test_job_for_an_unknown_id_raises_job_not_found_naming_it(ledger):
    with pytest.raises(JobNotFoundError) as info:
        ledger.job("nope")
    assert str(info.value).startswith("no job 'nope' in the ledger")
    assert "To fix:" in str(info.value)


def test_jobs_lists_newest_first_with_their_states(ledger):
    for job in ("j1", "j2", "j3"):
        add(ledger, job)
    ledger.record("j2-1", S.RUNNING)
    ledger.record("j3-1", S.SUCCEEDED)

    jobs = ledger.jobs()
    assert [(j.id, j.state) for j in jobs] == [("j3", S.SUCCEEDED), ("j2", S.RUNNING), ("j1", S.PLACED)]
    assert jobs[0].created_at >= jobs[1].created_at >= jobs[2].created_at


def test_jobs_respects_the_limit(ledger):
    for job in ("j1", "j2", "j3"):
        add(ledger, job)
    assert [j.id for j in ledger.jobs(limit=2)] == ["j3", "j2"]


def test_jobs_active_only_leaves_out_terminal_jobs(ledger):
    for job in ("j1", "j2", "j3", "j4"):
        add(ledger, job)
    add(ledger, "q1", queued=True)
    ledger.record("j1-1", S.SUCCEEDED)
    ledger.record("j3-1", S.UNKNOWN)
    ledger.record("j4-1", S.LOST)

    assert [j.id for j in ledger.jobs(active_only=True)] == ["q1", "j3", "j2"]
    assert [j.id for j in ledger.jobs(active_only=True, limit=1)] == ["q1"]


def test_jobs_of_an_empty_ledger_is_empty(ledger):
    assert ledger.jobs() == []


def test_history_lists_every_state_of_an_attempt_oldest_first(ledger):
    add(ledger)
    ledger.record("j1-1", S.SUBMITTED)
    ledger.record("j1-1", S.UNKNOWN, "cluster unreachable")
    ledger.record("j1-1", S.RUNNING)
    ledger.record("j1-1", S.SUCCEEDED, "exit 0")

    history = ledger.history("j1-1")
    assert [(s, d) for s, _, d in history] == [
        (S.PLACED, None),
        (S.SUBMITTED, None),
        (S.UNKNOWN, "cluster unreachable"),
        (S.RUNNING, None),
        (S.SUCCEEDED, "exit 0"),
    ]
    times = [at for _, at, _ in history]
    assert times == sorted(times)


def test_history_of_an_unknown_attempt_is_empty(ledger):
    assert ledger.history("nope-1") == []


def test_history_is_per_attempt(ledger):
    add(ledger)
    ledger.record("j1-1", S.FAILED)
    ledger.add_attempt("j1", attempt(n=2, cluster="b"))
    ledger.record("j1-2", S.RUNNING)
    assert [s for s, _, _ in ledger.history("j1-1")] == [S.PLACED, S.FAILED]
    assert [s for s, _, _ in ledger.history("j1-2")] == [S.PLACED, S.RUNNING]


# ----- the file ---------------------------------------------------------------------------------------------------


def test_the_ledger_file_is_readable_by_its_user_only(ledger, path):
    add(ledger)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_missing_directory_is_created_private(tmp_path):
    path = tmp_path / "deep" / "er" / "ledger.db"
    ledger = Ledger(path)
    try:
        assert path.exists()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        ledger.close()


def test_a_new_ledger_has_every_migration(ledger):
    assert ledger.schema_version == SCHEMA_VERSION == 7


def make_legacy_ledger(path, version: int) -> None:
    """A ledger as rayfleet wrote it before Alembic, at schema ``version``, holding one queued job."""
    conn = sqlite3.connect(path)
    for migration in LEGACY_MIGRATIONS[:version]:
        for statement in migration.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO jobs (id, created_at, entrypoint, request) VALUES ('old', 1.0, 'true', '{}')")
    conn.execute("INSERT INTO transitions (job_id, state, at) VALUES ('old', 'QUEUED', 1.0)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def schema_of(path) -> dict[str, list[tuple]]:
    """Every table's columns (name, type affinity, not null, default, primary key), indexes and triggers."""
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # a primary key counts as NOT NULL: the schemas before Alembic did not say it (SQLite then allows a NULL
        # key, which rayfleet never writes); Alembic's do
        shape = {n: sorted((c[1], c[2].upper().replace("FLOAT", "REAL"), c[3] or c[5], c[4], c[5])
                           for c in conn.execute(f"PRAGMA table_info({n})")) for n in names}  # fmt: skip
        shape["indexes"] = sorted(
            (r[0], r[1]) for r in conn.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index'")
        )
        shape["triggers"] = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        return shape
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(1, len(LEGACY_MIGRATIONS) + 1))
def test_a_ledger_from_before_alembic_is_migrated_keeps_its_jobs_and_ends_like_a_new_one(tmp_path, version):
    path = tmp_path / "old.db"
    make_legacy_ledger(path, version)

    ledger = Ledger(path)
    try:
        assert ledger.schema_version == SCHEMA_VERSION
        assert [(j.id, j.state) for j in ledger.jobs()] == [("old", S.QUEUED)]
        ledger.add_managed("c1", provisioner="k", template="t", namespace="ml", idle_ttl_s=60)
        assert [(c.name, c.state) for c in ledger.managed()] == [("c1", "CREATING")]
    finally:
        ledger.close()
    Ledger(tmp_path / "new.db").close()
    old, new = schema_of(path), schema_of(tmp_path / "new.db")
    old.pop("alembic_version"), new.pop("alembic_version")
    assert old == new
    with sqlite3.connect(path) as conn:  # an older rayfleet reads this version, and refuses a newer one
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_managed_clusters_move_through_their_states_and_saved_logs_outlive_them(ledger):
    add(ledger)
    ledger.add_managed("c1", provisioner="k", template="t", namespace="ml", idle_ttl_s=60)
    ledger.update_managed("c1", state="READY", address="http://127.0.0.1:1", labels={"managed": "true"}, ready_at=5.0)
    ledger.update_managed("c1", last_busy_at=100.0)
    [record] = ledger.managed()
    assert (record.state, record.address, record.labels, record.idle_deadline) == (
        "READY",
        "http://127.0.0.1:1",
        {"managed": "true"},
        160.0,
    )
    ledger.save_logs("j1-1", "final words")
    ledger.update_managed("c1", state="DELETED", ended_at=200.0)
    assert ledger.managed() == []
    assert [c.state for c in ledger.managed(live_only=False)] == ["DELETED"]
    assert (ledger.saved_logs("j1-1").text, ledger.saved_logs("j1-1").final) == ("final words", True)
    with pytest.raises(LedgerError, match="cannot update"):
        ledger.update_managed("c1", template="other")


def test_a_second_ledger_on_the_same_file_sees_the_same_jobs(ledger, path):
    add(ledger, "j1")
    ledger.record("j1-1", S.RUNNING)

    other = Ledger(path)
    try:
        assert other.schema_version == SCHEMA_VERSION
        assert [(j.id, j.state) for j in other.jobs()] == [("j1", S.RUNNING)]
        assert other.record("j1-1", S.SUCCEEDED) is True
        add(other, "j2", queued=True)
    finally:
        other.close()

    assert [(j.id, j.state) for j in ledger.jobs()] == [("j2", S.QUEUED), ("j1", S.SUCCEEDED)]
    assert ledger.record("j1-1", S.RUNNING) is False  # the other writer's terminal state holds here too


@pytest.mark.parametrize(
    "statement",
    ["UPDATE transitions SET state = 'RUNNING'", "DELETE FROM transitions"],
    ids=["update", "delete"],
)
def test_transitions_are_append_only(ledger, path, statement):
    add(ledger)
    ledger.record("j1-1", S.SUCCEEDED)

    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="transitions are append-only"):
            conn.execute(statement)
    finally:
        conn.close()
    assert [s for s, _, _ in ledger.history("j1-1")] == [S.PLACED, S.SUCCEEDED]


def test_a_ledger_with_a_newer_schema_is_refused(path):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    with pytest.raises(LedgerError) as info:
        Ledger(path)
    assert f"schema version 99, newer than this rayfleet knows ({SCHEMA_VERSION})" in str(info.value)
    assert "To fix: upgrade rayfleet" in str(info.value)


def test_a_path_that_cannot_be_a_database_is_refused(tmp_path):
    with pytest.raises(LedgerError, match=re.escape(f"cannot open the ledger at {tmp_path}")):
        Ledger(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({LEDGER_ENV: "/x/l.db", "XDG_DATA_HOME": "/xdg"}, "/x/l.db", id="ledger-env-wins"),
        pytest.param({"XDG_DATA_HOME": "/xdg"}, "/xdg/rayfleet/ledger.db", id="xdg-data-home"),
        pytest.param({"HOME": "/home/u"}, "/home/u/.local/share/rayfleet/ledger.db", id="home"),
    ],
)
def test_default_path(monkeypatch, env, expected):
    for name in (LEDGER_ENV, "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_path() == Path(expected)


# ----- the queue, placing again, verdicts -------------------------------------------------------------------------


def test_a_second_placement_of_the_same_turn_is_refused(ledger):
    add(ledger, queued=True)
    ledger.add_attempt("j1", attempt())
    with pytest.raises(AttemptConflict):  # another process placed attempt 1 first
        ledger.add_attempt("j1", attempt(cluster="b"))
    assert [a.cluster for a in ledger.job("j1").attempts] == ["a"]


def test_no_new_attempt_while_the_newest_one_is_active(ledger):
    add(ledger)
    ledger.record("j1-1", S.RUNNING)
    with pytest.raises(AttemptConflict):
        ledger.add_attempt("j1", attempt(n=2, cluster="b"))
    ledger.record("j1-1", S.UNKNOWN, "cluster a does not answer")
    with pytest.raises(AttemptConflict):  # unknown is not lost: only at-least-once replaces it
        ledger.add_attempt("j1", attempt(n=2, cluster="b"))
    ledger.add_attempt("j1", attempt(n=2, cluster="b"), replacing_unknown=True)
    assert ledger.job("j1").state is S.PLACED


def test_a_stopped_queued_job_cannot_be_placed(ledger):
    add(ledger, queued=True)
    assert ledger.record_job("j1", S.STOPPED, "cancelled") is True
    with pytest.raises(AttemptConflict):
        ledger.add_attempt("j1", attempt())
    assert ledger.queued() == []


def test_requeue_after_a_failed_attempt_makes_the_job_queued_again(ledger):
    add(ledger)
    assert ledger.requeue("j1", "no room") is False  # its attempt is still active
    ledger.record("j1-1", S.FAILED, "not reserved")
    assert ledger.requeue("j1", "no other cluster has room now") is True
    assert ledger.requeue("j1", "again") is False  # once
    job = ledger.job("j1")
    assert job.state is S.QUEUED and job.reason == "no other cluster has room now"
    assert [j.id for j in ledger.queued()] == ["j1"]
    ledger.add_attempt("j1", attempt(n=2, cluster="b"))
    assert ledger.job("j1").state is S.PLACED
    assert ledger.queued() == []


def test_a_lost_attempt_that_may_not_be_retried_fails_the_job_with_the_reason(ledger):
    add(ledger)
    ledger.record("j1-1", S.RUNNING)
    assert ledger.record_job("j1", S.FAILED, "lost") is False  # not while it runs
    ledger.record("j1-1", S.LOST, "cluster a restarted")
    assert ledger.record_job("j1", S.FAILED, "lost on a (cluster restarted); max_retries=0") is True
    job = ledger.job("j1")
    assert job.state is S.FAILED and job.reason.startswith("lost on a")
    assert job.attempts[0].state is S.LOST
    assert ledger.record_job("j1", S.FAILED, "twice") is False


def test_queued_lists_waiting_jobs_oldest_first_and_active_lists_running_ones(ledger):
    add(ledger, "q1", queued=True)
    add(ledger, "r1")
    add(ledger, "q2", queued=True)
    ledger.record("r1-1", S.RUNNING)
    assert [j.id for j in ledger.queued()] == ["q1", "q2"]
    assert [j.id for j in ledger.active()] == ["r1"]
    ledger.record("r1-1", S.SUCCEEDED)
    assert ledger.active() == []


def test_children_are_the_jobs_submitted_from_inside_a_job(ledger):
    add(ledger, "parent")
    ledger.add_job("child", entrypoint="x", request=REQUEST, parent_id="parent")
    ledger.add_job("other", entrypoint="x", request=REQUEST)
    assert [j.id for j in ledger.children("parent")] == ["child"]


def test_an_attempt_keeps_the_ray_session_it_was_submitted_into(ledger):
    add(ledger, attempt_extra={"session": "session_2026_x"})
    assert ledger.job("j1").attempts[0].session == "session_2026_x"


def test_add_managed_with_a_cap_counts_clusters_being_created_and_ready(ledger):
    record = dict(provisioner="k", template="t", namespace="ml", idle_ttl_s=60, cap=2)
    assert ledger.add_managed("c1", **record)
    assert ledger.add_managed("c2", **record)
    assert not ledger.add_managed("c3", **record)  # c1 CREATING and c2 CREATING fill the cap
    assert ledger.add_managed("other", **{**record, "provisioner": "p"})  # caps are per provisioner
    ledger.update_managed("c1", state="FAILED")
    assert ledger.add_managed("c3", **record)
    assert [c.name for c in ledger.managed()] == ["c2", "other", "c3"]


def test_two_creators_at_once_cannot_both_pass_the_cap(path):
    ledgers = [Ledger(path) for _ in range(6)]  # one connection each, as separate processes have
    start = threading.Barrier(len(ledgers))

    def create(i: int) -> bool:
        start.wait()
        return ledgers[i].add_managed(f"c{i}", provisioner="k", template="t", namespace="ml", idle_ttl_s=60, cap=1)

    try:
        with ThreadPoolExecutor(len(ledgers)) as pool:
            recorded = list(pool.map(create, range(len(ledgers))))
        assert recorded.count(True) == 1
        assert len(ledgers[0].managed()) == 1
    finally:
        for ledger in ledgers:
            ledger.close()


# ----- jobs waiting for a new cluster (PROVISIONING) --------------------------------------------------------------

NEW_JOB = {"entrypoint": "python train.py", "request": REQUEST, "runtime_env": None, "metadata": None}
NEW_JOB["parent_id"] = None


def new_cluster(name: str = "c1", cap: int | None = None) -> NewCluster:
    return NewCluster(name, provisioner="k", template="t", namespace="ml", idle_ttl_s=60, cap=cap)


def test_a_new_job_and_its_new_cluster_are_recorded_together(ledger):
    assert ledger.add_provisioning("j1", new_cluster(), "waiting for c1", job=NEW_JOB)
    job = ledger.job("j1")
    assert (job.state, job.awaits, job.reason, job.attempts) == (S.PROVISIONING, "c1", "waiting for c1", ())
    [record] = ledger.managed()
    assert (record.name, record.state, record.asked_at) == ("c1", "CREATING", None)
    assert [j.id for j in ledger.provisioning()] == ["j1"] and ledger.queued() == []


def test_at_the_cap_neither_the_job_nor_the_cluster_is_recorded(ledger):
    assert ledger.add_managed("c0", provisioner="k", template="t", namespace="ml", idle_ttl_s=60)
    assert not ledger.add_provisioning("j1", new_cluster(cap=1), "waiting", job=NEW_JOB)
    assert ledger.jobs() == [] and [c.name for c in ledger.managed()] == ["c0"]


def test_a_job_can_wait_for_a_cluster_being_created_but_not_for_one_that_failed(ledger):
    assert ledger.add_managed("c0", provisioner="k", template="t", namespace="ml", idle_ttl_s=60)
    assert ledger.add_provisioning("j1", "c0", "waiting for c0", job=NEW_JOB)
    assert ledger.job("j1").awaits == "c0"
    ledger.update_managed("c0", state="FAILED")
    assert not ledger.add_provisioning("j2", "c0", "waiting for c0", job=NEW_JOB)
    assert [j.id for j in ledger.jobs()] == ["j1"]


def test_a_provisioning_job_is_placed_requeued_or_stopped_once(ledger):
    assert ledger.add_provisioning("j1", new_cluster(), "waiting", job=NEW_JOB)
    ledger.add_attempt("j1", attempt())  # its cluster is ready: placed there
    assert ledger.job("j1").state is S.PLACED
    with pytest.raises(AttemptConflict):  # placed: nothing else may take it
        ledger.add_provisioning("j1", new_cluster("c2"), "waiting", job=None)
    assert ledger.add_provisioning("j2", new_cluster("c3"), "waiting", job=NEW_JOB)
    assert ledger.requeue("j2", "waiting: c3 failed") and ledger.job("j2").state is S.QUEUED
    assert ledger.add_provisioning("j2", new_cluster("c4"), "waiting for c4", job=None)
    assert ledger.record_job("j2", S.STOPPED, "stopped while PROVISIONING")
    assert not ledger.record_job("j2", S.FAILED) and ledger.job("j2").state is S.STOPPED


def test_a_commit_that_fails_is_undone_and_the_ledger_goes_on(ledger):
    # a COMMIT can fail (disk full, an I/O error); forced here with a foreign key checked only at commit
    with pytest.raises(sqlalchemy.exc.IntegrityError), ledger._tx() as tx:
        tx.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        tx.exec_driver_sql("INSERT INTO transitions (job_id, state, at) VALUES ('nobody', 'QUEUED', 1.0)")
    assert ledger.jobs() == []
    add(ledger)
    assert [j.id for j in ledger.jobs()] == ["j1"]


def test_a_checkpoint_is_replaced_by_the_next_save_and_says_when_it_was_taken(ledger):
    add(ledger)
    ledger.clock = lambda: 50.0
    ledger.save_logs("j1-1", "line 1\n", final=False)
    first = ledger.saved_logs("j1-1")
    ledger.clock = lambda: 80.0
    ledger.save_logs("j1-1", "line 1\nline 2\n", final=True)
    assert (first.text, first.saved_at, first.final) == ("line 1\n", 50.0, False)
    assert ledger.saved_logs("j1-1") == SavedLogs("line 1\nline 2\n", 80.0, True)
    assert ledger.saved_logs("j1-2") is None


def test_marks_on_clusters_are_kept_replaced_and_taken_off_by_kind(ledger):
    ledger.mark("gpu-a", CORDON, by="alice", reason="disk swap")
    ledger.mark("gpu-a", LAUNCHER_UNFIT, by="host:1", reason="no Ray in python", session="s1")
    ledger.mark("gpu-a", CORDON, by="bob", reason="still swapping")  # again: replaced
    assert [(m.cluster, m.kind, m.by, m.reason, m.session) for m in ledger.marks()] == [
        ("gpu-a", CORDON, "bob", "still swapping", None),
        ("gpu-a", LAUNCHER_UNFIT, "host:1", "no Ray in python", "s1"),
    ]
    assert ledger.unmark("gpu-a", [CORDON, DRAIN]) is True
    assert ledger.unmark("gpu-a", [CORDON, DRAIN]) is False
    assert [m.kind for m in ledger.marks()] == [LAUNCHER_UNFIT]
    with pytest.raises(LedgerError, match="unknown cluster mark 'paused'"):
        ledger.mark("gpu-a", "paused", by="x", reason="y")
