"""RMS norm, the gated activations and rotary embeddings: the element-wise ops of a decoder layer.

Each function takes torch tensors (CUDA or CPU), numpy arrays or DLPack arrays; GPU tensors run on
the caller's current torch stream, host tensors on libyk's CPU fallback. New outputs are of the
input's type, device and dtype, compact row-major.
"""

from ._lib import C, _contexts, raise_status
from ._tensor import (_scratch, adapter, context_and_stream, describe, fill, pack, place, require_host, scratch,
                      torch_fast, written)

__all__ = [
    "rms_norm",
    "fused_add_rms_norm",
    "silu_and_mul",
    "gelu_and_mul",
    "gelu_tanh_and_mul",
    "apply_rope_qk",
    "rope",
    "cpu_rms_norm",
    "cpu_rope_embeddings",
]


def _rms_norm(op, input_tensor, weight, epsilon, out, host_only):
    if host_only:
        require_host(describe(input_tensor, op, "input_tensor"), op, "input_tensor")
    given = out is not None
    if not given:
        out = adapter(input_tensor, op, "input_tensor").empty_same(input_tensor)
    s = _scratch
    buf, base = s.buf, s.base
    px, kx = fill(buf, base, 0, input_tensor, op, "input_tensor")
    pw, kw = fill(buf, base, 1, weight, op, "weight")
    po, ko = fill(buf, base, 2, out, op, "out")
    ctx, stream = context_and_stream(input_tensor, op, "input_tensor")
    st = C.yk_rms_norm(ctx, px, pw, epsilon, po, stream)
    if st:
        raise_status(st, ctx, op)
    if given:
        written(out, op, "out")
    return out


def rms_norm(input_tensor, weight, epsilon=1e-6, *, out=None):
    """input_tensor / sqrt(mean(input_tensor^2, last dim) + epsilon) * weight (yk_rms_norm).

    input_tensor [..., hidden] (any leading strides that collapse to one row stride), weight
    [hidden], both float32, float16 or bfloat16 of one dtype. Returns a new tensor like
    input_tensor, or writes `out` (the same shape; may be input_tensor itself) and returns it."""
    tf = torch_fast
    types = tf.types
    if (type(input_tensor) in types and type(weight) in types and
            (input_tensor.is_contiguous() if out is None else type(out) in types)):
        # The engine's call on torch tensors, with nothing between it and the C call that can be
        # left out: no function calls of ours, one DLPack export a tensor (bench_overhead.py
        # measures this path; it is 27% faster than going through fill()). Anything unusual
        # (no context yet, a tensor DLPack cannot carry) takes the general path below.
        key = input_tensor.get_device()
        ctx = _contexts.get(key)
        if ctx is not None:
            export, read, at = tf.export, tf.read, tf.at
            try:
                cx, cw = export(input_tensor), export(weight)
            except Exception:  # noqa: BLE001 - described (and refused with a message) below
                cx = None
            if cx is not None:
                given = out is not None
                if not given:
                    out = tf.empty_like(input_tensor)
                co = export(out)
                st = C.yk_rms_norm(ctx, read(id(cx) + at).value, read(id(cw) + at).value, epsilon,
                                   read(id(co) + at).value, tf.raw_stream(key) if key >= 0 else None)
                if st:
                    raise_status(st, ctx, "rms_norm")
                if given:
                    tf.increment_version(out)
                return out
    return _rms_norm("rms_norm", input_tensor, weight, epsilon, out, False)


def cpu_rms_norm(input_tensor, weight, epsilon=1e-6, *, out=None):
    """rms_norm on host tensors only (numpy arrays or torch CPU tensors); ValueError for device
    tensors rather than a silent copy."""
    return _rms_norm("cpu_rms_norm", input_tensor, weight, epsilon, out, True)


def fused_add_rms_norm(input_tensor, residual, weight, epsilon=1e-6):
    """In place, as vLLM and FlashInfer do (yk_fused_add_rms_norm): residual += input_tensor, then
    input_tensor = rms_norm(residual, weight, epsilon). Returns (input_tensor, residual)."""
    op = "fused_add_rms_norm"
    ad = adapter(input_tensor, op, "input_tensor")
    ad.check_writable(input_tensor, op, "input_tensor")
    adapter(residual, op, "residual").check_writable(residual, op, "residual")
    s = _scratch
    buf, base = s.buf, s.base
    px, kx = fill(buf, base, 0, input_tensor, op, "input_tensor")
    pr, kr = fill(buf, base, 1, residual, op, "residual")
    pw, kw = fill(buf, base, 2, weight, op, "weight")
    ctx, stream = context_and_stream(input_tensor, op, "input_tensor")
    st = C.yk_fused_add_rms_norm(ctx, px, pr, pw, epsilon, stream)
    if st:
        raise_status(st, ctx, op)
    written(input_tensor, op, "input_tensor")
    written(residual, op, "residual")
    return input_tensor, residual


