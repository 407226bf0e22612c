#!/bin/bash
# Installs what the build needs where it is missing (Debian packages) and checks for the CUDA
# toolkit's headers and NVRTC. Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail

packages=()
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
command -v cc >/dev/null 2>&1 || packages+=(gcc)
command -v make >/dev/null 2>&1 || packages+=(make)
[ -f /usr/include/criterion/criterion.h ] || packages+=(libcriterion-dev)
[ -f /usr/include/xxhash.h ] || packages+=(libxxhash-dev)
[ -f /usr/include/dlpack/dlpack.h ] || packages+=(libdlpack-dev)
if [ ${#packages[@]} -gt 0 ]; then
  echo "setup: installing ${packages[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -f "$CUDA_HOME/include/cuda.h" ] || [ ! -f "$CUDA_HOME/include/nvrtc.h" ]; then
  echo "setup: the CUDA toolkit's headers are not under $CUDA_HOME (set CUDA_HOME)" >&2
  exit 1
fi
export CUDA_HOME
