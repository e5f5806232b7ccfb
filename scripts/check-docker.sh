#!/usr/bin/env bash
# Static checks of docker/Dockerfile (including its cached dependency layer), docker/compose.yml
# and the monitoring files it mounts (docker/prometheus, docker/grafana) against the workspace,
# and of the Grafana dashboard's queries and the Prometheus alert rules against a real /metrics
# scrape of a spawned daemon. The checks are Rust tests
# (testkit/tests/docker, `-p conveyor-testkit --test docker`); no Docker engine is needed.
# Each failure is listed with what was expected, e.g. a workspace member the image does not
# copy, a compose env key missing, a bind mount of a missing file, or a dashboard query naming
# a metric the daemon does not serve.
#
#   scripts/check-docker.sh [NEXTEST ARGS...]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# With the compose plugin (not on CI machines), let it validate the file too.
if docker compose version >/dev/null 2>&1; then
    docker compose -f docker/compose.yml config --quiet
    echo "ok   docker compose config accepts docker/compose.yml"
fi

# The live scrape spawns the debug daemon next to the test binary.
cargo build -p conveyor-engine --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run -p conveyor-testkit --test docker --locked --no-fail-fast "$@"
else
    cargo test -p conveyor-testkit --test docker --locked -- "$@"
fi