def _act_and_mul(op, fn, input_tensor, out):
    tf = torch_fast
    if out is None and type(input_tensor) in tf.types:
        # torch's inline path, as in rms_norm
        key = input_tensor.get_device()
        ctx = _contexts.get(key)
        shape = input_tensor.shape
        if ctx is not None and len(shape):
            export, read, at = tf.export, tf.read, tf.at
            try:
                cx = export(input_tensor)
            except Exception:  # noqa: BLE001 - described (and refused with a message) below
                cx = None
            if cx is not None:
                out = input_tensor.new_empty(*shape[:-1], shape[-1] // 2)
                co = export(out)
                st = fn(ctx, read(id(cx) + at).value, read(id(co) + at).value,
                        tf.raw_stream(key) if key >= 0 else None)
                if st:
                    raise_status(st, ctx, op)
                return out
    given = out is not None
    if not given:
        shape = tuple(input_tensor.shape)
        if len(shape) == 0:
            raise ValueError(f"{op}: input_tensor must have at least 1 dimension")
        out = adapter(input_tensor, op, "input_tensor").empty(input_tensor, (*shape[:-1], shape[-1] // 2))
    s = _scratch
    buf, base = s.buf, s.base
    px, kx = fill(buf, base, 0, input_tensor, op, "input_tensor")
    po, ko = fill(buf, base, 1, out, op, "out")
    ctx, stream = context_and_stream(input_tensor, op, "input_tensor")
    st = fn(ctx, px, po, stream)
    if st:
        raise_status(st, ctx, op)
    if given:
        written(out, op, "out")
    return out


def silu_and_mul(input_tensor, *, out=None):
    """input_tensor [..., 2d] = [gate | up] -> silu(gate) * up [..., d] (yk_silu_and_mul)."""
    return _act_and_mul("silu_and_mul", C.yk_silu_and_mul, input_tensor, out)


def gelu_and_mul(input_tensor, *, out=None):
    """[gate | up] -> gelu(gate) * up, erf form (yk_gelu_and_mul)."""
    return _act_and_mul("gelu_and_mul", C.yk_gelu_and_mul, input_tensor, out)


def gelu_tanh_and_mul(input_tensor, *, out=None):
    """[gate | up] -> gelu(gate) * up, tanh approximation (yk_gelu_tanh_and_mul)."""
    return _act_and_mul("gelu_tanh_and_mul", C.yk_gelu_tanh_and_mul, input_tensor, out)


# ---- rotary embeddings ----

_STYLES = {"neox": 0, "gptj": 1}


def _style(style, op):
    s = _STYLES.get(style)
    if s is None:
        raise ValueError(f"{op}: style must be 'neox' (rotate halves, Hugging Face's rotate_half) or 'gptj' "
                         f"(interleaved pairs), not {style!r}")
    return s


def _sdpa_to_tokens(d, op, name):
    """[batch, heads, seq, dim] -> the [batch, seq, heads, dim] view the C API takes (no copy)."""
    shape, st = d[5], d[6]
    if len(shape) != 4:
        raise ValueError(f"{op}: {name} must be [batch, heads, seq, head_dim], got {len(shape)} dimensions "
                         f"{tuple(shape)}")
    return (shape[0], shape[2], shape[1], shape[3]), (st[0], st[2], st[1], st[3])


def _table(d, op, name):
    """A cos or sin table as [max_position, n]: leading dimensions of size 1 are dropped, so
    Hugging Face's cached [1, 1, max_position, n] tables pass too."""
    shape, st = tuple(d[5]), tuple(d[6])
    while len(shape) > 2 and shape[0] == 1:
        shape, st = shape[1:], st[1:]
    if len(shape) != 2:
        raise ValueError(f"{op}: {name} must be a table [max_position, rotary_dim] (or [max_position, "
                         f"rotary_dim / 2]) indexed by position_ids, got shape {tuple(d[5])}")
    return shape, st


def _positions(d, batch, seq, op):
    """position_ids as [batch, seq]; [seq] and [1, seq] are broadcast over the batch (stride 0)."""
    shape, st = tuple(d[5]), tuple(d[6])
    if len(shape) == 1:
        shape, st = (1, shape[0]), (0, st[0])
    if len(shape) != 2:
        raise ValueError(f"{op}: position_ids must be [batch, seq] (or [seq]), got shape {tuple(d[5])}")
    if shape[0] == 1 and batch != 1:
        shape, st = (batch, shape[1]), (0, st[1])
    return shape, st


def _rope_cos_sin(op, q, k, cos, sin, position_ids, rotary_dim, style, host_only):
    ad = adapter(q, op, "q")
    ad.check_writable(q, op, "q")
    qd = ad.describe(q, op, "q")
    if host_only:
        require_host(qd, op, "input_tensor")
    q_shape, q_strides = _sdpa_to_tokens(qd, op, "q")
    if k is not None:
        kad = adapter(k, op, "k")
        kad.check_writable(k, op, "k")
        kd = kad.describe(k, op, "k")
        k_shape, k_strides = _sdpa_to_tokens(kd, op, "k")
    cd = describe(cos, op, "cos")
    sd = describe(sin, op, "sin")
    c_shape, c_strides = _table(cd, op, "cos")
    s_shape, s_strides = _table(sd, op, "sin")
    pd = describe(position_ids, op, "position_ids")
    p_shape, p_strides = _positions(pd, q_shape[0], q_shape[1], op)
    if rotary_dim is None:
        rotary_dim = c_shape[1]  # Hugging Face tables repeat their halves: a row is rotary_dim wide
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    pk = pack(buf, base, 1, kd, k_shape, k_strides) if k is not None else None
    st = C.yk_rope_cos_sin(ctx, pack(buf, base, 0, qd, q_shape, q_strides), pk,
                           pack(buf, base, 2, cd, c_shape, c_strides), pack(buf, base, 3, sd, s_shape, s_strides),
                           pack(buf, base, 4, pd, p_shape, p_strides), rotary_dim, _style(style, op), stream)
    if st:
        raise_status(st, ctx, op)
    written(q, op, "q")
    if k is not None:
        written(k, op, "k")


def apply_rope_qk(q, k, cos, sin, position_ids, *, rotary_dim=None, style="neox"):
    """Rotary position embedding of q and k, in place, in one launch (yk_rope_cos_sin); returns (q, k).

    Hugging Face's layout and maths (rotate_half): q [batch, heads, seq, head_dim], k [batch,
    kv_heads, seq, head_dim], any strides with head_dim contiguous; cos and sin tables
    [max_position, rotary_dim] whose rows repeat their first half (as Hugging Face builds them;
    [1, 1, max_position, rotary_dim] too), float32 or q's dtype; position_ids int32/int64
    [batch, seq] ([seq] or [1, seq] apply to every sequence). Dimensions past rotary_dim are left
    as they are. Half-width tables [max_position, rotary_dim / 2] (one value a pair) need
    rotary_dim= given, since their width alone reads as a partial rotary. style='gptj' pairs
    neighbours (2i, 2i + 1) instead of halves."""
    _rope_cos_sin("apply_rope_qk", q, k, cos, sin, position_ids, rotary_dim, style, False)
    return q, k


def cpu_rope_embeddings(input_tensor, cos, sin, position_ids, *, rotary_dim=None, style="neox"):
    """apply_rope_qk for one host tensor [batch, heads, seq, head_dim], rotated in place and returned."""
    _rope_cos_sin("cpu_rope_embeddings", input_tensor, None, cos, sin, position_ids, rotary_dim, style, True)
    return input_tensor


def rope(q, k, cos_sin_cache, positions, *, style="neox"):
    """vLLM's rotary embedding, in place (yk_rope), in the C API's own layout: q [tokens, heads,
    head_dim] or [batch, seq, heads, head_dim], k likewise with kv heads (or None), cos_sin_cache
    [max_position, rotary_dim] with cos in the first half of a row and sin in the second,
    positions [tokens] or [batch, seq]. Returns (q, k)."""
    op = "rope"
    ad = adapter(q, op, "q")
    ad.check_writable(q, op, "q")
    qd = ad.describe(q, op, "q")
    if k is not None:
        adapter(k, op, "k").check_writable(k, op, "k")
        kd = describe(k, op, "k")
    cd = describe(cos_sin_cache, op, "cos_sin_cache")
    pd = describe(positions, op, "positions")
    ctx, stream = place(ad, qd)
    buf, base = scratch()
    pk = pack(buf, base, 1, kd) if k is not None else None
    st = C.yk_rope(ctx, pack(buf, base, 0, qd), pk, pack(buf, base, 2, cd), pack(buf, base, 3, pd),
                   _style(style, op), stream)
    if st:
        raise_status(st, ctx, op)
    written(q, op, "q")
    if k is not None:
        written(k, op, "k")
    return q, k
