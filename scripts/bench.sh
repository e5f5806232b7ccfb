#!/usr/bin/env bash
# Conveyor's benchmarks (not tests): build release, run, print the numbers, write JSON.
#
#   scripts/bench.sh [ingest|processing|keys|webhooks|ordered|soak|all] [ARGS...]
#
#   keys        key-level concurrency inside one partition, in-process (embedded log)
#   ingest      POST /events: the daemon vs a bare hyper server, both under wrk, and the p99 at
#               half the maximum rate (embedded backends; `--backend real` for Kafka/PostgreSQL/
#               Redis, with a raw acks=all producer baseline; `--backend both`; `--runs N`)
#   processing  pre-filled Kafka topic → PostgreSQL rows, 400k unique keys and a coalescing run:
#               the daemon vs a raw consumer, raw single-row and raw batched upserts; steady
#               state apart from start-up (starts the services with scripts/services.sh up)
#   webhooks    signed deliveries/s to a local sink vs a raw hyper client posting the same
#               body, then 9 healthy endpoints + 1 that never answers (embedded backends)
#   ordered     per-key FIFO webhook delivery: K = 1, 10, 100, 1000 keys to a sink with a 20 ms
#               round trip vs min(K / RTT, the unordered rate) (`--backend real|both`)
#   soak        3 million events through the embedded daemon with small retention: RSS, open
#               files, data directory size and row counts sampled; slope per million events
#               (several minutes; not part of `all`)
#   all         keys, ingest (both backends), processing (3 runs each, median ratio), webhooks,
#               ordered (the default), then one summary table of every ratio (also into README.md)
#   summary     only that table, from the JSON already in the results directory
# ARGS go to the benchmark's subcommand (one benchmark only), e.g.
#   scripts/bench.sh ingest --duration 10 --connections 64
#   scripts/bench.sh processing --scenario unique --unique-events 100000
# See `target/release/conveyor-bench <name> --help` for every option.
#
# Results: bench/results/<name>.json and summary.md (override the directory with
# CONVEYOR_BENCH_RESULTS). The binaries are taken from $CARGO_TARGET_DIR (default target/).
# Env: KEEP_SERVICES=1 leaves services this script started running at exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '%s\n' "$*" >&2; }
die() { say "bench.sh: ERROR: $*"; exit 2; }
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; }

WHAT=${1:-all}
[[ $# -gt 0 ]] && shift
EXTRA_ARGS=("$@")
case $WHAT in
    ingest|processing|keys|webhooks|ordered|soak) BENCHES=("$WHAT") ;;
    summary) BENCHES=() ;;
    all) BENCHES=(keys ingest processing webhooks ordered)
         [[ ${#EXTRA_ARGS[@]} -eq 0 ]] || die "extra arguments need a single benchmark, not 'all'" ;;
    -h|--help|help) usage; exit 0 ;;
    *) usage; die "unknown benchmark '$WHAT'" ;;
esac

RESULTS=${CONVEYOR_BENCH_RESULTS:-$ROOT/bench/results}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/conveyor-bench
# `all` measures ingest on both backends, median of 3 runs each.
ALL_INGEST_ARGS=(--backend both --runs "${BENCH_RUNS:-3}")
ALL_PROCESSING_ARGS=(--runs "${BENCH_RUNS:-3}")
SERVICES_STARTED_HERE=0

on_exit() {
    local rc=$?
    set +e
    if [[ $SERVICES_STARTED_HERE -eq 1 && ${KEEP_SERVICES:-0} != 1 ]]; then
        say "== stopping services this run started"
        scripts/services.sh down || say "bench.sh: services.sh down failed"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

needs_services() { # bench
    case $1 in
        processing) return 0 ;;
        ingest|ordered) [[ $WHAT == all || " ${EXTRA_ARGS[*]:-} " == *" --backend real "* || " ${EXTRA_ARGS[*]:-} " == *" --backend=real "* \
                   || " ${EXTRA_ARGS[*]:-} " == *" --backend both "* || " ${EXTRA_ARGS[*]:-} " == *" --backend=both "* ]] ;;
        *) return 1 ;;
    esac
}

if [[ $WHAT != summary ]]; then
    say "== building release: conveyor-engine, conveyor-bench"
    cargo build --release -p conveyor-engine -p conveyor-bench --locked
fi

if [[ " ${BENCHES[*]:-} " == *" ingest "* || " ${BENCHES[*]} " == *" soak "* ]] && ! command -v wrk >/dev/null; then
    say "== installing wrk"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
    else
        sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
    fi
    command -v wrk >/dev/null || die "wrk is still missing"
fi

services_up=0
for b in "${BENCHES[@]:-}"; do
    [[ -n $b ]] || continue
    if needs_services "$b" && [[ $services_up -eq 0 ]]; then
        say "== scripts/services.sh up (PostgreSQL, Redis, Kafka)"
        if ! scripts/services.sh status >/dev/null 2>&1; then SERVICES_STARTED_HERE=1; fi
        env_lines=$(scripts/services.sh up)
        eval "$env_lines"
        say "$env_lines"
        services_up=1
    fi
done

WRITTEN=()
for b in "${BENCHES[@]:-}"; do
    [[ -n $b ]] || continue
    say ""
    say "==================================================================="
    say "== bench: $b   ($(date '+%H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg))"
    say "==================================================================="
    args=("${EXTRA_ARGS[@]}")
    [[ $WHAT == all && $b == ingest ]] && args=("${ALL_INGEST_ARGS[@]}")
    [[ $WHAT == all && $b == processing ]] && args=("${ALL_PROCESSING_ARGS[@]}")
    CONVEYOR_BENCH_RESULTS=$RESULTS "$BIN" "$b" "${args[@]}"
    WRITTEN+=("$RESULTS/$b.json")
done

if [[ $WHAT == all || $WHAT == summary ]]; then
    # The README shows the table of the project's own results directory only.
    readme=()
    [[ $RESULTS == "$ROOT/bench/results" ]] && readme=(--readme "$ROOT/README.md")
    CONVEYOR_BENCH_RESULTS=$RESULTS "$BIN" summary "${readme[@]}"
    WRITTEN+=("$RESULTS/summary.md")
fi

say ""
say "== results written:"
for f in "${WRITTEN[@]:-}"; do [[ -n $f ]] && say "  $f"; done
