-- A Try reserves all its Confirm needs (ARCHITECTURE.md, "The shop"):
-- * pay_log rows are written by Try as 'held', claiming the out_trade_no for that
--   transaction (gid) before anything is frozen; Confirm makes them 'done', Cancel deletes
--   them. Rows from before this migration are done, with no gid.
-- * incoming holds the money of refunds tried but not confirmed, so the room they need
--   under the limit is taken at Try.
-- * Every amount is bounded by the shop's limit (settle_participants::service::LIMIT,
--   10^15), an account's balance + frozen + incoming included.
-- SQLite adds a table constraint only by rebuilding the table.
CREATE TABLE account_bounded (
    user_id  INTEGER PRIMARY KEY NOT NULL,
    balance  INTEGER NOT NULL CHECK (balance >= 0 AND balance <= 1000000000000000),
    frozen   INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0 AND frozen <= 1000000000000000),
    incoming INTEGER NOT NULL DEFAULT 0 CHECK (incoming >= 0 AND incoming <= 1000000000000000),
    CHECK (balance + frozen + incoming <= 1000000000000000)
) STRICT;
INSERT INTO account_bounded (user_id, balance, frozen)
    SELECT user_id, balance, frozen FROM account;
DROP TABLE account;
ALTER TABLE account_bounded RENAME TO account;

CREATE TABLE pay_log_held (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund')),
    user_id      INTEGER NOT NULL,
    amount       INTEGER NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    created_at   INTEGER NOT NULL,
    gid          TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('held', 'done')),
    PRIMARY KEY (out_trade_no, type)
) STRICT;
INSERT INTO pay_log_held (out_trade_no, type, user_id, amount, created_at)
    SELECT out_trade_no, type, user_id, amount, created_at FROM pay_log;
DROP TABLE pay_log;
ALTER TABLE pay_log_held RENAME TO pay_log;
