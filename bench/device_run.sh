#!/bin/bash
# Runs on the lent GPU machine, from the repository root, with the bundle that
# ../shared/tools/device-bundle.sh made here (bench/README.md says how): the GPU tests, the demo,
# the benchmarks and the peers, in one call. Everything lands under $OUT (at most 8 files come
# back): tests.log, demo.txt, bench.md, bench.log, yk_bench.json, peers.json, peers_extra.json,
# peers.log. The report last.
#   bash bench/device_run.sh [tests] [bench] [sweep] [peers]   (default: tests bench peers)
set -u
B=${BUNDLE:-.devbundle}
OUT=${OUT:-/tmp/yk-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export YK_CACHE_DIR=/tmp/yk-cache YK_TEST_TMP=/tmp/yk-test
parts=${*:-tests bench peers}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
status=0
if [[ $parts == *tests* ]]; then
  for t in "$B"/bin/test_*; do
    echo "=== $(basename "$t")" >> "$OUT/tests.log"
    "$t" --jobs=4 --verbose >> "$OUT/tests.log" 2>&1 || status=1
  done
  grep -E -A4 "^\[----\].*Assertion|^\[(FAIL|SKIP)|Crash|Synthesis|^\[ERR" "$OUT/tests.log" | grep -v "^--$" | head -60
  "$B/bin/yk" demo > "$OUT/demo.txt" 2>&1 || status=1
  cat "$OUT/demo.txt"
fi
if [[ $parts == *bench* ]]; then
  "$B/bin/yk" bench $([[ $parts == *sweep* ]] && echo --sweep) > "$OUT/bench.md" 2> "$OUT/bench.log" || status=1
  cat "$OUT/bench.log"
fi
if [[ $parts == *peers* ]]; then
  PYTHONUNBUFFERED=1 timeout 420 python3 "$B/peers.py" > "$OUT/peers.log" 2>&1 || echo "peers.py failed or timed out"
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/peers_extra.py >> "$OUT/peers.log" 2>&1 || echo "peers_extra.py failed"
fi
[ -f "$OUT/yk_bench.json" ] && python3 bench/report.py "$OUT"
exit $status
