#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first.
#
#   scripts/test.sh
#
# 1. scripts/install-deps.sh: system packages (MPI, libclang, ...); needs root
#    or sudo the first time, a no-op afterwards.
# 2. The default build (nothing but Rust): unit, integration and doc tests of
#    every crate, the `tessera` command and the examples on a local cluster.
# 3. The fuzz targets (fuzz/, cargo-fuzz, installed if missing), 20 s each.
# 4. The `full` build (`mpi`, `hdf5`, `hwloc`, `ucx`) with `cuda`: the same suites again,
#    GPU workers (tests/gpu.rs; without a GPU they check the CPU fallback and
#    the messages, and the device tests say why they skip), the HDF5
#    tests, thread binding read back, blocks over UCX (tests/ucx.rs), plus tests/mpi.rs, which starts every multi-rank case as its own
#    `mpirun -n 1..4` child with a hard timeout (the same test bodies as the
#    in-process runs, the failure cases, the examples and the `tessera`
#    command under MPI).
#
# As root it first brings up a local Slurm (3 nodes on this host, with
# accounting) and SGE (scripts/local-slurm.sh, scripts/local-sge.sh) and sets
# TESSERA_TEST_SLURM=1 TESSERA_TEST_SGE=1 for the full build, so tests/batch.rs submits, waits
# for and cancels real jobs, MPI jobs included, and scales elastic workers
# (`tessera jobqueue scale`, `adapt`). Without root (or with
# TESSERA_NO_BATCH=1) those cases print why they skip.
#
# As root, tests/hosts.rs (in both builds' `cargo test`) also runs elastic
# clusters across test hosts, network namespaces it makes and removes itself
# with scripts/test-hosts.sh; without root it prints why it skips.
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

step "lints: cargo fmt --check, cargo clippy (default and full builds)"
cargo fmt --all --check
cargo clippy --workspace --exclude tessera-ucx-sys --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features tessera/full,tessera/cuda -- -D warnings

step "dependencies: cargo deny (licenses, duplicate versions, sources, advisories; deny.toml)"
if cargo deny --version >/dev/null 2>&1; then
  cargo deny check licenses bans sources
  # The advisory database is a git repository: without network access it cannot be fetched.
  if cargo deny fetch db >/dev/null 2>&1; then
    cargo deny check advisories
  else
    echo "note: the advisory database could not be fetched (no network?): cargo deny check advisories skipped"
  fi
else
  echo "note: cargo-deny is not installed (cargo install cargo-deny --locked): dependency checks skipped"
fi

step "lean library: without the cli feature, no command-line crates; it builds and passes its tests"
lean=$(cargo tree -p tessera --no-default-features --features mpi -e normal --prefix none --locked)
if grep -E '^(clap|clap_complete|clap_mangen|tracing-subscriber|indicatif|mimalloc|libmimalloc-sys) ' <<<"$lean"; then
  echo "the library without the cli feature depends on the crates above" >&2
  exit 1
fi
cargo clippy -p tessera --no-default-features --all-targets --locked -- -D warnings
cargo test -p tessera --no-default-features --lib --examples --locked

batch_env=()
if [[ $(id -u) -eq 0 && -z ${TESSERA_NO_BATCH:-} ]]; then
  step "batch systems: local Slurm (3 nodes) and SGE"
  TESSERA_SLURM_NODES=3 scripts/local-slurm.sh start
  scripts/local-sge.sh start
  batch_env=(TESSERA_TEST_SLURM=1 TESSERA_TEST_SGE=1)
else
  step "batch systems: not started (needs root; TESSERA_NO_BATCH unset): tests/batch.rs will skip"
fi

# The real batch jobs run once, in the full build (which also has MPI).
# tessera-ucx-sys needs the system UCX, so only the full build has it.
step "default build: cargo test --workspace (nothing but Rust)"
cargo test --workspace --exclude tessera-ucx-sys --locked

step "fuzzing: every decoder that faces the network, 20 s each (scripts/fuzz.sh; fails on a crash)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
scripts/fuzz.sh 20

step "full build (mpi, hdf5, hwloc, ucx, cuda): cargo test --workspace --features full,cuda (real mpirun runs)"
env "${batch_env[@]}" cargo test --workspace --locked --features tessera/full,tessera/cuda

step "all tests passed"
