#!/usr/bin/env bash
# Per-task overhead of two `tessera` binaries, run in turn (A B A B ...), so
# that a change to the scheduler is judged against the code before it on the
# same machine in the same minutes.
#
#   benches/overhead_ab.sh BASE_BIN NEW_BIN [PAIRS] [TASKS]
#
# Build each binary with `--features mpi` for the MPI rows (without MPI they
# are skipped), e.g. BASE from a worktree of the older commit:
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release --features mpi)
# Prints, per shape and launch, the median us/task of each binary over PAIRS
# runs (default 5) of `bench overhead --tasks TASKS --repeat 3` and NEW/BASE.
set -euo pipefail
base="$1"
new="$2"
pairs="${3:-5}"
tasks="${4:-100000}"
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
launches=(local)
if command -v mpirun >/dev/null && "$new" info --json | python3 -c 'import json,sys; sys.exit(0 if "mpi" in json.load(sys.stdin)["transports"] else 1)'; then launches+=(mpi); fi
out="$(mktemp)"
for launch in "${launches[@]}"; do
  for shape in wide chain tree; do
    for ((i = 0; i < pairs; i++)); do
      for which in base new; do
        bin="$base"
        [[ $which == new ]] && bin="$new"
        if [[ $launch == local ]]; then
          line="$("$bin" --launch local --workers 2 bench overhead --tasks "$tasks" --shape "$shape" --repeat 3 --json | tail -n 1)"
        else
          line="$(mpirun --oversubscribe -n 3 "$bin" bench overhead --tasks "$tasks" --shape "$shape" --repeat 3 --json | tail -n 1)"
        fi
        echo "$launch $shape $which $line" >>"$out"
      done
    done
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
rm -f "$out"
