-- Quantities and amounts are bounded by the shop's limit
-- (settle_participants::service::LIMIT, 10^15).
ALTER TABLE orders ADD CONSTRAINT orders_bounded CHECK (qty <= 1000000000000000 AND amount <= 1000000000000000);
