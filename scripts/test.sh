#!/bin/bash
# The tests: set up, build with warnings as errors, run the suite; then build and run it again
# under AddressSanitizer and UndefinedBehaviorSanitizer. GPU tests skip (visibly) without a GPU.
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
echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_suite build-sanitize -DCMAKE_BUILD_TYPE=Debug -DYK_SANITIZE=ON
