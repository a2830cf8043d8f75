-- Operators list transactions newest (or oldest) first, paged by (created_at, gid): this
-- index serves that order without sorting the table.
CREATE INDEX global_tx_created ON global_tx (created_at, gid);
