#!/usr/bin/env bash
# Runs the main job on an embedded default: a throwaway PostgreSQL whose WAL is
# archived over ssh into a throwaway Barman home, then read back, then replayed
# by a standby, then a base backup is taken, recovered over ssh and started. Needs PostgreSQL 15
# server binaries and openssh-server.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
exec target/release/demo "$@"
