#!/usr/bin/env bash
# Build NwsFFI.xcframework (macOS with Xcode only): the static library libnws.a of the
# nws-bindings crate (profile release-mobile) for iOS devices (arm64), the iOS simulator
# (arm64 + x86_64) and macOS (arm64 + x86_64), each with the generated C header and module
# map (bindings/swift/Headers), next to Package.swift.
#
#   bindings/swift/build-xcframework.sh
#
# Not run in this project's CI (Linux): see docs/MOBILE.md for what was verified where.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

[ "$(uname -s)" = Darwin ] || { echo "build-xcframework.sh needs macOS with Xcode" >&2; exit 1; }
command -v xcodebuild >/dev/null || { echo "xcodebuild not found: install Xcode" >&2; exit 1; }

export IPHONEOS_DEPLOYMENT_TARGET=15.0 MACOSX_DEPLOYMENT_TARGET=12.0
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
    cargo build --profile release-mobile -p nws-bindings --lib --features small --target "$t"
done

lib() { echo "target/$1/release-mobile/libnws.a"; }
out="target/xcframework"
rm -rf "$out" && mkdir -p "$out/ios-sim" "$out/macos" "$out/headers"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$out/ios-sim/libnws.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$out/macos/libnws.a"

# The module map must be called module.modulemap inside the framework's headers.
cp "$here/Headers/NwsFFI.h" "$out/headers/"
cp "$here/Headers/NwsFFI.modulemap" "$out/headers/module.modulemap"

rm -rf "$here/NwsFFI.xcframework"
xcodebuild -create-xcframework \
    -library "$(lib aarch64-apple-ios)" -headers "$out/headers" \
    -library "$out/ios-sim/libnws.a" -headers "$out/headers" \
    -library "$out/macos/libnws.a" -headers "$out/headers" \
    -output "$here/NwsFFI.xcframework"
echo "wrote $here/NwsFFI.xcframework"
