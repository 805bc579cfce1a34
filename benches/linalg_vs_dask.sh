#!/usr/bin/env bash
# Linear algebra, Tessera against Dask, side by side in one run.
#
#   benches/linalg_vs_dask.sh [CASE...]        # default: matmul tsqr rsvd ooc
#   REPEAT=3 benches/linalg_vs_dask.sh tsqr    # runs per figure (median; default 3)
#
# Cases (issue "Distributed arrays and blocked linear algebra"):
#   matmul  16384x4096 @ 4096x4096, blocks of 2048, inputs persisted first
#   tsqr    exact SVD (TSQR) of 4,000,000 x 64, 250,000-row blocks, input persisted
#   rsvd    randomized SVD of 200,000 x 5,000, k=10, 2 power iterations, 10,000-row blocks
#   ooc     out-of-core matmul: 100,000 x 2,000 @ 2,000 x 2,000 read from HDF5,
#           result written to HDF5, 2,500-row blocks (timed whole)
# Each runs as: tessera on the local cluster (2 workers), tessera under
# `mpirun -n 3` (rank 0 schedules, ranks 1-2 work), Dask threaded (2 threads),
# and for tsqr also dask.distributed (2 worker processes). Every run is its own
# process, so peak RSS is per run. Also prints one faer matmul of the matmul
# case's size on all cores (`tessera bench gemm`), the ceiling for its blocks.
#
# Writes target/bench/linalg/results.jsonl and prints a table with the
# ratios Dask/Tessera.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cases=("$@")
((${#cases[@]})) || cases=(matmul tsqr rsvd ooc)
repeat="${REPEAT:-3}"
out=target/bench/linalg
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

cargo build --release --quiet --features full
bin=target/release/tessera
py="$(benches/dask-venv.sh h5py)"
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mpirun_flags=()
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then mpirun_flags=(--oversubscribe --bind-to none); fi

ooc_in="$out/ooc_in.h5"
args_for() {
  case "$1" in
    matmul) echo "matmul --random 16384x4096x4096 --chunks 2048 --persist-input --json" ;;
    tsqr) echo "svd --random 4000000x64 --chunk-rows 250000 --persist-input --json" ;;
    rsvd) echo "svd --random 200000x5000 --k 10 --power-iters 2 --chunks 10000x0 --method randomized --persist-input --json" ;;
    ooc) echo "matmul $ooc_in:/A $ooc_in:/B --chunks 2500x2000 -o $out/ooc_tessera.h5:/C --json" ;;
  esac
}
dask_args_for() {
  case "$1" in
    ooc) echo "--cases ooc --ooc $ooc_in $out/ooc_dask.h5 2500" ;;
    *) echo "--cases $1" ;;
  esac
}

# Tag each JSON line with the case and the runner.
record() { "$py" -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); d.update(case=sys.argv[1], runner=sys.argv[2]); print(json.dumps(d))' "$1" "$2" >>"$results"; }

for case in "${cases[@]}"; do
  if [[ $case == ooc && ! -f $ooc_in ]]; then
    echo "== writing the out-of-core input ($ooc_in, 1.6 GB)" >&2
    "$py" benches/linalg_dask.py --make-ooc-input "$ooc_in" 100000 2000 2000
  fi
  # shellcheck disable=SC2046  # the argument lists are meant to split
  for ((i = 0; i < repeat; i++)); do
    echo "== $case run $((i + 1))/$repeat: tessera local, mpirun -n 3, dask threaded" >&2
    rm -f "$out"/ooc_*.h5.partial* "$out/ooc_tessera.h5" "$out/ooc_dask.h5"
    $bin --workers 2 $(args_for "$case") | record "$case" "tessera local"
    mpirun "${mpirun_flags[@]}" -n 3 $bin $(args_for "$case") | record "$case" "tessera mpirun -n 3"
    "$py" benches/linalg_dask.py $(dask_args_for "$case") | record "$case" "dask threaded"
    if [[ $case == tsqr ]]; then
      "$py" benches/linalg_dask.py --scheduler distributed $(dask_args_for "$case") | record "$case" "dask distributed"
    fi
  done
  if [[ $case == matmul ]]; then
    for ((i = 0; i < repeat; i++)); do
      $bin bench gemm --m 16384 --k 4096 --n 4096 --json | record matmul "faer one matmul, all cores"
    done
  fi
done
rm -f "$out/ooc_tessera.h5" "$out/ooc_dask.h5"

"$py" - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault((r["case"], r["runner"]), []).append(r)
def med(rs, key):
    return statistics.median(r[key] for r in rs)
def peak(rs):
    p = rs[0].get("peak_rss_bytes")
    if isinstance(p, list):
        return " ".join(f"r{x['rank']}:{max(q['bytes'] for r in rs for q in r['peak_rss_bytes'] if q['rank']==x['rank'])/2**30:.2f}" for x in p)
    return f"{max(r['peak_rss_bytes'] for r in rs)/2**30:.2f}" if p is not None else "-"
print(f"{'case':<7} {'runner':<28} {'runs':>4} {'seconds':>9} {'GFLOP/s':>8}  {'peak GiB':<24} dask threaded / this")
for case in dict.fromkeys(c for c, _ in by):
    ref = by.get((case, "dask threaded"))
    for (c, runner), rs in by.items():
        if c != case:
            continue
        s = med(rs, "seconds")
        ratio = f"{med(ref, 'seconds') / s:.2f}x" if ref and not runner.startswith("dask threaded") else ""
        print(f"{case:<7} {runner:<28} {len(rs):>4} {s:>9.3f} {med(rs, 'gflops'):>8.1f}  {peak(rs):<24} {ratio}")
PY
