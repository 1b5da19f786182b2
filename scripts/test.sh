#!/usr/bin/env bash
# Run the whole NWS test suite: unit, integration and end-to-end tests (the end-to-end tests
# run real curl, a real HTTP backend and nostr-rs-relay, all on 127.0.0.1).
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh
cargo test --workspace --all-targets "$@"
