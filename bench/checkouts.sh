# Sourced by bench/ab.sh and bench/targets.sh: the two checkouts of an alternated A/B and
# their release benches, given as "$@" of the sourcing script; and `median`.
#   A, B                 the checkouts, as absolute paths
#   BENCH_A, BENCH_B     their bench binaries (default: target/release/examples/bench)

if [ "$#" -ne 2 ]; then
    echo "usage: $(basename "$0") CHECKOUT_A CHECKOUT_B" >&2
    exit 2
fi
A="$(cd "$1" && pwd)"
B="$(cd "$2" && pwd)"
BENCH_A="${BENCH_A:-${A}/target/release/examples/bench}"
BENCH_B="${BENCH_B:-${B}/target/release/examples/bench}"
for bench in "${BENCH_A}" "${BENCH_B}"; do
    [ -x "${bench}" ] || { echo "$(basename "$0"): ${bench} is missing; build with --release" >&2; exit 2; }
done

# The median of the numbers given.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'
}
