#!/usr/bin/env bash
# Installs what Conveyor's build and tests need on a Debian 12 machine.
# Idempotent: anything already present is skipped.
#
#   scripts/install-deps.sh            # apt packages + the nisshi broker binary
#   scripts/install-deps.sh apt        # apt packages only
#   scripts/install-deps.sh nisshi     # nisshi only (waits for a build already running)
#   scripts/install-deps.sh pkg NAME.. # just these apt packages (used by services.sh)
#
# nisshi (the Kafka-protocol broker used by the real-backend tests) is the long
# pole (~22 min to compile on 2 cores), so it is started first, in the
# background, once the few packages its compile needs are in place; the rest of
# the apt packages install while it builds.
set -euo pipefail

NISSHI_VERSION=0.8.1
CACHE_DIR=${CONVEYOR_CACHE_DIR:-$HOME/.cache/conveyor}
NISSHI_ROOT="$CACHE_DIR/nisshi-$NISSHI_VERSION"
NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
NISSHI_LOG="$CACHE_DIR/nisshi-$NISSHI_VERSION.install.log"

# What compiling nisshi (and this workspace) needs; installed before nisshi starts.
BUILD_PKGS=(build-essential pkg-config libssl-dev zlib1g-dev cmake python3)
# Servers and tools for the tests; installed while nisshi compiles.
RUNTIME_PKGS=(postgresql redis-server redis-tools wrk)

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

main() {
    local what=${1:-all}
    case $what in
        apt)    apt_install "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}" ;;
        nisshi) install_nisshi ;;
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
            if [[ -n $nisshi_pid ]]; then
                wait "$nisshi_pid" || die "nisshi install failed"
            fi
            [[ $apt_rc -eq 0 ]] || die "apt install of ${RUNTIME_PKGS[*]} failed"
            ;;
        *) die "usage: $0 [all|apt|nisshi|pkg NAME...]" ;;
    esac
    log "done"
}

main "$@"
