#!/usr/bin/env bash
# Contract fuzzing of a live daemon: schemathesis generates requests from the daemon's own
# OpenAPI document (/openapi.json) and checks every answer against it.
#
#   scripts/fuzz.sh [--binary PATH]     # default: target/debug/conveyor
#
# Starts the daemon on the embedded backends in a fresh temporary data dir (no services,
# inherited CONVEYOR_* variables dropped), mints one token per role (admin, user, device),
# runs `st run` once per token, stops the daemon, and prints a summary (also written to
# target/fuzz/summary.txt). Exits 1 when any run found failures or errors, 2 when the daemon
# did not start or serves no /openapi.json.
#
# Reports, under target/fuzz/ (emptied at the start):
#   summary.txt  daemon.log  ROLE/junit.xml  ROLE/report.json  ROLE/st.log
# Each failure in ROLE/st.log comes with a curl command that re-sends it (token filtered out).
#
# Env:
#   FUZZ_MAX_EXAMPLES=N   test cases per operation and phase (default 25)
#   FUZZ_SEED=N           random seed, for reproducible runs (default 1)
#   FUZZ_PHASES=LIST      schemathesis phases (default: all of examples,coverage,fuzzing,stateful)
#   FUZZ_RUN_TIMEOUT=S    safety net: a run still going after S seconds is killed (default 600)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[fuzz] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit "${1:-64}"; }

BINARY=$ROOT/target/debug/conveyor
while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) [[ $# -ge 2 ]] || usage; BINARY=$2; shift 2 ;;
        --binary=*) BINARY=${1#--binary=}; shift ;;
        -h|--help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ -x $BINARY ]] || die "no executable at $BINARY (build it first: cargo build --bins)"
BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY") # relative to the caller's cwd
cd "$ROOT"

MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-25}
SEED=${FUZZ_SEED:-1}
PHASES=${FUZZ_PHASES:-}
RUN_TIMEOUT=${FUZZ_RUN_TIMEOUT:-600}
SECRET=fuzz-secret
OUT_DIR=$ROOT/target/fuzz
START_TIMEOUT=60
# role:roles-claim, one schemathesis run each.
ROLES=("admin:admin,user" "user:user" "device:device")

# ------------------------------------------------------------ tools
# Same interpreter choice as install-deps.sh: a pyenv shim on PATH may not be there on CI.
if [[ -x /usr/bin/python3 ]]; then PY=/usr/bin/python3
else PY=$(command -v python3) || die "python3 not found"; fi

# Idempotent and instant when the venv is there; installs it on a fresh machine.
# (Before the CONVEYOR_* clean-up below: it reads CONVEYOR_CACHE_DIR.)
scripts/install-deps.sh schemathesis
ST_VERSION=$(sed -n 's/^SCHEMATHESIS_VERSION=//p' scripts/install-deps.sh)
ST_VENV=${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}/schemathesis-$ST_VERSION
if [[ -x $ST_VENV/bin/st ]]; then ST=$ST_VENV/bin/st; else ST=$ST_VENV/bin/schemathesis; fi
[[ -x $ST ]] || die "schemathesis $ST_VERSION not found in $ST_VENV"

# ------------------------------------------------------------ daemon environment
# Nothing inherited (a developer's backends, ports, secrets) may reach the daemon.
while IFS= read -r v; do unset "$v"; done < <(compgen -e | grep '^CONVEYOR_' || true)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/conveyor-fuzz.XXXXXX")
DATA_DIR=$WORK/data
mkdir -p "$DATA_DIR"
export CONVEYOR_DATA_DIR=$DATA_DIR
export CONVEYOR_HTTP__ADDR=127.0.0.1:0
export CONVEYOR_AUTH__JWT_SECRET=$SECRET
export CONVEYOR_RATE_LIMIT__ENABLED=false
export CONVEYOR_TELEMETRY__LOG_FORMAT=json
export CONVEYOR_AUTH__PASSWORD__ARGON2_MEMORY_KIB=4096
export CONVEYOR_AUTH__PASSWORD__ARGON2_ITERATIONS=1

