#!/usr/bin/env bash
# The hot-SKU comparison of BENCHMARKS.md ("Hot SKUs in Redis"): the flash sale, and the
# shop with ample stock, each on the database path and on the Redis path, alternated round
# by round, on PostgreSQL with 2 inventory replicas. Prints one line per run; the full
# outputs stay in $OUT.
#
#   cargo build --release --example flash_sale
#   bench/hot.sh
#   ROUNDS=5 BUYERS=50000 bench/hot.sh
#
# Environment: ROUNDS (3); UNITS (1000) and BUYERS (50000) for the sale; AMPLE (5000,
# units and buyers of the ample-stock run); PG (postgres://postgres@127.0.0.1:5432/postgres);
# REDIS (redis://127.0.0.1:6379); OUT (a new temporary directory); BIN
# (target/release/examples/flash_sale).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
UNITS="${UNITS:-1000}"
BUYERS="${BUYERS:-50000}"
AMPLE="${AMPLE:-5000}"
PG="${PG:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS="${REDIS:-redis://127.0.0.1:6379}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "${OUT}"
BIN="${BIN:-target/release/examples/flash_sale}"

# One run: $1 sale|ample, $2 db|redis, $3 round, then flash_sale's flags.
run() {
    local kind="$1" path="$2" round="$3" file
    shift 3
    file="${OUT}/${kind}-${path}-${round}.txt"
    if [ "${path}" = redis ]; then
        set -- "$@" --redis "${REDIS}"
    fi
    "${BIN}" --postgres "${PG}" --inventory-replicas 2 "$@" >"${file}" 2>&1
    printf '%s %s %s: %s\n' "${kind}" "${path}" "${round}" \
        "$(grep -E '^(throughput|latency|sold out|inventory |statements|invariants|VIOLATION)' "${file}" | tr -s ' ' | paste -sd ';')"
}

for round in $(seq "${ROUNDS}"); do
    # Odd rounds start with the database path, even ones with Redis.
    paths=(db redis)
    [ $((round % 2)) -eq 0 ] && paths=(redis db)
    for path in "${paths[@]}"; do
        run sale "${path}" "${round}" --units "${UNITS}" --buyers "${BUYERS}"
    done
done
for round in $(seq "${ROUNDS}"); do
    paths=(db redis)
    [ $((round % 2)) -eq 0 ] && paths=(redis db)
    for path in "${paths[@]}"; do
        run ample "${path}" "${round}" --units "${AMPLE}" --buyers "${AMPLE}" --double-click-every 0
    done
done
echo "outputs in ${OUT}"
