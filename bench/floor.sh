#!/usr/bin/env bash
# The floor and the ratio: runs pgbench with bench/floor.sql (the SQL a minimal coordinator
# must issue per global transaction in noop mode with 4 branches, as a naive log with three
# commits) on a fresh database, then the bench tool in noop mode with 4 branches on a fresh
# coordinator database on the same PostgreSQL, with the same client count and duration, and
# prints both throughputs and the ratio bench/floor — the figure of merit on a shared machine.
# With RUNS>1 the two alternate and the medians are compared. Each side starts after a
# CHECKPOINT, and the floor's database is dropped before the bench runs.
#
#   bench/floor.sh                        # 64 clients, 10 s, one run of each
#   CLIENTS=8 RUNS=3 bench/floor.sh
#   BENCH_ARGS="--external" bench/floor.sh
#   BENCH="target/release/examples/bench" bench/floor.sh   # a prebuilt bench, no cargo
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres) — trust auth or a
# ~/.pgpass is assumed; CLIENTS (64); THREADS (pgbench -j, 2); DURATION (10 s); WARMUP (bench
# warm-up, 2 s); RUNS (1); PGBENCH_MODE (query protocol: prepared, as the coordinator's
# driver uses prepared statements; `simple` is pgbench's default); FLOOR_DB (settle_floor_PID,
# dropped on exit); BENCH_DB_PREFIX (settle_floor_bench_PID; the bench drops its databases);
# the PID in the defaults keeps runs at the same time apart; BENCH (command running the bench tool; default
# `cargo run --release --example bench --`); BENCH_ARGS (extra bench flags); ONLY (`floor` or
# `bench` to run one side alone).
set -euo pipefail

cd "$(dirname "$0")/.."

export PGHOST="${PGHOST:-127.0.0.1}"
export PGPORT="${PGPORT:-5432}"
export PGUSER="${PGUSER:-postgres}"
CLIENTS="${CLIENTS:-64}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
RUNS="${RUNS:-1}"
PGBENCH_MODE="${PGBENCH_MODE:-prepared}"
FLOOR_DB="${FLOOR_DB:-settle_floor_$$}"
BENCH_DB_PREFIX="${BENCH_DB_PREFIX:-settle_floor_bench_$$}"
BENCH="${BENCH:-cargo run --quiet --release --example bench --}"
BENCH_ARGS="${BENCH_ARGS:-}"
ONLY="${ONLY:-}"
ADMIN_URL="postgres://${PGUSER}@${PGHOST}:${PGPORT}/postgres"

# The median of the numbers given as arguments.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}

# A fresh floor database with the coordinator's schema.
fresh_floor_db() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres \
        -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS ${FLOOR_DB} WITH (FORCE)" \
        -c "CREATE DATABASE ${FLOOR_DB}"
    for migration in migrations/coordinator/postgres/*.sql; do
        psql -X -q -v ON_ERROR_STOP=1 -d "${FLOOR_DB}" -f "${migration}"
    done
}

drop_floor_db() {
    psql -X -q -d postgres -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS ${FLOOR_DB} WITH (FORCE)" >/dev/null 2>&1 || true
}
trap drop_floor_db EXIT

# Both sides start with no dirty buffers left by the other: without this, writing out what one
# side dirtied (a checkpoint, or autovacuum on its tables) is paid by the next.
checkpoint() {
    psql -X -q -d postgres -c "CHECKPOINT" >/dev/null 2>&1 ||
        echo "floor.sh: warning: CHECKPOINT failed (not a superuser?)" >&2
}

run_floor() {
    fresh_floor_db
    checkpoint
    local out tps
    # pgbench exits non-zero when a client aborted: that run is no floor.
    if ! out="$(pgbench -n -M "${PGBENCH_MODE}" -f bench/floor.sql -c "${CLIENTS}" \
        -j "${THREADS}" -T "${DURATION}" "${FLOOR_DB}" 2>&1)"; then
        printf '%s\n' "${out}" >&2
        echo "floor.sh: pgbench failed" >&2
        exit 1
    fi
    tps="$(printf '%s\n' "${out}" | awk '/^tps = / { print $3; exit }')"
    if [ -z "${tps}" ]; then
        printf '%s\n' "${out}" >&2
        echo "floor.sh: pgbench printed no tps" >&2
        exit 1
    fi
    drop_floor_db
    echo "${tps}"
}

run_bench() {
    checkpoint
    local out tps
    # shellcheck disable=SC2086 # BENCH and BENCH_ARGS are word lists on purpose.
    out="$(${BENCH} --mode noop --branches 4 --postgres-admin "${ADMIN_URL}" \
        --db-prefix "${BENCH_DB_PREFIX}" --concurrency "${CLIENTS}" \
        --duration "${DURATION}" --warmup "${WARMUP}" ${BENCH_ARGS})"
    printf '%s\n' "${out}" | sed 's/^/    /' >&2
    tps="$(printf '%s\n' "${out}" | tail -n 1 | grep -o '"tps":[0-9.eE+-]*' | cut -d: -f2)"
    if [ -z "${tps}" ]; then
        echo "floor.sh: the bench printed no tps" >&2
        exit 1
    fi
    if ! printf '%s\n' "${out}" | tail -n 1 | grep -q '"errors":{}'; then
        echo "floor.sh: warning: the bench counted errors in this run (see above)" >&2
    fi
    echo "${tps}"
}

echo "PostgreSQL $(psql -X -At -d postgres -c 'SHOW server_version'), fsync=$(psql -X -At -d postgres -c 'SHOW fsync'), synchronous_commit=$(psql -X -At -d postgres -c 'SHOW synchronous_commit')"
echo "clients ${CLIENTS}, ${DURATION} s per run, ${RUNS} run(s) of each, pgbench -M ${PGBENCH_MODE}"

floors=()
benches=()
for run in $(seq 1 "${RUNS}"); do
    if [ "${ONLY}" != "bench" ]; then
        floor="$(run_floor)"
        floors+=("${floor}")
        echo "run ${run}: floor (pgbench) ${floor} tps"
    fi
    if [ "${ONLY}" != "floor" ]; then
        bench="$(run_bench)"
        benches+=("${bench}")
        echo "run ${run}: bench (noop)    ${bench} tps"
    fi
done

echo
if [ "${ONLY}" != "bench" ]; then
    floor="$(median "${floors[@]}")"
    echo "floor (pgbench, naive 3-commit log)  ${floor} tps   runs: ${floors[*]}"
fi
if [ "${ONLY}" != "floor" ]; then
    bench="$(median "${benches[@]}")"
    echo "bench (noop, 4 branches)             ${bench} tps   runs: ${benches[*]}"
fi
if [ -z "${ONLY}" ]; then
    awk -v b="${bench}" -v f="${floor}" \
        'BEGIN { printf "ratio bench/floor                    %.2f\n", b / f }'
fi
