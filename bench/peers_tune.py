"""The peers on the shapes a `yk tune` sweep timed: for each op and shape of the sweep's CSV, PyTorch
eager and torch.compile (token ops) or SDPA's FlashAttention-2 and cuDNN backends (attention), timed
as ../shared/anchors/peers.py times them (triton.testing.do_bench, median, L2 flushed). Writes
$OUT/peers_tune.json: {"OP|SHAPE": {"eager": ms, "compiled": ms, ...}}; bench/report_tune.py puts
them beside the sweep's default and tuned times.

    python3 bench/peers_tune.py TUNE_CSV
"""
import csv, json, os, re, sys
import torch, torch.nn.functional as F
from triton.testing import do_bench
from torch.nn.attention import sdpa_kernel, SDPBackend

torch._dynamo.config.cache_size_limit = 256  # one specialisation a shape, as the sweep has
dev, bf16 = "cuda", torch.bfloat16
torch.manual_seed(0)
ROPE_MAX_POSITION = 4096  # tune/tune_ops.c's table


def median_ms(fn):
    return do_bench(fn, return_mode="median")


def eager_and_compiled(fn, *args):
    compiled = torch.compile(fn, dynamic=False)
    compiled(*args)
    return {"eager": median_ms(lambda: fn(*args)), "compiled": median_ms(lambda: compiled(*args))}


def rms_norm(x, w):
    return F.rms_norm(x, (x.shape[-1],), w, 1e-6)


def fused_add_rms_norm(x, r, w):
    r = x + r
    return F.rms_norm(r, (r.shape[-1],), w, 1e-6), r


def rope(q, k, cos, sin, pos):
    c, s = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)

    def rot(t):
        t1, t2 = t.chunk(2, -1)
        return torch.cat((-t2, t1), -1)

    return q * c + rot(q) * s, k * c + rot(k) * s


ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


def dims(shape):
    """"B1 S1024 q32 kv8 d128 causal" -> {"B": 1, "S": 1024, "q": 32, "kv": 8, "d": 128}"""
    return {k: int(v) for k, v in re.findall(r"\b([A-Za-z]+)(\d+)\b", shape)}


def token_op(op, shape):
    n = dims(shape)
    t = n["T"]
    if op in ("rms_norm", "fused_add_rms_norm"):
        x, w = torch.randn(t, n["H"], device=dev, dtype=bf16), torch.randn(n["H"], device=dev, dtype=bf16)
        if op == "rms_norm":
            return eager_and_compiled(rms_norm, x, w)
        return eager_and_compiled(fused_add_rms_norm, x, torch.randn_like(x), w)
    if op == "rope":
        d = n["d"]
        q = torch.randn(t, n["q"], d, device=dev, dtype=bf16)
        k = torch.randn(t, n["kv"], d, device=dev, dtype=bf16)
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=dev).float() / d))
        fr = torch.outer(torch.arange(ROPE_MAX_POSITION, device=dev).float(), inv)
        emb = torch.cat((fr, fr), -1)
        pos = torch.randint(0, ROPE_MAX_POSITION, (t,), device=dev)
        return eager_and_compiled(rope, q, k, emb.cos().to(bf16), emb.sin().to(bf16), pos)
    if op == "act_and_mul":
        i, act = n["I"], ACTIVATIONS[shape.split()[-1]]
        x = torch.randn(t, 2 * i, device=dev, dtype=bf16)
        return eager_and_compiled(lambda x: act(x[:, :i]) * x[:, i:], x)
    return None


def attention(op, shape):
    n = dims(shape)
    b, h, kvh, d = n["B"], n["q"], n["kv"], n["d"]
    if op == "attention_prefill":
        s, causal = n["S"], "causal" in shape
        q = torch.randn(b, h, s, d, device=dev, dtype=bf16)
    elif op == "attention_decode":
        s, causal = n["L"], False
        q = torch.randn(b, h, 1, d, device=dev, dtype=bf16)
    else:
        return None
    k = torch.randn(b, kvh, s, d, device=dev, dtype=bf16)
    v = torch.randn_like(k)
    out = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                out[name] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True))
        except Exception as e:  # a backend that refuses the shape is left out, not fatal
            print(f"{op} {shape} {name}: {type(e).__name__}: {str(e)[:120]}", flush=True)
    return out


def main():
    shapes = []
    with open(sys.argv[1]) as f:
        for row in csv.DictReader(f):
            if (row["op"], row["shape"]) not in shapes:
                shapes.append((row["op"], row["shape"]))
    result = {}
    for op, shape in shapes:
        peers = token_op(op, shape) if not op.startswith("attention") else attention(op, shape)
        if peers is None:
            print(f"{op} {shape}: no peer known", flush=True)
            continue
        result[f"{op}|{shape}"] = peers
        print(f"{op:20s} {shape:30s} " + "  ".join(f"{k} {v:.4f} ms" for k, v in peers.items()), flush=True)
        torch.cuda.empty_cache()
    path = os.path.join(os.environ.get("OUT", "/tmp"), "peers_tune.json")
    json.dump(result, open(path, "w"), indent=1)
    print(f"wrote {path}")


main()
