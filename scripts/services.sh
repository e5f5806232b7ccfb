#!/usr/bin/env bash
# Real backing services for Conveyor on loopback, without Docker:
# PostgreSQL, Redis and the Kafka-protocol broker nisshi.
#
#   scripts/services.sh up                 # start what is not running, wait, print env
#   scripts/services.sh down               # stop everything, remove the state dir
#   scripts/services.sh status             # up/down per service; exit 3 if any is down
#   scripts/services.sh env                # export lines: eval "$(scripts/services.sh env)"
#   scripts/services.sh stop-one|start-one postgres|redis|kafka
#
# Env: CONVEYOR_SERVICES_DIR (state, default /tmp/conveyor-services),
# CONVEYOR_PG_PORT (55432), CONVEYOR_REDIS_PORT (56379), CONVEYOR_REDIS_TLS_PORT (56380),
# CONVEYOR_KAFKA_PORT (59092):
# a default port held by another process is swapped for a free one, remembered in
# $STATE/ports for `env`; an explicit override that is busy is an error.
# CONVEYOR_CACHE_DIR (where nisshi is installed), CONVEYOR_SERVICES (subset for
# `up`, e.g. "postgres redis"; default all three).
# TLS: a throwaway CA and a server certificate for 127.0.0.1/localhost live in $STATE/tls;
# PostgreSQL accepts TLS on its port (ssl = on) and Redis on its TLS port, beside the plain
# one; `env` prints the URLs and the CA for the TLS tests.
# Only the env lines go to stdout; every message goes to stderr.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${CONVEYOR_SERVICES_DIR:-/tmp/conveyor-services}
STATE=${STATE%/}
CACHE_DIR=${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}
NISSHI_BIN="$CACHE_DIR/nisshi-0.8.1/bin/nisshi"
PORTS_FILE="$STATE/ports"
PG_PORT=55432 REDIS_PORT=56379 REDIS_TLS_PORT=56380 KAFKA_PORT=59092
# Ports chosen by an earlier `up` win over the defaults, explicit overrides over both.
# shellcheck disable=SC1090
[[ -f $PORTS_FILE ]] && source "$PORTS_FILE"
PG_PORT=${CONVEYOR_PG_PORT:-$PG_PORT}
REDIS_PORT=${CONVEYOR_REDIS_PORT:-$REDIS_PORT}
REDIS_TLS_PORT=${CONVEYOR_REDIS_TLS_PORT:-$REDIS_TLS_PORT}
KAFKA_PORT=${CONVEYOR_KAFKA_PORT:-$KAFKA_PORT}
ALL_SERVICES=(postgres redis kafka)
READY_TIMEOUT=${CONVEYOR_SERVICES_TIMEOUT:-60}

