#!/usr/bin/env bash
# Size of the mobile library as it ships (profile release-mobile, feature `small`), for the
# host (x86_64 Linux here: the Android NDK is not on this machine, and the x86_64 Android
# ABI builds the same code), beside the target of issue 15 (3.5 MiB, stripped) and the
# same library without `small`. Prints figures; asserts nothing.
#
#   bash scripts/mobile-size.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target=$((7 * 512 * 1024))
size() { stat -c %s target/release-mobile/libnws.so; }
cargo build -q --profile release-mobile -p nws-bindings --lib
plain=$(size)
cargo build -q --profile release-mobile -p nws-bindings --lib --features small
small=$(size)
printf '%-44s %10s bytes\n' "libnws.so, release-mobile" "$plain"
printf '%-44s %10s bytes\n' "libnws.so, release-mobile + small (shipped)" "$small"
printf '%-44s %10s bytes (%s)\n' "target (3.5 MiB)" "$target" \
    "$([ "$small" -le "$target" ] && echo met || echo "NOT MET by $((small - target))")"
