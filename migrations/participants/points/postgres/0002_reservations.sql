-- A Try reserves all its Confirm needs (ARCHITECTURE.md, "The shop"):
-- * points_log rows are written by Try as 'held', claiming the out_trade_no for that
--   transaction (gid) before anything is frozen or staged; Confirm makes them 'done',
--   Cancel deletes them. Rows from before this migration are done, with no gid.
-- * pending holds the points of rewards and refunds tried but not confirmed, so the room
--   they need under the limit is taken at Try.
-- * Every amount is bounded by the shop's limit (settle_participants::service::LIMIT,
--   10^15), an account's usable + frozen + pending included.
ALTER TABLE points_account ADD CONSTRAINT points_account_bounded CHECK (
    usable <= 1000000000000000 AND frozen <= 1000000000000000 AND pending <= 1000000000000000
    AND usable + frozen + pending <= 1000000000000000);
ALTER TABLE points_log ADD COLUMN gid TEXT NOT NULL DEFAULT '';
ALTER TABLE points_log ADD COLUMN state TEXT NOT NULL DEFAULT 'done'
    CHECK (state IN ('held', 'done'));
ALTER TABLE points_log ADD CONSTRAINT points_log_bounded CHECK (points > 0 AND points <= 1000000000000000);
