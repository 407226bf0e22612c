"""Paged attention on numpy arrays (libyk's CPU fallback) against float64 dense attention over the
gathered tokens: paged_attention_forward (vLLM's block tables), FlashInferPagedAttention's decode
(CSR tables), prefill and cascade decode; the caches of a KVCacheManager; bad input."""

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import attention_ref, randn

ATOL = {np.float32: 2e-5, np.float16: 4e-3}


def caches(rng, num_blocks, page, kv_heads, dim, layout, dtype=np.float32):
    shape = (num_blocks, page, kv_heads, dim) if layout == "NHD" else (num_blocks, kv_heads, page, dim)
    return randn(rng, shape, dtype), randn(rng, shape, dtype)


def tables(rng, lens, page, num_blocks):
    """Distinct random blocks for each sequence: (blocks per sequence, dense (block_tables,
    context_lens), CSR (kv_indptr, kv_indices, kv_last_page_len)). The dense rows are padded with
    other valid ids, which must never be read."""
    counts = [-(-n // page) for n in lens]
    perm = rng.permutation(num_blocks)[:sum(counts)]
    blocks = np.split(perm, np.cumsum(counts)[:-1])
    width = max(counts) + 1
    dense = rng.integers(0, num_blocks, (len(lens), width)).astype(np.int32)
    for i, b in enumerate(blocks):
        dense[i, :len(b)] = b
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    last = np.array([(n - 1) % page + 1 if n else 0 for n in lens], np.int32)
    return blocks, (dense, np.array(lens, np.int32)), (indptr, perm.astype(np.int32), last)


def gather(cache, layout, blocks, length, page):
    """[length, kv_heads, dim]: a sequence's tokens, through its blocks."""
    rows = [cache[blocks[t // page], t % page] if layout == "NHD" else cache[blocks[t // page], :, t % page]
            for t in range(length)]
    return np.array(rows).reshape(length, *(cache.shape[2:] if layout == "NHD" else (cache.shape[1], cache.shape[3])))


def decode_ref(q, k_cache, v_cache, layout, blocks, lens, page, scale=None):
    """Dense attention of q[i] over sequence i's gathered tokens: (out [batch, heads, dim], lse [batch, heads])."""
    outs, lses = [], []
    for i, n in enumerate(lens):
        if n == 0:  # no key: nothing to attend to
            outs.append(np.zeros(q.shape[1:]))
            lses.append(np.full(q.shape[1], -np.inf))
            continue
        k = gather(k_cache, layout, blocks[i], n, page).transpose(1, 0, 2)
        v = gather(v_cache, layout, blocks[i], n, page).transpose(1, 0, 2)
        o, lse, _ = attention_ref(q[i][:, None], k, v, False, scale)
        outs.append(o[:, 0])
        lses.append(lse[:, 0])
    return np.array(outs), np.array(lses)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page, lens", [(1, [7, 1, 12]), (16, [40, 16, 1, 33]), (5, [11, 5, 23, 4])],
                         ids=["page1", "page16", "page5"])
@pytest.mark.parametrize("heads, kv_heads", [(8, 2), (4, 4)], ids=["gqa", "mha"])
def test_paged_attention_forward_matches_dense(rng, layout, page, lens, heads, kv_heads):
    dim = 16
    num_blocks = sum(-(-n // page) for n in lens) + 3
    k, v = caches(rng, num_blocks, page, kv_heads, dim, layout)
    blocks, (bt, cl), _ = tables(rng, lens, page, num_blocks)
    q = randn(rng, (len(lens), heads, dim))
    out, lse = yk.paged_attention_forward(q, k, v, bt, cl, max(lens), layout=layout, return_lse=True)
    want, want_lse = decode_ref(q, k, v, layout, blocks, lens, page)
    assert type(out) is np.ndarray and out.shape == q.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=2e-5)
    assert lse.shape == (len(lens), heads) and lse.dtype == np.float32
    np.testing.assert_allclose(lse, want_lse, atol=1e-4)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page, lens", [(1, [7, 1, 12]), (16, [40, 16, 1, 33]), (5, [11, 5, 23, 4])],
                         ids=["page1", "page16", "page5"])
def test_flash_infer_decode_csr_matches_dense(rng, layout, page, lens):
    heads, kv_heads, dim = 8, 2, 16
    num_blocks = sum(-(-n // page) for n in lens) + 3
    k, v = caches(rng, num_blocks, page, kv_heads, dim, layout)
    blocks, _, csr = tables(rng, lens, page, num_blocks)
    q = randn(rng, (len(lens), heads, dim))
    att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, layout=layout)
    att.plan(*csr)
    assert att.workspace is None and att.workspace_floats == 0  # the CPU plans nothing
    out = att.run(q, (k, v))
    want, want_lse = decode_ref(q, k, v, layout, blocks, lens, page)
    np.testing.assert_allclose(out, want, atol=2e-5)
    # FlashInfer's single cache tensor, K and V along its second dimension
    both = np.stack([k, v], axis=1)
    out2, lse2 = att.run(q, both, return_lse=True)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_allclose(lse2, want_lse, atol=1e-4)


def test_decode_float16_scale_and_empty_sequence(rng):
    page, lens, heads, kv_heads, dim = 4, [9, 0, 4], 4, 1, 32
    k, v = caches(rng, 8, page, kv_heads, dim, "NHD", np.float16)
    blocks, (bt, cl), csr = tables(rng, lens, page, 8)
    q = randn(rng, (3, heads, dim), np.float16)
    out, lse = yk.paged_attention_forward(q, k, v, bt, cl, 9, scale=0.2, return_lse=True)
    want, want_lse = decode_ref(q, k, v, "NHD", blocks, lens, page, scale=0.2)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float64), want, atol=ATOL[np.float16])
    assert (out[1] == 0).all() and np.isneginf(lse[1]).all()  # a sequence with no tokens
    np.testing.assert_allclose(lse[[0, 2]], want_lse[[0, 2]], atol=2e-3)
    att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, scale=0.2)
    att.plan(*csr)
    np.testing.assert_array_equal(att.run(q, (k, v)), out)


def test_out_and_lse_are_written_in_place(rng):
    page, lens = 4, [6, 3]
    k, v = caches(rng, 6, page, 2, 16, "NHD")
    blocks, (bt, cl), _ = tables(rng, lens, page, 6)
    q = randn(rng, (2, 4, 16))
    out, lse = np.full_like(q, np.nan), np.full((2, 4), np.nan, np.float32)
    got = yk.paged_attention_forward(q, k, v, bt, cl, 6, out=out, lse=lse)
    assert got[0] is out and got[1] is lse
    want, want_lse = decode_ref(q, k, v, "NHD", blocks, lens, page)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-4)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_paged_attention_over_a_kv_cache_manager(rng, layout):
    """The manager's layer views (block stride: every layer's K and V) and page tables, as an
    engine step uses them: append, write the new tokens at their slots, attend."""
    page, heads, kv_heads, dim = 4, 4, 2, 8
    with yk.KVCacheManager(12, page, kv_heads, dim, "float16", num_layers=2, layout=layout, device="cpu") as m:
        seqs = [m.add_sequence() for _ in range(3)]
        for s, n in zip(seqs, (9, 4, 1)):
            m.append(s, n)
        k, v = m.layer(1)
        ka, va = np.from_dlpack(k), np.from_dlpack(v)
        ka[...] = randn(rng, ka.shape, np.float16)
        va[...] = randn(rng, va.shape, np.float16)
        bt, cl = m.block_tables(seqs)
        q = randn(rng, (3, heads, dim), np.float16)
        out = yk.paged_attention_forward(q, k, v, bt, cl, int(cl.max()), layout=layout)
        blocks = [m.seq_info(s).block_table for s in seqs]
        want, _ = decode_ref(q, ka, va, layout, blocks, cl.tolist(), page)
        np.testing.assert_allclose(out.astype(np.float64), want, atol=ATOL[np.float16])
        att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, layout=layout)
        att.plan(*m.csr(seqs))
        np.testing.assert_array_equal(att.run(q, m.layer(1)), out)


