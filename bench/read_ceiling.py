# The batch-1 decode's ceiling: how fast a kernel that only reads its 134 MB of K and V runs under
# do_bench's L2 flush, beside SDPA's decode on the same tensors (results/2026-12-06-h100-session25.md).
# Usage on the GPU machine: python3 bench/read_ceiling.py OUT.json
import torch, triton, triton.language as tl, sys, json
from triton.testing import do_bench
import torch.nn.functional as F
torch.manual_seed(0)
dev = "cuda"
R = {}
def rec(k, v):
    R[k] = v; print(f"{k:70s} {v:10.1f}", flush=True)

@triton.jit
def read_kernel(x_ptr, y_ptr, out_ptr, N, n_per, BLOCK: tl.constexpr, EVICT: tl.constexpr):
    pid = tl.program_id(0)
    base = pid * n_per
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(0, n_per, BLOCK):
        idx = base + off + tl.arange(0, BLOCK)
        m = (idx < N) & (off + tl.arange(0, BLOCK) < n_per)
        a = tl.load(x_ptr + idx, mask=m, other=0., eviction_policy=EVICT)
        b = tl.load(y_ptr + idx, mask=m, other=0., eviction_policy=EVICT)
        acc += a.to(tl.float32) + b.to(tl.float32)
    tl.store(out_ptr + pid, tl.sum(acc))

L, KVH, D = 32768, 8, 128
k = torch.randn(1, L, KVH, D, device=dev, dtype=torch.bfloat16)
v = torch.randn_like(k)
N = k.numel(); nbytes = 2 * N * 2
out = torch.empty(4096, device=dev, dtype=torch.float32)
def gbs(ms): return nbytes / ms / 1e6
for evict in ["", "evict_first"]:
    for G in [128, 132, 256, 264, 528, 1056, 2112]:
        for BLOCK, W in [(4096, 8), (8192, 8), (8192, 16)]:
            n_per = (N + G - 1) // G
            n_per = (n_per + BLOCK - 1) // BLOCK * BLOCK
            f = lambda: read_kernel[(G,)](k, v, out, N, n_per, BLOCK=BLOCK, EVICT=evict, num_warps=W)
            f(); torch.cuda.synchronize()
            if G == 128 and BLOCK == 4096 and evict == "":
                print("check", (k.float().sum() + v.float().sum()).item(), out[:G].sum().item())
            rec(f"read134MB G{G} B{BLOCK} w{W} {evict or 'normal'} GB/s", gbs(do_bench(f, return_mode="median")))
rec("torch k.sum()+v.sum() GB/s", gbs(do_bench(lambda: (k.sum(), v.sum()), return_mode="median")))
tiny = torch.zeros(1, device=dev)
rec("empty add_ (us)", 1000 * do_bench(lambda: tiny.add_(1), return_mode="median"))
x = torch.empty(nbytes // 2, device=dev, dtype=torch.bfloat16); y = torch.empty_like(x)
rec("copy_ 134MB read+write GB/s", 2 * nbytes / do_bench(lambda: y.copy_(x), return_mode="median") / 1e6)
q = torch.randn(1, 32, 1, D, device=dev, dtype=torch.bfloat16)
kt, vt = k.transpose(1, 2), v.transpose(1, 2)
from torch.nn.attention import sdpa_kernel, SDPBackend
for name, be in [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]:
    try:
        with sdpa_kernel([be]):
            ms = do_bench(lambda: F.scaled_dot_product_attention(q, kt, vt, enable_gqa=True), return_mode="median")
        rec(f"decode.{name} B1 L32768 GB/s", gbs(ms))
    except Exception as e:
        print(name, "failed", e)
json.dump(R, open(sys.argv[1], "w"), indent=1)
