#!/usr/bin/env bash
# The one command that runs every Conveyor check and test (CI runs it via .ci/run).
#
#   scripts/test.sh [ARGS...]
#
# Phases, in order:
#   deps      scripts/install-deps.sh (apt packages, the nisshi broker, the Python venvs)
#   fmt       cargo fmt --all --check
#   clippy    cargo clippy --workspace --all-targets --locked -- -D warnings
#   unit      cargo build --workspace --locked --bins, then the unit tests (--lib)
#   embedded  integration suite (-p conveyor-engine --test it), CONVEYOR_IT_BACKENDS=embedded
#   fuzz      scripts/fuzz.sh: schemathesis against the daemon's /openapi.json (embedded backends)
#   real      scripts/services.sh up, then the suite again with CONVEYOR_IT_BACKENDS=real
#   docker    scripts/check-docker.sh: Docker and monitoring files, as Rust tests (testkit/tests/docker)
# embedded and real export CONVEYOR_STANDARDWEBHOOKS_PYTHON: the suite checks webhook signatures
# with it (scripts/verify-webhooks.py); installed by deps, or on demand when TEST_ONLY skips deps.
# Services this run starts are stopped on exit, pass or fail (ones already all up are left).
#
# Env:
#   TEST_ONLY=embedded|real|<comma list of phases>  run only those phases (local iteration)
#   TEST_THREADS=N      parallel tests per suite (default 2: this is a 2-core machine)
#   KEEP_SERVICES=1     leave the services running at exit
# ARGS go to every nextest run (e.g. a test filter, or -E 'test(/ingest/)'); the unit
# run tolerates a filter that matches none of its tests. Without cargo-nextest,
# `cargo test` is used and ARGS go after its `--`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ALL_PHASES=(deps fmt clippy unit embedded fuzz real docker)
TEST_THREADS=${TEST_THREADS:-2}
EXTRA_ARGS=("$@")
# Env the daemon and the test harness read; the embedded run must not inherit them.
BACKEND_VARS=(CONVEYOR_STORE__URL CONVEYOR_CACHE__URL CONVEYOR_LOG__BACKEND CONVEYOR_LOG__KAFKA__BROKERS
    CONVEYOR_TEST_PG_URL CONVEYOR_TEST_REDIS_URL CONVEYOR_TEST_KAFKA_BROKERS
    CONVEYOR_TEST_PG_TLS_URL CONVEYOR_TEST_REDIS_TLS_URL CONVEYOR_TEST_TLS_CA)

say() { printf '%s\n' "$*" >&2; }
die() { say "test.sh: ERROR: $*"; exit 2; }
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# ------------------------------------------------------------ phase selection
if [[ -n ${TEST_ONLY:-} ]]; then
    IFS=', ' read -r -a PHASES <<<"$TEST_ONLY"
    for p in "${PHASES[@]}"; do
        [[ " ${ALL_PHASES[*]} " == *" $p "* ]] || die "TEST_ONLY: unknown phase '$p' (phases: ${ALL_PHASES[*]})"
    done
else
    PHASES=("${ALL_PHASES[@]}")
