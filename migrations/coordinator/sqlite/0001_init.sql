-- Global transactions. Times are epoch milliseconds from one clock.
-- next_attempt_at is when the recovery loop should next look at the row: the deadline while
-- TRYING, the retry time (or lease expiry while owned) in phase two, NULL once final.
CREATE TABLE global_tx (
    gid             TEXT PRIMARY KEY NOT NULL,
    mode            TEXT NOT NULL,
    status          TEXT NOT NULL,
    deadline        INTEGER NOT NULL,
    next_attempt_at INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    owner           TEXT,
    lease_until     INTEGER,
    version         INTEGER NOT NULL DEFAULT 0,
    branch_count    INTEGER NOT NULL DEFAULT 0,
    labels          TEXT NOT NULL DEFAULT '{}',
    reason          TEXT NOT NULL DEFAULT '',
    needs_attention INTEGER NOT NULL DEFAULT 0,
    paused          INTEGER NOT NULL DEFAULT 0,
    decided_at      INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

-- The due-work scan touches unfinished rows only.
CREATE INDEX global_tx_due ON global_tx (next_attempt_at)
    WHERE status NOT IN ('COMMITTED', 'ABORTED');
CREATE INDEX global_tx_finished ON global_tx (updated_at)
    WHERE status IN ('COMMITTED', 'ABORTED');

CREATE TABLE branch (
    gid                  TEXT NOT NULL REFERENCES global_tx (gid) ON DELETE CASCADE,
    branch_id            INTEGER NOT NULL,
    participant          TEXT NOT NULL,
    action               TEXT NOT NULL,
    payload              BLOB NOT NULL,
    compensation_payload BLOB,
    status               TEXT NOT NULL,
    attempts             INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    next_attempt_at      INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (gid, branch_id)
) STRICT;

CREATE INDEX branch_participant ON branch (participant, gid);

CREATE TABLE participant (
    name        TEXT PRIMARY KEY NOT NULL,
    endpoint    TEXT NOT NULL,
    lease_until INTEGER,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    gid    TEXT NOT NULL,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    note   TEXT NOT NULL DEFAULT ''
) STRICT;

CREATE INDEX audit_gid ON audit (gid, id);
