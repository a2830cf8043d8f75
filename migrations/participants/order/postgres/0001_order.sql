-- Orders: PENDING -> PAID (-> REFUNDING -> REFUNDED) or CANCELLED. The order id is the gid of
-- the purchase that created it.
CREATE TABLE orders (
    order_id   TEXT PRIMARY KEY NOT NULL,
    user_id    BIGINT NOT NULL,
    campaign   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    qty        BIGINT NOT NULL CHECK (qty > 0),
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    pay_with   TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- At most one live order per user and campaign: a second purchase is refused.
CREATE UNIQUE INDEX orders_one_live ON orders (user_id, campaign)
    WHERE status IN ('PENDING', 'PAID', 'REFUNDING');
