"""apply_rope_qk, cpu_rope_embeddings and rope on numpy arrays against Hugging Face's maths."""

import numpy as np
import pytest

import yaie_kernels as yk
from conftest import hf_tables, randn, rope_ref, tol


def _inputs(rng, batch=2, heads=4, kv_heads=2, seq=5, dim=32, dtype=np.float32, max_position=64):
    q = randn(rng, (batch, heads, seq, dim), dtype)
    k = randn(rng, (batch, kv_heads, seq, dim), dtype)
    pos = rng.integers(0, max_position, size=(batch, seq)).astype(np.int64)
    return q, k, pos


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_apply_rope_qk_matches_hugging_face(rng, dtype):
    q, k, pos = _inputs(rng, dtype=dtype)
    cos, sin = hf_tables(64, 32)
    cos, sin = cos.astype(dtype), sin.astype(dtype)
    want_q, want_k = rope_ref(q, cos, sin, pos), rope_ref(k, cos, sin, pos)
    got_q, got_k = yk.apply_rope_qk(q, k, cos, sin, pos)
    assert got_q is q and got_k is k  # rotated in place
    np.testing.assert_allclose(q.astype(np.float64), want_q, atol=tol(dtype) * 4)
    np.testing.assert_allclose(k.astype(np.float64), want_k, atol=tol(dtype) * 4)


def test_apply_rope_qk_float32_tables_with_float16_q(rng):
    q, k, pos = _inputs(rng, dtype=np.float16)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    want = rope_ref(q, cos, sin, pos)
    yk.apply_rope_qk(q, k, cos, sin, pos)
    np.testing.assert_allclose(q.astype(np.float64), want, atol=4e-3)


def test_apply_rope_qk_on_transposed_projection_views(rng):
    """q and k as models make them: a [batch, seq, heads, dim] projection transposed, not copied."""
    proj_q = randn(rng, (2, 5, 4, 32))
    proj_k = randn(rng, (2, 5, 2, 32))
    q, k = proj_q.transpose(0, 2, 1, 3), proj_k.transpose(0, 2, 1, 3)
    pos = np.tile(np.arange(3, 8), (2, 1))
    cos, sin = (t.astype(np.float32) for t in hf_tables(16, 32))
    want_q, want_k = rope_ref(q, cos, sin, pos), rope_ref(k, cos, sin, pos)
    yk.apply_rope_qk(q, k, cos, sin, pos)
    np.testing.assert_allclose(proj_q.transpose(0, 2, 1, 3), want_q, atol=1e-5)
    np.testing.assert_allclose(proj_k.transpose(0, 2, 1, 3), want_k, atol=1e-5)


@pytest.mark.parametrize("form", ["batch_seq", "one_seq", "flat", "int32"])
def test_position_id_forms(rng, form):
    q, k, _ = _inputs(rng, seq=6)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    seq_pos = np.arange(10, 16)
    pos = {"batch_seq": np.tile(seq_pos, (2, 1)), "one_seq": seq_pos[None, :], "flat": seq_pos,
           "int32": np.tile(seq_pos, (2, 1)).astype(np.int32)}[form]
    want = rope_ref(q, cos, sin, np.tile(seq_pos, (2, 1)))
    yk.apply_rope_qk(q, k, cos, sin, pos)
    np.testing.assert_allclose(q, want, atol=1e-5)


def test_cached_four_dimensional_tables(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    want = rope_ref(q, cos, sin, pos)
    yk.apply_rope_qk(q, k, cos[None, None], sin[None, None], pos)
    np.testing.assert_allclose(q, want, atol=1e-5)


def test_partial_rotary(rng):
    """A table narrower than head_dim (GPT-NeoX, Phi): the first rotary_dim values turn, the rest stay."""
    q, k, pos = _inputs(rng, dim=64)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 16))
    want = rope_ref(q, cos, sin, pos)
    yk.apply_rope_qk(q, k, cos, sin, pos)
    np.testing.assert_allclose(q, want, atol=1e-5)
    np.testing.assert_array_equal(q[..., 16:], want[..., 16:].astype(np.float32))


