"""flash_attention_forward / _backward, cpu_attention_forward, attention_decode,
merge_attention_states and FlashInferAttention on numpy arrays (libyk's CPU fallback) against
float64 references."""

import gc

import numpy as np
import pytest

import yaie_kernels as yk
from yaie_kernels import _attention
from conftest import attention_backward_ref, attention_ref, randn


def _qkv(rng, batch=2, heads=4, kv_heads=2, seq_q=5, seq_k=7, dim=16, dtype=np.float32):
    return (randn(rng, (batch, heads, seq_q, dim), dtype), randn(rng, (batch, kv_heads, seq_k, dim), dtype),
            randn(rng, (batch, kv_heads, seq_k, dim), dtype))


ATOL = {np.float32: 2e-5, np.float16: 4e-3}


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("causal", [None, False, True])
@pytest.mark.parametrize("shape", [(2, 4, 2, 5, 7, 16), (1, 8, 8, 9, 9, 64), (3, 6, 1, 12, 4, 32)],
                         ids=["gqa_sq<sk", "mha_square", "mqa_sq>sk"])
def test_flash_attention_forward_matches_reference(rng, dtype, causal, shape):
    batch, heads, kv_heads, seq_q, seq_k, dim = shape
    q, k, v = _qkv(rng, batch, heads, kv_heads, seq_q, seq_k, dim, dtype)
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal)
    want, _, _ = attention_ref(q, k, v, bool(causal))
    assert type(out) is np.ndarray and out.shape == q.shape and out.dtype == dtype
    np.testing.assert_allclose(out.astype(np.float64), want, atol=ATOL[dtype])


def test_flash_attention_forward_three_dimensional_and_scale(rng):
    q, k, v = (randn(rng, (4, 6, 16)) for _ in range(3))
    out = yk.flash_attention_forward(q, k, v, True, scale=0.3)
    want, _, _ = attention_ref(q, k, v, True, scale=0.3)
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_flash_attention_forward_strided_views(rng):
    """q, k, v sliced out of one packed projection [batch, seq, 3, heads, dim], in SDPA layout."""
    qkv = randn(rng, (2, 6, 3, 4, 16))
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    out = yk.flash_attention_forward(q, k, v, causal_mask=True)
    want, _, _ = attention_ref(q, k, v, True)
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_cpu_attention_forward(rng):
    q, k, v = _qkv(rng)
    out = yk.cpu_attention_forward(q, k, v, mask=True)
    want, _, _ = attention_ref(q, k, v, True)
    np.testing.assert_allclose(out, want, atol=2e-5)
    np.testing.assert_allclose(yk.cpu_attention_forward(q, k, v), attention_ref(q, k, v, False)[0], atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_backward_from_forward(rng, dtype, causal):
    q, k, v = _qkv(rng, dtype=dtype)
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal)
    dout = randn(rng, out.shape, dtype)
    dq, dk, dv = yk.flash_attention_backward(dout, q, k, v, out)
    want = attention_backward_ref(dout, q, k, v, causal)
    atol = 5e-5 if dtype == np.float32 else 2e-2
    for got, ref, name in zip((dq, dk, dv), want, ("dq", "dk", "dv")):
        assert got.shape == ref.shape and got.dtype == dtype, name
        np.testing.assert_allclose(got.astype(np.float64), ref, atol=atol, err_msg=name)


def test_backward_uses_the_saved_lse(rng, monkeypatch):
    q, k, v = _qkv(rng)
    out = yk.flash_attention_forward(q, k, v, causal_mask=True)
    calls = []
    real = _attention._forward
    monkeypatch.setattr(_attention, "_forward", lambda *a: calls.append(a) or real(*a))
    yk.flash_attention_backward(np.ones_like(out), q, k, v, out)
    assert calls == []  # no forward pass: lse and the mask came from the registry