log() { printf '[services] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
kill_pidfile() { # pidfile name: TERM, wait up to 10 s, then KILL
    local pid i
    pid_alive "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1"); kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$2: did not stop in 10s, killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$1"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
save_ports() {
    printf 'PG_PORT=%s\nREDIS_PORT=%s\nREDIS_TLS_PORT=%s\nKAFKA_PORT=%s\n' \
        "$PG_PORT" "$REDIS_PORT" "$REDIS_TLS_PORT" "$KAFKA_PORT" >"$PORTS_FILE"
}
# claim_port VAR OVERRIDE name: keep $VAR if nobody listens there; otherwise take a free
# port, unless the user pinned this one (CI machines may run anything on the defaults).
claim_port() {
    local -n port=$1
    port_open "$port" || { save_ports; return 0; }
    [[ -z ${!2:-} ]] || die "$3: port $port (from $2) is in use by another process"
    local old=$port
    port=$(free_port)
    log "$3: port $old is in use by another process; using $port"
    save_ports
}
wait_for() { # name pidfile-or-empty command...: poll until the command succeeds
    local name=$1 pidfile=$2 deadline=$((SECONDS + READY_TIMEOUT)); shift 2
    until "$@"; do
        if [[ -n $pidfile ]] && ! pid_alive "$pidfile"; then return 1; fi
        if ((SECONDS >= deadline)); then log "$name: not ready after ${READY_TIMEOUT}s"; return 1; fi
        sleep 0.2
    done
}
fail_with_log() { log "$1: failed to start; last lines of $2:"; tail -n 30 "$2" >&2 2>/dev/null || true; exit 1; }
need_pkg() { log "installing missing Debian package(s): $*"; "$SCRIPT_DIR/install-deps.sh" pkg "$@"; }

# ---------------------------------------------------------------- TLS material
TLS_DIR="$STATE/tls" TLS_CA="$STATE/tls/ca.pem"
# A CA (10 years) and a server certificate it signs for 127.0.0.1 and localhost, made once
# per state dir. The key is owned by postgres when running as root: PostgreSQL refuses a
# key file others can read or that it does not own (root, which runs Redis, reads it anyway).
make_tls() {
    command -v openssl >/dev/null || need_pkg openssl
    if [[ ! -f $TLS_DIR/server.pem ]]; then
        log "tls: making a throwaway CA and server certificate in $TLS_DIR"
        rm -rf "$TLS_DIR"; mkdir -p "$TLS_DIR"
        (
            cd "$TLS_DIR"
            openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Conveyor services test CA" \
                -keyout ca.key -out ca.pem
            openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile server.ext -out server.pem
        ) >"$STATE/tls.log" 2>&1 || fail_with_log tls "$STATE/tls.log"
        chmod 600 "$TLS_DIR/server.key" "$TLS_DIR/ca.key"
        chmod 644 "$TLS_DIR/ca.pem" "$TLS_DIR/server.pem"
    fi
    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then chown postgres:postgres "$TLS_DIR/server.key"; fi
    chmod 755 "$TLS_DIR"
}

# ---------------------------------------------------------------- PostgreSQL
PG_DIR="$STATE/postgres" PGDATA_DIR="$STATE/postgres/data" PG_SOCK="$STATE/postgres/sock"
PG_LOG="$STATE/postgres/postgres.log"
pg_bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]] && echo "$d"
}
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_running() { [[ -n ${PG_BIN:-} && -f $PGDATA_DIR/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; }
pg_ready() {
    PGPASSWORD=conveyor PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" -X -qtA -h 127.0.0.1 -p "$PG_PORT" \
        -U conveyor -d conveyor -c 'SELECT 1' 2>/dev/null | grep -qx 1
}
# The same over TLS, the server's certificate verified against the CA.
pg_tls_ready() {
    PGPASSWORD=conveyor PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" -X -qtA \
        "host=127.0.0.1 port=$PG_PORT user=conveyor dbname=conveyor sslmode=verify-full sslrootcert=$TLS_CA" \
        -c 'SELECT 1' 2>/dev/null | grep -qx 1
}
pg_tls_opts() { echo "-c ssl=on -c ssl_cert_file=$TLS_DIR/server.pem -c ssl_key_file=$TLS_DIR/server.key"; }
psql_admin() { as_pg "$PG_BIN/psql" -X -qtA -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres "$@"; }
start_postgres() {
    PG_BIN=$(pg_bindir) || { need_pkg postgresql; PG_BIN=$(pg_bindir) || die "postgres: initdb/pg_ctl not found"; }
    make_tls
    if pg_running && pg_ready && ! pg_tls_ready; then
        # Started before TLS was part of the set-up: switch it on without a restart.
        log "postgres: turning TLS on"
        psql_admin -c "ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.pem'" \
            -c "ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/server.key'" -c "ALTER SYSTEM SET ssl = on" \
            -c "SELECT pg_reload_conf()" >/dev/null
        wait_for postgres "" pg_tls_ready || fail_with_log postgres "$PG_LOG"
    fi
    if pg_running && pg_ready; then return 0; fi
    if ! pg_running; then
        claim_port PG_PORT CONVEYOR_PG_PORT postgres
        mkdir -p "$PG_SOCK"
        if [[ $(id -u) -eq 0 ]]; then chown -R postgres:postgres "$PG_DIR"; fi
        as_pg test -w "$PG_DIR" || die "postgres: user postgres cannot write $PG_DIR (pick a CONVEYOR_SERVICES_DIR it can reach)"
        if [[ ! -f $PGDATA_DIR/PG_VERSION ]]; then
            log "postgres: initdb in $PGDATA_DIR"
            as_pg "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C --no-sync \
                --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 \
                || fail_with_log postgres "$PG_DIR/initdb.log"
        fi
        log "postgres: starting on 127.0.0.1:$PG_PORT"
        as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$READY_TIMEOUT" -o \
            "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_SOCK -c fsync=off -c max_connections=200 $(pg_tls_opts)" \
            start >/dev/null 9>&- || fail_with_log postgres "$PG_LOG"
    fi
    if [[ $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'conveyor'") != 1 ]]; then
        psql_admin -c "CREATE ROLE conveyor LOGIN CREATEDB PASSWORD 'conveyor'" >/dev/null
    fi
    if [[ $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'conveyor'") != 1 ]]; then
        psql_admin -c "CREATE DATABASE conveyor OWNER conveyor" >/dev/null
    fi
    wait_for postgres "" pg_ready || fail_with_log postgres "$PG_LOG"
    wait_for postgres "" pg_tls_ready || fail_with_log postgres "$PG_LOG"
}
stop_postgres() {
    PG_BIN=$(pg_bindir) || return 0
    pg_running || return 0
    log "postgres: stopping"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null
}
status_postgres() { PG_BIN=$(pg_bindir) || return 1; pg_running && pg_ready && pg_tls_ready; }

# ---------------------------------------------------------------- Redis
REDIS_DIR="$STATE/redis" REDIS_PID="$STATE/redis/redis.pid" REDIS_LOG="$STATE/redis/redis.log"
redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
redis_tls_ready() {
    [[ $(redis-cli --tls --cacert "$TLS_CA" -h 127.0.0.1 -p "$REDIS_TLS_PORT" ping 2>/dev/null) == PONG ]]
}
start_redis() {
    command -v redis-server >/dev/null || need_pkg redis-server
    command -v redis-cli >/dev/null || need_pkg redis-tools
    make_tls
    # A Redis started before TLS was part of the set-up restarts (it only holds a cache).
    if pid_alive "$REDIS_PID" && redis_ready && redis_tls_ready; then return 0; fi
    kill_pidfile "$REDIS_PID" redis
    claim_port REDIS_PORT CONVEYOR_REDIS_PORT redis
    claim_port REDIS_TLS_PORT CONVEYOR_REDIS_TLS_PORT redis-tls
    mkdir -p "$REDIS_DIR"
    log "redis: starting on 127.0.0.1:$REDIS_PORT, TLS on 127.0.0.1:$REDIS_TLS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize yes \
        --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key" \
        --tls-ca-cert-file "$TLS_CA" --tls-auth-clients optional \
        --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" 9>&- || fail_with_log redis "$REDIS_LOG"
    wait_for redis "" redis_ready || fail_with_log redis "$REDIS_LOG"
    wait_for redis "" redis_tls_ready || fail_with_log redis "$REDIS_LOG"
}
stop_redis() { pid_alive "$REDIS_PID" && log "redis: stopping"; kill_pidfile "$REDIS_PID" redis; }
status_redis() { pid_alive "$REDIS_PID" && redis_ready && redis_tls_ready; }

# ---------------------------------------------------------------- Kafka (nisshi)
KAFKA_DIR="$STATE/kafka" KAFKA_PID="$STATE/kafka/nisshi.pid" KAFKA_LOG="$STATE/kafka/nisshi.log"
# A Kafka ApiVersions (v0) round trip: proves the broker speaks the protocol, not just listens.
kafka_ready() {
    port_open "$KAFKA_PORT" || return 1
    python3 - "$KAFKA_PORT" <<'PY' 2>/dev/null
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
cid = b"conveyor-services"
body = struct.pack(">hhih", 18, 0, 4242, len(cid)) + cid
s.sendall(struct.pack(">i", len(body)) + body)
def read(n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            sys.exit(1)
        buf += chunk
    return buf
(size,) = struct.unpack(">i", read(4))
corr, err = struct.unpack(">ih", read(size)[:6])
sys.exit(0 if corr == 4242 and err == 0 else 1)
PY
}
start_kafka() {
    if [[ ! -x $NISSHI_BIN ]]; then
        log "kafka: $NISSHI_BIN missing; installing it (or waiting for the build already running)"
        "$SCRIPT_DIR/install-deps.sh" nisshi
    fi
    command -v python3 >/dev/null || need_pkg python3
    if pid_alive "$KAFKA_PID" && kafka_ready; then return 0; fi
    kill_pidfile "$KAFKA_PID" kafka
    claim_port KAFKA_PORT CONVEYOR_KAFKA_PORT kafka
    # nisshi reads ./.env, so it runs from a directory of its own that holds nothing.
    rm -rf "$KAFKA_DIR/run"; mkdir -p "$KAFKA_DIR/run"
    log "kafka: starting nisshi on 127.0.0.1:$KAFKA_PORT"
    (
        cd "$KAFKA_DIR/run"
        exec setsid "$NISSHI_BIN" broker \
            --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --storage-engine memory://nisshi/ \
            --group-initial-rebalance-delay 0s </dev/null >>"$KAFKA_LOG" 2>&1
    ) 9>&- &
    echo $! >"$KAFKA_PID"
    wait_for kafka "$KAFKA_PID" kafka_ready || fail_with_log kafka "$KAFKA_LOG"
    sleep 1 # let it finish settling (group coordinator etc.) after the first answer
    pid_alive "$KAFKA_PID" || fail_with_log kafka "$KAFKA_LOG"
}
stop_kafka() { pid_alive "$KAFKA_PID" && log "kafka: stopping"; kill_pidfile "$KAFKA_PID" kafka; }
status_kafka() { pid_alive "$KAFKA_PID" && kafka_ready; }

# ---------------------------------------------------------------- commands
print_env() {
    local base="postgres://conveyor:conveyor@127.0.0.1:$PG_PORT/conveyor"
    # Plain means plain: without sslmode, sqlx's default (prefer) negotiates TLS with this
    # server, which takes a fifth of the daemon's CPU in the processing benchmark.
    local pg="$base?sslmode=disable"
    local redis="redis://127.0.0.1:$REDIS_PORT" kafka="127.0.0.1:$KAFKA_PORT"
    # Quoted: the TLS URL carries '&'.
    local pg_tls="$base?sslmode=verify-full&sslrootcert=$TLS_CA" redis_tls="rediss://127.0.0.1:$REDIS_TLS_PORT"
    cat <<EOF
export CONVEYOR_STORE__URL=$pg
export CONVEYOR_CACHE__URL=$redis
export CONVEYOR_LOG__BACKEND=kafka
export CONVEYOR_LOG__KAFKA__BROKERS=$kafka
export CONVEYOR_TEST_PG_URL=$pg
export CONVEYOR_TEST_REDIS_URL=$redis
export CONVEYOR_TEST_KAFKA_BROKERS=$kafka
export CONVEYOR_TEST_PG_TLS_URL='$pg_tls'
export CONVEYOR_TEST_REDIS_TLS_URL=$redis_tls
export CONVEYOR_TEST_TLS_CA=$TLS_CA
EOF
}
check_name() { case ${1:-} in postgres|redis|kafka) ;; *) die "unknown service '${1:-}' (postgres|redis|kafka)";; esac; }
# The lock fd (9) is closed for every daemon started, or they would hold the lock forever.
take_lock() {
    mkdir -p "$(dirname "$STATE")"; exec 9>"$STATE.lock"
    flock -w 600 9 || die "another services.sh has held $STATE.lock for 10 min"
}
prepare_state() { mkdir -p "$STATE"; chmod 755 "$STATE"; touch "$STATE/.conveyor-services"; }

cmd=${1:-}
case $cmd in
    up)
        take_lock; prepare_state
        wanted=${CONVEYOR_SERVICES:-${ALL_SERVICES[*]}}
        for s in ${wanted//,/ }; do check_name "$s"; "start_$s"; log "$s: up"; done
        print_env ;;
    down)
        take_lock
        for s in kafka redis postgres; do "stop_$s"; done
        if [[ -d $STATE ]]; then
            [[ -f $STATE/.conveyor-services ]] || die "$STATE is not a services state dir; not removing it"
            rm -rf "$STATE"
        fi
        log "all stopped; removed $STATE" ;;
    status)
        rc=0
        for s in "${ALL_SERVICES[@]}"; do
            if "status_$s"; then echo "$s: up"; else echo "$s: down"; rc=3; fi
        done
        exit $rc ;;
    env) print_env ;;
    start-one) check_name "${2:-}"; take_lock; prepare_state; "start_$2"; log "$2: up" ;;
    stop-one) check_name "${2:-}"; take_lock; "stop_$2"; log "$2: down" ;;
    *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
