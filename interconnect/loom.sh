#!/usr/bin/env bash
# Model-checks the ring protocol's memory ordering with loom (separate target dir: the
# --cfg loom build shares nothing with the normal one).
set -euo pipefail
cd "$(dirname "$0")/.."
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}" RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p interconnect --release --test loom "$@"
