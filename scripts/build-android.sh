#!/usr/bin/env bash
# Build the NWS Android library: libnws.so for arm64-v8a, armeabi-v7a and x86_64 with
# cargo-ndk (profile release-mobile), the compiled Kotlin bindings (bindings/kotlin), and an
# AAR that holds both:
#
#   scripts/build-android.sh             needs ANDROID_NDK_HOME (or ANDROID_NDK_ROOT),
#                                        cargo-ndk (`cargo install cargo-ndk`) and Maven;
#                                        writes target/android/nws-<version>.aar, .pom,
#                                        -sources.jar, -javadoc.jar and
#                                        target/android/jniLibs/<abi>/libnws.so
#   scripts/build-android.sh --check     no NDK needed: `cargo check` of the bindings crate for
#                                        aarch64-linux-android (all Rust type checking,
#                                        including the android_logger code), with Debian's
#                                        clang-14 standing in for the NDK's to compile ring's
#                                        C for the target (compile only, nothing is linked).
#                                        CI runs this.
#   scripts/build-android.sh --check-alignment LIB.so...
#                                        fails unless every LOAD segment of each library is
#                                        aligned to 16 KiB or more (the check the build runs)
#
# The AAR layout (see docs/MOBILE.md): AndroidManifest.xml, classes.jar (package
# org.nostrwebservices.nws), jni/<abi>/libnws.so, proguard.txt (the consumer R8 rules,
# bindings/kotlin/consumer-rules.pro), and nws-<version>.pom next to it naming the runtime
# dependencies (JNA as an AAR, kotlinx-coroutines-android) and the metadata Maven Central
# asks for (from bindings/kotlin/pom.xml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ABIS=(arm64-v8a armeabi-v7a x86_64)
RUST_TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)
MIN_SDK=21
JNA_VERSION=5.17.0
COROUTINES_VERSION=1.10.2

log() { printf '==> %s\n' "$*" >&2; }

# Android 15 devices may use 16 KiB pages, and Google Play requires apps targeting them to
# ship libraries whose LOAD segments are aligned to 16 KiB: fail unless each one is.
check_alignment() {
    local readelf so align n
    local root="${ndk:-${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-/nonexistent}}}"
    readelf="$(ls "$root"/toolchains/llvm/prebuilt/*/bin/llvm-readelf 2>/dev/null | head -n 1 || true)"
    [ -n "$readelf" ] || readelf="$(command -v readelf || command -v llvm-readelf || true)"
    [ -n "$readelf" ] || { log "no readelf found"; return 1; }
    for so in "$@"; do
        n=0
        while read -r align; do
            [[ "$align" =~ ^0x[0-9a-fA-F]+$ ]] || { log "$so: cannot read the alignment '$align'"; return 1; }
            if (( align < 0x4000 )); then
                log "$so: a LOAD segment is aligned to $align, less than 16 KiB (0x4000)"
                return 1
            fi
            n=$((n + 1))
        done < <("$readelf" -lW "$so" | awk '$1 == "LOAD" { print $NF }')
        [ "$n" -gt 0 ] || { log "$so: no LOAD segment found"; return 1; }
        log "$so: $n LOAD segments, all aligned to 16 KiB or more"
    done
}

if [ "${1:-}" = "--check-alignment" ]; then
    shift
    [ "$#" -gt 0 ] || { log "usage: $0 --check-alignment LIB.so..."; exit 2; }
    check_alignment "$@"
    exit 0
fi

if [ "${1:-}" = "--check" ]; then
    target=aarch64-linux-android
    rustup target add "$target" >/dev/null
    clang=clang-14
    command -v "$clang" >/dev/null || { log "$clang not found (apt-get install clang-14 llvm-14 libc6-dev-arm64-cross)"; exit 1; }
    resource_dir="$("$clang" -print-resource-dir)"
    export CC_aarch64_linux_android="$clang"
    export AR_aarch64_linux_android=llvm-ar-14
    # glibc's arm64 headers stand in for bionic's: ring's C only needs the basics.
    export CFLAGS_aarch64_linux_android="--target=aarch64-linux-android$MIN_SDK -nostdlibinc \
-isystem $resource_dir/include -isystem /usr/aarch64-linux-gnu/include"
    log "cargo check --target $target -p nws-bindings --lib (no NDK: type check only)"
    cargo check --target "$target" -p nws-bindings --lib
    exit 0
fi

ndk="${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}"
[ -n "$ndk" ] && [ -d "$ndk" ] || { log "set ANDROID_NDK_HOME to an Android NDK (r26 or newer)"; exit 1; }
command -v cargo-ndk >/dev/null || { log "cargo-ndk not found: cargo install cargo-ndk"; exit 1; }

