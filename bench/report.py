"""Merges one run's yk_bench.json with the peers' figures from the same run (peers.json from
../shared/anchors/peers.py, peers_extra.json from bench/peers_extra.py) into a Markdown table.

    python3 bench/report.py RESULTS_DIR > bench/results/<date>-<gpu>.md
"""
import json, sys, os

d = sys.argv[1]
yk = json.load(open(os.path.join(d, "yk_bench.json")))
mma_path = os.path.join(d, "yk_bench_mma_sync.json")  # the attention rows with the mma.sync prefill
mma_sync = {r["name"]: r for r in json.load(open(mma_path))["rows"]} if os.path.exists(mma_path) else {}
peers = {}
for name in ("peers.json", "peers_extra.json"):
    p = os.path.join(d, name)
    if os.path.exists(p):
        peers.update(json.load(open(p)))

rows = {r["name"]: r for r in yk["rows"]}
copy = yk.get("copy_GBps", 0)
print(f"# yk bench on {yk['device']} ({yk['arch']}), driver {yk['driver']}, NVRTC {yk['nvrtc']}\n")
print(f"Measured device-to-device copy: {copy:.0f} GB/s (read + write); peers' copy in the same run: "
      f"{peers.get('ceiling.copy_GBps(read+write)', float('nan')):.0f} GB/s.\n")
print("Every figure is a median (CUDA events, L2 flushed before each repetition, as triton.testing.do_bench).\n")
print("## Ops (bf16, GB/s of input read once + output written once)\n")
print("| op and shape | yk ms | yk GB/s | share of copy | torch eager | torch.compile | yk / compile |")
print("|---|---:|---:|---:|---:|---:|---:|")
attention = ("prefill ", "decode ", "backward ")
for name, r in rows.items():
    if r["unit"] != "GB/s" or name.startswith("ceiling") or name.startswith("sweep.") or name.startswith(attention):
        continue
    op, shape = name.split(" ", 1)
    eager = peers.get(f"{op}.eager {shape}")
    comp = peers.get(f"{op}.compiled {shape}")
    fmt = lambda v: f"{v:.0f}" if v else "-"
    ratio = f"{r['value'] / comp:.2f}x" if comp else "-"
    print(f"| {name} | {r['ms']:.4f} | {r['value']:.0f} | {100 * r['value'] / copy:.0f}% | {fmt(eager)} | {fmt(comp)} | {ratio} |")
b2b = [(name, r) for name, r in rows.items() if name.endswith(" back-to-back")]
if b2b:
    print("\n## Decode-sized ops issued back to back (us a call)\n")
    print("No flush and no sync between 200 calls, CUDA events at each end, median of 21 batches: a call's")
    print("cost in an engine's step without CUDA graphs, the host's submit or the GPU's run, whichever is")
    print("slower. torch.compile's is its generated wrapper around the same Triton kernel.\n")
    print("| op and shape | yk us | torch eager us | torch.compile us | compile / yk |")
    print("|---|---:|---:|---:|---:|")
    for name, r in b2b:
        op, shape = name[:-len(" back-to-back")].split(" ", 1)
        eager, comp = peers.get(f"{op}.eager_b2b {shape}"), peers.get(f"{op}.compiled_b2b {shape}")
        fmt = lambda v: f"{v:.2f}" if v else "-"
        ratio = f"{comp / r['value']:.2f}x" if comp else "-"
        print(f"| {name[:-len(' back-to-back')]} | {r['value']:.2f} | {fmt(eager)} | {fmt(comp)} | {ratio} |")
att = [(name, r) for name, r in rows.items() if name.startswith(attention)]
if att:
    print("\n## Attention (bf16): prefill and backward in TFLOP/s, decode in GB/s of K and V read\n")
    print("Peers: PyTorch SDPA with FlashAttention-2 (`flash`) and cuDNN (`cudnn`), same shapes, same run.\n")
    print("`yk` is the default kernel (on sm_90 the wgmma prefill for head dims 64 and 128); `mma.sync` the same")
    print("call with YK_PREFILL_KERNEL=mma_sync.\n")
    print("| kernel and shape | yk ms | yk | mma.sync | FA2 | cuDNN | yk / FA2 | yk / cuDNN |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in att:
        kind, shape = name.split(" ", 1)
        fa2, cud = peers.get(f"{kind}.flash {shape}"), peers.get(f"{kind}.cudnn {shape}")
        sync = mma_sync.get(name, {}).get("value") if kind == "prefill" else None
        fmt = lambda v: f"{v:.0f}" if v else "-"
        ratio = lambda p: f"{r['value'] / p:.2f}x" if p else "-"
        print(f"| {name} | {r['ms']:.3f} | {r['value']:.0f} {r['unit']} | {fmt(sync)} | {fmt(fa2)} | {fmt(cud)} | {ratio(fa2)} | {ratio(cud)} |")
sweep = [r for name, r in rows.items() if name.startswith("sweep.")]
if sweep:
    print("\n## Sweep of block shapes (yk bench --sweep)\n")
    print("| op, shape, configuration | ms | value |")
    print("|---|---:|---:|")
    for r in sweep:
        print(f"| {r['name'][6:]} | {r['ms']:.4f} | {r['value']:.0f} {r['unit']} |")
print("\n## JIT and dispatch\n")
print("| measure | yk | peer |")
print("|---|---:|---:|")
peer_for = {
    "jit.cold_compile_ms": ("triton.first_call_cold_cache_ms", "Triton first call, cold cache"),
    "jit.first_use_from_disk_ms": ("triton.first_call_disk_cache_ms", "Triton first call, disk cache"),
    "launch.yk_rms_norm_us": ("triton.launch_host_us (cache hit, steady)", "Triton cached launch"),
}
for name, r in rows.items():
    if r["unit"] == "GB/s" or name.startswith(attention) or name.startswith("sweep.") or name.endswith(" back-to-back"):
        continue
    key = name.split(" ")[0]
    peer = peer_for.get(key)
    pv = f"{peers[peer[0]]:.1f} {r['unit']} ({peer[1]})" if peer and peer[0] in peers else ""
    print(f"| {name} | {r['value']:.3f} {r['unit']} | {pv} |")