def test_half_width_tables_with_rotary_dim(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    want = rope_ref(q, cos, sin, pos)
    yk.apply_rope_qk(q, k, np.ascontiguousarray(cos[:, :16]), np.ascontiguousarray(sin[:, :16]), pos, rotary_dim=32)
    np.testing.assert_allclose(q, want, atol=1e-5)


def test_gptj_style(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    want = rope_ref(q, cos, sin, pos, style="gptj")
    yk.apply_rope_qk(q, k, cos, sin, pos, style="gptj")
    np.testing.assert_allclose(q, want, atol=1e-5)


def test_cpu_rope_embeddings(rng):
    x, _, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    want = rope_ref(x, cos, sin, pos)
    assert yk.cpu_rope_embeddings(x, cos, sin, pos) is x
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_vllm_rope_with_cos_sin_cache(rng):
    """rope(): the C API's layout, [tokens, heads, dim], and one [cos | sin] table."""
    tokens, dim = 7, 32
    q, k = randn(rng, (tokens, 4, dim)), randn(rng, (tokens, 2, dim))
    pos = rng.integers(0, 64, size=tokens)
    cos, sin = hf_tables(64, 32)
    cache = np.concatenate([cos[:, :16], sin[:, :16]], axis=-1).astype(np.float32)
    # the reference works on [batch, heads, seq, dim]: one batch, tokens as the sequence
    want_q = rope_ref(q.transpose(1, 0, 2)[None], cos, sin, pos[None])[0].transpose(1, 0, 2)
    want_k = rope_ref(k.transpose(1, 0, 2)[None], cos, sin, pos[None])[0].transpose(1, 0, 2)
    yk.rope(q, k, cache, pos)
    np.testing.assert_allclose(q, want_q, atol=1e-5)
    np.testing.assert_allclose(k, want_k, atol=1e-5)


# ---- bad input ----


def test_position_out_of_range_changes_nothing(rng):
    q, k, pos = _inputs(rng)
    pos[1, 2] = 64
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    q0 = q.copy()
    with pytest.raises(ValueError, match=r"positions\[7\] = 64 is outside \[0, 64\)"):
        yk.apply_rope_qk(q, k, cos, sin, pos)
    np.testing.assert_array_equal(q, q0)


def test_rope_three_dimensional_q_rejected(rng):
    cos, sin = (t.astype(np.float32) for t in hf_tables(8, 16))
    with pytest.raises(ValueError, match=r"apply_rope_qk: q must be \[batch, heads, seq, head_dim\]"):
        yk.apply_rope_qk(randn(rng, (4, 3, 16)), randn(rng, (4, 3, 16)), cos, sin, np.arange(3))


def test_rope_gathered_tables_rejected(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    with pytest.raises(ValueError, match="cos must be a table"):
        yk.apply_rope_qk(q, k, cos[pos], sin[pos], pos)


def test_rope_bad_style_and_rotary_dim(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    with pytest.raises(ValueError, match="style must be 'neox'"):
        yk.apply_rope_qk(q, k, cos, sin, pos, style="llama")
    with pytest.raises(ValueError, match="rotary_dim 33 must be even"):
        yk.apply_rope_qk(q, k, cos, sin, pos, rotary_dim=33)


def test_rope_read_only_q(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    q.flags.writeable = False
    with pytest.raises(ValueError, match="q is read-only"):
        yk.apply_rope_qk(q, k, cos, sin, pos)


def test_rope_float_positions_rejected(rng):
    q, k, pos = _inputs(rng)
    cos, sin = (t.astype(np.float32) for t in hf_tables(64, 32))
    with pytest.raises(ValueError, match="positions: expected dtype int32 or int64"):
        yk.apply_rope_qk(q, k, cos, sin, pos.astype(np.float32))
