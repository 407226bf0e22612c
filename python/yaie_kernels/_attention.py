"""Attention: the engine's flash_attention_forward / _backward and cpu_attention_forward in torch
SDPA's layout, the decode and merge ops, and FlashInferAttention (prefill and decode in
FlashInfer's token-major layout).

SDPA layout is [batch, heads, seq, head_dim] (or [heads, seq, head_dim]); the C API takes
[batch, seq, heads, head_dim] with free strides, so the calls pass the transposed view of the
same memory and outputs are allocated in the caller's layout.

The backward needs the forward's log-sum-exp. flash_attention_forward keeps it in a registry
keyed by the output object (held weakly: the entry goes when the output is freed), with the mask,
the scale and a fingerprint of q, k, v (addresses, shapes, strides and, for torch, the in-place
version counters). flash_attention_backward uses it when output is that very object and the
fingerprint still matches; otherwise it recomputes lse with a forward pass (see its docstring).
"""

import ctypes
import threading
import weakref

from ._lib import AttentionParams, C, raise_status
from ._tensor import adapter, describe, pack, place, require_host, scratch

__all__ = [
    "flash_attention_forward",
    "flash_attention_backward",
    "cpu_attention_forward",
    "attention_decode",
    "merge_attention_states",
    "FlashInferAttention",
]


def _mask_flag(mask, op, name):
    if mask is None or mask is False:
        return 0
    if mask is True:
        return 1
    # a boolean scalar of numpy or torch (np.True_, torch.tensor(True)) is a flag too
    if getattr(mask, "shape", None) is not None and tuple(mask.shape) == () and "bool" in str(
            getattr(mask, "dtype", "")):
        return 1 if bool(mask) else 0
    raise ValueError(f"{op}: {name} must be None or False (no mask) or True (causal, aligned to the bottom right "
                     f"when seq_q != seq_k: query i sees keys j <= i + seq_k - seq_q); libyk's attention supports "
                     f"only causal masks, not a mask tensor ({type(mask).__name__})")


def _scale(scale):
    return 0.0 if scale is None else float(scale)  # 0: 1 / sqrt(head_dim), as SDPA


def _sdpa_view(d, op, name):
    """[batch, heads, seq, dim] -> [batch, seq, heads, dim]; [heads, seq, dim] -> [1, seq, heads, dim]."""
    shape, st = d[5], d[6]
    if len(shape) == 4:
        return (shape[0], shape[2], shape[1], shape[3]), (st[0], st[2], st[1], st[3])
    if len(shape) == 3:
        return (1, shape[1], shape[0], shape[2]), (0, st[1], st[0], st[2])
    raise ValueError(f"{op}: {name} must be [batch, heads, seq, head_dim] or [heads, seq, head_dim], got shape "
                     f"{tuple(shape)}")


def _lse_view(d):
    """lse in the caller's [batch, heads, seq] (or [heads, seq]) as C's [batch, heads, seq]."""
    shape, st = d[5], d[6]
    if len(shape) == 2:
        return (1, shape[0], shape[1]), (0, st[0], st[1])
    return shape, st


def _forward(op, q, k, v, causal, scale, host_only):
    ad = adapter(q, op, "q")
    qd = ad.describe(q, op, "q")
    kd = describe(k, op, "k")
    vd = describe(v, op, "v")
    if host_only:
        for d, name in ((qd, "q"), (kd, "k"), (vd, "v")):
            require_host(d, op, name)
    qv, kv, vv = _sdpa_view(qd, op, "q"), _sdpa_view(kd, op, "k"), _sdpa_view(vd, op, "v")
    shape = tuple(qd[5])
    out = ad.empty(q, shape)
    lse = ad.empty(q, shape[:-1], "float32")
    od = describe(out, op, "out")
    ld = describe(lse, op, "lse")
    params = AttentionParams(causal=causal, scale=_scale(scale))
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    if stream is not None:  # a few queries' split partials from the framework's allocator
        (batch, seq_q, heads, head_dim), (_, seq_k, kv_heads, _) = qv[0], kv[0]
        ws, params.workspace = _workspace(ad, q, buf, base, 5, op, C.yk_flash_attention_forward_workspace_floats(
            ctx, batch, batch * seq_q, seq_q, heads, kv_heads, head_dim, seq_k, batch * seq_k, 0))
    st = C.yk_flash_attention_forward(ctx, pack(buf, base, 0, qd, *qv), pack(buf, base, 1, kd, *kv),
                                      pack(buf, base, 2, vd, *vv), ctypes.addressof(params),
                                      pack(buf, base, 3, od, *_sdpa_view(od, op, "out")),
                                      pack(buf, base, 4, ld, *_lse_view(ld)), stream)
    if st:
        raise_status(st, ctx, op)
    return out, lse, ad, (qd, kd, vd)


