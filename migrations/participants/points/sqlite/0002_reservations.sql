-- A Try reserves all its Confirm needs (ARCHITECTURE.md, "The shop"):
-- * points_log rows are written by Try as 'held', claiming the out_trade_no for that
--   transaction (gid) before anything is frozen or staged; Confirm makes them 'done',
--   Cancel deletes them. Rows from before this migration are done, with no gid.
-- * pending holds the points of rewards and refunds tried but not confirmed, so the room
--   they need under the limit is taken at Try.
-- * Every amount is bounded by the shop's limit (settle_participants::service::LIMIT,
--   10^15), an account's usable + frozen + pending included.
-- SQLite adds a table constraint only by rebuilding the table.
CREATE TABLE points_account_bounded (
    user_id INTEGER PRIMARY KEY NOT NULL,
    usable  INTEGER NOT NULL CHECK (usable >= 0 AND usable <= 1000000000000000),
    frozen  INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0 AND frozen <= 1000000000000000),
    pending INTEGER NOT NULL DEFAULT 0 CHECK (pending >= 0 AND pending <= 1000000000000000),
    CHECK (usable + frozen + pending <= 1000000000000000)
) STRICT;
INSERT INTO points_account_bounded (user_id, usable, frozen, pending)
    SELECT user_id, usable, frozen, pending FROM points_account;
DROP TABLE points_account;
ALTER TABLE points_account_bounded RENAME TO points_account;

CREATE TABLE points_log_held (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund', 'reward')),
    user_id      INTEGER NOT NULL,
    points       INTEGER NOT NULL CHECK (points > 0 AND points <= 1000000000000000),
    created_at   INTEGER NOT NULL,
    gid          TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('held', 'done')),
    PRIMARY KEY (out_trade_no, type)
) STRICT;
INSERT INTO points_log_held (out_trade_no, type, user_id, points, created_at)
    SELECT out_trade_no, type, user_id, points, created_at FROM points_log;
DROP TABLE points_log;
ALTER TABLE points_log_held RENAME TO points_log;
