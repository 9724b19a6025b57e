#!/usr/bin/env bash
# Installs the reference Barman (the real Python one) into a venv for cluster-tests:
# it is the peer our archive/restore paths must interoperate with and the source of golden files.
# Idempotent; prints the venv path on stdout. Override the location with BARMAN_REFERENCE_VENV
# and the interpreter with PYTHON.
set -euo pipefail

version=3.17.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BARMAN_REFERENCE_VENV:-$root/.reference/barman-$version}"

# True when the venv already has barman $version and the compression modules it can use.
ready() {
    [ -x "$venv/bin/barman" ] && [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - "$version" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
import zstandard, lz4.frame, snappy  # noqa: F401  (compressions barman supports beyond the stdlib)
sys.exit(0 if md.version("barman") == sys.argv[1] else 1)
PY
}

if ready; then
    echo "$venv"
    exit 0
fi

# Prefer the distribution's interpreter: a venv built from one under a private home (pyenv in
# /root) could not be run by the postgres OS user, which runs barman-wal-archive/-restore.
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        python=/usr/bin/python3
    else
        python=python3
    fi
fi

echo "setup-reference: creating $venv with $python" >&2
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if [ -z "${BARMAN_REFERENCE_VENV:-}" ]; then
    # Keep the venv out of git without touching the repository's .gitignore.
    echo '*' >"$root/.reference/.gitignore"
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "barman==$version" zstandard==0.25.0 lz4==4.4.5 python-snappy==0.7.3 cramjam==2.14.0 psycopg2==2.9.13 >&2
chmod -R a+rX "$venv"

if ! ready; then
    echo "setup-reference: $venv does not provide barman $version with zstandard, lz4 and snappy" >&2
    exit 1
fi
echo "$venv"
