#!/bin/bash
# The main job: set up, build, and run one decoder step's ops through the JIT cache, checked
# (on the GPU where there is one, else on the CPU fallback).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DYK_CUDA_HOME="$CUDA_HOME" >/dev/null
cmake --build build -j"$(nproc)" --target yk_tool >/dev/null
./build/yk info
echo
./build/yk demo