@pytest.mark.parametrize("causal", [False, True])
def test_backward_recomputes_when_output_is_not_ours(rng, causal):
    """An output from elsewhere (here a copy): lse is recomputed, the mask found by which output matches."""
    q, k, v = _qkv(rng)
    out = yk.flash_attention_forward(q, k, v, causal_mask=causal).copy()
    dout = randn(rng, out.shape)
    got = yk.flash_attention_backward(dout, q, k, v, out)
    for g, ref in zip(got, attention_backward_ref(dout, q, k, v, causal)):
        np.testing.assert_allclose(g, ref, atol=5e-5)
    explicit = yk.flash_attention_backward(dout, q, k, v, out, causal=causal)
    for g, e in zip(got, explicit):
        np.testing.assert_array_equal(g, e)


def test_backward_recomputes_after_inputs_change(rng):
    q, k, v = _qkv(rng)
    out = yk.flash_attention_forward(q, k, v, causal_mask=True)
    q2 = randn(rng, q.shape)  # a different q: the saved lse is not its
    out2 = yk.flash_attention_forward(q2, k, v, causal_mask=True)
    dout = randn(rng, out.shape)
    for g, ref in zip(yk.flash_attention_backward(dout, q2, k, v, out2), attention_backward_ref(dout, q2, k, v, True)):
        np.testing.assert_allclose(g, ref, atol=5e-5)
    with pytest.raises(ValueError, match="output is not the attention of q, k, v"):
        yk.flash_attention_backward(dout, q2, k, v, out.copy())


def test_saved_lse_goes_with_its_output(rng):
    q, k, v = _qkv(rng)
    before = len(_attention._saved)
    out = yk.flash_attention_forward(q, k, v)
    assert len(_attention._saved) == before + 1
    del out
    gc.collect()
    assert len(_attention._saved) == before


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_attention_decode_dense(rng, dtype):
    batch, heads, kv_heads, seq_k, dim = 3, 8, 2, 11, 32
    q = randn(rng, (batch, heads, dim), dtype)
    k, v = randn(rng, (batch, seq_k, kv_heads, dim), dtype), randn(rng, (batch, seq_k, kv_heads, dim), dtype)
    out, lse = yk.attention_decode(q, k, v, return_lse=True)
    want, want_lse, _ = attention_ref(q[:, :, None], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), False)
    np.testing.assert_allclose(out.astype(np.float64), want[:, :, 0], atol=ATOL[dtype])
    assert lse.shape == (batch, heads) and lse.dtype == np.float32
    np.testing.assert_allclose(lse, want_lse[:, :, 0], atol=1e-4)


def test_attention_decode_ragged(rng):
    lengths = [3, 9, 1]
    cu = np.array([0, 3, 12, 13], np.int32)
    q = randn(rng, (3, 4, 16))
    k, v = randn(rng, (13, 2, 16)), randn(rng, (13, 2, 16))
    out = yk.attention_decode(q, k, v, cu_seqlens_k=cu)
    for b, n in enumerate(lengths):
        ks, vs = k[cu[b]:cu[b + 1]], v[cu[b]:cu[b + 1]]
        want, _, _ = attention_ref(q[b][:, None], ks.transpose(1, 0, 2), vs.transpose(1, 0, 2), False)
        np.testing.assert_allclose(out[b], want[:, 0], atol=2e-5)


def test_flash_infer_attention_prefill_and_decode(rng):
    att = yk.FlashInferAttention(num_qo_heads=4, num_kv_heads=2, head_dim=16)
    q = randn(rng, (2, 5, 4, 16))  # token-major [batch, seq, heads, dim]
    k, v = randn(rng, (2, 7, 2, 16)), randn(rng, (2, 7, 2, 16))
    out, lse = att.prefill(q, k, v, return_lse=True)
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    want, want_lse, _ = attention_ref(t(q), t(k), t(v), True)
    np.testing.assert_allclose(t(out), want, atol=2e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-4)
    dec = att.decode(q[:, -1], k, v)
    want_dec, _, _ = attention_ref(t(q[:, -1:]), t(k), t(v), False)
    np.testing.assert_allclose(dec, want_dec[:, :, 0], atol=2e-5)
    with pytest.raises(ValueError, match="for 4 q heads, got 8"):
        att.decode(randn(rng, (2, 8, 16)), k, v)


