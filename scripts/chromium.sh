#!/usr/bin/env bash
# Headless Chromium for page checks in tests: load a page, let its scripts run (fetches
# included), then print the DOM or save a screenshot.
#
#   scripts/chromium.sh dom URL              # the DOM after the page's scripts ran, on stdout
#   scripts/chromium.sh screenshot URL OUT.png
#
# A URL's #fragment reaches the page (location.hash), e.g. http://127.0.0.1:PORT/ui#TOKEN.
# Install Chromium with: scripts/install-deps.sh pkg chromium
#
# How it waits: --virtual-time-budget. Virtual time stands still while a request is in flight,
# and JS timers inside the budget fire at once, so the DOM/screenshot shows what the page made
# of its fetch() results however slow the server is, and a large budget costs no wall time.
# Without the flag Chromium dumps/shoots right after the load event: before any fetch answers.
# A request that never completes stalls virtual time for ever: hence the wall-clock timeout.
# Chromium exits 0 even when the page failed to load; this script checks that itself.
#
# Env:
#   CHROMIUM_BUDGET_MS=N  virtual time budget; must exceed the page's own timer waits (default 10000)
#   CHROMIUM_TIMEOUT=S    wall-clock limit for one Chromium run (default 60)
#   CHROMIUM_WINDOW=W,H   viewport; the screenshot is of the viewport only (default 1280,900)
#
# Exit: 0 done; 1 the page did not load, Chromium failed or timed out; 3 Chromium is not
# installed; 64 usage.
set -euo pipefail

say() { printf 'chromium.sh: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2; exit "${1:-64}"; }

BUDGET_MS=${CHROMIUM_BUDGET_MS:-10000}
TIMEOUT=${CHROMIUM_TIMEOUT:-60}
WINDOW=${CHROMIUM_WINDOW:-1280,900}

mode=${1:-}
case $mode in
    dom) [[ $# -eq 2 ]] || usage ;;
    screenshot) [[ $# -eq 3 ]] || usage ;;
    -h|--help) usage 0 ;;
    *) usage ;;
esac
url=$2

if [[ -x /usr/bin/chromium ]]; then BIN=/usr/bin/chromium
elif BIN=$(command -v chromium); then :
else
    say "Chromium is not installed (no /usr/bin/chromium, no chromium on PATH);"
    say "install it with: scripts/install-deps.sh pkg chromium"
    exit 3
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chromium-sh.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/profile"

# A fresh profile every run; nothing reaches out of the machine (no updates, sync, pings,
# and no host name but loopback resolves, so a page that needs the internet shows it).
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run
    --disable-component-update --disable-sync --user-data-dir="$WORK/profile"
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"
    --virtual-time-budget="$BUDGET_MS")

if [[ $mode == dom ]]; then
    flags+=(--dump-dom)
else
    out=$3
    mkdir -p "$(dirname "$out")"
    # Chromium resolves a relative path against its own cwd; and a stale file is no proof.
    out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
    rm -f "$out"
    flags+=(--screenshot="$out" --window-size="$WINDOW" --hide-scrollbars)
fi

rc=0
timeout --kill-after=5 "$TIMEOUT" "$BIN" "${flags[@]}" "$url" >"$WORK/stdout" 2>"$WORK/stderr" || rc=$?

# Its stderr is mostly noise (no D-Bus here; Debian's launcher trips on a doubly mounted
# /dev/shm); show it only when something went wrong.
fail() {
    say "$*"
    grep -v -e 'dbus' -e 'unexpected operator' -e 'Page load failed' "$WORK/stderr" | tail -n 15 >&2 || true
    exit 1
}
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    fail "timed out after ${TIMEOUT}s loading $url (a request that never completes stalls virtual time)"
fi
[[ $rc -eq 0 ]] || fail "chromium exited $rc loading $url"
if load_error=$(grep -o 'Page load failed: .*' "$WORK/stderr"); then
    fail "$url: $load_error"
fi

if [[ $mode == dom ]]; then
    [[ -s $WORK/stdout ]] || fail "$url: chromium printed no DOM"
    cat "$WORK/stdout"
else
    [[ -s $out ]] || fail "$url: no screenshot written to $out"
    say "screenshot of $url: $out"
fi
