"""The dense decode kernels under Nsight Compute, one launch per case (bench/device_run.sh profile):
    ncu --clock-control none --kernel-name regex:'attention_decode|merge' \
        --section SpeedOfLight --section Occupancy --section LaunchStats python3 bench/profile_decode.py
Each case runs twice (the first call compiles and loads the kernel); ncu profiles both launches.
Shapes as yk bench's decode rows: 32 q heads, 8 kv heads, head dim 128, bf16, K and V token-major
(NHD) or head-major (HND, the peers' contiguous layout) views of the same shape."""
import torch

import yaie_kernels as yk

for batch, length in ((64, 4096), (1, 32768), (256, 1024)):
    for head_major in (False, True):
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
