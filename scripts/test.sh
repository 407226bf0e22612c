#!/bin/bash
# The tests: set up, build with warnings as errors, run the suite and the Python bindings' tests
# against that build; then build and run the suite again under AddressSanitizer and
# UndefinedBehaviorSanitizer. GPU tests skip (visibly) without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
jobs=$(nproc)

run_suite() { # build-dir, extra cmake args...
  local dir=$1
  shift
  cmake -S . -B "$dir" -DYK_WERROR=ON -DYK_CUDA_HOME="$CUDA_HOME" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null
  rm -rf "$dir/test-tmp"
  (cd "$dir" && ctest --output-on-failure -j"$jobs")
}

echo "== release build"
run_suite build -DCMAKE_BUILD_TYPE=Release

# The bindings are installed with pip into a virtual environment under build/ (Debian's own
# Python refuses installs outside one) and tested against the libyk just built. torch is not
# installed here: its tests skip without it, and run wherever an engine's environment has it.
echo "== Python bindings (pytest)"
py_env=build/python-env
if [ ! -x "$py_env/bin/python" ] && ! python3 -m venv "$py_env" >/dev/null 2>&1; then
  echo "setup: installing python3-venv"
  sudo=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$py_env"
  python3 -m venv "$py_env"
fi
"$py_env/bin/python" -c "import numpy, pytest" 2>/dev/null || "$py_env/bin/pip" install -q numpy pytest
"$py_env/bin/pip" install -q ./python
YK_LIBRARY=$PWD/build/libyk.so "$py_env/bin/python" -m pytest -q python/tests

# ptxas (CUDA 13) has emitted loads whose cache policy sits in uniform registers nothing sets, which
# run an illegal instruction on the GPU (bench/NOTES.md item 75). The warm matrix's cubins (every
# op, sm_90) are scanned for them with cuobjdump and nvdisasm from PyPI's wheels: no GPU needed.
echo "== SASS scan of the warm matrix (bench/sass_scan.py)"
"$py_env/bin/pip" install -q "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
sass_tools=$("$py_env/bin/python" -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'bin'))")
rm -rf build/sass-cache
# (its progress lines to a log, shown only if the warm-up fails)
YK_CACHE_DIR=$PWD/build/sass-cache build/yk warm --arch sm_90 -j "$jobs" 2> build/sass-warm.log | tail -1 ||
  { cat build/sass-warm.log; exit 1; }
"$py_env/bin/python" bench/sass_scan.py build/sass-cache --yk build/yk --tools "$sass_tools" -j "$jobs"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_suite build-sanitize -DCMAKE_BUILD_TYPE=Debug -DYK_SANITIZE=ON
