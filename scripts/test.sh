#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first.
#
#   scripts/test.sh
#
# 1. scripts/install-deps.sh: system packages (MPI, libclang, ...); needs root
#    or sudo the first time, a no-op afterwards.
# 2. The default build (nothing but Rust): unit, integration and doc tests of
#    every crate, the `tessera` command and the examples on a local cluster.
# 3. The `mpi` build: the same suites again, plus tests/mpi.rs, which starts
#    every multi-rank case as its own `mpirun -n 1..4` child with a hard
#    timeout (the same test bodies as the in-process runs, the failure cases,
#    the examples and the `tessera` command under MPI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

# Open MPI refuses to start as root unless told, and needs to be allowed more
# ranks than cores (CI machines have 2).
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "lints: cargo fmt --check, cargo clippy (default and mpi builds)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features tessera/mpi -- -D warnings

step "default build: cargo test --workspace"
cargo test --workspace --locked

step "mpi build: cargo test --workspace --features mpi (real mpirun runs)"
cargo test --workspace --locked --features tessera/mpi

step "all tests passed"
