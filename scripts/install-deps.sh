#!/usr/bin/env bash
# Installs the system packages Tessera's optional features and tests need.
# Idempotent: packages already present are left alone. Needs root (or sudo).
#
#   scripts/install-deps.sh          # everything the test suite uses
#
# Debian/Ubuntu only; on other systems install the equivalents by hand:
# an MPI (Open MPI or MPICH) with its compiler wrappers, libclang (for rsmpi's
# bindgen) and pkg-config.
#
# The batch systems the jobqueue tests run against (Slurm with slurmdbd and
# MariaDB, libpmix for `srun --mpi=pmix`; Son of Grid Engine) are installed by
# scripts/local-slurm.sh and scripts/local-sge.sh, which keep the packages'
# own service start-up out of the way; this script calls them as root.
set -euo pipefail

packages=(
  build-essential pkg-config
  openmpi-bin libopenmpi-dev      # feature `mpi`: mpirun, mpicc, libmpi
  libclang-dev clang              # rsmpi's bindgen
  python3-venv                    # benches/: the Dask reference run
  libhdf5-dev hdf5-tools          # feature `hdf5`: libhdf5 (serial) and h5dump/h5ls
  libhwloc-dev libudev-dev        # feature `hwloc`: libhwloc (topology, thread binding); hwlocality links
                                  # hwloc's private libraries too (-ludev), which libhwloc-dev does not pull in
  libucx-dev                      # feature `ucx`: UCP headers, libucp and its pkg-config file (tessera-ucx-sys)
  chromium                        # tests/observe.rs: opens --report pages headless (scripts/check-report.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

batch_systems() {
  if [[ $(id -u) -eq 0 ]]; then
    "$(dirname "${BASH_SOURCE[0]}")/local-slurm.sh" install
    "$(dirname "${BASH_SOURCE[0]}")/local-sge.sh" install
  else
    echo "install-deps: not root: leaving out Slurm and SGE (the jobqueue tests that need them will skip)"
  fi
}

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  batch_systems
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi

# libhdf5-dev depends on a libcurl development package (for its S3 driver,
# which Tessera does not use). When the installed libcurl is newer than the
# curl -dev packages the archive offers, none of them can be installed; an
# empty package that only provides `libcurl-dev` lets libhdf5-dev install
# without downgrading curl. Used only when apt cannot resolve it otherwise.
curl_dev_shim() {
  if $SUDO apt-get install -s -qq --no-install-recommends libhdf5-dev >/dev/null 2>&1; then
    return
  fi
  echo "install-deps: libhdf5-dev cannot get a libcurl -dev package; installing a shim that provides libcurl-dev"
  local d
  d=$(mktemp -d)
  mkdir -p "$d/pkg/DEBIAN"
  cat >"$d/pkg/DEBIAN/control" <<'CONTROL'
Package: tessera-curl-dev-shim
Version: 1.0
Architecture: all
Provides: libcurl-dev
Maintainer: Tessera developers <tessera@localhost>
Description: satisfies libhdf5-dev's libcurl-dev dependency when the curl -dev packages lag the installed libcurl
CONTROL
  dpkg-deb --build "$d/pkg" "$d/shim.deb" >/dev/null
  $SUDO dpkg -i "$d/shim.deb" >/dev/null
  rm -rf "$d"
}

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
curl_dev_shim
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
batch_systems
