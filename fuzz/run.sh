#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 10 s each) from the committed seeds.
# Longer runs: fuzz/run.sh 600. Needs cargo-fuzz (installed when missing); the stable
# toolchain builds the sanitizer-coverage instrumentation with RUSTC_BOOTSTRAP=1.
#
# Built optimised (-O) with debug assertions and overflow checks (-a; the release profile
# in Cargo.toml has overflow-checks = true as well), so an integer overflow is a crash.
# Every target runs even when an earlier one crashed. Output, read by scripts/test:
#   fuzz: targets: T1 T2 ...
#   fuzz: T: R runs, C crashes, exit S (N s)     one line per target
# and the exit status is non-zero when a target crashed or did not run to its end.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$PWD/../target/fuzz"
targets=$(cargo fuzz list)
echo "fuzz: targets:" $targets
cargo fuzz build -O -a
failed=0
for t in $targets; do
    mkdir -p "corpus/$t"
    # Writable corpus under corpus/ (ignored by git), the seeds are read only.
    # -print_final_stats=1: libFuzzer prints the number of runs also when it crashed.
    status=0
    out=$(cargo fuzz run -O -a "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" \
        -max_len=4096 -print_final_stats=1 2>&1) || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' <<<"$out" | tail -n 1)
    # One "Test unit written to" per crash, timeout or out-of-memory input saved.
    crashes=$(grep -c 'Test unit written to' <<<"$out" || true)
    if [ "$status" != 0 ] || [ "$crashes" != 0 ] || [ -z "$runs" ]; then
        failed=1
        # The start of the panic or sanitizer report (else the end of the output).
        # (awk reads to the end: a reader that stops early would SIGPIPE under pipefail)
        report=$(awk '/panicked at|ERROR: / { on = 1 } on && n++ < 12' <<<"$out")
        if [ -n "$report" ]; then echo "$report"; else tail -n 40 <<<"$out"; fi
        grep -o 'Test unit written to .*' <<<"$out" | sed 's/^/fuzz: /' || true
    fi
    echo "fuzz: $t: ${runs:-?} runs, $crashes crashes, exit $status ($secs s)"
done
exit "$failed"
