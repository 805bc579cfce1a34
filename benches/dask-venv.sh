#!/usr/bin/env bash
# Prints the path of a Python interpreter that has Dask (dask, distributed)
# and any extra packages named as arguments, creating (once) a private
# virtual environment at target/dask-venv under the repository root.
#
#   py=$(benches/dask-venv.sh)              # dask and distributed
#   py=$(benches/dask-venv.sh h5py numpy)   # and h5py, numpy
#
# Set DASK_PIP_SPEC to install another Dask, e.g.
# DASK_PIP_SPEC="dask==2026.8.0 distributed==2026.8.0". Messages go to stderr.
#
# Needs python3 with the venv module (Debian/Ubuntu: python3-venv, see
# scripts/install-deps.sh) and a Python package index for the first run.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/target/dask-venv"
py="$venv/bin/python"
pip_spec="${DASK_PIP_SPEC:-dask distributed}"

# A half-created venv (no pip, e.g. made without python3-venv) is remade.
if [[ ! -x "$py" ]] || ! "$py" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  echo "dask-venv: creating a Python venv in target/dask-venv" >&2
  if ! venv_err="$(python3 -m venv "$venv" 2>&1)"; then
    rm -rf "$venv"
    echo "$venv_err" >&2
    echo "dask-venv: error: 'python3 -m venv' failed." >&2
    if grep -qiE 'ensurepip|python3-venv|No module named venv' <<<"$venv_err"; then
      echo "dask-venv: install the python3-venv package (scripts/install-deps.sh does)." >&2
    fi
    exit 1
  fi
fi

modules="dask distributed"
for extra in "$@"; do modules+=" ${extra//-/_}"; done
if ! "$py" -c "import ${modules// /, }" >/dev/null 2>&1; then
  echo "dask-venv: installing $pip_spec $* into the venv" >&2
  # shellcheck disable=SC2086  # word splitting of the spec list is intended
  "$py" -m pip install --quiet --disable-pip-version-check $pip_spec "$@" >&2
fi
echo "$py"
