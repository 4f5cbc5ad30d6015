"""The schema migrations rayfleet ran before Alembic, verbatim: ledgers that exist on users' machines were made by
these (their version in SQLite's PRAGMA user_version), and a newer rayfleet must carry them on.
"""

LEGACY_MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, attempts, append-only transitions
    """
    CREATE TABLE jobs (
        id          TEXT PRIMARY KEY,
        created_at  REAL NOT NULL,
        entrypoint  TEXT NOT NULL,
        request     TEXT NOT NULL,            -- JSON: resources, labels, cluster pin, policy
        runtime_env TEXT,                     -- JSON, as given
        metadata    TEXT,                     -- JSON, as given
        parent_id   TEXT
    );
    CREATE TABLE attempts (
        submission_id TEXT PRIMARY KEY,
        job_id        TEXT NOT NULL REFERENCES jobs(id),
        n             INTEGER NOT NULL,
        cluster       TEXT NOT NULL,
        node_id       TEXT,
        accelerator   TEXT,
        created_at    REAL NOT NULL,
        UNIQUE (job_id, n)
    );
    CREATE TABLE transitions (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id        TEXT NOT NULL REFERENCES jobs(id),
        submission_id TEXT REFERENCES attempts(submission_id),
        state         TEXT NOT NULL,
        at            REAL NOT NULL,
        detail        TEXT
    );
    CREATE INDEX transitions_by_attempt ON transitions (submission_id, seq);
    CREATE INDEX transitions_by_job ON transitions (job_id, seq);
    CREATE INDEX jobs_by_time ON jobs (created_at);
    CREATE TRIGGER transitions_append_only_u BEFORE UPDATE ON transitions
        BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
    CREATE TRIGGER transitions_append_only_d BEFORE DELETE ON transitions
        BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
    """,
    # 2: clusters created on demand, and the logs of jobs saved before their cluster is deleted
    """
    CREATE TABLE managed_clusters (
        name         TEXT PRIMARY KEY,
        provisioner  TEXT NOT NULL,
        template     TEXT NOT NULL,
        namespace    TEXT NOT NULL DEFAULT '',
        state        TEXT NOT NULL,           -- CREATING, READY, DELETED, FAILED
        address      TEXT,
        labels       TEXT,                    -- JSON
        idle_ttl_s   REAL NOT NULL,
        created_at   REAL NOT NULL,
        ready_at     REAL,
        last_busy_at REAL,
        ended_at     REAL,
        detail       TEXT
    );
    CREATE TABLE saved_logs (
        submission_id TEXT PRIMARY KEY REFERENCES attempts(submission_id),
        saved_at      REAL NOT NULL,
        logs          TEXT NOT NULL
    );
    """,
    # 3: the Ray session an attempt was submitted into (a new session proves the attempt lost), and lookups by
    # cluster and by parent (stopping a job stops its children)
    """
    ALTER TABLE attempts ADD COLUMN session TEXT;
    CREATE INDEX attempts_by_cluster ON attempts (cluster);
    CREATE INDEX jobs_by_parent ON jobs (parent_id);
    """,
    # 4: the cluster a PROVISIONING job waits for, and when a managed cluster's creation was asked of its provisioner
    # (a CREATING record never asked was left by a creator that stopped in between: the next loop asks)
    """
    ALTER TABLE transitions ADD COLUMN cluster TEXT;
    ALTER TABLE managed_clusters ADD COLUMN asked_at REAL;
    """,
    # 5: holds follow the attempt: what an attempt holds until a probe shows it (its bundles, the node each was
    # placed on and that node's usage then), the latest time it may still be reserving, and its reservation once
    # its launcher reported it (when, and the node of each bundle)
    """
    ALTER TABLE attempts ADD COLUMN bundles TEXT;
    ALTER TABLE attempts ADD COLUMN hold_window_s REAL;
    ALTER TABLE attempts ADD COLUMN hold_until REAL;
    CREATE INDEX attempts_by_hold ON attempts (hold_until);
    CREATE TABLE reservations (
        submission_id TEXT PRIMARY KEY REFERENCES attempts(submission_id),
        reserved_at   REAL NOT NULL,
        nodes         TEXT NOT NULL       -- JSON: the node of each bundle, in bundle order
    );
    """,
    # 6: leases: one holder at a time of a duty (the dispatch loop), with an epoch that grows with each new holder and
    # an expiry; a writer acting under a lease has every transaction checked against it (`Ledger.fenced`)
    """
    CREATE TABLE leases (
        name       TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
)
