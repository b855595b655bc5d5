#!/usr/bin/env bash
# Coverage-guided fuzzing of wshub on the stable toolchain: libFuzzer (from the crate
# libfuzzer-sys, which builds it from source with the machine's C++ compiler) with the
# instrumentation cargo-fuzz uses, all of it stable rustc flags. No nightly, no cargo-fuzz
# install, no sanitizer (wshub's parsing paths have no unsafe code; panics, overflow checks
# and debug assertions are what is caught, plus the harnesses' own checks: src/lib.rs).
#
# Usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default 30); targets: http frames (default both, one after the other)
# Builds, then runs each target for SECONDS with its committed seed corpus (corpus/TARGET/)
# and a working corpus that persists between runs (target/corpus/TARGET/, not committed).
# Exits non-zero if a target crashed (or failed a check, or timed out); the input is saved
# under target/artifacts/TARGET/ and the command to replay it is printed.
#
# The same crate also works with cargo-fuzz, where it is installed (name a working corpus
# first, or it adds its finds to the committed one):
#   cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none http \
#     tests/fuzz/target/corpus/http tests/fuzz/corpus/http -- -dict=tests/fuzz/http.dict
set -euo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)

secs=${1:-30}
if [ $# -gt 0 ]; then shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http frames)
case "$secs" in
  '' | 0 | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

# What the build needs besides cargo: a C++ compiler for libFuzzer's sources.
if ! command -v c++ > /dev/null; then
  echo "== installing g++ (libFuzzer is built from source)"
  apt-get update -qq && apt-get install -y -qq g++ > /dev/null
fi

host=$(rustc -vV | sed -n 's/^host: //p')
echo "== $(rustc --version), target $host"

# cargo-fuzz's flags for `--sanitizer none` (cargo-fuzz 0.13): SanitizerCoverage for
# libFuzzer (8-bit counters, PC table, compare tracing, stack depth), `--cfg fuzzing`,
# debug assertions and overflow checks, one codegen unit. `--target` keeps them off build
# scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Ccodegen-units=1"
# Its own target directory: these flags would otherwise rebuild the main crate's cache.
target_dir=${WSHUB_FUZZ_TARGET_DIR:-$HERE/target}
echo "== building ${targets[*]}"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
cargo build --release --config 'profile.release.debug="line-tables-only"' \
  --target "$host" --target-dir "$target_dir" "${bin_args[@]}"
bin_dir=$target_dir/$host/release

failed=()
for t in "${targets[@]}"; do
  work=$target_dir/corpus/$t
  artifacts=$target_dir/artifacts/$t
  log=$target_dir/fuzz-$t.log
  mkdir -p "$work" "$artifacts"
  extra=()
  [ -f "$HERE/$t.dict" ] && extra+=("-dict=$HERE/$t.dict")
  echo "== fuzzing $t for ${secs}s (log: $log)"
  rc=0
  # New inputs go to the working corpus (the first directory), never to the committed one.
  # -timeout: one input taking over 10 s is a hang; the outer timeout is a last resort.
  timeout --kill-after=10 $((secs + 120)) "$bin_dir/$t" "$work" "$HERE/corpus/$t" \
    -max_total_time="$secs" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 "${extra[@]}" > "$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1 || true)
  echo "   $t: exit $rc, ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-no coverage line}"
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to' "$log" | head -20 || true
    tail -n 30 "$log"
    sed -n 's/.*Test unit written to //p' "$log" | while read -r crash; do
      echo "   input: $crash"
      echo "   replay: $bin_dir/$t $crash"
      echo "   minimise: $bin_dir/$t -minimize_crash=1 -runs=100000 -artifact_prefix=$artifacts/min- $crash"
    done
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FUZZING FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${secs}s each, no crash"
