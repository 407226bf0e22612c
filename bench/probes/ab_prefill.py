#!/usr/bin/env python3
"""The rows of ab_prefill.sh's passes side by side: for each row, each variant's median over its
passes (ms) and its ratio to the first variant's.
    python3 bench/probes/ab_prefill.py DIR a b c"""
import glob, json, os, statistics, sys

folder, variants = sys.argv[1], sys.argv[2:]
ms = {}  # (variant, row) -> [ms, ...]
for v in variants:
    for path in sorted(glob.glob(os.path.join(folder, f"prefill_{v}_*.json"))):
        for row in json.load(open(path))["rows"]:
            ms.setdefault((v, row["name"]), []).append(row["ms"])
rows = [name for (v, name) in ms if v == variants[0]]
print("| row | " + " | ".join(f"{v} ms" for v in variants) + " | " +
      " | ".join(f"{v}/{variants[0]}" for v in variants[1:]) + " |")
print("|---" * (2 * len(variants)) + "|")
for name in rows:
    med = [statistics.median(ms.get((v, name), [float("nan")])) for v in variants]
    print(f"| {name} | " + " | ".join(f"{m:.4f}" for m in med) + " | " +
          " | ".join(f"{med[0] / m:.3f}x" for m in med[1:]) + " |")
