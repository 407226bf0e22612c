"""Shared fixtures: seeded random inputs (the seed is printed, so a failure shows it) and float64
numpy references of every op."""

import math
import os
import zlib

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator seeded from YK_TEST_SEED, else from the test's name (stable across runs)."""
    seed = int(os.environ.get("YK_TEST_SEED", zlib.crc32(request.node.nodeid.encode())))
    print(f"seed={seed} (rerun with YK_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def randn(rng, shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def tol(dtype):
    """Absolute tolerance for outputs of magnitude about 1: float32 arithmetic, one rounding."""
    return {np.float32: 1e-5, np.float16: 2e-3}[np.dtype(dtype).type]


# ---- references, float64 ----


def rms_norm_ref(x, w, eps=1e-6):
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w.astype(np.float64)


_erf = np.vectorize(math.erf)


def act_and_mul_ref(x, act):
    x = x.astype(np.float64)
    d = x.shape[-1] // 2
    g, u = x[..., :d], x[..., d:]
    if act == "silu":
        a = g / (1 + np.exp(-g))
    elif act == "gelu":
        a = 0.5 * g * (1 + _erf(g / math.sqrt(2)))
    else:
        a = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
    return a * u


def hf_tables(max_position, rotary_dim, base=10000.0):
    """Hugging Face's cos and sin caches: [max_position, rotary_dim], each row's halves repeated."""
    inv = 1.0 / base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    f = np.outer(np.arange(max_position, dtype=np.float64), inv)
    emb = np.concatenate([f, f], axis=-1)
    return np.cos(emb), np.sin(emb)


def rope_ref(x, cos, sin, position_ids, rotary_dim=None, style="neox"):
    """x [batch, heads, seq, dim]; cos, sin [max_position, rotary_dim] (halves repeated);
    position_ids [batch, seq]. Hugging Face's rotate_half for neox; pairs (2i, 2i+1) for gptj."""
    x = x.astype(np.float64)
    r = rotary_dim or cos.shape[-1]
    half = r // 2
    c = cos[position_ids][:, None, :, :half].astype(np.float64)  # [batch, 1, seq, half]
    s = sin[position_ids][:, None, :, :half].astype(np.float64)
    out = x.copy()
    if style == "neox":
        a, b = x[..., :half], x[..., half:r]
        out[..., :half] = a * c - b * s
        out[..., half:r] = b * c + a * s
    else:
        a, b = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2] = a * c - b * s
        out[..., 1:r:2] = b * c + a * s
    return out


def attention_ref(q, k, v, causal, scale=None):
    """SDPA layout: q [B, H, Sq, D], k, v [B, KVH, Sk, D]. Returns (out, lse, probabilities)."""
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    group = q.shape[-3] // k.shape[-3]
    k, v = np.repeat(k, group, axis=-3), np.repeat(v, group, axis=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ np.swapaxes(k, -1, -2) * scale
    sq, sk = q.shape[-2], k.shape[-2]
    if causal:
        visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + sk - sq
        s = np.where(visible, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    total = e.sum(-1, keepdims=True)
    p = np.where(total > 0, e / np.where(total > 0, total, 1), 0)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] > 0, m[..., 0] + np.log(total[..., 0]), -np.inf)
    return p @ v, lse, p


def attention_backward_ref(dout, q, k, v, causal, scale=None):
    """(dq, dk, dv) of attention_ref, dk and dv summed over the q heads of each kv head."""
    out, _, p = attention_ref(q, k, v, causal, scale)
    dout = dout.astype(np.float64)
    qf, kf, vf = (t.astype(np.float64) for t in (q, k, v))
    group = q.shape[-3] // k.shape[-3]
    kr, vr = np.repeat(kf, group, axis=-3), np.repeat(vf, group, axis=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(vr, -1, -2)
    ds = p * (dp - np.sum(dout * out, axis=-1, keepdims=True))
    dq = ds @ kr * scale
    dk = np.swapaxes(ds, -1, -2) @ qf * scale

    def fold(g):  # [.., H, S, D] -> [.., KVH, S, D]
        shape = g.shape[:-3] + (k.shape[-3], group) + g.shape[-2:]
        return g.reshape(shape).sum(axis=-3)

    return dq, fold(dk), fold(dv)
