#!/bin/bash
# Builds the Hopper prefill's timeline probe (bench/NOTES.md item 91) into .devbundle/lib, from the
# repository root, after ../shared/tools/device-bundle.sh made the bundle:
#   libyk_trace_a.so  the prefill as built, each block writing clock64 and globaltimer stamps of its
#                     phases over its first 20 lse entries (prefill_trace.patch)
#   libyk_trace_b.so  the same with O staged through the warpgroup's rows of shared memory and stored
#                     16 bytes a thread (prefill_staged_out.patch on top)
# Not for main: the stamps overwrite lse. On the GPU (carry .devbundle), alternating the two:
#   for v in a b a b; do YK_LIBRARY=$PWD/.devbundle/lib/libyk_trace_$v.so TAG=$v \
#     python3 bench/probes/prefill_trace.py; done
set -eu
root=$PWD
for v in a b; do
  w=/tmp/yk-probe-$v
  git worktree remove --force "$w" 2>/dev/null || rm -rf "$w"
  git worktree add --detach "$w" HEAD > /dev/null
  git -C "$w" apply "$root/bench/probes/prefill_trace.patch"
  [ $v = b ] && git -C "$w" apply "$root/bench/probes/prefill_staged_out.patch"
  cmake -S "$w" -B "$w/build" -DCMAKE_BUILD_TYPE=Release > /dev/null
  cmake --build "$w/build" -j --target yk > /dev/null
  cp "$w/build/libyk.so" "$root/.devbundle/lib/libyk_trace_$v.so"
  git worktree remove --force "$w"
done
ls -l "$root"/.devbundle/lib/libyk_trace_*.so
