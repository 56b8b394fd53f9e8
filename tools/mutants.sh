#!/usr/bin/env bash
# Mutation testing: how many deliberate breakages of the pure code the tests
# catch. Needs cargo-mutants (`cargo install cargo-mutants --locked`).
#
#   tools/mutants.sh                 # http1, protocol, routing, then the orchestrator's pure modules
#   tools/mutants.sh http1           # one of: http1 protocol routing orchestrator
#
# Results go to target/mutants/{part}/mutants.out (caught.txt, missed.txt,
# timeout.txt, unviable.txt). On 2 cores: http1 about 8 minutes, protocol
# about 3, the routing table about 5, the orchestrator's modules about an hour (in place: each mutant
# rebuilds the crate incrementally and runs its unit tests; do not edit the
# tree meanwhile). Too slow for CI; run it after changing these.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2; exit 1; }

run() {
    local part=$1; shift
    echo "== $part"
    mkdir -p "target/mutants/$part"
    cargo mutants --timeout 120 -o "target/mutants/$part" "$@" || true
    local out="target/mutants/$part/mutants.out"
    printf '%s: caught %s, missed %s, timeout %s, unviable %s\n' "$part" \
        "$(wc -l < "$out/caught.txt")" "$(wc -l < "$out/missed.txt")" \
        "$(wc -l < "$out/timeout.txt")" "$(wc -l < "$out/unviable.txt")"
}

parts=("${@:-http1 protocol routing orchestrator}")
for part in ${parts[*]}; do
    case $part in
        http1) run http1 -p waifus-http1 -j 2 ;;
        protocol) run protocol -p waifus-protocol -j 2 ;;
        # Pure modules only: their unit tests are the measure (the
        # integration suite would take hours per run).
        routing) run routing -p waifus-routing -j 2 -f crates/routing/src/table.rs ;;
        orchestrator) run orchestrator -p orchestrator --in-place \
            -f crates/orchestrator/src/proxy/guard.rs \
            -f crates/orchestrator/src/proxy/headers.rs \
            -f crates/orchestrator/src/ownership/throttle.rs \
            -- --lib ;;
        *) echo "unknown part $part: http1, protocol, routing or orchestrator" >&2; exit 2 ;;
    esac
done
