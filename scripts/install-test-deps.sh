#!/usr/bin/env bash
# Install everything the NWS test suite needs, on Debian 12 (run as root, or as a user with
# sudo). Idempotent: each step is skipped when its tools are already present.
#   - apt: curl, protobuf-compiler (for building nostr-rs-relay), pkg-config
#   - apt: chromium (headless, for the WebView listener test)
#   - rustup components: clippy, rustfmt
#   - nostr-rs-relay 0.8.12 (the third-party relay the end-to-end tests run against),
#     built with `cargo install` (~6 minutes on 2 cores, once per machine)
#   - cargo-fuzz 0.13.2 (fuzz/run.sh), built with `cargo install` (~1 minute)
set -euo pipefail

NRR_VERSION=0.8.12
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf '==> %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
fi

# --- apt packages -----------------------------------------------------------------------
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing apt packages (missing: ${missing[*]})"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends curl protobuf-compiler pkg-config
else
    log "apt packages present: curl protobuf-compiler pkg-config"
fi

# --- headless Chromium (tests/tests/webview.rs: a browser through the WebView listener) --
if command -v chromium >/dev/null 2>&1; then
    log "chromium present: $(command -v chromium)"
else
    log "installing apt package chromium (missing)"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends chromium
fi

# --- rustup components ------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
    rustup component add clippy rustfmt
else
    log "rustup not found; make sure cargo clippy and cargo fmt are available"
fi

# --- nostr-rs-relay ---------------------------------------------------------------------
find_relay() {
    if [ -n "${NOSTR_RS_RELAY:-}" ] && [ -x "${NOSTR_RS_RELAY}" ]; then
        printf '%s\n' "$NOSTR_RS_RELAY"
    elif command -v nostr-rs-relay >/dev/null 2>&1; then
        command -v nostr-rs-relay
    elif [ -x "$CARGO_BIN/nostr-rs-relay" ]; then
        printf '%s\n' "$CARGO_BIN/nostr-rs-relay"
    else
        return 1
    fi
}

# Another `cargo install nostr-rs-relay` may already be running on this machine: wait for
# it instead of building a second copy concurrently.
waited=0
while pgrep -f "cargo install nostr-rs-relay" >/dev/null 2>&1; do
    if [ "$waited" -eq 0 ]; then
        log "another 'cargo install nostr-rs-relay' is running; waiting for it to finish"
    fi
    sleep 5
    waited=$((waited + 5))
    if [ "$waited" -ge 3600 ]; then
        log "gave up waiting for the other nostr-rs-relay install after 1 hour"
        break
    fi
done

if relay="$(find_relay)"; then
    version="$("$relay" --version 2>/dev/null || true)"
    log "nostr-rs-relay present: $relay (${version:-unknown version})"
    case "$version" in
        *"$NRR_VERSION"*) ;;
        *) log "warning: tests are written against nostr-rs-relay $NRR_VERSION" ;;
    esac
else
    log "building nostr-rs-relay $NRR_VERSION with cargo install (takes several minutes)"
    # No --locked: its lock file pins a `time` crate that no longer builds on current Rust.
    cargo install nostr-rs-relay --version "$NRR_VERSION"
    relay="$(find_relay)" || {
        log "nostr-rs-relay still not found after cargo install (is $CARGO_BIN writable?)"
        exit 1
    }
    log "installed $relay ($("$relay" --version 2>/dev/null || true))"
fi

# --- mobile bindings (bindings/, android-demo/) --------------------------------------------
# The Kotlin tests need a JDK (17+) and Maven (dependencies come from Maven Central); the
# Android compile check (scripts/build-android.sh --check) needs the Rust standard library
# for aarch64-linux-android and Debian's clang-14 with the arm64 C headers in place of the
# NDK's.
mobile_missing=()
command -v javac >/dev/null 2>&1 || mobile_missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || mobile_missing+=(maven)
command -v clang-14 >/dev/null 2>&1 || mobile_missing+=(clang-14)
command -v llvm-ar-14 >/dev/null 2>&1 || mobile_missing+=(llvm-14)
[ -d /usr/aarch64-linux-gnu/include ] || mobile_missing+=(libc6-dev-arm64-cross)
if [ "${#mobile_missing[@]}" -gt 0 ]; then
    log "installing apt packages for the mobile bindings (missing: ${mobile_missing[*]})"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${mobile_missing[@]}"
else
    log "apt packages present: JDK, maven, clang-14, llvm-14, libc6-dev-arm64-cross"
fi
if command -v rustup >/dev/null 2>&1; then
    rustup target add aarch64-linux-android
fi

# --- cargo-fuzz (fuzz/run.sh; runs on stable with RUSTC_BOOTSTRAP=1) --------------------
CARGO_FUZZ_VERSION=0.13.2
if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "cargo-fuzz present: $(cargo fuzz --version)"
else
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION with cargo install (about a minute)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
