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
repo_root="$(dirname "$script_dir")"
venv="$repo_root/target/dask-venv"
py="$venv/bin/python"
pip_spec="${DASK_PIP_SPEC:-dask distributed}"

# 1. Create the venv if it is missing. A half-created one (e.g. from an earlier
#    attempt without python3-venv installed, which leaves a directory with no
#    pip) is removed and made again.
if [[ ! -x "$py" ]] || ! "$py" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  echo "dask_overhead: creating Python venv in target/dask-venv" >&2
  if ! venv_err="$(python3 -m venv "$venv" 2>&1)"; then
    rm -rf "$venv"
    echo "$venv_err" >&2
    echo >&2
    echo "dask_overhead: error: 'python3 -m venv' failed." >&2
    if grep -qiE 'ensurepip|python3-venv|No module named venv' <<<"$venv_err"; then
      echo "dask_overhead: the Python venv module (or its bundled pip) is missing." >&2
      echo "dask_overhead: on Debian/Ubuntu install the python3-venv package" >&2
      echo "dask_overhead: (e.g. 'apt-get install python3-venv', or run scripts/install-deps.sh)." >&2
    fi
    exit 1
  fi
fi

# 2. Install dask + distributed unless both already import.
if ! "$py" -c 'import dask, distributed' >/dev/null 2>&1; then
  echo "dask_overhead: installing $pip_spec into the venv" >&2
  # shellcheck disable=SC2086  # word splitting of the spec list is intended
  "$py" -m pip install --quiet --disable-pip-version-check $pip_spec
fi

# 3. Run the benchmark with the venv's interpreter.
exec "$py" "$script_dir/dask_overhead.py" "$@"
