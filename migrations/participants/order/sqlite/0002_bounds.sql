-- Quantities and amounts are bounded by the shop's limit
-- (settle_participants::service::LIMIT, 10^15). SQLite adds a table constraint only by
-- rebuilding the table.
CREATE TABLE orders_bounded (
    order_id   TEXT PRIMARY KEY NOT NULL,
    user_id    INTEGER NOT NULL,
    campaign   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    qty        INTEGER NOT NULL CHECK (qty > 0 AND qty <= 1000000000000000),
    amount     INTEGER NOT NULL CHECK (amount >= 0 AND amount <= 1000000000000000),
    pay_with   TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
INSERT INTO orders_bounded SELECT order_id, user_id, campaign, sku, qty, amount, pay_with,
    status, created_at, updated_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_bounded RENAME TO orders;
CREATE UNIQUE INDEX orders_one_live ON orders (user_id, campaign)
    WHERE status IN ('PENDING', 'PAID', 'REFUNDING');
