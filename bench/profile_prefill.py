"""The Hopper prefill beside cuDNN's under Nsight Compute, one launch per case:
    ncu --clock-control none --kernel-name regex:'attention_prefill|cudnn|fmha|flash' \
        --section SpeedOfLight --section LaunchStats --section WarpStateStats ... python3 bench/profile_prefill.py
Shapes as yk bench's prefill rows (bf16, 16k tokens a batch, hidden 2048): head dim 128 at 1024 and
4096 queries, without the mask. Our kernel runs at 0.82x cuDNN's speed at 1024 queries and level
with it at 4096 (bench/NOTES.md item 87): the launch statistics (grid, block, shared memory) and the
stall reasons of both at both lengths show what the short grid loses. Each case runs twice (the
first call compiles and loads our kernel); ncu profiles every launch.
YK_PROFILE_SHAPES="1024,4096" picks the lengths."""
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

import yaie_kernels as yk

lengths = (1024, 4096)
if os.environ.get("YK_PROFILE_SHAPES"):
    lengths = tuple(int(n) for n in os.environ["YK_PROFILE_SHAPES"].split(","))
head_dim, heads = 128, 2048 // 128
for length in lengths:
    batch = 16384 // length
    q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(2):
        yk.flash_attention_forward(q, k, v)
    torch.cuda.synchronize()
    print(f"prefill D{head_dim} S{length} ours done", flush=True)
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            for _ in range(2):
                F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        print(f"prefill D{head_dim} S{length} cudnn done", flush=True)
    except RuntimeError as e:
        print(f"prefill D{head_dim} S{length} cudnn failed: {e}", flush=True)