def test_flash_infer_attention_ragged_prefill(rng):
    cu_q, cu_k = np.array([0, 2, 7], np.int32), np.array([0, 4, 10], np.int32)
    q, k, v = randn(rng, (7, 4, 16)), randn(rng, (10, 2, 16)), randn(rng, (10, 2, 16))
    out, lse = yk.FlashInferAttention(causal=True).prefill(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                                            return_lse=True)
    assert lse.shape == (4, 7)
    for b in range(2):
        qs, ks, vs = q[cu_q[b]:cu_q[b + 1]], k[cu_k[b]:cu_k[b + 1]], v[cu_k[b]:cu_k[b + 1]]
        want, want_lse, _ = attention_ref(qs.transpose(1, 0, 2), ks.transpose(1, 0, 2), vs.transpose(1, 0, 2), True)
        np.testing.assert_allclose(out[cu_q[b]:cu_q[b + 1]], want.transpose(1, 0, 2), atol=2e-5)
        np.testing.assert_allclose(lse[:, cu_q[b]:cu_q[b + 1]], want_lse, atol=1e-4)


def test_merge_attention_states_equals_attention_over_all_keys(rng):
    q = randn(rng, (1, 4, 6, 16))  # six query tokens
    k, v = randn(rng, (1, 4, 10, 16)), randn(rng, (1, 4, 10, 16))
    whole, _, _ = attention_ref(q, k, v, False)
    parts = [attention_ref(q, k[:, :, s], v[:, :, s], False) for s in (slice(0, 4), slice(4, 10))]
    # to [tokens, heads, dim] and [tokens, heads]
    o = [p[0][0].transpose(1, 0, 2).astype(np.float32) for p in parts]
    lse = [p[1][0].T.astype(np.float32).copy() for p in parts]
    out, out_lse = yk.merge_attention_states(o[0], lse[0], o[1], lse[1])
    np.testing.assert_allclose(out, whole[0].transpose(1, 0, 2), atol=2e-5)
    assert out_lse.shape == (6, 4)


# ---- bad input ----


def test_mask_tensor_rejected(rng):
    q, k, v = _qkv(rng)
    mask = np.ones((5, 7), bool)
    with pytest.raises(ValueError, match="supports only causal masks, not a mask tensor"):
        yk.flash_attention_forward(q, k, v, causal_mask=mask)
    with pytest.raises(ValueError, match="cpu_attention_forward: mask must be None or False"):
        yk.cpu_attention_forward(q, k, v, mask=mask)


def test_heads_not_divisible(rng):
    q, k, v = _qkv(rng, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="3 kv heads do not divide 4 q heads"):
        yk.flash_attention_forward(q, k, v)


def test_head_dim_mismatch(rng):
    q = randn(rng, (1, 2, 3, 16))
    k = v = randn(rng, (1, 2, 3, 32))
    with pytest.raises(ValueError, match="k has head_dim 32, q has 16"):
        yk.flash_attention_forward(q, k, v)


def test_dtype_mismatch(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(ValueError, match="flash_attention_forward"):
        yk.flash_attention_forward(q, k.astype(np.float16), v)


def test_bad_rank(rng):
    with pytest.raises(ValueError, match=r"q must be \[batch, heads, seq, head_dim\]"):
        yk.flash_attention_forward(randn(rng, (3, 16)), randn(rng, (3, 16)), randn(rng, (3, 16)))


def test_negative_scale(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(ValueError, match="scale must be finite and positive"):
        yk.flash_attention_forward(q, k, v, scale=-1.0)


def test_ragged_offsets_checked(rng):
    q, k, v = randn(rng, (2, 4, 16)), randn(rng, (5, 2, 16)), randn(rng, (5, 2, 16))
    with pytest.raises(ValueError, match="cu_seqlens_k ends at 9, past the 5 tokens"):
        yk.attention_decode(q, k, v, cu_seqlens_k=np.array([0, 4, 9], np.int32))


def test_boolean_scalars_are_flags(rng):
    q, k, v = _qkv(rng)
    np.testing.assert_array_equal(yk.flash_attention_forward(q, k, v, np.True_),
                                  yk.flash_attention_forward(q, k, v, True))
    np.testing.assert_array_equal(yk.flash_attention_forward(q, k, v, np.array(False)),
                                  yk.flash_attention_forward(q, k, v, None))
