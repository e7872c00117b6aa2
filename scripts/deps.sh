#!/usr/bin/env bash
# Installs what rowstage needs at run time on Debian/Ubuntu: Mesa's software
# drivers, so that wgpu finds an adapter even without a GPU (lavapipe for
# Vulkan, llvmpipe for GL through EGL). With --test, also what the tests
# drive: Chromium, for the browser page, Python's venv, for the Python
# package's tests, and Open MPI. With --mpi, only what the `mpi` feature
# needs to build and run (Open MPI, and libclang for its bindings): never
# part of the main command's setup, so that a laptop installs no MPI. Does
# nothing when they are present.
set -euo pipefail
need=()
mpi() {
  dpkg -s libopenmpi-dev >/dev/null 2>&1 || need+=(libopenmpi-dev)
  dpkg -s openmpi-bin >/dev/null 2>&1 || need+=(openmpi-bin)
  dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
}
if [ "${1:-}" != "--mpi" ]; then
  dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
  dpkg -s libegl-mesa0 >/dev/null 2>&1 || need+=(libegl-mesa0 libegl1)
fi
case "${1:-}" in
  "" | --test | --mpi) ;;
  *) echo "deps.sh: unknown option $1 (none, --test or --mpi)" >&2; exit 2 ;;
esac
[ "${1:-}" = "--test" ] || [ "${1:-}" = "--mpi" ] && mpi
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  # Debian splits venv (and the pip it bootstraps) out of python3.
  python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "deps.sh: not a Debian-like system; install these (or their equivalents: a GPU driver, Open MPI) yourself: ${need[*]}" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps.sh: installed ${need[*]}"
