"""Peers' figures for the shapes ../shared/anchors/peers.py does not time: fused add + RMSNorm,
decode-sized (64-token) RMSNorm, fused add + RMSNorm and RoPE, prefill at head dim 256 and attention backward. Same method as peers.py
(triton.testing.do_bench, median), same byte counts as yk bench. The 64-token ops also issued back to
back (OP.eager_b2b / OP.compiled_b2b, microseconds a call), as yk bench's "back-to-back" rows are.
Writes $OUT/peers_extra.json."""
import json, os
import torch, torch.nn.functional as F
from triton.testing import do_bench

R = {}
def rec(k, v, unit=""):
    R[k] = v; print(f"{k:60s} {v:10.3f} {unit}", flush=True)

dev = "cuda"; torch.manual_seed(0)
bw = lambda nbytes, ms: nbytes / ms / 1e6

def back_to_back_us(f):
    """A call's time on the stream when calls follow each other with no flush and no sync: the median
    of 21 batches of 200, CUDA events at each end (yk bench's bench_back_to_back_us)."""
    f(); torch.cuda.synchronize()
    times = []
    for _ in range(21):
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(200):
            f()
        e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / 200)
    return sorted(times)[10]

def b2b(name, shape, eager, compiled):
    rec(f"{name}.eager_b2b {shape}", back_to_back_us(eager), "us")
    rec(f"{name}.compiled_b2b {shape}", back_to_back_us(compiled), "us")

from torch.nn.attention import sdpa_kernel, SDPBackend

# prefill at head dim 256 (Gemma's) through SDPA's flash and cuDNN backends: yk bench's D256 rows,
# which peers.py does not time
for S in (1024, 4096, 16384):
    D = 256; Hh = 2048 // D; B = 16384 // S
    q = torch.randn(B, Hh, S, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn_like(q); v = torch.randn_like(q)
    for causal in (False, True):
        fl = 4 * B * Hh * S * S * D / (2 if causal else 1)
        for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                with sdpa_kernel(be):
                    ms = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                  return_mode="median")
                rec(f"prefill.{name} D{D} S{S} B{B} H{Hh} causal={int(causal)}", fl / ms / 1e9, "TFLOP/s")
            except Exception as e:
                print(f"prefill.{name} D{D} S{S} failed: {type(e).__name__}: {e}", flush=True)
    del q, k, v
json.dump(R, open(os.environ.get("OUT", "/tmp") + "/peers_extra.json", "w"), indent=1)  # kept if a later part times out

def fused(x, r, w):
    r = x + r
    return F.rms_norm(r, (r.shape[-1],), w, 1e-6), r

for T, H in [(16384, 4096), (64, 4096)]:
    x = torch.randn(T, H, device=dev, dtype=torch.bfloat16); r = torch.randn_like(x)
    w = torch.randn(H, device=dev, dtype=torch.bfloat16)
    nb = 4 * x.numel() * 2
    rec(f"fused_add_rmsnorm.eager T{T} H{H}", bw(nb, do_bench(lambda: fused(x, r, w), return_mode="median")), "GB/s")
    fc = torch.compile(fused); fc(x, r, w)
    rec(f"fused_add_rmsnorm.compiled T{T} H{H}", bw(nb, do_bench(lambda: fc(x, r, w), return_mode="median")), "GB/s")
    if T == 64:
        b2b("fused_add_rmsnorm", f"T{T} H{H}", lambda: fused(x, r, w), lambda: fc(x, r, w))

T, H = 64, 4096
x = torch.randn(T, H, device=dev, dtype=torch.bfloat16); w = torch.randn(H, device=dev, dtype=torch.bfloat16)
nb = 2 * x.numel() * 2
rec(f"rmsnorm.eager T{T} H{H}", bw(nb, do_bench(lambda: F.rms_norm(x, (H,), w, 1e-6), return_mode="median")), "GB/s")
fc = torch.compile(lambda x, w: F.rms_norm(x, (H,), w, 1e-6)); fc(x, w)
rec(f"rmsnorm.compiled T{T} H{H}", bw(nb, do_bench(lambda: fc(x, w), return_mode="median")), "GB/s")
b2b("rmsnorm", f"T{T} H{H}", lambda: F.rms_norm(x, (H,), w, 1e-6), lambda: fc(x, w))

T, I = 64, 14336  # peers.py times this shape with do_bench; here back to back only
x = torch.randn(T, 2 * I, device=dev, dtype=torch.bfloat16)
g = lambda x: F.silu(x[:, :I]) * x[:, I:]
gc = torch.compile(g); gc(x)
b2b("silu_and_mul", f"T{T} I{I}", lambda: g(x), lambda: gc(x))

def rope(q, k, cos, sin, pos):
    c = cos[pos].unsqueeze(1); s = sin[pos].unsqueeze(1)
    def rot(t):
        t1, t2 = t.chunk(2, -1); return torch.cat((-t2, t1), -1)
    return q * c + rot(q) * s, k * c + rot(k) * s

T = 64
q = torch.randn(T, 32, 128, device=dev, dtype=torch.bfloat16); k = torch.randn(T, 8, 128, device=dev, dtype=torch.bfloat16)
inv = 1.0 / (10000 ** (torch.arange(0, 128, 2, device=dev).float() / 128)); t = torch.arange(32768, device=dev).float()
fr = torch.outer(t, inv); emb = torch.cat((fr, fr), -1); cos = emb.cos().bfloat16(); sin = emb.sin().bfloat16()
pos = torch.randint(0, 32768, (T,), device=dev)
nb = 2 * (q.numel() + k.numel()) * 2
rec(f"rope.eager T{T} q32 k8 d128", bw(nb, do_bench(lambda: rope(q, k, cos, sin, pos), return_mode="median")), "GB/s")
rc = torch.compile(rope); rc(q, k, cos, sin, pos)
rec(f"rope.compiled T{T} q32 k8 d128", bw(nb, do_bench(lambda: rc(q, k, cos, sin, pos), return_mode="median")), "GB/s")
b2b("rope", f"T{T} q32 k8 d128", lambda: rope(q, k, cos, sin, pos), lambda: rc(q, k, cos, sin, pos))

# attention backward through SDPA's flash and cuDNN backends: the shapes of yk bench's backward rows
for D in (64, 128):
    for S in (4096, 16384):
        Hh = 2048 // D; B = 16384 // S
        q = torch.randn(B, Hh, S, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
        for causal in (False, True):
            fl = 2.5 * 4 * B * Hh * S * S * D / (2 if causal else 1)
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(be):
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                        do = torch.randn_like(o)
                        ms = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                      return_mode="median")
                    rec(f"backward.{name} D{D} S{S} B{B} H{Hh} causal={int(causal)}", fl / ms / 1e9, "TFLOP/s")
                except Exception as e:
                    print(f"backward.{name} D{D} S{S} failed: {type(e).__name__}: {e}", flush=True)
        del q, k, v

json.dump(R, open(os.environ.get("OUT", "/tmp") + "/peers_extra.json", "w"), indent=1)