fi
wanted() { [[ " ${PHASES[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------ bookkeeping
SUMMARY=()
CURRENT=""
PHASE_START=0
RUN_START=$SECONDS
SERVICES_STARTED_HERE=0

begin() { # name description
    CURRENT=$1; PHASE_START=$SECONDS
    say ""
    say "==================================================================="
    say "== [$1] $2   ($(date '+%H:%M:%S'))"
    say "==================================================================="
}
end() {
    local took=$((SECONDS - PHASE_START))
    SUMMARY+=("$(printf '  %-10s ok      %s' "$CURRENT" "$(fmt_secs "$took")")")
    say "== [$CURRENT] ok in $(fmt_secs "$took")"
    CURRENT=""
}
skip() { SUMMARY+=("$(printf '  %-10s skipped' "$1")"); }

on_exit() {
    local rc=$?
    set +e
    if [[ -n $CURRENT ]]; then
        SUMMARY+=("$(printf '  %-10s FAILED  %s (exit %d)' "$CURRENT" "$(fmt_secs $((SECONDS - PHASE_START)))" "$rc")")
    fi
    local p
    for p in "${ALL_PHASES[@]}"; do # phases the failure kept from running
        [[ " ${SUMMARY[*]} " == *" $p "* ]] && continue
        if wanted "$p"; then SUMMARY+=("$(printf '  %-10s not run' "$p")"); else skip "$p"; fi
    done
    if [[ $SERVICES_STARTED_HERE -eq 1 && ${KEEP_SERVICES:-0} != 1 ]]; then
        say ""; say "== stopping services"
        scripts/services.sh down || say "test.sh: services.sh down failed"
    fi
    say ""
    say "=========================== summary ==============================="
    printf '%s\n' "${SUMMARY[@]}" >&2
    say "  total      $(fmt_secs $((SECONDS - RUN_START)))"
    if [[ $rc -eq 0 ]]; then say "  RESULT: PASS"; else say "  RESULT: FAIL (phase ${CURRENT:-?}, exit $rc)"; fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ test runners
have_nextest() { cargo nextest --version >/dev/null 2>&1; }

run_unit_tests() {
    if have_nextest; then
        cargo nextest run --workspace --lib --bins --locked --no-tests=warn \
            --test-threads "$TEST_THREADS" "${EXTRA_ARGS[@]}"
    else
        say "cargo-nextest not found; using cargo test"
        cargo test --workspace --lib --bins --locked -- --test-threads "$TEST_THREADS" "${EXTRA_ARGS[@]}"
    fi
}

# Each backend has a nextest profile (.config/nextest.toml) leaving out the other's tests:
# real_* need the services, embedded_* test the embedded backends; nextest lists them as
# skipped. Without nextest, --skip does the same.
run_integration() { # backends
    say "CONVEYOR_IT_BACKENDS=$1"
    local other=real_
    [[ $1 == real ]] && other=embedded_
    if have_nextest; then
        CONVEYOR_IT_BACKENDS=$1 cargo nextest run -p conveyor-engine --test it --locked --profile "$1" \
            --test-threads "$TEST_THREADS" "${EXTRA_ARGS[@]}"
    else
        CONVEYOR_IT_BACKENDS=$1 cargo test -p conveyor-engine --test it --locked \
            -- --test-threads "$TEST_THREADS" --skip "::$other" "${EXTRA_ARGS[@]}"
    fi
}

# The python of the standardwebhooks venv, which runs scripts/verify-webhooks.py for the suite
# (an independent check of our webhook signatures). Instant once deps installed it; installs it
# when TEST_ONLY skipped deps. Inside a phase, so a failure here is that phase's.
export_webhooks_python() {
    CONVEYOR_STANDARDWEBHOOKS_PYTHON=$(scripts/install-deps.sh standardwebhooks-python)
    export CONVEYOR_STANDARDWEBHOOKS_PYTHON
    say "CONVEYOR_STANDARDWEBHOOKS_PYTHON=$CONVEYOR_STANDARDWEBHOOKS_PYTHON"
}

# ------------------------------------------------------------ phases
say "test.sh: phases: ${PHASES[*]}; test threads: $TEST_THREADS${EXTRA_ARGS[*]:+; extra args: ${EXTRA_ARGS[*]}}"

if wanted deps; then
    begin deps "install dependencies (nisshi first: the long pole)"
    scripts/install-deps.sh
    end
else skip deps; fi

if wanted fmt; then
    begin fmt "cargo fmt --all --check"
    cargo fmt --all --check
    end
else skip fmt; fi

if wanted clippy; then
    begin clippy "cargo clippy --workspace --all-targets --locked -- -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    end
else skip clippy; fi

if wanted unit; then
    begin unit "cargo build --workspace --bins, then unit tests"
    cargo build --workspace --locked --bins
    run_unit_tests
    end
else skip unit; fi

if wanted embedded; then
    begin embedded "integration suite on embedded backends"
    for v in "${BACKEND_VARS[@]}"; do unset "$v"; done
    export_webhooks_python
    # The status page and console tests write them; an old file proves nothing.
    rm -f target/screenshots/admin-status.png target/screenshots/console-*.png
    run_integration embedded
    if [[ -s target/screenshots/admin-status.png ]]; then
        say "status page screenshot (headless Chromium): $ROOT/target/screenshots/admin-status.png"
    elif ((${#EXTRA_ARGS[@]} == 0)); then
        die "the status page test produced no screenshot (target/screenshots/admin-status.png)"
    fi
    for page in status stuck-keys dead-letters webhooks workflows; do
        if [[ -s target/screenshots/console-$page.png ]]; then
            say "console screenshot (WebDriver): $ROOT/target/screenshots/console-$page.png"
        elif ((${#EXTRA_ARGS[@]} == 0)); then
            die "the console test produced no screenshot (target/screenshots/console-$page.png)"
        fi
    done
    end
else skip embedded; fi

if wanted fuzz; then
    begin fuzz "contract fuzzing of a live daemon (scripts/fuzz.sh; reports in target/fuzz/)"
    scripts/fuzz.sh # target/debug/conveyor, built by the unit phase
    end
else skip fuzz; fi

if wanted real; then
    begin services "scripts/services.sh up (PostgreSQL, Redis, nisshi)"
    if ! scripts/services.sh status >/dev/null 2>&1; then SERVICES_STARTED_HERE=1; fi
    env_lines=$(scripts/services.sh up)
    eval "$env_lines"
    say "$env_lines"
    end
    begin real "integration suite on real backends"
    export_webhooks_python
    run_integration real
    end
else skip real; fi

if wanted docker; then
    begin docker "scripts/check-docker.sh"
    scripts/check-docker.sh
    end
else skip docker; fi
