#!/usr/bin/env bash
# Elastic workers on the local Slurm: scale-up from 0 to N workers and
# scale-down, through `tessera jobqueue scale`, with a graph running across
# both; no task lost or run twice.
#
#   benches/elastic_slurm.sh [WORKERS] [RUNS]
#
# Needs a running Slurm (as root: TESSERA_SLURM_NODES=3 scripts/local-slurm.sh
# start) with room for WORKERS one-core jobs. Builds the release binary, starts
# `tessera scheduler` on 127.0.0.1 with its own secret, and runs `tessera
# bench scale` against it (see `tessera bench scale --help`): per run, a graph
# of 400 sleeps of 20 ms (each feeding a small block, all summed) is submitted
# before any worker exists; `scale WORKERS` is timed until the scheduler lists
# all of them; `scale 1` once a quarter of the graph is done, until the other
# workers have left (blocks handed off) and until their jobs have ended;
# `scale 0` after the graph, until the last job has ended. Every run checks
# the result and counts in the jobs' output that each task ran exactly once.
# Prints the medians (and min-max) of RUNS runs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${1:-4}"
runs="${2:-5}"
cargo build --release --quiet
bin="$PWD/target/release/tessera"
dir=$(mktemp -d -t tessera-elastic-slurm-XXXXXX)
export TESSERA_SECRET_FILE="$dir/secret" TESSERA_SCHEDULER_FILE="$dir/scheduler.json"
"$bin" scheduler --listen 127.0.0.1:0 >"$dir/scheduler.out" 2>"$dir/scheduler.log" &
sched=$!
trap 'kill -TERM $sched 2>/dev/null; wait $sched 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s $TESSERA_SCHEDULER_FILE ]] && break; sleep 0.1; done
[[ -s $TESSERA_SCHEDULER_FILE ]] || { echo "the scheduler did not start: $(cat "$dir/scheduler.log")" >&2; exit 1; }
"$bin" bench scale --workers "$workers" --repeat "$runs" --log-dir "$dir/jobs" --json \
  -- --system slurm --cores-per-task 1 --walltime 00:10:00
echo "(scheduler log, job scripts and output: $dir)"