# ---- the lse registry ----

_saved = {}  # id(output) -> (weakref to output, lse, causal, scale, fingerprint)
_saved_lock = threading.Lock()


def _fingerprint(ad, tensors, descs):
    """Where and what each tensor is (address, device, dtype, shape, strides) and, for torch, its
    in-place version counter."""
    return tuple((d[:7], ad.version(t)) for t, d in zip(tensors, descs))


def _remember(out, lse, causal, scale, fingerprint):
    key = id(out)

    def forget(ref, key=key):
        with _saved_lock:
            entry = _saved.get(key)
            if entry is not None and entry[0] is ref:
                del _saved[key]

    try:
        ref = weakref.ref(out, forget)
    except TypeError:
        return  # a type without weak references: its backward recomputes lse
    with _saved_lock:
        _saved[key] = (ref, lse, causal, scale, fingerprint)


def _recall(output, fingerprint):
    with _saved_lock:
        entry = _saved.get(id(output))
    if entry is None or entry[0]() is not output or entry[4] != fingerprint:
        return None
    return entry


def flash_attention_forward(q, k, v, causal_mask=None, *, scale=None):
    """softmax(q k^T * scale [causal]) v, tiled with an online softmax (yk_flash_attention_forward).

    q [batch, heads, seq_q, head_dim], k and v [batch, kv_heads, seq_k, head_dim] (torch SDPA's
    layout; 3-D [heads, seq, head_dim] too), kv_heads dividing heads (GQA). float16 or bfloat16 on
    the GPU (head_dim a multiple of 16 up to 256), also float32 on the CPU. causal_mask: None or
    False for none, True for causal aligned to the bottom right; a mask tensor raises ValueError.
    scale defaults to 1/sqrt(head_dim). Returns the output in q's layout, a new tensor; its lse is
    kept for flash_attention_backward."""
    op = "flash_attention_forward"
    causal = _mask_flag(causal_mask, op, "causal_mask")
    out, lse, ad, descs = _forward(op, q, k, v, causal, scale, False)
    _remember(out, lse, causal, _scale(scale), _fingerprint(ad, (q, k, v, out), (*descs, describe(out, op, "out"))))
    return out


def cpu_attention_forward(q, k, v, mask=None, *, scale=None):
    """flash_attention_forward's maths on host tensors only (numpy arrays or torch CPU tensors:
    libyk's CPU fallback); mask as causal_mask there. ValueError for device tensors."""
    op = "cpu_attention_forward"
    causal = _mask_flag(mask, op, "mask")
    out, lse, ad, descs = _forward(op, q, k, v, causal, scale, True)
    _remember(out, lse, causal, _scale(scale), _fingerprint(ad, (q, k, v, out), (*descs, describe(out, op, "out"))))
    return out


def _lse_for(op, q, k, v, output, ad, fingerprint, causal, scale):
    """(lse, causal) for a backward whose forward lse is not at hand: one forward pass, or two
    when the mask is not known and must be told apart by which output matches."""
    od = describe(output, op, "output")
    seq_q = od[5][-2]
    if causal is None and seq_q <= 1:
        causal = 0  # one query a sequence: the bottom-right causal mask hides nothing
    if causal is not None:
        _, lse, _, _ = _forward(op, q, k, v, causal, scale, False)
        return lse, causal
    tol = (1e-4 if od[3:5] == (2, 32) else 2e-2) * max(1.0, ad.max_abs(output))
    errors, lses = [], []
    for c in (0, 1):
        out_c, lse_c, _, _ = _forward(op, q, k, v, c, scale, False)
        errors.append(ad.max_abs_diff(out_c, output))
        lses.append(lse_c)
    ok = [e <= tol for e in errors]
    if ok[0] and ok[1]:
        raise ValueError(f"{op}: output is not one flash_attention_forward returned, and it matches both the causal "
                         f"and the unmasked attention of q, k, v; pass causal=True or causal=False")
    if not (ok[0] or ok[1]):
        raise ValueError(f"{op}: output is not the attention of q, k, v (max difference {errors[0]:.3g} unmasked, "
                         f"{errors[1]:.3g} causal, tolerance {tol:.3g}); pass the tensor flash_attention_forward "
                         "returned")
    c = 0 if ok[0] else 1
    return lses[c], c