rustup target add "${RUST_TARGETS[@]}"
out=target/android
rm -rf "$out" && mkdir -p "$out"

# Link with 16 KiB pages on every ABI. (NDK r28+ does by default for 64-bit ABIs only, and
# recent cargo-ndk adds the flag for 64-bit ABIs with older NDKs: not something to rely on.)
# Cargo reads the first one set of CARGO_ENCODED_RUSTFLAGS, RUSTFLAGS and
# CARGO_TARGET_<TRIPLE>_RUSTFLAGS, so extend that one.
page_arg="link-arg=-Wl,-z,max-page-size=16384"
if [ -n "${CARGO_ENCODED_RUSTFLAGS:-}" ]; then
    export CARGO_ENCODED_RUSTFLAGS="$CARGO_ENCODED_RUSTFLAGS"$'\x1f'"-C"$'\x1f'"$page_arg"
elif [ -n "${RUSTFLAGS:-}" ]; then
    export RUSTFLAGS="$RUSTFLAGS -C $page_arg"
else
    for triple in "${RUST_TARGETS[@]}"; do
        var="CARGO_TARGET_$(printf '%s' "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
        export "$var=${!var:+${!var} }-C $page_arg"
    done
fi

ndk_targets=()
for abi in "${ABIS[@]}"; do ndk_targets+=(-t "$abi"); done
log "building libnws.so for ${ABIS[*]}"
cargo ndk "${ndk_targets[@]}" --platform "$MIN_SDK" -o "$out/jniLibs" \
    build --profile release-mobile -p nws-bindings --lib --features small
libs=()
for abi in "${ABIS[@]}"; do libs+=("$out/jniLibs/$abi/libnws.so"); done
check_alignment "${libs[@]}"

log "compiling the Kotlin bindings (jar, -sources.jar, -javadoc.jar)"
# (clean: no class files of older sources in classes.jar.)
mvn -B -ntp -q -f bindings/kotlin/pom.xml clean package -DskipTests
version="$(sed -n 's:.*<version>\([0-9][^<]*\)</version>.*:\1:p' bindings/kotlin/pom.xml | head -n 1)"
# url, licenses, developers and scm, as in bindings/kotlin/pom.xml.
metadata="$(awk '/publish-metadata: end/ { f = 0 } f; /publish-metadata: begin/ { f = 1 }' bindings/kotlin/pom.xml)"
[ -n "$metadata" ] || { log "no publish-metadata block in bindings/kotlin/pom.xml"; exit 1; }

log "assembling the AAR"
aar="$out/aar"
mkdir -p "$aar/jni"
cp "bindings/kotlin/target/nws-kotlin-$version.jar" "$aar/classes.jar"
cp -r "$out/jniLibs/." "$aar/jni/"
# Consumer R8/ProGuard rules: an AAR's proguard.txt is applied to the app that uses it.
cp bindings/kotlin/consumer-rules.pro "$aar/proguard.txt"
cat >"$aar/AndroidManifest.xml" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android"
    package="org.nostrwebservices.nws">
    <uses-sdk android:minSdkVersion="$MIN_SDK" />
    <uses-permission android:name="android.permission.INTERNET" />
</manifest>
EOF
: >"$aar/R.txt"
(cd "$aar" && rm -f "../nws-$version.aar" && zip -q -r "../nws-$version.aar" .)
for classifier in sources javadoc; do
    cp "bindings/kotlin/target/nws-kotlin-$version-$classifier.jar" "$out/nws-$version-$classifier.jar"
done
cat >"$out/nws-$version.pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.nostrwebservices</groupId>
  <artifactId>nws</artifactId>
  <version>$version</version>
  <packaging>aar</packaging>
  <name>nws</name>
  <description>NWS (Nostr Web Services) for Android: the in-app entry proxy, with its Kotlin bindings</description>
$metadata
  <dependencies>
    <dependency>
      <groupId>net.java.dev.jna</groupId>
      <artifactId>jna</artifactId>
      <version>$JNA_VERSION</version>
      <type>aar</type>
    </dependency>
    <dependency>
      <groupId>org.jetbrains.kotlinx</groupId>
      <artifactId>kotlinx-coroutines-android</artifactId>
      <version>$COROUTINES_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
for abi in "${ABIS[@]}"; do
    printf '%-12s %s bytes\n' "$abi" "$(stat -c %s "$out/jniLibs/$abi/libnws.so")"
done
log "wrote $out/nws-$version.aar, .pom, -sources.jar and -javadoc.jar"
