#!/usr/bin/env bash
# A/B of put-wal and get-wal (over ssh and gRPC) between two commits, interleaved in one run
# (see docs/benchmarks.md, "A/B of two builds"). Usage:
#
#   scripts/bench-ab.sh OLD_COMMIT [NEW_COMMIT] [-- BENCH ARGS...]
#
# NEW_COMMIT defaults to HEAD. Each commit is checked out in a worktree of its own
# ($AB_DIR/ab-old, $AB_DIR/ab-new; AB_DIR defaults to /tmp) and built in release with its own
# target directory ($AB_DIR/ab-old-target, ab-new-target), one after the other; uncommitted
# edits in this checkout are not measured. The bench program itself is built from this
# checkout. Worktrees and target directories are removed at the end unless AB_KEEP=1.
# Extra arguments after -- go to the bench program (--quick, --out FILE).
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
old="$(git rev-parse --verify "$1^{commit}")"
shift
new="$(git rev-parse --verify HEAD^{commit})"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    new="$(git rev-parse --verify "$1^{commit}")"
    shift
fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then
    shift
fi
dir="${AB_DIR:-/tmp}"
for side in old new; do
    if [ -e "$dir/ab-$side" ]; then
        echo "bench-ab: $dir/ab-$side exists: remove it (git worktree remove) or set AB_DIR" >&2
        exit 1
    fi
done

cleanup() {
    if [ "${AB_KEEP:-0}" != 1 ]; then
        for side in old new; do
            git -C "$root" worktree remove --force "$dir/ab-$side" 2>/dev/null || true
            rm -rf "$dir/ab-$side-target"
        done
    fi
}
trap cleanup EXIT

git worktree add --detach "$dir/ab-old" "$old" >&2
git worktree add --detach "$dir/ab-new" "$new" >&2
for side in old new; do
    echo "bench-ab: building $side ($(git -C "$dir/ab-$side" rev-parse --short HEAD)) ..." >&2
    (cd "$dir/ab-$side" && CARGO_TARGET_DIR="$dir/ab-$side-target" cargo build --release --workspace >&2)
done
# The bench program looks for our binaries next to itself: the workspace, as scripts/bench.sh.
cargo build --release --workspace >&2
"$root/target/release/bench" --only ab-wal \
    --old-bin "$dir/ab-old-target/release" --old-label "$(git rev-parse --short=7 "$old")" \
    --new-bin "$dir/ab-new-target/release" --new-label "$(git rev-parse --short=7 "$new")" "$@"
