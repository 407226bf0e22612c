# The batch-1 decode's ceiling: how fast a kernel that only reads its 134 MB of K and V runs under
# do_bench's L2 flush, beside SDPA's decode on the same tensors (results/2026-12-06-h100-session25.md).
# Usage on the GPU machine: python3 bench/read_ceiling.py OUT.json
import torch, sys, json
from triton.testing import do_bench
import torch.nn.functional as F
from kv_reader import D, kv_tensors, reader
torch.manual_seed(0)
dev = "cuda"
R = {}
def rec(k, v):
    R[k] = v; print(f"{k:70s} {v:10.1f}", flush=True)

_, k, v = kv_tensors()
N = k.numel(); nbytes = 2 * N * 2
out = torch.empty(4096, device=dev, dtype=torch.float32)
def gbs(ms): return nbytes / ms / 1e6
for evict in ["", "evict_first"]:
    for G in [128, 132, 256, 264, 528, 1056, 2112]:
        for BLOCK, W in [(4096, 8), (8192, 8), (8192, 16)]:
            f = reader(k, v, out, G, BLOCK, W, evict)
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