DAEMON_PID=""
stop_daemon() {
    [[ -n $DAEMON_PID ]] || return 0
    local pid=$DAEMON_PID waited=0
    DAEMON_PID=""
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    log "stopping the daemon (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # The daemon drains within its grace period (30 s); don't let a hang stall CI.
    while kill -0 "$pid" 2>/dev/null && ((waited < 450)); do sleep 0.1; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        log "daemon still running after 45 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
on_exit() {
    local rc=$?
    set +e
    stop_daemon
    rm -rf "$WORK"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"

# ------------------------------------------------------------ start the daemon
# In the data dir, so a ./config.toml wherever this was started from is not read.
log "starting $BINARY (data dir $DATA_DIR; log: target/fuzz/daemon.log)"
(cd "$DATA_DIR" && exec "$BINARY" serve) >"$WORK/daemon.out" 2>"$OUT_DIR/daemon.log" &
DAEMON_PID=$!

BASE=""
deadline=$((SECONDS + START_TIMEOUT))
while [[ -z $BASE ]]; do
    BASE=$(sed -n 's|^conveyor listening on \(http://[^[:space:]]*\).*|\1|p' "$WORK/daemon.out" | head -n 1)
    [[ -n $BASE ]] && break
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        tail -n 40 "$OUT_DIR/daemon.log" >&2
        die "the daemon exited before listening (log above)"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 40 "$OUT_DIR/daemon.log" >&2
        die "no 'conveyor listening on' line within ${START_TIMEOUT}s (log above)"
    fi
    sleep 0.2
done
log "daemon listening on $BASE"

# GET URL: prints the HTTP status (000 when unreachable).
http_status() {
    "$PY" - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

# Requests before the daemon owns its partitions would get 503s that are no finding.
while :; do
    status=$(http_status "$BASE/ready")
    [[ $status == 200 ]] && break
    [[ $status == 404 ]] && { log "no /ready route: not waiting for readiness"; break; }
    ((SECONDS < deadline)) || die "/ready still answers $status after ${START_TIMEOUT}s"
    sleep 0.5
done
status=$(http_status "$BASE/openapi.json")
[[ $status == 200 ]] || die "GET $BASE/openapi.json answered $status: this daemon serves no OpenAPI document"

# ------------------------------------------------------------ tokens
mint() { # sub roles
    local out
    out=$(cd "$DATA_DIR" && "$BINARY" token mint --sub "$1" --roles "$2" --ttl 1h) ||
        die "token mint --sub $1 --roles $2 failed"
    out=$(printf '%s\n' "$out" | tail -n 1 | tr -d '[:space:]')
    [[ -n $out ]] || die "token mint --sub $1 printed no token"
    printf '%s' "$out"
}

# ------------------------------------------------------------ fuzz, once per role
# --checks all: every check applies to Conveyor's API. The two about data acceptance keep
# schemathesis's default expectations, which already fit it: positive_data_acceptance allows
# 401/403/404/409/429 (a user token on an admin route, an unknown id), negative_data_rejection
# wants a 4xx (axum's extractors answer 400/415/422). object_level_authorization needs several
# identities in one run (a WFC auth file), so with one token per run it does nothing.
# --generation-database none: no examples carried over from an earlier run, so FUZZ_SEED alone
# decides what is generated.
declare -A RC=()
for entry in "${ROLES[@]}"; do
    role=${entry%%:*}
    claims=${entry#*:}
    token=$(mint "fuzz-$role" "$claims")
    dir=$OUT_DIR/$role
    mkdir -p "$dir"
    args=(run "$BASE/openapi.json" --url "$BASE"
        --header "Authorization: Bearer $token"
        --checks all
        --max-examples "$MAX_EXAMPLES" --seed "$SEED" --workers 1
        --generation-database none
        --request-timeout 45
        --report "junit,json"
        --report-dir "$dir"
        --report-junit-path "$dir/junit.xml"
        --report-json-path "$dir/report.json"
        --no-color)
    [[ -z $PHASES ]] || args+=(--phases "$PHASES")
    log "[$role] st ${args[*]/#Authorization: Bearer */Authorization: Bearer ***}"
    rc=0
    # In its report dir: st keeps .hypothesis/ and .schemathesis/ (for `st replay`) in the cwd.
    (cd "$dir" && timeout --kill-after=10 "$RUN_TIMEOUT" "$ST" "${args[@]}") 2>&1 | tee "$dir/st.log" || rc=${PIPESTATUS[0]}
    [[ $rc -ne 124 && $rc -ne 137 ]] || log "[$role] killed after ${RUN_TIMEOUT}s (FUZZ_RUN_TIMEOUT)"
    RC[$role]=$rc
    log "[$role] st exited $rc"
done

stop_daemon

# ------------------------------------------------------------ summary
rc_args=()
for entry in "${ROLES[@]}"; do
    role=${entry%%:*}
    rc_args+=("$role" "${RC[$role]}")
done
set +e
"$PY" - "$OUT_DIR" "$ST_VERSION" "$SEED" "$MAX_EXAMPLES" "${rc_args[@]}" >"$OUT_DIR/summary.txt" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, version, seed, max_examples = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
runs = list(zip(sys.argv[5::2], (int(x) for x in sys.argv[6::2])))

def from_json(path):
    r = json.loads(path.read_text())
    ops, cases = r["operations"], r["test_cases"]
    errors = len(r.get("errors") or []) + int(ops.get("errored") or 0) + int(cases.get("errored") or 0)
    return (ops["tested"], ops["selected"], cases["generated"], cases["unique_failures"], errors,
            [f"{f['code']} {f['title']}: {f['count']} ({', '.join(f['operations'])})" for f in r.get("failures") or []])

def from_junit(path):  # only when the JSON report is missing: no count of generated cases there
    suites = ET.parse(path).getroot()
    suites = [suites] if suites.tag == "testsuite" else list(suites.iter("testsuite"))
    tests = sum(int(s.get("tests", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failures = sum(int(s.get("failures", 0)) for s in suites)
    errors = sum(int(s.get("errors", 0)) for s in suites)
    return tests - skipped, tests, "?", failures, errors, []

lines = [f"schemathesis {version}, seed {seed}, max examples {max_examples}", "",
         f"{'role':<8} {'operations':>10} {'test cases':>10} {'failures':>8} {'errors':>6}  exit"]
tot = [0, 0, 0, 0, 0]
details, bad = [], False
for role, rc in runs:
    rep, junit = out / role / "report.json", out / role / "junit.xml"
    try:
        tested, selected, generated, failures, errors, fl = from_json(rep) if rep.exists() else from_junit(junit)
    except Exception as e:  # no report at all: st failed before testing (schema not loaded, ...)
        tested = selected = generated = failures = "?"
        errors, fl = 1, [f"no usable report ({type(e).__name__}: {e}); see target/fuzz/{role}/st.log"]
    for i, v in enumerate((tested, selected, generated, failures, errors)):
        tot[i] += v if isinstance(v, int) else 0
    if rc != 0 or failures != 0 or errors != 0:
        bad = True
    lines.append(f"{role:<8} {f'{tested}/{selected}':>10} {generated:>10} {failures:>8} {errors:>6}  {rc}")
    details += [f"  {role}: {d}" for d in fl]
lines.append(f"{'total':<8} {f'{tot[0]}/{tot[1]}':>10} {tot[2]:>10} {tot[3]:>8} {tot[4]:>6}")
if details:
    lines += ["", "failures:"] + details
lines += ["", "RESULT: " + ("FAIL" if bad else "PASS") + " (reports: target/fuzz/ROLE/junit.xml, report.json, st.log)"]
print("\n".join(lines))
sys.exit(1 if bad else 0)
EOF
summary_rc=$?
set -e
printf '\n================================ fuzz summary ================================\n' >&2
cat "$OUT_DIR/summary.txt" >&2
[[ $summary_rc -eq 0 ]] || exit 1
