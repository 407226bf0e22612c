# A kernel that only reads batch-1 decode's K and V (batch 1 x 32768, 8 kv heads, head dim 128,
# bfloat16: 134 MB), for read_ceiling.py and policy_window.py: G blocks of W warps, each summing a
# contiguous 1/G of K and of V, BLOCK elements of each a step, with or without the evict-first hint.
import torch, triton, triton.language as tl

L, KVH, D = 32768, 8, 128

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

def kv_tensors():
    """K and V, [1, L, KVH, D] each, in one allocation (so one L2 window can span both)."""
    kv = torch.randn(2, 1, L, KVH, D, device="cuda", dtype=torch.bfloat16)
    return kv, kv[0], kv[1]

def reader(k, v, out, G, BLOCK, W, evict):
    """A call of read_kernel over k and v in G blocks, as a closure for do_bench."""
    N = k.numel()
    n_per = ((N + G - 1) // G + BLOCK - 1) // BLOCK * BLOCK
    return lambda: read_kernel[(G,)](k, v, out, N, n_per, BLOCK=BLOCK, EVICT=evict, num_warps=W)