def flash_attention_backward(dout, q, k, v, output, *, causal=None, scale=None, deterministic=False):
    """Gradients (dq, dk, dv) of flash_attention_forward (yk_flash_attention_backward), in the
    layouts of q, k and v. deterministic=True keeps the same bits on every run; by default Hopper
    GPUs add dq up by float32 reductions, faster, and its last bits may differ from run to run.

    The forward's lse, mask and scale are taken from the registry when `output` is the very
    tensor flash_attention_forward (or cpu_attention_forward) returned for these q, k, v, none of
    which has changed since (for torch, by their in-place version counters). Otherwise lse is
    recomputed by a forward pass: with causal= when given, else the mask is found by running both
    and keeping the one whose output matches `output` (ValueError if neither or both do).
    causal= or scale= that differ from the recorded forward also recompute."""
    op = "flash_attention_backward"
    ad = adapter(q, op, "q")
    qd = ad.describe(q, op, "q")
    kd = describe(k, op, "k")
    vd = describe(v, op, "v")
    od = describe(output, op, "output")
    dod = describe(dout, op, "dout")
    fp = _fingerprint(ad, (q, k, v, output), (qd, kd, vd, od))
    entry = _recall(output, fp)
    want_causal = None if causal is None else (1 if causal else 0)
    if entry is not None and (want_causal is None or want_causal == entry[2]) and (
            scale is None or _scale(scale) == entry[3]):
        lse, causal_flag, scale_value = entry[1], entry[2], entry[3]
    else:
        scale_value = _scale(scale)
        lse, causal_flag = _lse_for(op, q, k, v, output, ad, fp, want_causal, scale)
    ld = describe(lse, op, "lse")
    dq = ad.empty(q, tuple(qd[5]))
    dk = ad.empty(q, tuple(kd[5]))
    dv = ad.empty(q, tuple(vd[5]))
    dqd, dkd, dvd = describe(dq, op, "dq"), describe(dk, op, "dk"), describe(dv, op, "dv")
    params = AttentionParams(causal=causal_flag, scale=scale_value, deterministic=1 if deterministic else 0)
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    if stream is not None:  # the rows' stats (and the float32 dq) from the framework's allocator
        batch, seq_q, heads, head_dim = _sdpa_view(qd, op, "q")[0]
        ws, params.workspace = _workspace(ad, q, buf, base, 9, op, C.yk_flash_attention_backward_workspace_floats(
            heads, batch * seq_q, batch, head_dim, params.deterministic))
    st = C.yk_flash_attention_backward(
        ctx, pack(buf, base, 0, dod, *_sdpa_view(dod, op, "dout")), pack(buf, base, 1, qd, *_sdpa_view(qd, op, "q")),
        pack(buf, base, 2, kd, *_sdpa_view(kd, op, "k")), pack(buf, base, 3, vd, *_sdpa_view(vd, op, "v")),
        pack(buf, base, 4, od, *_sdpa_view(od, op, "output")), pack(buf, base, 5, ld, *_lse_view(ld)),
        ctypes.addressof(params), pack(buf, base, 6, dqd, *_sdpa_view(dqd, op, "dq")),
        pack(buf, base, 7, dkd, *_sdpa_view(dkd, op, "dk")), pack(buf, base, 8, dvd, *_sdpa_view(dvd, op, "dv")),
        stream)
    if st:
        raise_status(st, ctx, op)
    return dq, dk, dv


def _workspace(ad, like, buf, base, slot, op, floats):
    """A device call's float32 workspace of `floats` elements, allocated like `like` (torch: by its
    caching allocator, on the current stream), and its description packed into slot; (None, None)
    when the call needs none. Without one libyk allocates and frees it on the stream itself, on
    every call. The caller holds the tensor until the call is issued: freed before, another thread
    could be given its memory first."""
    if not floats:
        return None, None
    ws = ad.empty(like, (floats,), "float32")
    return ws, pack(buf, base, slot, describe(ws, op, "workspace"))


