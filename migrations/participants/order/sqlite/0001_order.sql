-- Orders: PENDING -> PAID (-> REFUNDING -> REFUNDED) or CANCELLED. The order id is the gid of
-- the purchase that created it.
CREATE TABLE orders (
    order_id   TEXT PRIMARY KEY NOT NULL,
    user_id    INTEGER NOT NULL,
    campaign   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    qty        INTEGER NOT NULL CHECK (qty > 0),
    amount     INTEGER NOT NULL CHECK (amount >= 0),
    pay_with   TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;

-- At most one live order per user and campaign: a second purchase is refused.
CREATE UNIQUE INDEX orders_one_live ON orders (user_id, campaign)
    WHERE status IN ('PENDING', 'PAID', 'REFUNDING');
