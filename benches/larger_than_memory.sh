#!/usr/bin/env bash
# Arrays larger than memory: Tessera inside a real memory cgroup, against the
# same run without a limit, against Dask with LocalCluster(memory_limit=...)
# in the same cgroup, and `--memory-limit none` inside it (expected: killed).
#
#   sudo benches/larger_than_memory.sh [tsqr] [rsvd]
#
# Cases (docs/benchmarks.md, "Arrays larger than memory"):
#   tsqr  TSQR SVD of 10,000,000 x 32 f64 (2.4 GiB) from HDF5, U written to
#         HDF5, local cluster of 2 workers, in a 768 MiB cgroup
#   rsvd  randomized SVD (k = 10, 2 power iterations) of 2,000,000 x 500 f64
#         (7.5 GiB) from HDF5, U written, `mpirun -n 3`, in a 2 GiB cgroup
# Inputs are products of uniform random matrices (rank 32 and 16), written
# once by `tessera matmul --random ... -o` under target/bench/ooc.
# Needs root (cgroups: v1 under /sys/fs/cgroup/memory, else v2) and the full
# build. Prints one JSON line per run and writes them to
# target/bench/ooc/results.jsonl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cases=("$@")
((${#cases[@]})) || cases=(tsqr rsvd)
out=target/bench/ooc
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
[[ $(id -u) -eq 0 ]] || { echo "needs root (memory cgroups)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --quiet --features full
bin=$PWD/target/release/tessera
py="$(benches/dask-venv.sh h5py numpy)"

# A cgroup of $2 bytes named $1; prints its directory.
make_cgroup() {
  local dir
  if [[ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
    dir=/sys/fs/cgroup/memory/tessera-bench-$1
    mkdir -p "$dir"
    echo "$2" >"$dir/memory.limit_in_bytes"
    echo 0 >"$dir/memory.max_usage_in_bytes" 2>/dev/null || true
  else
    dir=/sys/fs/cgroup/tessera-bench-$1
    echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$dir"
    echo "$2" >"$dir/memory.max"
  fi
  echo "$dir"
}
oom_kills() { { cat "$1/memory.oom_control" "$1/memory.events" 2>/dev/null || true; } | awk '/^oom_kill /{print $2; exit}'; }

# run NAME CGROUP_DIR|- COMMAND...: times COMMAND (in the cgroup unless -),
# appends {"run": NAME, "seconds", "exit", "oom_kills", "json": <its last stdout line>}.
run() {
  local name=$1 cg=$2
  shift 2
  local start end rc=0 line
  sync; echo 3 >/proc/sys/vm/drop_caches || true
  start=$(date +%s.%N)
  if [[ $cg == - ]]; then
    line=$("$@" 2>"$out/$name.err" | tail -1) || rc=$?
  else
    line=$(sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@" 2>"$out/$name.err" | tail -1) || rc=$?
  fi
  end=$(date +%s.%N)
  local kills=0
  [[ $cg == - ]] || kills=$(oom_kills "$cg")
  [[ $line == \{* ]] || line=null
  local rec
  rec=$(printf '{"run": "%s", "seconds": %.2f, "exit": %d, "oom_kills": %s, "json": %s}' \
    "$name" "$(echo "$end - $start" | bc)" "$rc" "${kills:-0}" "$line")
  echo "$rec" | tee -a "$results"
}

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
echo "{\"cpu\": \"$cpu\", \"cores\": $(nproc), \"date\": \"$(date -u +%F)\"}" | tee -a "$results"

for c in "${cases[@]}"; do
  case $c in
    tsqr)
      x=$out/tsqr_x.h5
      [[ -f $x ]] || $bin --workers 2 -q matmul --random 10000000x32x32 --chunks 262144x0 -o "$x:/X"
      limit=$((768 << 20))
      cg=$(make_cgroup tsqr $limit)
      args=(svd "$x:/X" --chunk-rows 262144 -o "$out/tsqr_u.h5" --json -q)
      run tsqr-unlimited - $bin --workers 2 --memory-limit none "${args[@]}"
      run tsqr-limited "$cg" $bin --workers 2 "${args[@]}"
      rmdir "$cg"; cg=$(make_cgroup tsqr $limit)
      run tsqr-none-in-cgroup "$cg" $bin --workers 2 --memory-limit none "${args[@]}"
      rmdir "$cg"; cg=$(make_cgroup tsqr $limit)
      run tsqr-dask "$cg" "$py" benches/larger_than_memory_dask.py tsqr "$x" /X "$out/tsqr_dask" 262144 2 $((limit / 2))
      rm -rf "$out/tsqr_dask" "$out/tsqr_u.h5"
      rmdir "$cg"
      ;;
    rsvd)
      x=$out/rsvd_x.h5
      [[ -f $x ]] || $bin --workers 2 -q matmul --random 2000000x16x500 --chunks 62500x0 -o "$x:/X"
      limit=$((2 << 30))
      cg=$(make_cgroup rsvd $limit)
      args=(svd "$x:/X" --chunk-rows 62500 --k 10 --method randomized -o "$out/rsvd_u.h5" --json -q)
      run rsvd-unlimited - mpirun -n 3 --oversubscribe --bind-to none $bin --memory-limit none "${args[@]}"
      run rsvd-limited "$cg" mpirun -n 3 --oversubscribe --bind-to none $bin "${args[@]}"
      rmdir "$cg"; cg=$(make_cgroup rsvd $limit)
      run rsvd-none-in-cgroup "$cg" mpirun -n 3 --oversubscribe --bind-to none $bin --memory-limit none "${args[@]}"
      rmdir "$cg"; cg=$(make_cgroup rsvd $limit)
      run rsvd-dask "$cg" "$py" benches/larger_than_memory_dask.py rsvd "$x" /X "$out/rsvd_dask" 62500 2 $((limit / 2)) 10 2
      rm -rf "$out/rsvd_dask" "$out/rsvd_u.h5"
      rmdir "$cg"
      ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
