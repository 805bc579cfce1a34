#!/usr/bin/env bash
# The scheduler at scale: `tessera bench simulate` over a grid of cluster
# sizes and graph shapes, one table of the core's cost per task, makespan
# over its lower bound, and the core's memory per task.
#
#   benches/simulate.sh [TASKS] [THREADS] [WORKERS...]
#
# Defaults: 1000000 tasks, 32 threads per worker, 10 100 1000 10000 workers,
# every shape (wide chain tree tsqr matmul), 1 ms mean tasks, 10 us latency,
# 10 GB/s, 1 MiB blocks, seed 0, RUNS=3 runs of each graph in one process
# (the core's cost is the lowest; the first run's is shown beside it).
# JSON lines go to target/bench/simulate.jsonl. About 15 minutes on 2 cores:
# each simulation is one process, one thread.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tasks="${1:-1000000}"
threads="${2:-32}"
shift $(( $# > 2 ? 2 : $# ))
workers=("$@")
if ((${#workers[@]} == 0)); then workers=(10 100 1000 10000); fi
out="target/bench"
mkdir -p "$out"
cargo build --release --quiet --bin tessera
bin=target/release/tessera

: >"$out/simulate.jsonl"
for shape in wide chain tree tsqr matmul; do
  for w in "${workers[@]}"; do
    "$bin" bench simulate --workers "$w" --threads "$threads" --tasks "$tasks" --shape "$shape" \
      --runs "${RUNS:-3}" --json 2>/dev/null \
      | tail -n 1 >>"$out/simulate.jsonl"
  done
done

python3 - "$out/simulate.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| shape | workers | tasks | core us/task | first run | of which submit | us/event | makespan / lower bound | / work or path | core bytes/task | blocks moved |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['shape']} | {r['workers']:,} | {r['tasks']:,} | {r['us_per_task']:.2f} | {r['first_us_per_task']:.2f} "
          f"| {r['submit_us_per_task']:.2f} | {r['us_per_event']:.2f} | {r['makespan_ratio']:.3f} | {r['work_path_ratio']:.3f} "
          f"| {r['scheduler_bytes_per_task']:.0f} | {r['transfers']:,} |")
PY
