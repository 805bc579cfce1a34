#!/usr/bin/env bash
# One GPU against the CPU cores (docs/benchmarks.md, "GPU workers").
#
#   benches/gpu.sh [REPEAT]        # needs a CUDA driver and a GPU; REPEAT runs per figure (median; default 3)
#
# 1. `tessera info`: the CUDA driver, the GPUs and the CUDA libraries it finds.
# 2. `tessera --gpus all bench gemm --n 8192 --dtype both`: on GPU 0, cuBLAS
#    called directly against the same product through a Tessera GPU worker,
#    f64 and f32, in one run; then the same products with faer on all cores.
# 3. The linear algebra cases on a local cluster with one GPU worker beside the
#    CPU workers (--gpus 0) and on the CPU workers alone, inputs persisted first,
#    and the ratio of their times:
#      matmul  65536x8192 @ 8192x8192 f64, 2048-row blocks of A, B one block
#              (one GEMM per block of C, no partial sums)
#      rsvd    randomized SVD of 1,000,000 x 20,000 f32, k=10, 2 power
#              iterations, 10,000-row blocks (80 GB: more than the GPU holds)
#      tsqr    exact SVD (TSQR) of 10,000,000 x 64 f64, 250,000-row blocks
# Builds a release binary with --features cuda (CUDA is loaded at run time:
# nothing is needed at build time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repeat=${1:-3}
cargo build --release --features cuda --quiet
bin=target/release/tessera

# Each command is echoed before it runs.
run() {
  echo "+ $*" >&2
  "$@"
}
secs() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['seconds'])"; }
median() { python3 -c "import sys,statistics; print(f'{statistics.median(float(x) for x in sys.argv[1:]):.3f}')" "$@"; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}, $(date -u +%F)"

echo "== 1. GPUs"
run $bin info | awk '/^  gpus:/ { p = 1 } /^  tcp:/ { p = 0 } p'

echo "== 2. GEMM 8192^3: cuBLAS directly vs a Tessera GPU worker, then faer on all cores"
run $bin --gpus all bench gemm --n 8192 --dtype both --repeat 5
run $bin bench gemm --n 8192 --dtype both --repeat "$repeat"

echo "== 3. linear algebra, one GPU worker beside the CPU workers (gpu) vs the CPU workers alone (cpu), median of $repeat"
matmul=(matmul --random 65536x8192x8192 --chunks 2048x8192 --persist-input --json)
rsvd=(svd --random 1000000x20000 --dtype f32 --k 10 --power-iters 2 --method randomized --chunks 10000x0 --persist-input --json)
tsqr=(svd --random 10000000x64 --chunk-rows 250000 --persist-input --json)
for case in matmul rsvd tsqr; do
  declare -n args=$case
  declare -A median_of=()
  for runner in gpu cpu; do
    flags=(-q --launch local)
    [[ $runner == gpu ]] && flags+=(--gpus 0)
    times=()
    for _ in $(seq "$repeat"); do
      out=$(run $bin "${flags[@]}" "${args[@]}")
      echo "${out%%$'\n'*}" # the summary line
      times+=("$(secs <<<"$out")")
    done
    median_of[$runner]=$(median "${times[@]}")
    echo "$case $runner: ${median_of[$runner]} s (runs: ${times[*]})"
  done
  echo "$case: cpu/gpu $(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "${median_of[cpu]}" "${median_of[gpu]}")"
  unset -n args
done
