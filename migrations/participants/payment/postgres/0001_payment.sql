-- Money in the smallest unit. balance is spendable; frozen is held by pending payments.
CREATE TABLE account (
    user_id BIGINT PRIMARY KEY NOT NULL,
    balance BIGINT NOT NULL CHECK (balance >= 0),
    frozen  BIGINT NOT NULL DEFAULT 0 CHECK (frozen >= 0)
);

-- One row per money movement; the unique key makes a replayed pay or refund count once.
CREATE TABLE pay_log (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund')),
    user_id      BIGINT NOT NULL,
    amount       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (out_trade_no, type)
);
