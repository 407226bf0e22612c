"""One Markdown table per op of a `yk tune` sweep: each shape's default and tuned (the configuration the
runtime picks from the database) times beside the peers timed on the same shapes in the same call
(bench/peers_tune.py). Ratios are speeds: above 1 means yk is faster. An op whose call launches
several kernels (the backward) has a row a kernel: the whole call timed with that kernel tuned, the
others at their defaults.

    python3 bench/report_tune.py TUNE_CSV PEERS_TUNE_JSON
"""
import csv, json, sys

rows = list(csv.DictReader(open(sys.argv[1])))
peers = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {}

groups = {}
for r in rows:  # the kernel column is newer than some CSVs: the spec's op stands in
    groups.setdefault((r["op"], r["shape"], r.get("kernel") or r["spec"].split(":")[0]), []).append(r)

by_op = {}
for (op, shape, kernel), rs in groups.items():
    by_op.setdefault(op, []).append((shape, kernel, rs))

slower = 0
for op, shapes in by_op.items():
    attention = op.startswith("attention")
    names = ("flash", "cudnn") if attention else ("eager", "compiled")
    unit = "TFLOP/s" if op in ("attention_prefill", "attention_backward") else "GB/s"
    several = len({kernel for _, kernel, _ in shapes}) > 1
    print(f"\n## {op}\n")
    if several:
        print("A row a kernel of the call: the whole call timed with that kernel tuned, the others at their defaults.\n")
    print("| shape | " + ("kernel | " if several else "") + f"default ms | tuned ms | tuned configuration | "
          f"tuned / default | tuned {unit} | " + " | ".join(f"{n} ms" for n in names) + " | "
          + " | ".join(f"yk / {n}" for n in names) + " |")
    print("|---|" + ("---|" if several else "") + "---:|---:|---|---:|---:|" + "---:|" * (2 * len(names)))
    for shape, kernel, rs in shapes:
        cell = f"{shape} | {kernel}" if several else shape
        default = next((r for r in rs if r["default"] == "1" and r["status"] == "ok"), None)
        tuned = next((r for r in rs if r["best"] == "1"), None) or default
        if not default or not tuned:
            print(f"| {cell} | - | - | no default timed | - | - |" + " - |" * (2 * len(names)))
            continue
        d, t = float(default["ms"]), float(tuned["ms"])
        slower += t > d
        rate = float(tuned["tflops"] if unit == "TFLOP/s" else tuned["gbps"])
        p = peers.get(f"{op}|{shape}", {})
        cells = [f"{p[n]:.4f}" if n in p else "-" for n in names]
        ratios = [f"{p[n] / t:.2f}x" if n in p else "-" for n in names]
        config = tuned["config"] if tuned is not default else "default"
        print(f"| {cell} | {d:.4f} | {t:.4f} | {config} | {d / t:.2f}x | {rate:.1f} | " + " | ".join(cells + ratios) + " |")
print(f"\nShapes where tuned is slower than the default: {slower}.")
