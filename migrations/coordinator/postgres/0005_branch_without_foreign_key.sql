-- The store keeps branch rows tied to their transaction itself: every branch is inserted in
-- the statement or transaction that creates its global_tx row or takes a slot on it (which
-- locks that row), and retention deletes a purged transaction's branches with it. The
-- foreign key only repeated that check, and on PostgreSQL it costs a trigger per inserted
-- branch (a query and a row lock on global_tx): measured, it doubled the time of a batch of
-- Begins with four branches each (BENCHMARKS.md).
ALTER TABLE branch DROP CONSTRAINT branch_gid_fkey;
