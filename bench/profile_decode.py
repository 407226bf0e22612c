"""The decode kernels under Nsight Compute, one launch per case (bench/device_run.sh profile):
    ncu --clock-control none --kernel-name regex:'attention_decode|merge|cudnn|sdpa|fmha' \
        --section SpeedOfLight --section Occupancy --section WarpStateStats ... python3 bench/profile_decode.py
Each case runs twice (the first call compiles and loads the kernel); ncu profiles both launches.
Shapes as yk bench's decode rows: 32 q heads, 8 kv heads, head dim 128, bf16, K and V token-major
(NHD) or head-major (HND, the peers' contiguous layout) views of the same shape. Then cuDNN's
decode (SDPA's cuDNN backend) on the HND tensors, the peer at 0.88-0.93x of whose speed we run:
its DRAM throughput and stall reasons beside ours show where the difference lies. Last the same
shape through a page table of 16-token pages (paged decode, vLLM's call), with bfloat16 and float8
(e4m3fn) caches. YK_PROFILE_PAGED=1: the paged cases only."""
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import yaie_kernels as yk

import os

# YK_PROFILE_SHAPES="64x4096,1x32768" profiles only those (batch x length)
shapes = ((64, 4096), (1, 32768), (256, 1024))
if os.environ.get("YK_PROFILE_SHAPES"):
    shapes = tuple(tuple(int(n) for n in s.split("x")) for s in os.environ["YK_PROFILE_SHAPES"].split(","))
paged_only = os.environ.get("YK_PROFILE_PAGED") == "1"
for batch, length in shapes:
    for head_major in () if paged_only else (False, True):
        q = torch.randn(batch, 32, 128, device="cuda", dtype=torch.bfloat16)
        if head_major:
            k = torch.randn(batch, 8, length, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn(batch, 8, length, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        else:
            k = torch.randn(batch, length, 8, 128, device="cuda", dtype=torch.bfloat16)
            v = torch.randn_like(k)
        for _ in range(2):
            yk.attention_decode(q, k, v)
        torch.cuda.synchronize()
        print(f"decode B{batch} L{length} {'hnd' if head_major else 'nhd'} done", flush=True)
        if head_major:
            qs, ks, vs = q.unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, 1, D], [B, KVH, L, D]
            try:
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    for _ in range(2):
                        torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
                torch.cuda.synchronize()
                print(f"decode B{batch} L{length} cudnn done", flush=True)
            except RuntimeError as e:
                print(f"decode B{batch} L{length} cudnn: {e}", flush=True)
    # the same keys through a page table of 16-token pages in shuffled order (vLLM's NHD blocks)
    pages = length // 16
    k_cache = torch.randn(batch * pages, 16, 8, 128, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(batch * pages, device="cuda", dtype=torch.int32).view(batch, pages)
    lens = torch.full((batch,), length, device="cuda", dtype=torch.int32)
    q = torch.randn(batch, 32, 128, device="cuda", dtype=torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float8_e4m3fn):
        kc, vc = k_cache.to(dtype), v_cache.to(dtype)
        for _ in range(2):
            yk.paged_attention_forward(q, kc, vc, tables, lens, length)
        torch.cuda.synchronize()
        print(f"decode B{batch} L{length} paged16 {dtype} done", flush=True)
