#!/usr/bin/env bash
# Installs what rowstage needs at run time on Debian/Ubuntu: Mesa's software
# drivers, so that wgpu finds an adapter even without a GPU (lavapipe for
# Vulkan, llvmpipe for GL through EGL). With --test, also what the tests
# drive: Chromium, for the browser page, and Python's venv, for the Python
# package's tests. Does nothing when they are present.
set -euo pipefail
need=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need+=(mesa-vulkan-drivers)
dpkg -s libegl-mesa0 >/dev/null 2>&1 || need+=(libegl-mesa0 libegl1)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || need+=(chromium)
  # Debian splits venv (and the pip it bootstraps) out of python3.
  python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
fi
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "deps.sh: not a Debian-like system; install Mesa's Vulkan drivers (or a GPU driver) yourself: ${need[*]}" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps.sh: installed ${need[*]}"
