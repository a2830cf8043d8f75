-- Points: usable can be spent; frozen is held by a pending points payment; pending is a
-- reward granted by a purchase that has not committed yet.
CREATE TABLE points_account (
    user_id BIGINT PRIMARY KEY NOT NULL,
    usable  BIGINT NOT NULL CHECK (usable >= 0),
    frozen  BIGINT NOT NULL DEFAULT 0 CHECK (frozen >= 0),
    pending BIGINT NOT NULL DEFAULT 0 CHECK (pending >= 0)
);

-- One row per points movement; the unique key makes a replayed pay, refund or reward count
-- once.
CREATE TABLE points_log (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund', 'reward')),
    user_id      BIGINT NOT NULL,
    points       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (out_trade_no, type)
);
