#!/usr/bin/env bash
# What recording events costs, and what a report of many tasks weighs.
#
#   benches/events_overhead.sh [RUNS]      # default 9
#
# 1. 100,000 trivial tasks (`tessera bench overhead --tasks 100000`, wide
#    graph, 3 repetitions per process): microseconds per task with events
#    recorded (the default) against `--no-events`, RUNS processes of each,
#    alternating; medians and their ratio.
# 2. TSQR SVD of 4,000,000 x 64 (the linear algebra benchmark's case):
#    compute seconds with `--report --trace` against `--no-events`, and the
#    whole command's wall time (which adds gathering the events and writing
#    both files), RUNS alternating runs of each.
# 3. The report and trace of one 100,000-task run: file sizes and the time
#    to gather the events and write both.
#
# Builds the release binary with every feature first. Prints one line per figure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-9}"
cargo build --release --quiet --features full
bin=$PWD/target/release/tessera
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Median of the per-run ratios on/off, as a percentage change: runs are
# taken in pairs, so slow drifts of the machine cancel.
pair_cost() { paste "$1" "$2" | awk '{print $1 / $2}' | median | awk '{printf "%+.1f %%", 100 * ($1 - 1)}'; }
json_field() { tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo "== 1. 100,000 trivial tasks, $runs runs each (us/task, median of 3 graphs per run)"
: >"$out/on" && : >"$out/off"
for _ in $(seq "$runs"); do
  "$bin" -q bench overhead --tasks 100000 --repeat 3 --json | json_field us_per_task >>"$out/on"
  "$bin" -q --no-events bench overhead --tasks 100000 --repeat 3 --json | json_field us_per_task >>"$out/off"
done
on=$(median <"$out/on") off=$(median <"$out/off")
echo "events on:  $on us/task   (runs: $(tr '\n' ' ' <"$out/on"))"
echo "events off: $off us/task   (runs: $(tr '\n' ' ' <"$out/off"))"
echo "recording costs: $(python3 -c "print(f'{100 * ($on / $off - 1):+.1f} %')") (ratio of medians); $(pair_cost "$out/on" "$out/off") (median of paired ratios)"

echo "== 2. TSQR SVD 4,000,000 x 64, $runs runs each"
svd=(svd --random 4000000x64 --chunk-rows 250000 --persist-input --json)
: >"$out/svd_on" && : >"$out/svd_off" && : >"$out/wall_on" && : >"$out/wall_off"
for _ in $(seq "$runs"); do
  t0=$(date +%s.%N)
  "$bin" -q "${svd[@]}" --report "$out/svd.html" --trace "$out/svd.json" 2>/dev/null | json_field seconds >>"$out/svd_on"
  echo "$(date +%s.%N) - $t0" | bc >>"$out/wall_on"
  t0=$(date +%s.%N)
  "$bin" -q --no-events "${svd[@]}" | json_field seconds >>"$out/svd_off"
  echo "$(date +%s.%N) - $t0" | bc >>"$out/wall_off"
done
on=$(median <"$out/svd_on") off=$(median <"$out/svd_off")
won=$(median <"$out/wall_on") woff=$(median <"$out/wall_off")
echo "compute, report on:  $on s   (runs: $(tr '\n' ' ' <"$out/svd_on"))"
echo "compute, events off: $off s   (runs: $(tr '\n' ' ' <"$out/svd_off"))"
echo "recording costs: $(python3 -c "print(f'{100 * ($on / $off - 1):+.1f} %')") (ratio of medians); $(pair_cost "$out/svd_on" "$out/svd_off") (median of paired ratios)"
echo "whole command, report and trace written: $won s; events off: $woff s ($(python3 -c "print(f'{100 * ($won / $woff - 1):+.1f} %')"))"
echo "report $(stat -c %s "$out/svd.html") bytes, trace $(stat -c %s "$out/svd.json") bytes"

echo "== 3. report of 100,000 tasks"
"$bin" -q bench overhead --tasks 100000 --repeat 1 --json >"$out/one.json"
t0=$(date +%s.%N)
"$bin" -q bench overhead --tasks 100000 --repeat 1 --report "$out/r.html" --trace "$out/t.json" --json >"$out/two.json" 2>/dev/null
t1=$(date +%s.%N)
"$bin" -q bench overhead --tasks 100000 --repeat 1 --json >/dev/null
t2=$(date +%s.%N)
echo "html report: $(stat -c %s "$out/r.html") bytes; chrome trace: $(stat -c %s "$out/t.json") bytes"
echo "command with report and trace: $(echo "$t1 - $t0" | bc) s; without: $(echo "$t2 - $t1" | bc) s"
if command -v chromium >/dev/null; then
  scripts/check-report.sh "$out/r.html"
  echo
fi
