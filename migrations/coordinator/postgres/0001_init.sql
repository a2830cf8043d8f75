-- Global transactions. Times are epoch milliseconds from one clock: the database's.
-- next_attempt_at is when the recovery loop should next look at the row: the deadline while
-- TRYING, the retry time (or lease expiry while owned) in phase two, NULL once final.
CREATE TABLE global_tx (
    gid             TEXT PRIMARY KEY,
    mode            TEXT NOT NULL,
    status          TEXT NOT NULL,
    deadline        BIGINT NOT NULL,
    next_attempt_at BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    owner           TEXT,
    lease_until     BIGINT,
    version         BIGINT NOT NULL DEFAULT 0,
    branch_count    BIGINT NOT NULL DEFAULT 0,
    labels          TEXT NOT NULL DEFAULT '{}',
    reason          TEXT NOT NULL DEFAULT '',
    needs_attention BIGINT NOT NULL DEFAULT 0,
    paused          BIGINT NOT NULL DEFAULT 0,
    decided_at      BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- The due-work scan touches unfinished rows only.
CREATE INDEX global_tx_due ON global_tx (next_attempt_at)
    WHERE status NOT IN ('COMMITTED', 'ABORTED');
CREATE INDEX global_tx_finished ON global_tx (updated_at)
    WHERE status IN ('COMMITTED', 'ABORTED');

CREATE TABLE branch (
    gid                  TEXT NOT NULL REFERENCES global_tx (gid) ON DELETE CASCADE,
    branch_id            BIGINT NOT NULL,
    participant          TEXT NOT NULL,
    action               TEXT NOT NULL,
    payload              BYTEA NOT NULL,
    compensation_payload BYTEA,
    status               TEXT NOT NULL,
    attempts             BIGINT NOT NULL DEFAULT 0,
    last_error           TEXT,
    next_attempt_at      BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id)
);

CREATE INDEX branch_participant ON branch (participant, gid);

CREATE TABLE participant (
    name        TEXT PRIMARY KEY,
    endpoint    TEXT NOT NULL,
    lease_until BIGINT,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE audit (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gid    TEXT NOT NULL,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    note   TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_gid ON audit (gid, id);
