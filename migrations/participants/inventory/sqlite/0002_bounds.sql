-- Every count is bounded by the shop's limit (settle_participants::service::LIMIT, 10^15),
-- so no sum of counts can overflow and a restock beyond it is refused. SQLite adds a table
-- constraint only by rebuilding the table.
CREATE TABLE sku_bounded (
    sku       TEXT PRIMARY KEY NOT NULL,
    initial   INTEGER NOT NULL CHECK (initial >= 0 AND initial <= 1000000000000000),
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold      INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
) STRICT;
INSERT INTO sku_bounded (sku, initial, available, reserved, sold)
    SELECT sku, initial, available, reserved, sold FROM sku;
DROP TABLE sku;
ALTER TABLE sku_bounded RENAME TO sku;
