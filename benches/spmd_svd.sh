#!/usr/bin/env bash
# Exact SVD of a matrix the MPI ranks already hold by rows, three ways, side
# by side in one run on the same ranks:
#
#   benches/spmd_svd.sh [RANKS [ROWS [COLS]]]   # default: 3 4000000 64
#   REPEAT=3 benches/spmd_svd.sh                # runs per way (default 3)
#
# 1. tessera::spmd (examples/spmd_svd.rs): each rank makes its slab and hands
#    it to `Spmd::svd`; timed from the call to its return on the slowest rank
#    (cluster start and stop included); each rank gets its rows of U.
# 2. The same matrix read from HDF5: `mpirun tessera svd FILE.h5:/X`, its
#    own `seconds` (read included, U kept on the workers, S gathered).
# 3. mpi4py + NumPy TSQR on the same slabs (benches/spmd_tsqr_mpi4py.py),
#    one BLAS thread per rank, as each Tessera rank computes on one thread
#    when the ranks outnumber the cores.
# Peak memory is each rank's own (the largest rank's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ranks="${1:-3}"
rows="${2:-4000000}"
cols="${3:-64}"
repeat="${REPEAT:-3}"
# Rank r holds per + 37 r rows (the last of four or more none).
per=$(((rows - 37 * ranks * (ranks - 1) / 2) / ranks))

cargo build --release --quiet --features mpi,hdf5 --example spmd_svd --bin tessera
py="$(benches/dask-venv.sh mpi4py numpy h5py)"
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
mpirun=(mpirun -n "$ranks")
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then mpirun+=(--oversubscribe --bind-to none); fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/spmd-bench.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
"$py" benches/spmd_tsqr_mpi4py.py --write "$dir/x.h5" "$ranks" "$per" "$cols"

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(grep -c ^processor /proc/cpuinfo) cores; $ranks ranks"
for ((i = 1; i <= repeat; i++)); do
  "${mpirun[@]}" target/release/examples/spmd_svd "$per" "$cols" | grep "^SVD of"
  "${mpirun[@]}" target/release/tessera svd "$dir/x.h5:/X" --json | "$py" -c "
import json, sys
j = json.load(sys.stdin)
peak = max(p['bytes'] for p in j['peak_rss_bytes']) / 2**20
m, n = j['shape']
print(f'tessera svd FILE.h5:/X of {m} x {n}, chunks {j[\"chunks\"][:32]}...: {j[\"seconds\"]:.2f} s, peak memory per rank {peak:.0f} MiB (largest)')"
  "${mpirun[@]}" "$py" benches/spmd_tsqr_mpi4py.py "$per" "$cols"
done
