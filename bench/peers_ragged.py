"""The peer of yk bench's ragged decode rows: FlashAttention-2's varlen forward (torch's
aten._flash_attention_forward, the kernel SDPA's flash backend runs) with one query a sequence,
over the same batches: 32 q heads, 8 kv heads, head dim 128, bfloat16, k and v [total, 8, 128].
Then its rows of a few queries a sequence (causal, bottom-right), varlen and dense, the peers of
yk bench --decode's "prefill q.." and "paged prefill q.." rows. GB/s of K and V read, timed as
../shared/anchors/peers.py times (triton's do_bench, median).

    python3 bench/peers_ragged.py [OUT.json]
"""
import json
import sys

import torch
from triton.testing import do_bench

# (name, batch, longest, long_count, short_len): bench/bench_attention.c's ragged_shapes
SHAPES = [
    ("1x32768+31x512", 32, 32768, 1, 512),
    ("4x16384+60x1024", 64, 16384, 4, 1024),
    ("1x32768+15x2048", 16, 32768, 1, 2048),
    ("2x8192+126x256", 128, 8192, 2, 256),
    ("32768+256+4096+1024", 4, 32768, 0, [32768, 256, 4096, 1024]),
    ("32x4096 (equal)", 32, 4096, 32, 4096),
]


def lengths(batch, longest, long_count, short_len):
    if isinstance(short_len, list):
        return short_len
    every = batch // long_count
    return [longest if b % every == 0 else short_len for b in range(batch)]


# (batch, queries a sequence, keys a sequence): bench_attention.c's bench_short_queries and
# bench_paged.c's bench_paged_queries, causal
SHORT_QUERIES = [(1, 4, 32768), (1, 8, 32768), (1, 16, 32768), (8, 8, 4096), (64, 8, 4096)]


def run_varlen(out, key, q_lens, k_lens, causal):
    dev = "cuda"
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=dev)
    cu_q, cu_k = cu(q_lens), cu(k_lens)
    q = torch.randn(sum(q_lens), 32, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(sum(k_lens), 8, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    nbytes = 2 * sum(k_lens) * 8 * 128 * 2

    def fa2():
        return torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), 0.0, causal, False)

    try:
        fa2()
        ms = do_bench(fa2, return_mode="median")
        out[key + " GB/s"] = nbytes / ms / 1e6
        print(f"{key:52s} {ms * 1e3:9.1f} us {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
    except Exception as e:  # an older torch, or a build without the flash kernels
        out[key + " error"] = str(e).splitlines()[0][:200]
        print(f"{key:52s} unavailable: {out[key + ' error']}", flush=True)
    del q, k, v
    torch.cuda.empty_cache()


def run_dense(out, key, batch, queries, keys):
    """FlashAttention-2's dense forward (the same aten op without offsets: flash_attn_func), causal
    bottom-right: the peer of the "dense ws" rows."""
    dev = "cuda"
    q = torch.randn(batch, queries, 32, 128, device=dev, dtype=torch.bfloat16)
    k = torch.randn(batch, keys, 8, 128, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    nbytes = 2 * batch * keys * 8 * 128 * 2

    def fa2():
        return torch.ops.aten._flash_attention_forward(q, k, v, None, None, queries, keys, 0.0, True, False)

    try:
        fa2()
        ms = do_bench(fa2, return_mode="median")
        out[key + " GB/s"] = nbytes / ms / 1e6
        print(f"{key:52s} {ms * 1e3:9.1f} us {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
    except Exception as e:
        out[key + " error"] = str(e).splitlines()[0][:200]
        print(f"{key:52s} unavailable: {out[key + ' error']}", flush=True)
    del q, k, v
    torch.cuda.empty_cache()


def main():
    out = {}
    torch.manual_seed(0)
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    for name, batch, longest, long_count, short_len in SHAPES:
        lens = lengths(batch, longest, long_count, short_len)
        run_varlen(out, f"decode.flash varlen {name}", [1] * len(lens), lens, False)
    for batch, queries, keys in SHORT_QUERIES:
        run_varlen(out, f"prefill.flash varlen q{queries} of B{batch} L{keys} causal", [queries] * batch,
                   [keys] * batch, True)
        run_dense(out, f"prefill.flash dense q{queries} of B{batch} L{keys} causal", batch, queries, keys)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
