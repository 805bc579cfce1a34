#!/usr/bin/env bash
# Per-task scheduling overhead, Tessera against Dask, side by side in one run.
#
#   benches/overhead_vs_dask.sh [TASKS] [REPEAT] [DISTRIBUTED_TASKS]
#
# Defaults: 100000 tasks, 3 repeats, 20000 tasks for dask.distributed (which
# needs minutes per 100k here). Runs, for the shapes wide, chain and tree:
#   - tessera on the local cluster with 2 workers,
#   - tessera under `mpirun -n 3` (when mpirun exists; built with --features mpi),
#   - Dask's threaded scheduler (2 workers) and dask.distributed
#     (LocalCluster, 2 worker processes), via benches/dask_overhead.sh,
# then prints one table of microseconds per task and the ratios Dask/Tessera.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tasks="${1:-100000}"
repeat="${2:-3}"
dtasks="${3:-20000}"
out="target/bench"
mkdir -p "$out"

features=()
have_mpi=0
if command -v mpirun >/dev/null; then features=(--features mpi); have_mpi=1; fi
cargo build --release --quiet "${features[@]}"
bin=target/release/tessera
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun_flags=()
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then mpirun_flags=(--oversubscribe); fi

: >"$out/tessera.jsonl"
for shape in wide chain tree; do
  "$bin" --launch local --workers 2 bench overhead --tasks "$tasks" --shape "$shape" --repeat "$repeat" --json \
    | tail -n 1 >>"$out/tessera.jsonl"
  if ((have_mpi)); then
    mpirun "${mpirun_flags[@]}" -n 3 "$bin" bench overhead --tasks "$tasks" --shape "$shape" --repeat "$repeat" --json \
      | tail -n 1 >>"$out/tessera.jsonl"
  fi
done
benches/dask_overhead.sh --tasks "$tasks" --repeat "$repeat" --distributed-tasks "$dtasks" 2>/dev/null \
  | tail -n 1 >"$out/dask.json"

python3 - "$out/tessera.jsonl" "$out/dask.json" <<'PY'
import json, sys
tess = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dask = json.load(open(sys.argv[2]))
d = {(r["scheduler"], r["shape"]): r for r in dask["results"]}
print(f"dask {dask['dask_version']}, python {dask['python']}, {dask.get('cpu_count')} cpus")
print(f"{'shape':<6} {'tessera':<16} {'us/task':>8} {'tasks/s':>9} | {'dask threaded':>13} {'ratio':>6} | {'dask distributed':>16} {'ratio':>6}")
for t in tess:
    name = f"{t['transport']} ({t['workers']} workers)"
    th, di = d.get(("threaded", t["shape"])), d.get(("distributed", t["shape"]))
    th_us = th["us_per_task"] if th else float("nan")
    di_us = di["us_per_task"] if di else float("nan")
    print(f"{t['shape']:<6} {name:<16} {t['us_per_task']:>8.2f} {t['tasks_per_second']:>9.0f} | "
          f"{th_us:>13.1f} {th_us / t['us_per_task']:>6.1f} | {di_us:>16.1f} {di_us / t['us_per_task']:>6.0f}")
PY
