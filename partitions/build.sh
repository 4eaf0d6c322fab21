#!/usr/bin/env bash
# Builds every partition image (one ELF per service crate) and reports each
# image's size and the build time. Stable Rust, no build-std: the target and the
# linker script come from .cargo/config.toml.
#   partitions/build.sh            images in partitions/target/x86_64-unknown-none/release/
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s.%N)
CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked "$@"
end=$(date +%s.%N)
printf 'build time: %.1f s\n' "$(echo "$end - $start" | bc)"
for m in */Cargo.toml; do
    d=$(dirname "$m")
    grep -q '^\[\[bin\]\]' "$m" || continue
    f=target/x86_64-unknown-none/release/$d
    [ -f "$f" ] && printf '%-10s %8d bytes (%.1f KiB)  %s\n' "$d" "$(stat -c %s "$f")" "$(echo "$(stat -c %s "$f") / 1024" | bc -l)" "$f"
done