# ---- the C API's own layouts: decode, ragged prefill, merge ----


def _optional(x, op, name):
    return None if x is None else describe(x, op, name)


def attention_decode(q, k, v, *, scale=None, cu_seqlens_k=None, max_seqlen_k=0, num_splits=0, return_lse=False):
    """One query token a sequence against its keys (yk_attention_decode: split-KV, GQA-packed).

    q [batch, heads, head_dim]; k, v [batch, seq_k, kv_heads, head_dim], or ragged [total_k,
    kv_heads, head_dim] with cu_seqlens_k (int32 [batch + 1]; on the GPU give max_seqlen_k too).
    num_splits 0 lets the library choose. Returns out [batch, heads, head_dim], and lse [batch,
    heads] float32 too with return_lse."""
    op = "attention_decode"
    ad = adapter(q, op, "q")
    qd = ad.describe(q, op, "q")
    kd, vd = describe(k, op, "k"), describe(v, op, "v")
    cu = _optional(cu_seqlens_k, op, "cu_seqlens_k")
    out = ad.empty(q, tuple(qd[5]))
    od = describe(out, op, "out")
    lse = ad.empty(q, tuple(qd[5][:2]), "float32") if return_lse else None
    ld = _optional(lse, op, "lse")
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    params = AttentionParams(scale=_scale(scale), cu_seqlens_k=pack(buf, base, 5, cu) if cu else None,
                             max_seqlen_k=max_seqlen_k, num_splits=num_splits)
    if stream is not None and len(qd[5]) == 3 and len(kd[5]) >= 3:  # split partials from the framework
        seq_k = max_seqlen_k if cu else kd[5][1]
        total_k = kd[5][0] if cu else 0  # a ragged batch's keys, which its split is balanced by
        ws, params.workspace = _workspace(ad, q, buf, base, 6, op, C.yk_attention_decode_workspace_floats(
            ctx, qd[5][0], qd[5][1], kd[5][-2], qd[5][2], seq_k, total_k, num_splits))
    st = C.yk_attention_decode(ctx, pack(buf, base, 0, qd), pack(buf, base, 1, kd), pack(buf, base, 2, vd),
                               ctypes.addressof(params), pack(buf, base, 3, od),
                               pack(buf, base, 4, ld) if ld else None, stream)
    if st:
        raise_status(st, ctx, op)
    return (out, lse) if return_lse else out


