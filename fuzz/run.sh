#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 10 s each) from the committed seeds.
# Longer runs: fuzz/run.sh 600. Needs cargo-fuzz (installed when missing); the stable
# toolchain builds the sanitizer-coverage instrumentation with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$PWD/../target/fuzz"
targets=$(cargo fuzz list)
cargo fuzz build -O
for t in $targets; do
    mkdir -p "corpus/$t"
    # Writable corpus under corpus/ (ignored by git), the seeds are read only.
    out=$(cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -max_len=4096 2>&1) || {
        echo "$out" | tail -40
        echo "fuzz: target $t FAILED (crash input under fuzz/artifacts/$t/)"
        exit 1
    }
    runs=$(echo "$out" | sed -n 's/^Done \([0-9]*\) runs.*/\1/p' | tail -1)
    echo "fuzz: $t: ${runs:-?} runs in $secs s, no crash"
done
