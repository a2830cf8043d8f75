-- The barrier (DESIGN.md §4): one row per (gid, branch, op) that ran here. Inserted in the
-- same local transaction as the business writes, so a duplicate, a Cancel before its Try,
-- or a Try after its Cancel is recognised. created_at is epoch ms, for retention.
CREATE TABLE settle_barrier (
    gid        TEXT NOT NULL,
    branch_id  INTEGER NOT NULL,
    op         TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (gid, branch_id, op)
) STRICT;

CREATE INDEX settle_barrier_created ON settle_barrier (created_at);
