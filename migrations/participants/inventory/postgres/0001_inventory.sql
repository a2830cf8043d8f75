-- Stock per SKU; initial counts every unit ever added, so
-- available + reserved + sold = initial always holds.
CREATE TABLE sku (
    sku       TEXT PRIMARY KEY NOT NULL,
    initial   BIGINT NOT NULL CHECK (initial >= 0),
    available BIGINT NOT NULL CHECK (available >= 0),
    reserved  BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold      BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0)
);
