#!/usr/bin/env bash
# Dask reference run: per-task scheduling overhead of Dask on trivial tasks.
#
# Sets up (once) a private Python virtual environment at target/dask-venv under
# the repository root, installs `dask` and `distributed` into it, and runs
# benches/dask_overhead.py with that environment's interpreter. Every argument
# is passed straight through to the Python script:
#
#   benches/dask_overhead.sh                          # defaults: 100000 tasks, 3 repeats
#   benches/dask_overhead.sh --tasks 20000 --repeat 5
#   benches/dask_overhead.sh --shapes chain --schedulers threaded
#   benches/dask_overhead.sh --help                   # all options
#
# The last line of stdout is one JSON object with the results; the
# human-readable table goes to stderr.
#
# Idempotent: an existing venv is reused, and the install step is skipped when
# `dask` and `distributed` already import. Set DASK_PIP_SPEC to install
# something else, e.g. DASK_PIP_SPEC="dask==2024.12.1 distributed==2024.12.1"
# (only takes effect when creating/repairing the venv's install).
#
# Needs: python3 with the venv module (Debian/Ubuntu: the python3-venv package,
# see scripts/install-deps.sh) and access to a Python package index for the
# first run.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$("$script_dir/dask-venv.sh")"
exec "$py" "$script_dir/dask_overhead.py" "$@"
