#!/usr/bin/env bash
# Installs what Conveyor's build and tests need on a Debian 12 machine.
# Idempotent: anything already present is skipped.
#
#   scripts/install-deps.sh              # apt packages + the nisshi broker + schemathesis
#                                        #   + standardwebhooks
#   scripts/install-deps.sh apt          # apt packages only
#   scripts/install-deps.sh nisshi       # nisshi only (waits for a build already running)
#   scripts/install-deps.sh schemathesis # the API fuzzer (a Python venv; used by fuzz.sh)
#   scripts/install-deps.sh standardwebhooks
#                                        # the reference Standard Webhooks verifier (a Python
#                                        #   venv; used by verify-webhooks.py in the tests)
#   scripts/install-deps.sh standardwebhooks-python
#                                        # print only that venv's python (installing it first
#                                        #   if missing): PY=$(scripts/install-deps.sh standardwebhooks-python)
#   scripts/install-deps.sh pkg NAME..   # just these apt packages (used by services.sh)
#
# nisshi (the Kafka-protocol broker used by the real-backend tests) is the long
# pole (~22 min to compile on 2 cores), so it is started first, in the
# background, once the few packages its compile needs are in place; the rest of
# the apt packages and the Python venvs install while it builds.
# Everything but standardwebhooks-python's path is logged to stderr.
set -euo pipefail

NISSHI_VERSION=0.8.1
CACHE_DIR=${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}
NISSHI_ROOT="$CACHE_DIR/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
NISSHI_LOG="$CACHE_DIR/nisshi-$NISSHI_VERSION.install.log"
# schemathesis (contract fuzzing of the HTTP API, scripts/fuzz.sh) lives in its own venv.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV="$CACHE_DIR/schemathesis-$SCHEMATHESIS_VERSION"
SCHEMATHESIS_LOG="$CACHE_DIR/schemathesis-$SCHEMATHESIS_VERSION.install.log"
# standardwebhooks (independent signature checks of webhook deliveries, scripts/verify-webhooks.py)
# lives in its own venv too.
STANDARDWEBHOOKS_VERSION=1.1.0
STANDARDWEBHOOKS_VENV="$CACHE_DIR/standardwebhooks-$STANDARDWEBHOOKS_VERSION"
STANDARDWEBHOOKS_LOG="$CACHE_DIR/standardwebhooks-$STANDARDWEBHOOKS_VERSION.install.log"

# What compiling nisshi (and this workspace) needs; installed before nisshi starts.
BUILD_PKGS=(build-essential pkg-config libssl-dev zlib1g-dev cmake python3)
# Servers and tools for the tests; installed while nisshi compiles.
# chromium: headless page checks (scripts/chromium.sh); chromium-driver: ChromeDriver, which the
# console tests drive over the WebDriver protocol (tests/it/webdriver.rs); openssl: the
# throwaway CA and server certificate scripts/services.sh makes for the TLS listeners.
RUNTIME_PKGS=(postgresql redis-server redis-tools wrk chromium chromium-driver openssl)

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=0
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "apt: already installed: $*"
        return 0
    fi
    log "apt: installing ${missing[*]}"
    if [[ $APT_UPDATED -eq 0 ]]; then
        as_root apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    local out
    out=$(mktemp)
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$out" 2>&1; then
        tail -n 30 "$out" >&2; rm -f "$out"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$out"
    log "apt: installed ${missing[*]}"
}

# Is someone (another shell, a previous session) already running the exact
# install into our root?  Its pids, one per line; empty when none.
nisshi_build_pids() {
    pgrep -f "cargo install nisshi .*--root $NISSHI_ROOT" || true
}

# Installs nisshi unless present. Runs in the foreground; callers may background it.
install_nisshi() {
    if [[ -x $NISSHI_BIN ]]; then
        log "nisshi: present at $NISSHI_BIN"
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    # Serialize our own installs (two test runs at once) with a lock...
    exec 8>"$CACHE_DIR/.nisshi-$NISSHI_VERSION.lock"
    flock 8
    # ...and wait for a build started some other way (it holds no lock).
    local waited=0
    while [[ -n $(nisshi_build_pids) ]]; do
        if (( waited % 60 == 0 )); then
            log "nisshi: a 'cargo install nisshi' into $NISSHI_ROOT is already running; waiting (${waited}s so far)"
        fi
        sleep 5; waited=$((waited + 5))
    done
    if [[ -x $NISSHI_BIN ]]; then
        log "nisshi: present at $NISSHI_BIN"
        flock -u 8; return 0
    fi
    command -v cargo >/dev/null || die "cargo not found on PATH; cannot build nisshi"
    log "nisshi: building $NISSHI_VERSION into $NISSHI_ROOT (about 22 min on 2 cores; log: $NISSHI_LOG)"
    local start=$SECONDS
    if ! cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
            --no-default-features --features dynostore,postgres \
            --root "$NISSHI_ROOT" >"$NISSHI_LOG" 2>&1; then
        tail -n 40 "$NISSHI_LOG" >&2
        flock -u 8
        die "nisshi: cargo install failed (full log: $NISSHI_LOG)"
    fi
    flock -u 8
    [[ -x $NISSHI_BIN ]] || die "nisshi: cargo install succeeded but $NISSHI_BIN is missing"
    log "nisshi: installed in $((SECONDS - start))s"
}

