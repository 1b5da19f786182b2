#!/usr/bin/env bash
# Regenerate the Kotlin and Swift bindings of the `nws-bindings` crate from the library
# built from this checkout, with the workspace's own uniffi-bindgen in library mode and the
# settings of ./uniffi.toml. Writes:
#   bindings/kotlin/src/main/kotlin/org/nostrwebservices/nws/nws.kt
#   bindings/swift/Sources/Nws/Nws.swift
#   bindings/swift/Headers/NwsFFI.h, bindings/swift/Headers/NwsFFI.modulemap
#
#   scripts/gen-bindings.sh            regenerate in place
#   scripts/gen-bindings.sh --check    regenerate into a temporary directory and fail (exit 1,
#                                      with a diff) if the committed files are out of date
#
# Uses the debug build (target/debug/libnws.so, or .dylib on macOS): the interface, and so
# the generated code, does not depend on the profile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=false
case "${1:-}" in
    --check) check=true ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

cargo build -p nws-bindings --features cli --lib --bin uniffi-bindgen

target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
case "$(uname -s)" in
    Darwin) lib="$target_dir/debug/libnws.dylib" ;;
    *) lib="$target_dir/debug/libnws.so" ;;
esac

gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
"$target_dir/debug/uniffi-bindgen" generate --no-format --config uniffi.toml \
    --language kotlin --language swift --out-dir "$gen/raw" "$lib"

# Lay the files out as committed.
out="$gen/tree"
mkdir -p "$out/kotlin/src/main/kotlin/org/nostrwebservices/nws" "$out/swift/Sources/Nws" \
    "$out/swift/Headers"
mv "$gen/raw/org/nostrwebservices/nws/nws.kt" "$out/kotlin/src/main/kotlin/org/nostrwebservices/nws/"
mv "$gen/raw/Nws.swift" "$out/swift/Sources/Nws/"
mv "$gen/raw/NwsFFI.h" "$gen/raw/NwsFFI.modulemap" "$out/swift/Headers/"

# One edit of the generated Kotlin: UniFFI makes an error's `message` the list of its fields
# ("name=…, detail=…"); every NwsError variant carries the whole sentence in `detail`, so
# `message` is that sentence (what apps show and log). Failing loudly if the pattern is gone.
kt="$out/kotlin/src/main/kotlin/org/nostrwebservices/nws/nws.kt"
before=$(grep -c 'get() = ".*detail=\${ `detail` }"' "$kt" || true)
sed -i 's/get() = ".*detail=\${ `detail` }"/get() = `detail`/' "$kt"
after=$(grep -c 'get() = `detail`' "$kt" || true)
if [ "$before" -lt 1 ] || [ "$before" -ne "$after" ]; then
    echo "gen-bindings: the NwsException message edit matched $before and made $after lines" >&2
    exit 1
fi

files=(
    kotlin/src/main/kotlin/org/nostrwebservices/nws/nws.kt
    swift/Sources/Nws/Nws.swift
    swift/Headers/NwsFFI.h
    swift/Headers/NwsFFI.modulemap
)

if $check; then
    stale=0
    for f in "${files[@]}"; do
        if ! diff -u "bindings/$f" "$out/$f" >"$gen/diff" 2>&1; then
            echo "out of date: bindings/$f" >&2
            head -n 40 "$gen/diff" >&2
            stale=1
        fi
    done
    if [ "$stale" -ne 0 ]; then
        echo "generated bindings are out of date: run scripts/gen-bindings.sh and commit" >&2
        exit 1
    fi
    echo "generated bindings are current (${#files[@]} files)"
else
    for f in "${files[@]}"; do
        mkdir -p "bindings/$(dirname "$f")"
        cp "$out/$f" "bindings/$f"
        echo "wrote bindings/$f"
    done
fi
