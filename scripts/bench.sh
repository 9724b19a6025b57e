#!/usr/bin/env bash
# Benchmarks our release binaries against cp, ssh and the reference Barman 3.17 on real WAL
# (see docs/benchmarks.md). Arguments go to the bench program: --quick, --out FILE,
# --only get-wal,restore,archive,put-wal,stream,backup,recover. Prints Markdown tables on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The backup and recover benchmarks compare with pgBackRest (Debian's package).
if ! command -v pgbackrest >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y pgbackrest >&2
fi
cargo build --release --workspace >&2
"$root/scripts/setup-reference.sh" >/dev/null
exec "$root/target/release/bench" "$@"
