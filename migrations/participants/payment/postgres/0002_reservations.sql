-- A Try reserves all its Confirm needs (ARCHITECTURE.md, "The shop"):
-- * pay_log rows are written by Try as 'held', claiming the out_trade_no for that
--   transaction (gid) before anything is frozen; Confirm makes them 'done', Cancel deletes
--   them. Rows from before this migration are done, with no gid.
-- * incoming holds the money of refunds tried but not confirmed, so the room they need
--   under the limit is taken at Try.
-- * Every amount is bounded by the shop's limit (settle_participants::service::LIMIT,
--   10^15), an account's balance + frozen + incoming included.
ALTER TABLE account ADD COLUMN incoming BIGINT NOT NULL DEFAULT 0 CHECK (incoming >= 0);
ALTER TABLE account ADD CONSTRAINT account_bounded CHECK (
    balance <= 1000000000000000 AND frozen <= 1000000000000000 AND incoming <= 1000000000000000
    AND balance + frozen + incoming <= 1000000000000000);
ALTER TABLE pay_log ADD COLUMN gid TEXT NOT NULL DEFAULT '';
ALTER TABLE pay_log ADD COLUMN state TEXT NOT NULL DEFAULT 'done'
    CHECK (state IN ('held', 'done'));
ALTER TABLE pay_log ADD CONSTRAINT pay_log_bounded CHECK (amount > 0 AND amount <= 1000000000000000);
