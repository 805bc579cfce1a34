#!/usr/bin/env bash
# Block transfers and the linear algebra cases over every transport, side by
# side in one run (docs/benchmarks.md, "Transports: MPI, TCP and UCX").
#
#   benches/transports.sh [REPEAT]        # about 10 minutes on 2 cores
#
# 1. `tessera bench ucx`: a bare UCP probe against Tessera's UCX plane (two
#    UCP workers of one process, a thread each), 8 B latency and 1 MiB and
#    64 MiB bandwidth, with UCX_TLS unset, posix,self and tcp.
# 2. `mpirun -n 3 tessera bench transfer`: one block fetched by a task on
#    rank 2 from rank 1 (scheduling, fetch, bytes, task, report), 8 B, 1 MiB
#    and 64 MiB, over MPI and over UCX (UCX_TLS unset and tcp), each next to
#    a plain MPI send/recv of the same size.
# 3. `tessera bench elastic`: the same transfer between two elastic workers
#    (control over TCP), blocks over TCP and over UCX.
# 4. TSQR SVD 4,000,000 x 64 and matmul 16384x4096 @ 4096x4096 (the linear
#    algebra benchmark's shapes) under `mpirun -n 3` and on the local cluster,
#    with and without --transport ucx.
# Needs a release build with --features full (built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repeat=${1:-3}
cargo build --release --features full --quiet
bin=target/release/tessera
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1
mpirun_flags=()
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then mpirun_flags=(--bind-to none); fi
mpi() { mpirun "${mpirun_flags[@]}" -n 3 "$@"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), UCX $($bin info | sed -n 's/^  ucx: *\([^ ]*\).*/\1/p'), $(date -u +%F)"

echo "== 1. bare UCP probe vs the UCX plane (in one process)"
$bin bench ucx --repeat "$repeat" | grep '^ucx'
UCX_TLS=posix,self $bin bench ucx --repeat "$repeat" | grep '^ucx'
UCX_TLS=tcp $bin bench ucx --repeat "$repeat" | grep '^ucx'

echo "== 2. task-level transfer rank 1 -> rank 2 under mpirun -n 3"
for size in 8 1MiB 64MiB; do
  reps=$([[ $size == 64MiB ]] && echo 5 || echo 50)
  mpi $bin -q bench transfer --size $size --repeat $reps | grep '^transfer'
  mpi $bin -q --transport ucx bench transfer --size $size --repeat $reps | grep '^transfer'
  UCX_TLS=tcp mpi $bin -q --transport ucx bench transfer --size $size --repeat $reps | grep '^transfer' | sed 's/$/ [UCX_TLS=tcp]/'
done

echo "== 3. elastic workers (control over TCP): blocks over TCP, then over UCX"
for mib in 1 64; do
  $bin bench elastic --workers 2 --mib $mib --repeat "$repeat" --json | tail -1 |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f'elastic {sys.argv[1]} MiB over tcp: {d[\"transfer_gib_per_s\"]:.2f} GiB/s (plain loopback TCP {d[\"plain_tcp_gib_per_s\"]:.2f})')" $mib
  TESSERA_TRANSPORT=ucx $bin bench elastic --workers 2 --mib $mib --repeat "$repeat" --json | tail -1 |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f'elastic {sys.argv[1]} MiB over tcp+ucx: {d[\"transfer_gib_per_s\"]:.2f} GiB/s (plain loopback TCP {d[\"plain_tcp_gib_per_s\"]:.2f})')" $mib
done

echo "== 4. linear algebra under each transport (median of $repeat)"
tsqr=(svd --random 4000000x64 --chunk-rows 250000 --persist-input --json)
matmul=(matmul --random 16384x4096x4096 --chunks 2048 --persist-input --json)
secs() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['seconds'])"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.2f}')" "$@"; }
for case in tsqr matmul; do
  declare -n args=$case
  for runner in "local" "local ucx" "mpirun" "mpirun ucx"; do
    times=()
    for _ in $(seq "$repeat"); do
      flags=(-q --launch local --workers 2)
      [[ $runner == mpirun* ]] && flags=(-q)
      [[ $runner == *ucx ]] && flags+=(--transport ucx)
      if [[ $runner == mpirun* ]]; then t=$(mpi $bin "${flags[@]}" "${args[@]}" | secs); else t=$($bin "${flags[@]}" "${args[@]}" | secs); fi
      times+=("$t")
    done
    echo "$case $runner: $(median "${times[@]}") s (runs: ${times[*]})"
  done
done