def e4m3(x):
    """float8 e4m3fn by its definition, with numpy alone: the nearest of its 127 finite magnitudes
    (ties to the even pattern), 448 and above saturating to 448, as a float8 cache keeps x."""
    patterns = np.arange(127)
    exponent, mantissa = patterns >> 3, patterns & 7
    values = np.where(exponent == 0, mantissa * 2.0 ** -9, (8 + mantissa) * 2.0 ** (exponent - 10))
    a = np.abs(np.asarray(x, np.float64))[..., None]
    distance = np.abs(values - a)
    nearest_ones = distance == distance.min(axis=-1, keepdims=True)  # two on a tie: one even, one odd
    even = nearest_ones & (patterns % 2 == 0)
    nearest = values[np.where(even.any(-1), np.argmax(even, -1), np.argmax(nearest_ones, -1))]
    return np.copysign(np.where(a[..., 0] >= 448, 448.0, nearest), x)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_float8_cache_end_to_end(rng, layout):
    """A float8_e4m3fn KVCacheManager on the CPU: append_kv quantizes k and v with their scales,
    paged decode (both table forms) and prefill read them back as stored * scale, against float64
    attention over those values."""
    page, heads, kv_heads, dim, k_scale, v_scale = 4, 4, 2, 16, 0.25, 3.0
    with yk.KVCacheManager(16, page, kv_heads, dim, "float8_e4m3fn", layout=layout, device="cpu") as m:
        assert m.dtype == "float8_e4m3fn" and m.elem_bytes == 1
        seqs, lens = [m.add_sequence() for _ in range(3)], (9, 4, 1)
        kc, vc = m.layer(0)
        assert kc.dtype == "float8_e4m3fn"
        held_k = np.zeros((16, page, kv_heads, dim)) if layout == "NHD" else np.zeros((16, kv_heads, page, dim))
        held_v = held_k.copy()
        for i, (s, n) in enumerate(zip(seqs, lens)):
            slots = m.append(s, n)
            dtype = (np.float32, np.float16)[i % 2]  # k and v of either type go into float8
            k = (randn(rng, (n, kv_heads, dim), np.float32) * 40).astype(dtype)  # past 448 * k_scale: some saturate
            v = randn(rng, (n, kv_heads, dim), dtype)
            yk.append_kv(k, v, kc, vc, slots, layout=layout, k_scale=k_scale, v_scale=v_scale)
            for t, slot in enumerate(slots):
                block, offset = slot // page, slot % page
                where = (block, offset) if layout == "NHD" else (block, slice(None), offset)
                # times 1 / scale in float32, as libyk multiplies, then rounded to float8
                held_k[where] = e4m3(k[t].astype(np.float32) * np.float32(1 / k_scale)) * k_scale
                held_v[where] = e4m3(v[t].astype(np.float32) * np.float32(1 / v_scale)) * v_scale
        assert np.abs(held_k).max() == 448 * k_scale  # saturation was met
        blocks = [m.seq_info(s).block_table for s in seqs]
        bt, cl = m.block_tables(seqs)
        q = randn(rng, (3, heads, dim), np.float32)
        want, want_lse = decode_ref(q, held_k, held_v, layout, blocks, list(lens), page)
        out, lse = yk.paged_attention_forward(q, kc, vc, bt, cl, 9, layout=layout, k_scale=k_scale,
                                              v_scale=v_scale, return_lse=True)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lse, want_lse, rtol=1e-5, atol=1e-5)
        att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, layout=layout)
        att.plan(*m.csr(seqs))
        np.testing.assert_array_equal(att.run(q, (kc, vc), k_scale=k_scale, v_scale=v_scale), out)
        # the wrong scales give another answer; none given reads the stored values as they are
        assert np.abs(att.run(q, (kc, vc), k_scale=k_scale) - out).max() > 1e-2
        # prefill of each sequence's last token over its pages: the same as decode
        last = np.array([0, 1, 2, 3], np.int32)
        pre = att.prefill(q, (kc, vc), last, *m.csr(seqs), causal=True, k_scale=k_scale, v_scale=v_scale)
        np.testing.assert_allclose(pre, out, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="k_scale is -1"):
            yk.append_kv(k, v, kc, vc, slots, k_scale=-1)
        with pytest.raises(ValueError, match="scales apply to float8_e4m3fn caches only"):
            with yk.KVCacheManager(4, page, kv_heads, dim, "float16", device="cpu") as plain:
                pk, pv = plain.layer(0)
                x = v.astype(np.float16)
                yk.append_kv(x, x, pk, pv, np.array([0], np.int64), v_scale=2.0)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("causal", [True, False])
