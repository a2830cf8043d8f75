-- Every count is bounded by the shop's limit (settle_participants::service::LIMIT, 10^15),
-- so no sum of counts can overflow and a restock beyond it is refused.
ALTER TABLE sku ADD CONSTRAINT sku_bounded CHECK (initial <= 1000000000000000);