# The Python to build venvs with: Debian's own (a pyenv shim on PATH may be a different
# interpreter, or missing on CI), else whatever python3 is on PATH.
system_python() {
    if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3
    elif command -v python3 >/dev/null; then command -v python3
    else return 1; fi
}

# Installs NAME==VERSION from PyPI into its own venv VENV (pip's output to LOGFILE) unless
# PRESENT (the name of a function) says it is there already; MISSING_MSG is the complaint when pip
# succeeds but PRESENT still fails.  Messages are prefixed with NAME; the lock serializing two
# runs at once is $CACHE_DIR/.NAME-VERSION.lock.
install_venv() {
    local name=$1 version=$2 venv=$3 logfile=$4 present=$5 missing_msg=$6
    if "$present"; then
        log "$name: present in $venv"
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    # Two runs at once must not build the same venv.
    local lock_fd
    exec {lock_fd}>"$CACHE_DIR/.$name-$version.lock"
    flock "$lock_fd"
    if "$present"; then
        log "$name: present in $venv"
        flock -u "$lock_fd"; return 0
    fi
    local py
    if ! py=$(system_python); then
        apt_install python3
        py=/usr/bin/python3
    fi
    # Debian splits `python3 -m venv`'s ensurepip out into python3-venv.
    if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        if [[ $py == /usr/bin/python3 ]]; then
            apt_install python3-venv
        else
            flock -u "$lock_fd"; die "$name: $py has no venv/ensurepip module"
        fi
    fi
    log "$name: installing $version into $venv with $py (log: $logfile)"
    local start=$SECONDS
    rm -rf "$venv" # a half-made venv from an interrupted run
    if ! { "$py" -m venv "$venv" &&
            "$venv/bin/python" -m pip install --disable-pip-version-check --no-input \
                "$name==$version"; } >"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        rm -rf "$venv"
        flock -u "$lock_fd"
        die "$name: install failed (full log: $logfile)"
    fi
    flock -u "$lock_fd"
    "$present" || die "$name: pip succeeded but $missing_msg"
    log "$name: installed in $((SECONDS - start))s"
}

schemathesis_present() {
    [[ -x $SCHEMATHESIS_VENV/bin/st || -x $SCHEMATHESIS_VENV/bin/schemathesis ]]
}

# Installs schemathesis into its venv unless present. Quick (~20 s: wheels only).
install_schemathesis() {
    install_venv schemathesis "$SCHEMATHESIS_VERSION" "$SCHEMATHESIS_VENV" "$SCHEMATHESIS_LOG" \
        schemathesis_present "$SCHEMATHESIS_VENV/bin/st is missing"
}

standardwebhooks_present() {
    [[ -x $STANDARDWEBHOOKS_VENV/bin/python ]] &&
        "$STANDARDWEBHOOKS_VENV/bin/python" -c 'import standardwebhooks' >/dev/null 2>&1
}

# Installs standardwebhooks into its venv unless present. Quick (one pure-Python wheel).
install_standardwebhooks() {
    install_venv standardwebhooks "$STANDARDWEBHOOKS_VERSION" "$STANDARDWEBHOOKS_VENV" \
        "$STANDARDWEBHOOKS_LOG" standardwebhooks_present \
        "$STANDARDWEBHOOKS_VENV/bin/python cannot import it"
}

main() {
    local what=${1:-all}
    case $what in
        apt)    apt_install "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}" ;;
        nisshi) install_nisshi ;;
        schemathesis) install_schemathesis ;;
        standardwebhooks) install_standardwebhooks ;;
        standardwebhooks-python) # stdout: the path only (everything else goes to stderr)
            install_standardwebhooks
            printf '%s\n' "$STANDARDWEBHOOKS_VENV/bin/python"
            return 0 ;;
        pkg)    shift; [[ $# -gt 0 ]] || die "usage: $0 pkg NAME..."; apt_install "$@" ;;
        all)
            apt_install "${BUILD_PKGS[@]}"
            local nisshi_pid=""
            if [[ ! -x $NISSHI_BIN ]]; then
                install_nisshi & nisshi_pid=$!
            else
                log "nisshi: present at $NISSHI_BIN"
            fi
            local apt_rc=0
            ( apt_install "${RUNTIME_PKGS[@]}" ) || apt_rc=$? # subshell: still wait for nisshi on failure
            # After the apt packages, not beside them: it may apt-get install python3-venv.
            local st_rc=0
            ( install_schemathesis ) || st_rc=$?
            local sw_rc=0
            ( install_standardwebhooks ) || sw_rc=$?
            if [[ -n $nisshi_pid ]]; then
                wait "$nisshi_pid" || die "nisshi install failed"
            fi
            [[ $apt_rc -eq 0 ]] || die "apt install of ${RUNTIME_PKGS[*]} failed"
            [[ $st_rc -eq 0 ]] || die "schemathesis install failed"
            [[ $sw_rc -eq 0 ]] || die "standardwebhooks install failed"
            ;;
        *) die "usage: $0 [all|apt|nisshi|schemathesis|standardwebhooks|standardwebhooks-python|pkg NAME...]" ;;
    esac
    log "done"
}

main "$@"
