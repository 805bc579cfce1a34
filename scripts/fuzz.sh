#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets: control frames, the handshake,
# block headers) for SECONDS each, on the stable toolchain (libFuzzer
# without a sanitizer: `cargo fuzz run --sanitizer none`).
#
#   scripts/fuzz.sh [SECONDS]      # default 20
#
# Each target starts from its seed corpus (fuzz/corpus/TARGET/seed-*); what
# it finds is kept in a scratch directory, not in the repository. Prints
# the executions of each target; exits non-zero on the first crash, with
# the input that caused it under fuzz/artifacts/TARGET/ (replay it with
# `cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...`).
# Needs cargo-fuzz: `cargo install cargo-fuzz --locked`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in frame handshake block_header; do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! cargo fuzz run --sanitizer none "$target" "$work/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: target $target FAILED; the input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  echo "fuzz: $target: ${runs:-?} executions in ${secs} s (${rate:-?}/s), no crash"
done
