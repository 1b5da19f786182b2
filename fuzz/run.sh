#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds each (default 40), starting from
# the committed seed corpus, and fails on the first crash, leak, timeout or
# broken invariant. What libFuzzer finds goes to a scratch directory, so the
# committed corpus only changes by hand (see fuzz/README.md).
#
#   bash fuzz/run.sh [SECS] [TARGET...]
#
# cargo-fuzz needs nightly-only flags (-Zsanitizer=address); on a stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks them, so no nightly is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

secs="${1:-40}"
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz 0.13.2" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${#targets[@]} fuzz targets (release, AddressSanitizer)" >&2
cargo fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for ${secs}s" >&2
    mkdir -p "$scratch/$t"
    if ! cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 2>"$scratch/$t.log"; then
        tail -n 60 "$scratch/$t.log" >&2
        # libFuzzer's random seed, to replay the same run: -seed=N.
        grep -m1 -E "^INFO: Seed: [0-9]+" "$scratch/$t.log" >&2 || true
        for f in artifacts/"$t"/*; do
            [ -f "$f" ] || continue
            echo "==> $t: failing input $f (base64): $(base64 -w0 "$f")" >&2
        done
        echo "==> $t FAILED: turn the input into a regression (fuzz/README.md)" >&2
        exit 1
    fi
    grep -E "^INFO: Seed: [0-9]+|stat::number_of_executed_units|stat::peak_rss_mb|cov: .*DONE|Done [0-9]+ runs" "$scratch/$t.log" | tail -n 4 >&2 || true
    echo "==> $t: $(ls "$scratch/$t" | wc -l) new inputs, no failure" >&2
done
