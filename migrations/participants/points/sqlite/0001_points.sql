-- Points: usable can be spent; frozen is held by a pending points payment; pending is a
-- reward granted by a purchase that has not committed yet.
CREATE TABLE points_account (
    user_id INTEGER PRIMARY KEY NOT NULL,
    usable  INTEGER NOT NULL CHECK (usable >= 0),
    frozen  INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0),
    pending INTEGER NOT NULL DEFAULT 0 CHECK (pending >= 0)
) STRICT;

-- One row per points movement; the unique key makes a replayed pay, refund or reward count
-- once.
CREATE TABLE points_log (
    out_trade_no TEXT NOT NULL,
    type         TEXT NOT NULL CHECK (type IN ('pay', 'refund', 'reward')),
    user_id      INTEGER NOT NULL,
    points       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (out_trade_no, type)
) STRICT;
