#!/usr/bin/env bash
# Per-task overhead over TCP of two `tessera` binaries, run in turn (A B A B
# ...): for each binary an elastic scheduler and 2 worker processes
# (`--threads 1`) on 127.0.0.1, then a driver connected as a remote client
# runs `bench overhead`. Every control message crosses the codec (and, where
# a build has it, the per-frame MAC) twice, so this is where a change to the
# wire shows.
#
#   benches/overhead_tcp_ab.sh BASE_BIN NEW_BIN [PAIRS] [TASKS]
#
# Prints, per shape, the median us/task of each binary over PAIRS runs
# (default 5) of `bench overhead --tasks TASKS --repeat 3` (default 20000
# tasks), and NEW/BASE.
set -euo pipefail
base="$1"
new="$2"
pairs="${3:-5}"
tasks="${4:-20000}"
dir="$(mktemp -d)"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$dir"' EXIT
# One cluster of `bin`, one overhead run of `shape`; prints the JSON line.
run() {
  local bin="$1" shape="$2" file="$dir/scheduler.json"
  rm -f "$file"
  "$bin" --scheduler-file "$file" --secret-file "$dir/secret" scheduler --listen 127.0.0.1:0 -q >"$dir/sched.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [[ -s $file ]] && break; sleep 0.1; done
  for _ in 1 2; do
    "$bin" --scheduler-file "$file" --secret-file "$dir/secret" worker --threads 1 -q >>"$dir/workers.log" 2>&1 &
    pids+=($!)
  done
  "$bin" --scheduler-file "$file" --secret-file "$dir/secret" -q bench overhead --tasks "$tasks" --shape "$shape" --repeat 3 --json | tail -n 1
  stop
}
out="$dir/runs"
for shape in wide chain tree; do
  for ((i = 0; i < pairs; i++)); do
    echo "tcp $shape base $(run "$base" "$shape")" >>"$out"
    echo "tcp $shape new $(run "$new" "$shape")" >>"$out"
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    launch, shape, which, js = line.split(" ", 3)
    runs.setdefault((launch, shape), {}).setdefault(which, []).append(json.loads(js)["us_per_task"])
print("| launch | shape | base us/task (median, min-max) | new us/task (median, min-max) | new / base |")
print("|---|---|---:|---:|---:|")
for (launch, shape), r in runs.items():
    b, n = r["base"], r["new"]
    mb, mn = statistics.median(b), statistics.median(n)
    print(f"| {launch} | {shape} | {mb:.2f} ({min(b):.2f}-{max(b):.2f}) | {mn:.2f} ({min(n):.2f}-{max(n):.2f}) | {mn / mb:.2f} |")
PY
