#!/usr/bin/env bash
# Installs the system packages Tessera's optional features and tests need.
# Idempotent: packages already present are left alone. Needs root (or sudo).
#
#   scripts/install-deps.sh          # everything the test suite uses
#
# Debian/Ubuntu only; on other systems install the equivalents by hand:
# an MPI (Open MPI or MPICH) with its compiler wrappers, libclang (for rsmpi's
# bindgen) and pkg-config.
set -euo pipefail

packages=(
  build-essential pkg-config
  openmpi-bin libopenmpi-dev      # feature `mpi`: mpirun, mpicc, libmpi
  libclang-dev clang              # rsmpi's bindgen
  python3-venv                    # benches/: the Dask reference run
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
