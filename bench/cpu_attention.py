"""The CPU fallback's attention (cpu_fallback/attention.c, attention_backward.c) through the bindings
on numpy arrays: prefill (causal and not) in float32 and, where ml_dtypes or torch is installed,
bfloat16, and its backward in float32; decode, dense and paged (pages of 16 tokens), in float32 and
float16, and paged over a float8 cache (float16 queries). The median of 5 calls after one warm call,
in GFLOP/s (4 B H Sq Sk D for the forward, 2.5 times that for the backward as `yk bench --backward`
counts it, halved for causal) or GB/s of K and V (decode). No GPU needed:
    YK_LIBRARY=build/libyk.so PYTHONPATH=python python3 bench/cpu_attention.py [prefill | decode]
(prefill: the prefill's forward rows alone; decode: the decode rows alone). On x86-64 the library runs the widest build of the
kernels the CPU has (AVX-512F, with AMX tiles for the bfloat16 forward where the CPU has AMX-BF16;
else AVX2 + FMA + F16C); YK_CPU_ISA=avx512 keeps the AVX-512 build off AMX, avx2 caps it at AVX2's,
plain times the build for every CPU instead."""
import statistics
import sys
import time

import numpy as np

import yaie_kernels as yk


def median_s(f, reps=5):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


try:  # bfloat16 for the prefill's rows (the AMX products where the CPU has them): ml_dtypes' or torch's
    from ml_dtypes import bfloat16

    def as_bfloat16(x):
        return x.astype(bfloat16)
except ImportError:
    try:
        import torch

        def as_bfloat16(x):
            return torch.from_numpy(x).to(torch.bfloat16)
    except ImportError:
        as_bfloat16 = None
only_prefill = "prefill" in sys.argv[1:]  # the prefill's forward rows alone
only_decode = "decode" in sys.argv[1:]  # the decode rows alone

rng = np.random.default_rng(0)
prefill_rows = [] if only_decode else [(1, 1024, 32, 8, 128, True), (1, 2048, 16, 16, 64, False),
                                       (1, 1024, 8, 8, 256, False)]
for b, s, h, kv, d, causal in prefill_rows:
    q = rng.standard_normal((b, h, s, d), dtype=np.float32)
    k, v = (rng.standard_normal((b, kv, s, d), dtype=np.float32) for _ in range(2))
    flops = 4 * b * h * s * s * d / (2 if causal else 1)
    for name, cast in [("float32", lambda x: x)] + ([("bfloat16", as_bfloat16)] if as_bfloat16 else []):
        qt, kt, vt = (cast(x) for x in (q, k, v))
        t = median_s(lambda: yk.flash_attention_forward(qt, kt, vt, causal_mask=causal))
        print(f"prefill {name} B{b} S{s} q{h} kv{kv} d{d} causal={int(causal)}  {t * 1e3:8.1f} ms  "
              f"{flops / t / 1e9:6.1f} GFLOP/s")
    if only_prefill:
        continue
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal)
    dout = rng.standard_normal(out.shape, dtype=np.float32)
    t = median_s(lambda: yk.flash_attention_backward(dout, q, k, v, out, causal=causal))
    print(f"backward float32 B{b} S{s} q{h} kv{kv} d{d} causal={int(causal)} {t * 1e3:8.1f} ms  "
          f"{2.5 * flops / t / 1e9:6.1f} GFLOP/s")
if only_prefill:
    sys.exit(0)
for dtype in (np.float32, np.float16):
    for b, s, h, kv, d in [(8, 4096, 32, 8, 128), (1, 32768, 32, 8, 128), (1, 4096, 32, 8, 128), (4, 4096, 32, 32, 128)]:
        q = rng.standard_normal((b, h, d), dtype=np.float32).astype(dtype)
        k, v = (rng.standard_normal((b, s, kv, d), dtype=np.float32).astype(dtype) for _ in range(2))
        t = median_s(lambda: yk.attention_decode(q, k, v))
        print(f"decode {np.dtype(dtype).name} B{b} L{s} q{h} kv{kv} d{d}  {t * 1e3:8.1f} ms  "
              f"{2 * k.nbytes / t / 1e9:6.1f} GB/s of K and V")
    # the same keys in pages of 16 tokens, blocks in a random order (vLLM's NHD cache and table)
    b, s, h, kv, d, page = 8, 4096, 32, 8, 128, 16
    q = rng.standard_normal((b, h, d), dtype=np.float32).astype(dtype)
    blocks = b * s // page
    k, v = (rng.standard_normal((blocks, page, kv, d), dtype=np.float32).astype(dtype) for _ in range(2))
    tables = rng.permutation(blocks).astype(np.int32).reshape(b, s // page)
    lens = np.full(b, s, dtype=np.int32)
    t = median_s(lambda: yk.paged_attention_forward(q, k, v, tables, lens, s))
    print(f"paged decode {np.dtype(dtype).name} B{b} L{s} q{h} kv{kv} d{d} page{page}  {t * 1e3:8.1f} ms  "
          f"{2 * k.nbytes / t / 1e9:6.1f} GB/s of K and V")
# a float8_e4m3fn cache (KVCacheManager's, written by append_kv from float16 with scales): half the
# bytes of float16, so the same time is twice the GB/s of float16 keys
b, s, h, kv, d, page = 8, 4096, 32, 8, 128, 16
with yk.KVCacheManager(b * s // page, page, kv, d, "float8_e4m3fn", device="cpu") as m:
    seqs = [m.add_sequence() for _ in range(b)]
    kc, vc = m.layer(0)
    for seq in seqs:
        k, v = (rng.standard_normal((s, kv, d), dtype=np.float32).astype(np.float16) for _ in range(2))
        yk.append_kv(k, v, kc, vc, m.append(seq, s), k_scale=0.5, v_scale=0.5)
    tables, lens = m.block_tables(seqs)
    q = rng.standard_normal((b, h, d), dtype=np.float32).astype(np.float16)
    t = median_s(lambda: yk.paged_attention_forward(q, kc, vc, tables, lens, s, k_scale=0.5, v_scale=0.5))
    nbytes = 2 * b * s * kv * d  # a byte an element
    print(f"paged decode float8 B{b} L{s} q{h} kv{kv} d{d} page{page}  {t * 1e3:8.1f} ms  "
          f"{nbytes / t / 1e9:6.1f} GB/s of K and V ({2 * nbytes / t / 1e9:6.1f} as float16 bytes)")
