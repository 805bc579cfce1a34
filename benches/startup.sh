#!/usr/bin/env bash
# Start-up cost of a Tessera job under MPI beyond MPI's own start.
#
#   benches/startup.sh [RANKS] [RUNS]
#
# Times `mpirun -n RANKS tessera bench overhead --tasks 1` (MPI start, roles,
# scheduler and workers up, one task, certain shutdown) against
# `mpirun -n RANKS tessera bench mpi-hello` (MPI init, barrier, finalize), each
# RUNS times, and prints the medians and their difference.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ranks="${1:-4}"
runs="${2:-7}"
cargo build --release --quiet --features mpi
bin=target/release/tessera
if [[ $(id -u) -eq 0 ]]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
flags=()
if mpirun --version 2>/dev/null | grep -q "Open MPI"; then flags=(--oversubscribe); fi

time_runs() {
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s.%N)
    mpirun "${flags[@]}" -n "$ranks" "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc
  done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
hello=$(time_runs "$bin" bench mpi-hello)
job=$(time_runs "$bin" bench overhead --tasks 1 --repeat 1)
printf 'mpirun -n %s, median of %s runs: mpi-hello %.3f s, tessera one-task job %.3f s, difference %.3f s\n' \
  "$ranks" "$runs" "$hello" "$job" "$(echo "$job - $hello" | bc)"