def test_flash_infer_prefill_over_pages(rng, layout, causal):
    """New query tokens (the last of each sequence, already in the pages) against all their keys."""
    page, heads, kv_heads, dim = 5, 4, 2, 16
    lens_k, lens_q = [12, 5, 20], [3, 5, 1]
    k, v = caches(rng, 12, page, kv_heads, dim, layout)
    blocks, _, csr = tables(rng, lens_k, page, 12)
    qo = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    q = randn(rng, (qo[-1], heads, dim))
    att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, layout=layout)
    out, lse = att.prefill(q, (k, v), qo, *csr, causal=causal, return_lse=True)
    assert out.shape == q.shape and lse.shape == (heads, qo[-1])
    for i, (nk, nq) in enumerate(zip(lens_k, lens_q)):
        kk = gather(k, layout, blocks[i], nk, page).transpose(1, 0, 2)
        vv = gather(v, layout, blocks[i], nk, page).transpose(1, 0, 2)
        want, want_lse, _ = attention_ref(q[qo[i]:qo[i + 1]].transpose(1, 0, 2), kk, vv, causal)
        np.testing.assert_allclose(out[qo[i]:qo[i + 1]], want.transpose(1, 0, 2), atol=2e-5)
        np.testing.assert_allclose(lse[:, qo[i]:qo[i + 1]], want_lse, atol=1e-4)


