#!/usr/bin/env bash
# The other targets of BENCHMARKS.md, alternated between two checkouts the way bench/ab.sh
# alternates the floor ratio: noop PostgreSQL at concurrency 8 (p99), noop SQLite at 64
# (tps), the shop on PostgreSQL at 64 (purchases/s), ROUNDS times each with A first in odd
# rounds and B first in even ones; then `settled`'s peak RSS at 256 on each database, once
# per checkout. It prints every run, then the medians of each side.
#
#   git worktree add ../settle-old <commit>       # then build both with --release
#   bench/targets.sh ../settle-old .
#   ROUNDS=5 bench/targets.sh ../settle-old .
#
# Environment: ROUNDS (3); PG (postgres://postgres@127.0.0.1:5432/postgres, the server the
# bench creates its databases on); BENCH_A, BENCH_B (the bench binaries; default:
# target/release/examples/bench of each checkout, whose target/release/settled serves the
# RSS runs).
set -euo pipefail

# shellcheck source=bench/checkouts.sh
. "$(dirname "$0")/checkouts.sh"
ROUNDS="${ROUNDS:-3}"
PG="${PG:-postgres://postgres@127.0.0.1:5432/postgres}"

# The value of numeric field $1 in the JSON line $2.
field() {
    printf '%s\n' "$2" | grep -o "\"$1\":[0-9.]*" | cut -d: -f2
}

# One run of checkout $1's bench $2 with the remaining arguments; prints its JSON line.
run() {
    local dir="$1" bench="$2" out line
    shift 2
    out="$(cd "${dir}" && "${bench}" "$@" 2>&1)" || { printf '%s\n' "${out}" >&2; return 1; }
    line="$(printf '%s\n' "${out}" | grep '^{' | tail -n 1)"
    if ! printf '%s' "${line}" | grep -q '"errors":{}'; then
        echo "targets.sh: a run had errors: ${line}" >&2
        return 1
    fi
    printf '%s\n' "${line}"
}

declare -A values
record() { # side target value
    values["$1 $2"]="${values["$1 $2"]:-} $3"
}

for round in $(seq "${ROUNDS}"); do
    order="A B"
    [ $((round % 2)) -eq 0 ] && order="B A"
    for side in ${order}; do
        dir="${A}" bench="${BENCH_A}"
        [ "${side}" = B ] && dir="${B}" bench="${BENCH_B}"
        c8="$(run "${dir}" "${bench}" --concurrency 8 --postgres-admin "${PG}")"
        sqlite="$(run "${dir}" "${bench}" --concurrency 64)"
        shop="$(run "${dir}" "${bench}" --mode shop --concurrency 64 --postgres-admin "${PG}")"
        printf '%s\n' "${shop}" | grep -q '"invariants_hold":true' || {
            echo "targets.sh: the shop's invariants failed: ${shop}" >&2
            exit 1
        }
        printf 'round %d %s: c8 p99 %s ms (%s tps)  sqlite %s tps  shop %s/s\n' "${round}" \
            "${side}" "$(field p99_ms "${c8}")" "$(field tps "${c8}")" \
            "$(field tps "${sqlite}")" "$(field tps "${shop}")"
        record "${side}" c8 "$(field p99_ms "${c8}")"
        record "${side}" sqlite "$(field tps "${sqlite}")"
        record "${side}" shop "$(field tps "${shop}")"
    done
done
for side in A B; do
    dir="${A}" bench="${BENCH_A}"
    [ "${side}" = B ] && dir="${B}" bench="${BENCH_B}"
    pg="$(run "${dir}" "${bench}" --concurrency 256 --external --postgres-admin "${PG}")"
    sq="$(run "${dir}" "${bench}" --concurrency 256 --external)"
    # shellcheck disable=SC2086
    printf 'median %s: c8 p99 %s ms  sqlite %s tps  shop %s/s  rss %s MB PostgreSQL, %s MB SQLite\n' \
        "${side}" "$(median ${values["${side} c8"]})" "$(median ${values["${side} sqlite"]})" \
        "$(median ${values["${side} shop"]})" "$(field peak_rss_mb "${pg}")" \
        "$(field peak_rss_mb "${sq}")"
done
