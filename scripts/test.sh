#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against real PostgreSQL 15
# clusters, a throwaway sshd and the reference Barman 3.17 (installed into
# .reference/ by scripts/setup-reference.sh on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-reference.sh >/dev/null
cargo test --workspace "$@"
