-- Stock per SKU; initial counts every unit ever added, so
-- available + reserved + sold = initial always holds.
CREATE TABLE sku (
    sku       TEXT PRIMARY KEY NOT NULL,
    initial   INTEGER NOT NULL CHECK (initial >= 0),
    available INTEGER NOT NULL CHECK (available >= 0),
    reserved  INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold      INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0)
) STRICT;
