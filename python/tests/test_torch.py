"""torch tensors, on the CPU (libyk's fallback) and on the GPU: the ops against torch's own
(F.rms_norm, SDPA and its autograd), the caller's current stream, and one decode step of a small
random Llama-shaped layer assembled from these calls against the same layer in plain torch.
Skipped without torch; the CUDA cases skipped without a GPU."""

import math
import os
import zlib

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import yaie_kernels as yk  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))
# (device, dtype): float32 on the CPU; the GPU attention kernels take float16 and bfloat16
CASES = [("cpu", torch.float32), ("cpu", torch.bfloat16),
         pytest.param("cuda", torch.float16, marks=CUDA.marks), pytest.param("cuda", torch.bfloat16, marks=CUDA.marks)]
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture
def gen(request):
    seed = int(os.environ.get("YK_TEST_SEED", zlib.crc32(request.node.nodeid.encode())))
    print(f"torch seed={seed} (rerun with YK_TEST_SEED={seed})")
    torch.manual_seed(seed)
    return seed


def close(got, want, dtype, scale=1.0):
    assert got.dtype == want.dtype or want.dtype == torch.float32, (got.dtype, want.dtype)
    err = (got.float() - want.float()).abs().max().item()
    assert err <= ATOL[dtype] * scale * max(1.0, want.float().abs().max().item()), f"max error {err}"


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def hf_tables(max_position, dim, device, dtype=torch.float32):
    inv = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    f = torch.outer(torch.arange(max_position, dtype=torch.float64, device=device), inv)
    emb = torch.cat((f, f), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def sdpa(q, k, v, causal):
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    sq, sk = q.shape[-2], k.shape[-2]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq) if causal else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("device, dtype", CASES)
def test_rms_norm_equals_torch(gen, device, dtype):
    x = torch.randn(7, 4096, device=device, dtype=dtype)
    w = torch.nn.Parameter(torch.randn(4096, device=device, dtype=dtype))  # a module's weight, requiring grad
    y = yk.rms_norm(x, w, 1e-5)
    assert isinstance(y, torch.Tensor) and y.device == x.device and y.dtype == dtype and y.shape == x.shape
    close(y, F.rms_norm(x.float(), (4096,), w.detach().float(), 1e-5), dtype)
    o = torch.empty_like(x)
    assert yk.rms_norm(x, w, 1e-5, out=o) is o
    assert torch.equal(o, y)


@pytest.mark.parametrize("device, dtype", CASES)
def test_silu_and_mul_equals_torch(gen, device, dtype):
    x = torch.randn(3, 5, 2 * 1024, device=device, dtype=dtype)
    g, u = x.float().chunk(2, dim=-1)
    close(yk.silu_and_mul(x), F.silu(g) * u, dtype)


@pytest.mark.parametrize("device, dtype", CASES)
def test_fused_add_rms_norm_equals_torch(gen, device, dtype):
    x, r = torch.randn(4, 512, device=device, dtype=dtype), torch.randn(4, 512, device=device, dtype=dtype)
    w = torch.randn(512, device=device, dtype=dtype)
    total = x + r
    yk.fused_add_rms_norm(x, r, w)
    assert torch.equal(r, total)
    close(x, F.rms_norm(total.float(), (512,), w.float(), 1e-6), dtype)


