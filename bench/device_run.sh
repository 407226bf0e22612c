#!/bin/bash
# Runs on the lent GPU machine, from the repository root, with the bundle that
# ../shared/tools/device-bundle.sh made here (bench/README.md says how): the GPU tests and the demo,
# the benchmarks, and the peers, in one call. Files under $OUT (at most 8 come back): tests.log
# (with the demo), bench.log, yk_bench.json, yk_bench_mma_sync.json (the attention benchmarks
# again with the mma.sync prefill), peers.json, peers_extra.json, peers.log, python.log (the
# bindings' tests with torch on the GPU and their per-call overhead). The report last.
#   bash bench/device_run.sh [tests] [bench] [sweep] [ops] [decode] [paged] [prefill] [backward] [tune] [python] [profile] [probe] [peers]
#   (default: tests bench python peers; decode: yk bench --decode alone; paged: yk bench --paged; prefill: yk bench --prefill
#   --sweep, the Hopper prefill's configurations, prefill.log; backward: yk bench --backward (with
#   sweep, its tiles), backward.log; ops: yk bench --ops, ops.log; probe: the prefill timeline probe's
#   libraries (bench/probes/prefill_trace.sh made them here) alternated a, b, a, b, probe.log and
#   probe.tgz (every block's stamps; NOTES.md item 91); tune: yk tune over every op at Llama 3
#   8B's shapes and the peers on those shapes, tune.jsonl, tune.csv, tune.md; profile: ncu over the
#   decode kernels, ncu.log)
set -u
B=${BUNDLE:-.devbundle}
OUT=${OUT:-/tmp/yk-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export YK_CACHE_DIR=/tmp/yk-cache YK_TEST_TMP=/tmp/yk-test
parts=${*:-tests bench python peers}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
status=0
if [[ $parts == *probe* ]]; then # before the rest, on a machine nothing else has warmed
  mkdir -p "$OUT/probe"
  for v in a b a b; do
    [ -f "$B/lib/libyk_trace_$v.so" ] || continue
    echo "=== probe $v" >> "$OUT/probe.log"
    YK_CACHE_DIR=/tmp/yk-cache-probe-$v YK_LIBRARY=$PWD/$B/lib/libyk_trace_$v.so TAG=$v OUT=$OUT/probe PYTHONUNBUFFERED=1 \
      timeout 150 python3 bench/probes/prefill_trace.py >> "$OUT/probe.log" 2>&1 || status=1
  done
  tar czf "$OUT/probe.tgz" -C "$OUT" probe && rm -rf "$OUT/probe"
  cat "$OUT/probe.log"
fi
if [[ $parts == *tests* ]]; then
  # a worker a core: the heaviest GPU tests are shards whose time is NVRTC's (bench/NOTES.md item 78);
  # gpu_forward_matches_cpu runs the mma.sync prefill beside the Hopper ones itself
  for t in "$B"/bin/test_*; do
    echo "=== $(basename "$t")" >> "$OUT/tests.log"
    "$t" --jobs="$(nproc)" --verbose >> "$OUT/tests.log" 2>&1 || status=1
  done
  grep -E -A4 "^\[----\].*Assertion|^\[(FAIL|SKIP)|Crash|Synthesis|^\[ERR|^===" "$OUT/tests.log" | grep -v "^--$" | head -80
  echo "=== demo" >> "$OUT/tests.log"
  "$B/bin/yk" demo >> "$OUT/tests.log" 2>&1 || status=1
  sed -n '/=== demo/,$p' "$OUT/tests.log"
fi
sweep=$([[ $parts == *sweep* ]] && echo --sweep)
if [[ $parts == *bench* ]]; then
  "$B/bin/yk" bench $sweep > "$OUT/bench.log" 2>&1 || status=1
  YK_PREFILL_KERNEL=mma_sync "$B/bin/yk" bench --attention --json "$OUT/yk_bench_mma_sync.json" >> "$OUT/bench.log" 2>&1 || status=1
  grep -v "^|" "$OUT/bench.log"
fi
# One kernel family's rows alone: yk bench --NAME [flags], NAME.log and yk_bench_NAME.json
narrow() {
  local name=$1
  shift
  "$B/bin/yk" bench "--$name" "$@" --json "$OUT/yk_bench_$name.json" > "$OUT/$name.log" 2>&1 || status=1
  grep -v "^|" "$OUT/$name.log"
}
[[ $parts == *ops* ]] && narrow ops                  # norms, activations, RoPE, the JIT and dispatch rows
[[ $parts == *decode* ]] && narrow decode $sweep     # dense (both layouts), paged, cascade; with sweep its splits, tiles, hints
[[ $parts == *paged* ]] && narrow paged $sweep       # paged and cascade; with sweep the paged knobs (batch 1, float8)
[[ $parts == *prefill* ]] && narrow prefill --sweep  # the prefill rows, then every Hopper prefill configuration
[[ $parts == *backward* ]] && narrow backward $sweep # the backward rows; with sweep its tiles
if [[ $parts == *python* ]]; then # the bundle carries libyk.so beside the test binaries' libraries
  export YK_LIBRARY=$PWD/$B/lib/libyk.so
  PYTHONPATH=python python3 -m pytest -q -p no:cacheprovider python/tests > "$OUT/python.log" 2>&1 || status=1
  PYTHONUNBUFFERED=1 timeout 120 python3 python/bench_overhead.py >> "$OUT/python.log" 2>&1 || status=1
  tail -25 "$OUT/python.log"
fi
if [[ $parts == *profile* ]]; then # Nsight Compute over the decode kernels, where ncu is installed
  export YK_LIBRARY=$PWD/$B/lib/libyk.so
  PYTHONPATH=${YK_PYTHONPATH:-python} timeout 300 ncu --clock-control none \
    --kernel-name regex:'attention_decode|merge|cudnn|sdpa|fmha' --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --metrics lts__t_requests_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum,lts__t_sectors_srcunit_tex_op_write.sum,dram__bytes_read.sum,dram__bytes_write.sum,smsp__inst_executed.sum \
    python3 bench/profile_decode.py > "$OUT/ncu.log" 2>&1 || echo "ncu failed or timed out"
  grep -E "^  [a-z_]+.*\(|lts__|dram__bytes|inst_executed|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Waves Per|Warp Cycles Per Issued|Issued Warp Per|No Eligible|decode B" "$OUT/ncu.log" | head -200
fi
if [[ $parts == *tune* ]]; then # every op swept at Llama 3 8B's shapes, then the peers on the same shapes
  "$B/bin/yk" tune --op all --model llama-3-8b --db "$OUT/tune.jsonl" --csv "$OUT/tune.csv" -j 16 > "$OUT/tune.log" 2>&1 || status=1
  grep -v "^|" "$OUT/tune.log" | tail -12
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/peers_tune.py "$OUT/tune.csv" > "$OUT/peers_tune.log" 2>&1 || echo "peers_tune.py failed or timed out"
  python3 bench/report_tune.py "$OUT/tune.csv" "$OUT/peers_tune.json" > "$OUT/tune.md" && tail -3 "$OUT/tune.md"
fi
if [[ $parts == *peers* ]]; then
  PYTHONUNBUFFERED=1 timeout 420 python3 "$B/peers.py" > "$OUT/peers.log" 2>&1 || echo "peers.py failed or timed out"
  PYTHONUNBUFFERED=1 timeout 240 python3 bench/peers_extra.py >> "$OUT/peers.log" 2>&1 || echo "peers_extra.py failed"
fi
[ -f "$OUT/yk_bench.json" ] && python3 bench/report.py "$OUT"
exit $status
