-- Money in the smallest unit. balance is spendable; frozen is held by pending payments.
CREATE TABLE account (
    user_id INTEGER PRIMARY KEY NOT NULL,
    balance INTEGER NOT NULL CHECK (balance >= 0),
    frozen  INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0)
) STRICT;

-- One row per money movement; the unique key makes a replayed pay or refund count once.
CREATE TABLE pay_log (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund')),
    user_id      INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (out_trade_no, type)
) STRICT;