@pytest.mark.parametrize("device, dtype", CASES)
def test_apply_rope_qk_equals_hugging_face(gen, device, dtype):
    b, h, kvh, s, d = 2, 8, 2, 6, 64
    q = torch.randn(b, s, h, d, device=device, dtype=dtype).transpose(1, 2)  # as a projection makes it
    k = torch.randn(b, s, kvh, d, device=device, dtype=dtype).transpose(1, 2)
    cos, sin = hf_tables(128, d, device, dtype)
    pos = torch.randint(0, 128, (b, s), device=device)
    c, sn = cos[pos].unsqueeze(1), sin[pos].unsqueeze(1)
    want_q = (q.float() * c.float() + rotate_half(q.float()) * sn.float())
    want_k = (k.float() * c.float() + rotate_half(k.float()) * sn.float())
    got_q, got_k = yk.apply_rope_qk(q, k, cos, sin, pos)
    assert got_q is q and got_k is k
    close(q, want_q, dtype, 2)
    close(k, want_k, dtype, 2)


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq, sk", [(33, 33), (17, 70), (1, 45)])
def test_flash_attention_forward_equals_sdpa(gen, device, dtype, causal, sq, sk):
    q = torch.randn(2, 8, sq, 64, device=device, dtype=dtype)
    k, v = (torch.randn(2, 2, sk, 64, device=device, dtype=dtype) for _ in range(2))
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal)
    assert out.shape == q.shape and out.device == q.device
    close(out, sdpa(q.float(), k.float(), v.float(), causal), dtype)


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_backward_equals_autograd(gen, device, dtype, causal):
    q = torch.randn(2, 4, 40, 64, device=device, dtype=dtype)
    k, v = (torch.randn(2, 2, 40, 64, device=device, dtype=dtype) for _ in range(2))
    dout = torch.randn_like(q)
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal)
    dq, dk, dv = yk.flash_attention_backward(dout, q, k, v, out)
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    sdpa(qf, kf, vf, causal).backward(dout.float())
    for got, want in ((dq, qf.grad), (dk, kf.grad), (dv, vf.grad)):
        assert got.shape == want.shape and got.dtype == dtype
        close(got, want, dtype, 2)


@pytest.mark.parametrize("device, dtype", CASES)
def test_flash_infer_decode_equals_sdpa(gen, device, dtype):
    att = yk.FlashInferAttention(8, 2, 128)
    q = torch.randn(3, 8, 128, device=device, dtype=dtype)
    k, v = (torch.randn(3, 600, 2, 128, device=device, dtype=dtype) for _ in range(2))  # NHD cache
    out, lse = att.decode(q, k, v, return_lse=True)
    want = sdpa(q.float()[:, :, None], k.float().transpose(1, 2), v.float().transpose(1, 2), False)[:, :, 0]
    close(out, want, dtype)
    assert lse.shape == (3, 8) and lse.dtype == torch.float32


# ---- paged attention ----