def _prefill(op, q, k, v, causal, scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse):
    ad = adapter(q, op, "q")
    qd = ad.describe(q, op, "q")
    kd, vd = describe(k, op, "k"), describe(v, op, "v")
    cq, ck = _optional(cu_seqlens_q, op, "cu_seqlens_q"), _optional(cu_seqlens_k, op, "cu_seqlens_k")
    shape = tuple(qd[5])
    out = ad.empty(q, shape)
    od = describe(out, op, "out")
    lse = None
    if return_lse:
        if len(shape) == 4:
            lse_shape = (shape[0], shape[2], shape[1])  # [batch, heads, seq_q]
        elif len(shape) == 3:
            lse_shape = (shape[1], shape[0])  # ragged: [heads, total_q]
        else:
            raise ValueError(f"{op}: q must be [batch, seq_q, heads, head_dim] or ragged [total_q, heads, head_dim]")
        lse = ad.empty(q, lse_shape, "float32")
    ld = _optional(lse, op, "lse")
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    params = AttentionParams(causal=1 if causal else 0, scale=_scale(scale),
                             cu_seqlens_q=pack(buf, base, 5, cq) if cq else None,
                             cu_seqlens_k=pack(buf, base, 6, ck) if ck else None,
                             max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
    if stream is not None and len(shape) in (3, 4) and len(kd[5]) == len(shape):  # as _forward's
        ragged = len(shape) == 3
        batch = (cq[5][0] - 1) if ragged and cq else shape[0]
        total_q = shape[0] if ragged else shape[0] * shape[1]
        most_q, most_k = (max_seqlen_q, max_seqlen_k) if ragged else (shape[1], kd[5][1])
        total_k = kd[5][0] if ragged else shape[0] * kd[5][1]
        ws, params.workspace = _workspace(ad, q, buf, base, 7, op, C.yk_flash_attention_forward_workspace_floats(
            ctx, batch, total_q, most_q, shape[-2], kd[5][-2], shape[-1], most_k, total_k, 0))
    st = C.yk_flash_attention_forward(ctx, pack(buf, base, 0, qd), pack(buf, base, 1, kd), pack(buf, base, 2, vd),
                                      ctypes.addressof(params), pack(buf, base, 3, od),
                                      pack(buf, base, 4, ld) if ld else None, stream)
    if st:
        raise_status(st, ctx, op)
    return (out, lse) if return_lse else out


def merge_attention_states(o_a, lse_a, o_b, lse_b):
    """Exact merge of two attentions of the same queries over disjoint key sets
    (yk_merge_attention_states): o [tokens, heads, head_dim], lse [tokens, heads] float32.
    Returns new (o, lse)."""
    op = "merge_attention_states"
    ad = adapter(o_a, op, "o_a")
    ad_ = ad.describe(o_a, op, "o_a")
    la, ob, lb = describe(lse_a, op, "lse_a"), describe(o_b, op, "o_b"), describe(lse_b, op, "lse_b")
    out = ad.empty(o_a, tuple(ad_[5]))
    out_lse = ad.empty(o_a, tuple(ad_[5][:-1]), "float32")
    od, old = describe(out, op, "out"), describe(out_lse, op, "out_lse")
    ctx, stream = place(ad, ad_)
    buf, base = scratch()
    st = C.yk_merge_attention_states(ctx, pack(buf, base, 0, ad_), pack(buf, base, 1, la), pack(buf, base, 2, ob),
                                     pack(buf, base, 3, lb), pack(buf, base, 4, od), pack(buf, base, 5, old), stream)
    if st:
        raise_status(st, ctx, op)
    return out, out_lse


class FlashInferAttention:
    """Dense attention split the way FlashInfer splits it: prefill (many queries a sequence, the
    tiled kernel) and decode (one query a sequence, split-KV with an lse merge). Tensors are
    token-major (FlashInfer's NHD), the C API's own layout, so nothing is transposed:

      prefill(q, k, v): q [batch, seq_q, heads, head_dim], k, v [batch, seq_k, kv_heads, head_dim];
          or ragged q [total_q, heads, head_dim], k, v [total_k, kv_heads, head_dim] with
          cu_seqlens_q, cu_seqlens_k (int32 [batch + 1] offsets; on the GPU also max_seqlen_q/_k).
          Returns out like q (and lse [batch, heads, seq_q] / [heads, total_q] with return_lse).
      decode(q, k, v): q [batch, heads, head_dim], k, v [batch, seq_k, kv_heads, head_dim] (a
          dense KV cache) or ragged with cu_seqlens_k. Returns out like q (and lse [batch, heads]).

    The constructor's head counts and head_dim, when given, are checked against every call;
    causal (default True, bottom-right aligned) applies to prefill; scale defaults to
    1/sqrt(head_dim); num_splits 0 lets the library choose the decode split."""

    def __init__(self, num_qo_heads=None, num_kv_heads=None, head_dim=None, *, causal=True, scale=None,
                 num_splits=0):
        self.num_qo_heads = num_qo_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.causal = causal
        self.scale = scale
        self.num_splits = num_splits

    def _check(self, op, q, k):
        qs, ks = tuple(q.shape), tuple(k.shape)
        for what, want, got in (("q heads", self.num_qo_heads, qs[-2]), ("kv heads", self.num_kv_heads, ks[-2]),
                                ("head_dim", self.head_dim, qs[-1])):
            if want is not None and want != got:
                raise ValueError(f"FlashInferAttention.{op}: this instance is for {want} {what}, got {got}")

    def prefill(self, q, k, v, *, causal=None, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0,
                return_lse=False):
        self._check("prefill", q, k)
        return _prefill("FlashInferAttention.prefill", q, k, v, self.causal if causal is None else causal,
                        self.scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, return_lse)

    def decode(self, q, k, v, *, cu_seqlens_k=None, max_seqlen_k=0, return_lse=False):
        self._check("decode", q, k)
        return attention_decode(q, k, v, scale=self.scale, cu_seqlens_k=cu_seqlens_k, max_seqlen_k=max_seqlen_k,
                                num_splits=self.num_splits, return_lse=return_lse)

    def __repr__(self):
        return (f"FlashInferAttention(num_qo_heads={self.num_qo_heads}, num_kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, causal={self.causal}, scale={self.scale}, num_splits={self.num_splits})")