def test_prefill_dense_queries_and_the_instance_default_mask(rng):
    page, heads, dim = 4, 2, 8
    lens = [8, 6]
    k, v = caches(rng, 6, page, heads, dim, "NHD")
    blocks, _, csr = tables(rng, lens, page, 6)
    q = randn(rng, (2, 3, heads, dim))  # [batch, seq_q, heads, dim]
    att = yk.FlashInferPagedAttention(heads, heads, dim, page, causal=False)
    out, lse = att.prefill(q, (k, v), None, *csr, return_lse=True)
    assert lse.shape == (2, heads, 3)
    for i, n in enumerate(lens):
        kk = gather(k, "NHD", blocks[i], n, page).transpose(1, 0, 2)
        vv = gather(v, "NHD", blocks[i], n, page).transpose(1, 0, 2)
        want, want_lse, _ = attention_ref(q[i].transpose(1, 0, 2), kk, vv, False)
        np.testing.assert_allclose(out[i], want.transpose(1, 0, 2), atol=2e-5)
        np.testing.assert_allclose(lse[i], want_lse, atol=1e-4)
    causal = att.prefill(q, (k, v), None, *csr, causal=True)
    assert not np.allclose(causal, out)  # the keyword overrides the instance's default


@pytest.mark.parametrize("page", [1, 4, 5])
@pytest.mark.parametrize("form", ["csr", "dense"])
def test_cascade_equals_paged_decode_over_prefix_plus_suffix(rng, page, form):
    heads, kv_heads, dim, layout = 8, 2, 16, "HND" if page == 4 else "NHD"
    prefix_pages, suffix_lens = 3, [7, 0, page, 2 * page + 1]
    batch = len(suffix_lens)
    num_blocks = prefix_pages + sum(-(-n // page) for n in suffix_lens) + 2
    k, v = caches(rng, num_blocks, page, kv_heads, dim, layout)
    perm = rng.permutation(num_blocks).astype(np.int32)
    prefix, rest = perm[:prefix_pages], perm[prefix_pages:]
    counts = [-(-n // page) for n in suffix_lens]
    suffix = np.split(rest[:sum(counts)], np.cumsum(counts)[:-1])
    if form == "csr":
        shared = (np.array([0, prefix_pages], np.int32), prefix, np.array([page], np.int32))
        unique = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int32), rest[:sum(counts)],
                  np.array([(n - 1) % page + 1 if n else 0 for n in suffix_lens], np.int32))
    else:
        shared = (prefix[None], np.array([prefix_pages * page], np.int32))
        dense = np.zeros((batch, max(counts)), np.int32)
        for i, s in enumerate(suffix):
            dense[i, :len(s)] = s
        unique = (dense, np.array(suffix_lens, np.int32))
    q = randn(rng, (batch, heads, dim))
    att = yk.FlashInferPagedAttention(heads, kv_heads, dim, page, layout=layout)
    out, lse = att.cascade_decode(q, (k, v), shared, unique, return_lse=True)
    # the same sequences as whole ones: the prefix's pages then the suffix's
    full = [np.concatenate([prefix, s]) for s in suffix]
    lens = [prefix_pages * page + n for n in suffix_lens]
    bt = np.zeros((batch, max(len(f) for f in full)), np.int32)
    for i, f in enumerate(full):
        bt[i, :len(f)] = f
    plain, plain_lse = yk.paged_attention_forward(q, k, v, bt, np.array(lens, np.int32), max(lens), layout=layout,
                                                  return_lse=True)
    want, want_lse = decode_ref(q, k, v, layout, full, lens, page)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(out, plain, atol=2e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-4)
    np.testing.assert_allclose(lse, plain_lse, atol=1e-4)
    # the engine's own workspace, sized once: the same result, nothing allocated by the call
    floats = att.cascade_workspace_floats(batch, max(suffix_lens))
    assert floats >= 0
    workspace = np.full(max(floats, 1), np.nan, np.float32)
    np.testing.assert_array_equal(att.cascade_decode(q, (k, v), shared, unique, workspace=workspace), out)


def test_cascade_workspace_bad_input(rng):
    att = yk.FlashInferPagedAttention(8, 2, 16, 4)
    with pytest.raises(ValueError, match="batch is -1"):
        att.cascade_workspace_floats(-1, 10)
    with pytest.raises(ValueError, match="max_suffix_len is -3"):
        att.cascade_workspace_floats(2, -3)


# ---- bad input ----


@pytest.fixture
def small(rng):
    k, v = caches(rng, 4, 5, 2, 8, "NHD")
    q = randn(rng, (2, 4, 8))
    return q, k, v, np.array([[3, 1], [2, 0]], np.int32), np.array([7, 3], np.int32)


@pytest.mark.parametrize("change, error, message", [
    (dict(bt=np.array([[3, 1], [2, 0]], np.int64)), yk.InvalidArgumentError,
     "paged_attention_forward: paged_attention_decode: block_tables must be int32"),
    (dict(bt=np.array([[3, 9], [2, 0]], np.int32)), yk.InvalidArgumentError,
     "sequence 0's block 1 is 9, outside the 4 blocks"),
    (dict(cl=np.array([11, 3], np.int32)), yk.InvalidArgumentError,
     "context_lens[0] is 11, outside 0..10 (max_blocks 2 x page_size 5)"),
    (dict(cl=np.array([7], np.int32)), yk.InvalidArgumentError, "context_lens has 1 entries, block_tables 2 rows"),
    (dict(q=np.zeros((2, 3, 8), np.float32)), yk.InvalidArgumentError, "2 kv heads do not divide 3 q heads"),
    (dict(q=np.zeros((2, 4, 16), np.float32)), yk.InvalidArgumentError, "the caches have head_dim 8, q has 16"),
    (dict(q=np.zeros((1, 4, 8), np.float32)), yk.InvalidArgumentError, "q has batch 1, the page table 2 sequences"),
    (dict(layout="NCHW"), ValueError, "layout 'NCHW' is not 'NHD'"),
    (dict(max_context_len=1 << 40), ValueError, "max_context_len 1099511627776 does not fit a C int"),
    (dict(max_context_len=-1), ValueError, "max_context_len is -1; it must be a token count (0 for unknown)"),
], ids=["int64_table", "block_out_of_range", "context_too_long", "lens_count", "heads", "head_dim", "batch",
        "layout", "max_len", "negative_max_len"])
def test_paged_attention_forward_bad_input(small, change, error, message):
    q, k, v, bt, cl = small
    args = dict(q=q, bt=bt, cl=cl, max_context_len=7, layout="NHD")
    args.update(change)
    out = np.full_like(args["q"], 7.0)
    with pytest.raises(error) as e:
        yk.paged_attention_forward(args["q"], k, v, args["bt"], args["cl"], args["max_context_len"],
                                   layout=args["layout"], out=out)
    assert message in str(e.value)
    assert (out == 7.0).all()  # a failed call wrote nothing


def test_flash_infer_paged_bad_input(small):
    q, k, v, _, _ = small
    att = yk.FlashInferPagedAttention(4, 2, 8, 5)
    with pytest.raises(ValueError, match=r"FlashInferPagedAttention.run: no plan: call plan\(\) first"):
        att.run(q, (k, v))
    indptr, indices = np.array([0, 2, 3], np.int32), np.array([3, 1, 2], np.int32)
    att.plan(indptr, indices, np.array([6, 3], np.int32))
    with pytest.raises(yk.InvalidArgumentError, match=r"kv_last_page_len\[0\] is 6, outside 1..page_size 5"):
        att.run(q, (k, v))
    att.plan(indptr, indices, np.array([2, 3], np.int32))
    with pytest.raises(ValueError, match="this instance is for 4 q heads, got 2"):
        att.run(q[:, :2], (k, v))
    with pytest.raises(ValueError, match="this instance is for 5 page_size, got 4"):
        att.run(q, (k[:, :4], v[:, :4]))
    with pytest.raises(ValueError, match=r"paged_kv_cache must be \(k_cache, v_cache\) or one tensor"):
        att.run(q, (k, v, v))
    with pytest.raises(ValueError, match="kv_indptr has 3 entries for 1 sequences"):
        att.plan(indptr, indices, np.array([2], np.int32))
    with pytest.raises(ValueError, match="kv_lens has 1 entries for the 2 sequences of kv_indptr"):
        att.plan(indptr, indices, np.array([2, 3], np.int32), kv_lens=[7])
    with pytest.raises(ValueError, match="kv_lens holds -1; lengths are token counts"):
        att.plan(indptr, indices, np.array([2, 3], np.int32), kv_lens=[7, -1])
    with pytest.raises(ValueError, match=r"kv_indptr must be 1-D \[batch \+ 1\], got shape \(1, 3\)"):
        att.plan(indptr[None], indices, np.array([2, 3], np.int32), kv_lens=[7, 3])
    with pytest.raises(ValueError, match="max_suffix_len is -1; it must be a token count"):
        att.cascade_decode(q, (k, v), (indptr[:2], indices[:2], np.array([5], np.int32)),
                           (indptr, indices, np.array([2, 3], np.int32)), max_suffix_len=-1)
    with pytest.raises(ValueError, match="shared_kv must be"):
        att.cascade_decode(q, (k, v), (indptr,), (indptr, indices, np.array([2, 3], np.int32)))
    with pytest.raises(yk.InvalidArgumentError, match="shared has 2 sequences; the prefix is one"):
        att.cascade_decode(q, (k, v), (indptr, indices, np.array([2, 3], np.int32)),
                           (indptr, indices, np.array([2, 3], np.int32)))
    with pytest.raises(ValueError, match="num_qo_heads is 0; it must be a positive C int"):
        yk.FlashInferPagedAttention(0, 2, 8, 5)
    # a plan that fails leaves the last good one in place
    np.testing.assert_allclose(att.run(q, (k, v)), yk.paged_attention_forward(
        q, k, v, np.array([[3, 1], [2, 0]], np.int32), np.array([7, 3], np.int32), 7), atol=1e-6)


def test_gpu_plan_needs_a_device():
    """A plan for the GPU on a machine without one: libyk's NO_DEVICE status, a RuntimeError."""
    att = yk.FlashInferPagedAttention(4, 2, 64, 5, device="cuda:0")  # a head dim the GPU has
    try:
        att.plan(np.array([0, 1], np.int32), np.array([0], np.int32), np.array([1], np.int32))
    except yk.DeviceError as e:
        assert isinstance(e, RuntimeError) and e.status == "YK_ERR_NO_DEVICE"
    else:  # a machine with a GPU: the plan is made
        assert att._plan is not None
