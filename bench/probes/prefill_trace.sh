#!/bin/bash
# Builds the Hopper prefill's timeline probe (bench/NOTES.md items 91, 93) into .devbundle/lib, from
# the repository root, after ../shared/tools/device-bundle.sh made the bundle:
#   libyk_trace_a.so  the prefill as committed, each block writing clock64 and globaltimer stamps of
#                     its phases over its first 20 lse entries (prefill_trace.patch)
#   libyk_trace_b.so  with CANDIDATE.patch given: the same with that change on top (a fix to try,
#                     written against the committed template)
# Not for main: the stamps overwrite lse. On the GPU (carry .devbundle), `bash bench/device_run.sh
# probe` alternates the libraries built (a, b, a, b), or by hand:
#   for v in a b a b; do YK_LIBRARY=$PWD/.devbundle/lib/libyk_trace_$v.so TAG=$v \
#     python3 bench/probes/prefill_trace.py; done
#   bash bench/probes/prefill_trace.sh [CANDIDATE.patch]
set -eu
root=$PWD
candidate=${1:+$(realpath "$1")}
rm -f "$root"/.devbundle/lib/libyk_trace_*.so
for v in a b; do
  [ $v = b ] && [ -z "$candidate" ] && break
  w=/tmp/yk-probe-$v
  git worktree remove --force "$w" 2>/dev/null || rm -rf "$w"
  git worktree add --detach "$w" HEAD > /dev/null
  git -C "$w" apply "$root/bench/probes/prefill_trace.patch"
  [ $v = b ] && git -C "$w" apply "$candidate"
  cmake -S "$w" -B "$w/build" -DCMAKE_BUILD_TYPE=Release > /dev/null
  cmake --build "$w/build" -j --target yk > /dev/null # the shared library (the command is yk_tool)
  cp "$w/build/libyk.so" "$root/.devbundle/lib/libyk_trace_$v.so"
  git worktree remove --force "$w"
done
ls -l "$root"/.devbundle/lib/libyk_trace_*.so
