#!/usr/bin/env bash
# Run the whole NWS test suite: unit, integration and end-to-end tests (the end-to-end tests
# run real curl, a real HTTP backend and nostr-rs-relay, all on 127.0.0.1).
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh
cargo test --workspace --all-targets "$@"

# The Kotlin bindings on the JVM (bindings/kotlin): the generated Kotlin, loaded with JNA,
# against target/debug/libnws.so and a relay, exits and backends run by the tests from
# target/debug/nws.
# (--workspace: the same feature set as the tests above, so nothing is rebuilt.)
cargo build --workspace
mvn -B -ntp -f bindings/kotlin/pom.xml test
# The same tests against a release-like build: ProGuard shrinks and obfuscates the bindings
# and JNA with the consumer rules the AAR ships (bindings/kotlin/consumer-rules.pro).
# (clean: ProGuard reads every class file in target/, also those left by older sources.)
mvn -B -ntp -f bindings/kotlin/pom.xml -Pshrunk clean verify
bash scripts/check-doc-snippets.sh  # every Kotlin snippet of docs/MOBILE.md compiles against the bindings