def paged_setup(device, dtype, layout, page, lens, heads=8, kv_heads=2, dim=64):
    """Random caches and distinct random blocks for each sequence: (q, k_cache, v_cache,
    block_tables, context_lens, csr), tables int32 on device."""
    counts = [-(-n // page) for n in lens]
    num_blocks = sum(counts) + 4
    shape = (num_blocks, page, kv_heads, dim) if layout == "NHD" else (num_blocks, kv_heads, page, dim)
    k_cache = torch.randn(shape, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks)[:sum(counts)].int()
    bt = torch.zeros(len(lens), max(counts), dtype=torch.int32)
    for i, b in enumerate(perm.split(counts)):
        bt[i, :len(b)] = b
    cl = torch.tensor(lens, dtype=torch.int32)
    indptr = torch.tensor([0] + counts, dtype=torch.int32).cumsum(0).int()
    last = torch.tensor([(n - 1) % page + 1 for n in lens], dtype=torch.int32)
    q = torch.randn(len(lens), heads, dim, device=device, dtype=dtype)
    csr = tuple(t.to(device) for t in (indptr, perm, last))
    return q, k_cache, v_cache, bt.to(device), cl.to(device), csr


def gathered_sdpa(q, k_cache, v_cache, bt, lens, page, layout):
    """SDPA of each sequence's query over its tokens gathered from the pages: [batch, heads, dim]."""
    outs = []
    for i, n in enumerate(lens):
        t = torch.arange(n, device=q.device)
        b, o = bt[i].long()[t // page], t % page
        k = k_cache[b, o] if layout == "NHD" else k_cache[b, :, o]  # [n, kv_heads, dim]
        v = v_cache[b, o] if layout == "NHD" else v_cache[b, :, o]
        outs.append(sdpa(q[i].float()[:, None], k.float().transpose(0, 1), v.float().transpose(0, 1), False)[:, 0])
    return torch.stack(outs)


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page", [1, 16])
def test_paged_attention_forward_equals_sdpa(gen, device, dtype, layout, page):
    lens = [37, 1, 64, 100]
    q, k_cache, v_cache, bt, cl, csr = paged_setup(device, dtype, layout, page, lens)
    out = yk.paged_attention_forward(q, k_cache, v_cache, bt, cl, max(lens), layout=layout)
    assert isinstance(out, torch.Tensor) and out.shape == q.shape and out.dtype == dtype and out.device == q.device
    want = gathered_sdpa(q, k_cache, v_cache, bt, lens, page, layout)
    close(out, want, dtype)
    # FlashInfer's form over the same pages: plan on the host, run
    att = yk.FlashInferPagedAttention(8, 2, 64, page, layout=layout, dtype=dtype)
    att.plan(*csr)
    close(att.run(q, (k_cache, v_cache)), want, dtype)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_float8_caches_equal_torch(gen, device, dtype, layout):
    """torch.float8_e4m3fn caches: append_kv writes torch's own float8 of k / k_scale (saturated to
    448), paged decode (vLLM's call and FlashInfer's plan/run) reads stored * scale, against SDPA
    over those values."""
    page, lens, k_scale, v_scale = 16, [37, 1, 64], 0.5, 2.0
    _, _, _, bt, cl, csr = paged_setup(device, dtype, layout, page, lens)
    num_blocks = int(bt.max()) + 1
    shape = (num_blocks, page, 2, 64) if layout == "NHD" else (num_blocks, 2, page, 64)
    kc = torch.zeros(shape, device=device, dtype=torch.float8_e4m3fn)
    vc = torch.zeros_like(kc)
    tokens = [torch.arange(n, device=device) for n in lens]
    slots = torch.cat([bt[i].long()[t // page] * page + t % page for i, t in enumerate(tokens)])
    k = torch.randn(len(slots), 2, 64, device=device, dtype=dtype) * 300  # past 448 * k_scale: some saturate
    v = torch.randn_like(k)
    yk.append_kv(k, v, kc, vc, slots, layout=layout, k_scale=k_scale, v_scale=v_scale)
    b, o = slots // page, slots % page
    got_k = kc[b, o] if layout == "NHD" else kc[b, :, o]
    want_k = (k.float() * (1 / k_scale)).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(got_k.view(torch.uint8), want_k.view(torch.uint8))
    q = torch.randn(len(lens), 8, 64, device=device, dtype=dtype)
    out = yk.paged_attention_forward(q, kc, vc, bt, cl, max(lens), layout=layout, k_scale=k_scale, v_scale=v_scale)
    want = gathered_sdpa(q, kc.float() * k_scale, vc.float() * v_scale, bt, lens, page, layout)
    close(out, want, dtype, scale=2.0)
    att = yk.FlashInferPagedAttention(8, 2, 64, page, layout=layout, dtype=dtype)
    att.plan(*csr, kv_data_type=torch.float8_e4m3fn)
    close(att.run(q, (kc, vc), k_scale=k_scale, v_scale=v_scale), want, dtype, scale=2.0)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_flash_infer_paged_run_replays_in_a_cuda_graph(gen):
    """plan() once, run() captured: replays follow new queries and tables rewritten in place."""
    lens = [300, 17, 1024]
    q, k_cache, v_cache, bt, cl, csr = paged_setup("cuda", torch.bfloat16, "NHD", 16, lens)
    att = yk.FlashInferPagedAttention(8, 2, 64, 16, dtype=torch.bfloat16)
    att.plan(*csr)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        att.run(q, (k_cache, v_cache))  # warm
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = att.run(q, (k_cache, v_cache))
    q.copy_(torch.randn_like(q))
    csr[1].copy_(csr[1].flip(0))  # the same lengths, other blocks
    graph.replay()
    torch.cuda.synchronize()
    table = torch.zeros_like(bt)
    counts = (csr[0][1:] - csr[0][:-1]).tolist()
    for i, b in enumerate(csr[1].split(counts)):
        table[i, :len(b)] = b
    close(out, gathered_sdpa(q, k_cache, v_cache, table, lens, 16, "NHD"), torch.bfloat16)


@pytest.mark.parametrize("device, dtype", CASES)
def test_copy_blocks_over_torch_caches(gen, device, dtype):
    keys = [torch.randn(8, 16, 2, 64, device=device, dtype=dtype) for _ in range(2)]
    values = [torch.randn_like(k) for k in keys]
    before = [t.clone() for t in keys + values]
    yk.copy_blocks(keys, values, torch.tensor([[0, 5], [3, 1]], device=device))  # vLLM's int64 pairs
    for b, a in zip(before, keys + values):
        assert torch.equal(a[5], b[0]) and torch.equal(a[1], b[3]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("device, dtype", CASES)
@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_kv_over_torch_caches(gen, device, dtype, layout):
    """vLLM's int64 slot_mapping, a padding slot skipped; the caches' version counters bumped."""
    shape = (6, 16, 2, 64) if layout == "NHD" else (6, 2, 16, 64)
    kc, vc = torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype)
    k, v = torch.randn(3, 2, 64, device=device, dtype=dtype), torch.randn(3, 2, 64, device=device, dtype=dtype)
    slots = torch.tensor([40, -1, 3], device=device)
    want_k, want_v = kc.clone(), vc.clone()
    for t in (0, 2):
        b, o = divmod(int(slots[t]), 16)
        if layout == "NHD":
            want_k[b, o], want_v[b, o] = k[t], v[t]
        else:
            want_k[b, :, o], want_v[b, :, o] = k[t], v[t]
    version = kc._version
    yk.append_kv(k, v, kc, vc, slots, layout=layout)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v) and kc._version > version


# ---- one decode step of a Llama-shaped layer ----


class Layer:
    """Random weights of a small Llama decoder layer (GQA, SwiGLU, RMSNorm, RoPE)."""

    def __init__(self, device, dtype, hidden=256, heads=4, kv_heads=2, head_dim=64, inter=512, max_position=64):
        def w(*shape):
            return (torch.randn(*shape, device=device) / math.sqrt(shape[-1])).to(dtype)

        self.hidden, self.heads, self.kv_heads, self.head_dim = hidden, heads, kv_heads, head_dim
        self.wq, self.wk, self.wv = w(heads * head_dim, hidden), w(kv_heads * head_dim, hidden), w(
            kv_heads * head_dim, hidden)
        self.wo = w(hidden, heads * head_dim)
        self.w_gate_up, self.w_down = w(2 * inter, hidden), w(hidden, inter)
        self.norm_in = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
        self.norm_post = (1 + 0.1 * torch.randn(hidden, device=device)).to(dtype)
        self.cos, self.sin = hf_tables(max_position, head_dim, device, dtype)
        self.eps = 1e-5

    def torch_step(self, x, k_past, v_past, pos):
        """Plain torch: x [batch, 1, hidden]; k_past, v_past [batch, kv_heads, past, head_dim]."""
        b = x.shape[0]
        h = F.rms_norm(x, (self.hidden,), self.norm_in, self.eps)
        q = (h @ self.wq.T).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
        k = (h @ self.wk.T).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = (h @ self.wv.T).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        c, s = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
        keys, values = torch.cat((k_past, k), dim=2), torch.cat((v_past, v), dim=2)
        a = sdpa(q, keys, values, False)
        x = x + a.transpose(1, 2).reshape(b, 1, -1) @ self.wo.T
        h = F.rms_norm(x, (self.hidden,), self.norm_post, self.eps)
        gate, up = (h @ self.w_gate_up.T).chunk(2, dim=-1)
        return x + (F.silu(gate) * up) @ self.w_down.T, keys, values

    def yk_step(self, x, k_cache, v_cache, past, pos):
        """The same through yaie_kernels; k_cache, v_cache [batch, capacity, kv_heads, head_dim]
        (token-major), written at position `past`."""
        b = x.shape[0]
        h = yk.rms_norm(x, self.norm_in, self.eps)
        q = (h @ self.wq.T).view(b, 1, self.heads, self.head_dim).transpose(1, 2)
        k = (h @ self.wk.T).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = (h @ self.wv.T).view(b, 1, self.kv_heads, self.head_dim).transpose(1, 2)
        yk.apply_rope_qk(q, k, self.cos, self.sin, pos)
        k_cache[:, past] = k[:, :, 0]
        v_cache[:, past] = v[:, :, 0]
        keys, values = k_cache[:, :past + 1], v_cache[:, :past + 1]  # strided: the cache's capacity apart
        a = yk.FlashInferAttention(self.heads, self.kv_heads, self.head_dim).decode(q[:, :, 0], keys, values)
        # the prefill kernel on the SDPA-layout view of the same cache agrees
        a2 = yk.flash_attention_forward(q, keys.transpose(1, 2), values.transpose(1, 2), causal_mask=True)
        close(a2[:, :, 0], a, x.dtype)
        o = a.reshape(b, 1, -1) @ self.wo.T
        h, x = yk.fused_add_rms_norm(o, x.clone(), self.norm_post, self.eps)  # x += o; h = rms_norm(x)
        return x + yk.silu_and_mul(h @ self.w_gate_up.T) @ self.w_down.T


@pytest.mark.parametrize("device, dtype", CASES)
def test_llama_decode_step_equals_plain_torch(gen, device, dtype):
    layer = Layer(device, dtype)
    batch, past, capacity = 3, 21, 32
    x = torch.randn(batch, 1, layer.hidden, device=device, dtype=dtype)
    k_cache = torch.randn(batch, capacity, layer.kv_heads, layer.head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    pos = torch.full((batch, 1), past, device=device, dtype=torch.int64)
    want, keys, values = layer.torch_step(x, k_cache[:, :past].transpose(1, 2), v_cache[:, :past].transpose(1, 2),
                                          pos)
    got = layer.yk_step(x, k_cache, v_cache, past, pos)
    assert got.shape == want.shape and got.dtype == dtype and got.device == x.device
    close(k_cache[:, past], keys[:, :, past], dtype, 2)  # the rotated key went into the cache
    close(got, want, dtype, 3)


# ---- streams and placement (GPU) ----


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_calls_run_on_the_current_stream():
    """Captured into a CUDA graph: a launch on any stream but the capturing one would break the
    capture, so replaying it proves the calls used torch's current stream."""
    x = torch.randn(16, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    gate = torch.randn(16, 2048, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm: kernels compiled and loaded, allocator primed
        yk.rms_norm(x, w)
        yk.silu_and_mul(gate)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = yk.rms_norm(x, w)
        s = yk.silu_and_mul(gate)
    x.copy_(torch.randn_like(x))
    gate.copy_(torch.randn_like(gate))
    graph.replay()
    torch.cuda.synchronize()
    close(y, F.rms_norm(x.float(), (1024,), w.float(), 1e-6), torch.bfloat16)
    g, u = gate.float().chunk(2, dim=-1)
    close(s, F.silu(g) * u, torch.bfloat16)


def record_workspaces(monkeypatch, module):
    """The (op, floats) of every workspace module's calls allocate through torch, in order."""
    sizes = []
    real = module._workspace

    def recording(ad, like, buf, base, slot, op, floats):
        sizes.append((op, floats))
        return real(ad, like, buf, base, slot, op, floats)

    monkeypatch.setattr(module, "_workspace", recording)
    return sizes


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_workspaces_come_from_torch_and_replay_in_a_graph(gen, monkeypatch):
    """A split decode's partials and the backward's stats and float32 dq are allocated by torch's
    caching allocator (libyk would otherwise allocate them on the stream every call); a split decode
    captured in a CUDA graph takes its workspace from the graph's pool and replays with new keys."""
    from yaie_kernels import _attention
    sizes = record_workspaces(monkeypatch, _attention)
    q = torch.randn(1, 8, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, 8192, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    want = sdpa(q.float()[:, :, None], k.float().transpose(1, 2), v.float().transpose(1, 2), False)[:, :, 0]
    close(yk.attention_decode(q, k, v), want, torch.bfloat16)
    assert sizes[-1][0] == "attention_decode" and sizes[-1][1] > 0, sizes  # one sequence: split

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yk.attention_decode(q, k, v)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = yk.attention_decode(q, k, v)
    k.copy_(torch.randn_like(k))
    graph.replay()
    torch.cuda.synchronize()
    close(out, sdpa(q.float()[:, :, None], k.float().transpose(1, 2), v.float().transpose(1, 2), False)[:, :, 0],
          torch.bfloat16)

    qb = torch.randn(1, 4, 300, 64, device="cuda", dtype=torch.bfloat16)
    kb, vb = (torch.randn(1, 2, 300, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn_like(qb)
    ob = yk.flash_attention_forward(qb, kb, vb, causal_mask=True)
    for deterministic in (False, True):
        dq, dk, dv = yk.flash_attention_backward(dout, qb, kb, vb, ob, deterministic=deterministic)
        assert sizes[-1][0] == "flash_attention_backward" and sizes[-1][1] > 0, sizes
        qf, kf, vf = (t.float().requires_grad_() for t in (qb, kb, vb))
        sdpa(qf, kf, vf, True).backward(dout.float())
        for got, ref in ((dq, qf.grad), (dk, kf.grad), (dv, vf.grad)):
            close(got, ref, torch.bfloat16, 2)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_paged_prefill_few_queries_take_a_torch_workspace(gen, monkeypatch):
    """A few queries a sequence through the paged prefill (a verification step), ragged and dense,
    split on the decode kernel: their partials come from torch's allocator, sized for the call."""
    from yaie_kernels import _paged
    sizes = record_workspaces(monkeypatch, _paged)
    lens, n = [4096, 3001], 4
    _, k_cache, v_cache, bt, _, csr = paged_setup("cuda", torch.bfloat16, "NHD", 16, lens)
    q = torch.randn(len(lens) * n, 8, 64, device="cuda", dtype=torch.bfloat16)
    qo = torch.arange(0, len(lens) * n + 1, n, device="cuda", dtype=torch.int32)
    att = yk.FlashInferPagedAttention(8, 2, 64, 16, causal=False, dtype=torch.bfloat16)
    ragged = att.prefill(q, (k_cache, v_cache), qo, *csr, max_seqlen_q=n)
    assert sizes[-1][0] == "FlashInferPagedAttention.prefill" and sizes[-1][1] > 0, sizes
    dense = att.prefill(q.view(len(lens), n, 8, 64), (k_cache, v_cache), None, *csr)
    assert sizes[-1] == sizes[-2], sizes  # the same queries: the same split
    for t in range(n):  # token t of each sequence, against all its keys
        want = gathered_sdpa(q[t::n], k_cache, v_cache, bt, lens, 16, "NHD")
        close(ragged[t::n], want, torch.bfloat16)
        close(dense[:, t], want, torch.bfloat16)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cpu_functions_refuse_device_tensors():
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match="cpu_rms_norm: input_tensor is in cuda:0; the cpu_ functions take host"):
        yk.cpu_rms_norm(x, torch.ones(64, device="cuda"))


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_gpu_errors_carry_the_message():
    q = torch.randn(1, 2, 4, 64, device="cuda")  # float32: the GPU kernels take float16 or bfloat16
    with pytest.raises(ValueError, match="GPU kernels take float16 or bfloat16, not float32") as e:
        yk.flash_attention_forward(q, q, q)
    assert e.value.status == "YK_ERR_UNSUPPORTED"
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(ValueError, match="rms_norm"):
        yk.rms_norm(x, torch.ones(64))  # weight on the host, x on the GPU


@pytest.mark.parametrize("device, dtype", CASES)
def test_small_ops_on_views_and_preallocated_outputs(gen, device, dtype):
    """Strided inputs and out= (the general path beside the inline one) give the same results."""
    base = torch.randn(6, 3, 512, device=device, dtype=dtype)
    x = base[:, 1]  # rows 1536 apart
    w = torch.randn(512, device=device, dtype=dtype)
    want = F.rms_norm(x.float(), (512,), w.float(), 1e-6)
    close(yk.rms_norm(x, w), want, dtype)
    out = torch.empty(6, 512, device=device, dtype=dtype)
    assert yk.rms_norm(x, w, out=out) is out
    close(out, want, dtype)
    s = torch.empty(6, 256, device=device, dtype=dtype)
    assert yk.silu_and_mul(x, out=s) is s
    g, u = x.float().chunk(2, dim=-1)
    close(s, F.silu(g) * u, dtype)


def test_torch_dtypes_the_kernels_lack():
    with pytest.raises(ValueError, match="expected dtype float32, float16 or bfloat16, got float64"):
        yk.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="silu_and_mul"):
        yk.silu_and_mul(torch.randn(2, 8, dtype=torch.complex64))


def test_torch_errors_carry_the_message():
    with pytest.raises(ValueError, match="rms_norm: weight has 3 elements, rows of x have 4"):
        yk.rms_norm(torch.randn(2, 4), torch.randn(3))


def test_in_place_writes_bump_the_version_counter():
    """As torch's own in-place ops do: autograd, and the lse registry, then see the change."""
    q, k, v = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    out = yk.flash_attention_forward(q, k, v, causal_mask=True)
    cos, sin = hf_tables(8, 16, "cpu")
    before = q._version, k._version
    yk.apply_rope_qk(q, k, cos, sin, torch.arange(3)[None])
    assert q._version > before[0] and k._version > before[1]
    # the saved lse is not q's any more: the backward does not use it, and out is no attention of
    # the rotated q, k
    with pytest.raises(ValueError, match="output is not the attention of q, k, v"):
        yk.flash_attention_backward(torch.randn_like(out), q, k, v, out)
    version = out._version
    yk.rms_norm(torch.randn(1, 2, 3, 16), torch.ones(16), out=out)
    assert out._version > version
