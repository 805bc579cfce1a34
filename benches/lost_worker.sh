#!/usr/bin/env bash
# What a lost worker costs: the seconds an elastic computation takes without a
# kill and with one of its workers SIGKILLed midway, and the difference
# (docs/benchmarks.md, "A lost worker: extra seconds to finish").
#
#   benches/lost_worker.sh [RUNS]        # default 3; about 5 minutes on 2 cores
#
# On this host: `tessera scheduler` on 127.0.0.1 and 4 `tessera worker
# --threads 1` processes. Three cases, each run RUNS times without a kill and
# RUNS times with a kill, alternating:
#   - randomized SVD (`svd --random 120000x1000 --method randomized --k 10`),
#   - TSQR SVD with U, S and Vt written to HDF5 (`svd --random 400000x128
#     --method tsqr -o FILE`),
#   - matmul (`matmul --random 3072x3072x3072 --chunks 768`).
# A kill is a SIGKILL of one worker (a different one each run) at half the
# median time of the runs without a kill; a new worker is started after each
# killed run, so every run begins with 4. Times are the whole command's wall
# clock (start-up, connecting, computing, writing, exit), medians over RUNS.
# "recomputed" is the median of what the killed runs' --json report. A killed
# run that fails is counted, and its first error line printed.
#
# Builds the release binary with every feature first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-3}"
cargo build --release --quiet --features full
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/tessera
dir=$(mktemp -d)
pids=()
sched=
cleanup() {
  for p in "${pids[@]}" $sched; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# The command line of every process; started in the background without a
# function or subshell in between, so that $! is the tessera process itself.
tessera=("$bin" -q --heartbeat-timeout 2 --scheduler-file "$dir/scheduler.json" --secret-file "$dir/secret")
# A computation that does not end within this many seconds counts as failed.
limit=120
field() { python3 -c "import json,sys; v=json.loads(sys.stdin.read().strip().splitlines()[-1]).get(sys.argv[1]); print('-' if v is None else v)" "$1"; }
median() { python3 -c "import sys,statistics; v=[float(x) for x in sys.argv[1:] if x != '-']; print(f'{statistics.median(v):.2f}' if v else '-')" "$@"; }
now() { date +%s.%N; }

"${tessera[@]}" scheduler --listen 127.0.0.1:0 >"$dir/scheduler.out" 2>"$dir/scheduler.log" &
sched=$!
for _ in $(seq 100); do [[ -s $dir/scheduler.json ]] && break; sleep 0.1; done
start_worker() {
  "${tessera[@]}" worker --threads 1 >/dev/null 2>>"$dir/workers.log" &
  pids+=($!)
  disown
}
wait_workers() {
  for _ in $(seq 600); do
    n=$(timeout 20 "${tessera[@]}" workers --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)['workers']))") ||
      { echo "the scheduler does not answer (see its log)" >&2; tail -20 "$dir/scheduler.log" >&2; exit 1; }
    [[ $n == "$1" ]] && return
    sleep 0.1
  done
  echo "the cluster did not reach $1 workers" >&2
  exit 1
}
live=()
for _ in 1 2 3 4; do start_worker; live+=("${pids[-1]}"); done
wait_workers 4

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/^Mem:/ {print $2}') GiB, $(date -u +%F)"
echo "== 4 workers (1 thread each) on 127.0.0.1, $runs runs of each, one worker SIGKILLed at half the no-kill time"

rsvd=(svd --random 120000x1000 --chunk-rows 7500 --method randomized --k 10 --json)
tsqr=(svd --random 400000x128 --chunk-rows 12500 --method tsqr -o "$dir/usv.h5" --json)
matmul=(matmul --random 3072x3072x3072 --chunks 768 --json)
names=("randomized SVD 120000 x 1000, k = 10" "TSQR SVD 400000 x 128, U S Vt to HDF5" "matmul 3072 x 3072 x 3072, blocks of 768")

rows=()
victim=0
for c in 0 1 2; do
  case $c in 0) args=("${rsvd[@]}") ;; 1) args=("${tsqr[@]}") ;; 2) args=("${matmul[@]}") ;; esac
  timeout $limit "${tessera[@]}" "${args[@]}" >/dev/null 2>&1 || true # warm-up: page cache, first allocations
  clean=() killed=() recomputed=() lost=() failed=0 err=
  for r in $(seq "$runs"); do
    t0=$(now)
    timeout $limit "${tessera[@]}" "${args[@]}" >"$dir/out.json" 2>"$dir/err.txt" || {
      echo "a run without a kill failed:" >&2
      tail -3 "$dir/err.txt" >&2
      echo "-- the scheduler's log:" >&2
      tail -20 "$dir/scheduler.log" >&2
      echo "-- the workers' log:" >&2
      tail -20 "$dir/workers.log" >&2
      exit 1
    }
    clean+=("$(echo "$(now) - $t0" | bc)")
    # The kill: one worker, half-way through the median time so far.
    delay=$(median "${clean[@]}" | awk '{print $1 / 2}')
    t0=$(now)
    timeout $limit "${tessera[@]}" "${args[@]}" >"$dir/out.json" 2>"$dir/err.txt" &
    cmd=$!
    sleep "$delay"
    kill -9 "${live[$victim]}" 2>/dev/null || true
    if wait "$cmd"; then
      killed+=("$(echo "$(now) - $t0" | bc)")
      recomputed+=("$(field recomputed <"$dir/out.json")")
      lost+=("$(field workers_lost <"$dir/out.json")")
    else
      failed=$((failed + 1))
      [[ -n $err ]] || err=$(grep -m1 -i 'error' "$dir/err.txt" || echo "no error message (timed out after $limit s?)")
    fi
    start_worker
    live[$victim]=${pids[-1]}
    victim=$(((victim + 1) % 4))
    wait_workers 4
  done
  a=$(median "${clean[@]}") b=$(median "${killed[@]}")
  extra=$(python3 -c "import sys; a,b=sys.argv[1:]; print('-' if '-' in (a,b) else f'{float(b)-float(a):+.2f}')" "$a" "$b")
  echo "${names[$c]}: without a kill ${clean[*]} s; killed ${killed[*]:-none} s; workers_lost ${lost[*]:-none}; recomputed ${recomputed[*]:-none}; failed $failed of $runs"
  [[ -z $err ]] || echo "  first failure: $err"
  rows+=("| ${names[$c]} | $a s | $b s | $extra s | $(median "${recomputed[@]}") | $failed of $runs |")
done

echo
echo "| case | without a kill | one worker SIGKILLed midway | extra seconds after a lost worker | tasks recomputed | killed runs failed |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
