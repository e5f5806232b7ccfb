#!/usr/bin/env bash
# Runs the Conveyor daemon on the embedded backends (no services needed):
#   ./scripts/run.sh                 # = conveyor serve, config from ./config.toml
#   ./scripts/run.sh token mint --sub me --roles device,user
# On a fresh Debian machine it first installs the C toolchain and headers the build needs
# (librdkafka and SQLite are compiled from source by their crates).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh pkg build-essential pkg-config libssl-dev zlib1g-dev
exec cargo run --release --locked -p conveyor-engine -- "$@"
