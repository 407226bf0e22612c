#!/bin/bash
# On the GPU, from the repository root with the bundle: yk bench --prefill under each named yk
# binary of .devbundle/bin (yk_a, yk_b, ...), alternated twice (a b c a b c), each pass's JSON to
# $OUT/ab/prefill_V_N.json; no pass starts after AB_SECONDS (default 400) have gone. Then the rows'
# medians side by side (bench/probes/ab_prefill.py), and $OUT/ab.tgz.
#   bash bench/probes/ab_prefill.sh a b c
set -u
B=${BUNDLE:-.devbundle}
mkdir -p "$OUT/ab"
for n in 1 2; do
  for v in "$@"; do
    ((SECONDS < ${AB_SECONDS:-400})) || break 2
    YK_CACHE_DIR=/tmp/yk-cache-ab "$B/bin/yk_$v" bench --prefill --json "$OUT/ab/prefill_${v}_$n.json" > "$OUT/ab/prefill_${v}_$n.log" 2>&1 ||
      echo "yk_$v pass $n failed"
    echo "yk_$v pass $n done at ${SECONDS}s"
  done
done
python3 bench/probes/ab_prefill.py "$OUT/ab" "$@"
tar czf "$OUT/ab.tgz" -C "$OUT" ab && rm -rf "$OUT/ab"
