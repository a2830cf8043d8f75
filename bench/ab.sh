#!/usr/bin/env bash
# An alternated A/B of two checkouts, each against its own floor: every round runs, for each
# checkout in turn (A first in odd rounds, B first in even ones), that checkout's
# bench/floor.sh — so the floor uses that checkout's schema — with that checkout's release
# bench. It prints each pair, then the medians of the bench throughputs and of the ratios.
# On a machine whose speed drifts, this is how to tell whether a change helped: compare the
# two columns of the same rounds, not runs from different hours.
#
#   git worktree add ../settle-old <commit>       # then build both with --release
#   bench/ab.sh ../settle-old .
#   ROUNDS=11 CLIENTS=8 bench/ab.sh ../settle-old .
#
# Environment: ROUNDS (5); CLIENTS, DURATION, PGHOST, PGPORT, PGUSER as for floor.sh;
# BENCH_A, BENCH_B (the bench binaries; default: target/release/examples/bench of each
# checkout).
set -euo pipefail

# shellcheck source=bench/checkouts.sh
. "$(dirname "$0")/checkouts.sh"
ROUNDS="${ROUNDS:-5}"

# One floor/bench pair in checkout $1 with bench binary $2; prints "floor bench".
pair() {
    local out floor bench
    out="$(cd "$1" && BENCH="$2" RUNS=1 bench/floor.sh 2>&1)" || { printf '%s\n' "${out}" >&2; return 1; }
    floor="$(printf '%s\n' "${out}" | awk '/^run 1: floor/ { print $(NF - 1) }')"
    bench="$(printf '%s\n' "${out}" | awk '/^run 1: bench/ { print $(NF - 1) }')"
    echo "${floor} ${bench}"
}

tps_a=() tps_b=() ratio_a=() ratio_b=()
for round in $(seq "${ROUNDS}"); do
    if [ $((round % 2)) -eq 1 ]; then
        read -r fa ba < <(pair "${A}" "${BENCH_A}")
        read -r fb bb < <(pair "${B}" "${BENCH_B}")
    else
        read -r fb bb < <(pair "${B}" "${BENCH_B}")
        read -r fa ba < <(pair "${A}" "${BENCH_A}")
    fi
    ra="$(awk -v b="${ba}" -v f="${fa}" 'BEGIN { printf "%.2f", b / f }')"
    rb="$(awk -v b="${bb}" -v f="${fb}" 'BEGIN { printf "%.2f", b / f }')"
    printf 'round %d  A: floor %s bench %s ratio %s   B: floor %s bench %s ratio %s\n' \
        "${round}" "${fa}" "${ba}" "${ra}" "${fb}" "${bb}" "${rb}"
    tps_a+=("${ba}") tps_b+=("${bb}") ratio_a+=("${ra}") ratio_b+=("${rb}")
done
printf 'median  A: bench %s ratio %s   B: bench %s ratio %s\n' \
    "$(median "${tps_a[@]}")" "$(median "${ratio_a[@]}")" \
    "$(median "${tps_b[@]}")" "$(median "${ratio_b[@]}")"
