"""Does a prefill's speed drift under sustained load? (bench/NOTES.md item 89.) After 2 s idle, the
D128 S4096 non-causal prefill (bf16, batch 4, 16 heads) runs for 4 s as yk bench times it (a 256 MB
write flushing L2 before each call, CUDA events around the call), ours and then cuDNN's (SDPA), while
nvidia-smi samples the SM clock and the board's power every 100 ms. Prints the median TFLOP/s of each
quarter second beside the clocks sampled in it. Writes $OUT/clock_drift.json."""
import json
import os
import subprocess
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import yaie_kernels as yk

batch, heads, length, head_dim = 4, 16, 4096, 128
flops = 4 * batch * heads * length * length * head_dim
q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")


def ours():
    yk.flash_attention_forward(q, k, v)


def cudnn():
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        F.scaled_dot_product_attention(q, k, v)


def run(name, fn, seconds=4.0):
    fn()
    torch.cuda.synchronize()
    time.sleep(2.0)  # idle: the clocks recover
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "100"], stdout=subprocess.PIPE, text=True)
    start = time.time()
    samples = []
    while time.time() - start < seconds:
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        samples.append((time.time() - start, s.elapsed_time(e)))
    smi.terminate()
    clocks = []
    for line in smi.stdout.read().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            try:
                clocks.append((float(parts[1]), float(parts[2])))
            except ValueError:
                pass
    quarters = []
    for i in range(int(seconds * 4)):
        ms = sorted(m for t, m in samples if i / 4 <= t < (i + 1) / 4)
        if ms:
            quarters.append(flops / (ms[len(ms) // 2] * 1e-3) / 1e12)
    print(f"{name}: TFLOP/s by quarter second: {' '.join(f'{x:.0f}' for x in quarters)}", flush=True)
    print(f"{name}: SM MHz / W every 100 ms: {' '.join(f'{c:.0f}/{p:.0f}' for c, p in clocks)}", flush=True)
    return {"tflops_by_quarter_second": quarters, "clock_mhz_power_w": clocks}


result = {"ours": run("ours", ours), "cudnn": run("cudnn", cudnn)}
json.dump(result, open(os.environ.get("OUT", "/tmp") + "/clock_drift.json", "w"), indent=1)
