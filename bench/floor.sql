-- The floor: the SQL a minimal coordinator must issue per global transaction in the bench's
-- `noop` mode with 4 branches, written as a naive log with three commits per transaction,
-- on the real coordinator schema (migrations/coordinator/postgres). Run by bench/floor.sh:
--   pgbench -n -M prepared -f bench/floor.sql -c 64 -j 2 -T 10 settle_floor
-- 1. Begin with its branches: the global_tx row (TRYING) and its 4 branch rows (PENDING).
-- 2. The decision: TRYING -> COMMITTING, a compare-and-set taking the lease.
-- 3. The final state: the branches CONFIRMED and the transaction COMMITTED, fenced by the
--    owner and version the decision produced.
-- Time is the database's, in epoch milliseconds, as the coordinator computes it. Each
-- transaction gets a unique gid from the client id and a random 63-bit suffix.
\set r random(1, 9223372036854775806)
BEGIN;
INSERT INTO global_tx (gid, mode, status, deadline, next_attempt_at, branch_count, labels,
                       created_at, updated_at)
    VALUES ('floor-' || :client_id || '-' || :r, 'TCC', 'TRYING',
            (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT + 30000,
            (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT + 30000,
            4, '{}',
            (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT,
            (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT);
INSERT INTO branch (gid, branch_id, participant, action, payload, status, created_at, updated_at)
    SELECT 'floor-' || :client_id || '-' || :r, b, 'p' || (b - 1), 'noop', ''::BYTEA, 'PENDING',
           (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT,
           (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT
    FROM generate_series(1, 4) AS b;
COMMIT;
UPDATE global_tx SET status = 'COMMITTING', owner = 'floor', version = version + 1,
        lease_until = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT + 30000,
        next_attempt_at = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT + 30000,
        decided_at = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT,
        updated_at = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT
    WHERE gid = 'floor-' || :client_id || '-' || :r AND status = 'TRYING'
        AND deadline > (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT;
BEGIN;
UPDATE branch SET status = 'CONFIRMED', next_attempt_at = NULL,
        updated_at = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT
    WHERE gid = 'floor-' || :client_id || '-' || :r AND status = 'PENDING';
UPDATE global_tx SET status = 'COMMITTED', owner = NULL, lease_until = NULL,
        next_attempt_at = NULL,
        updated_at = (EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT
    WHERE gid = 'floor-' || :client_id || '-' || :r AND owner = 'floor' AND version = 1;
COMMIT;
