"""append_kv: new tokens' K and V written into their pages (yk_append_kv), by vLLM's slot mapping
(reshape_and_cache_flash) or FlashInfer's CSR positions (append_paged_kv_cache), with RoPE on k
fused in as an option. The step between KVCacheManager.append (which hands out the slots) and
paged attention (which reads them)."""

import ctypes

from ._lib import C, c_struct, raise_status
from ._ops import _style
from ._paged import _layout, kv_scales
from ._tensor import adapter, describe, pack, place, scratch, written

__all__ = ["append_kv"]


@c_struct("yk_append_kv_index")
class _Index(ctypes.Structure):
    """yk_append_kv_index (include/yk/kv.h): slot_mapping, or the four CSR members."""

    _fields_ = [("slot_mapping", ctypes.c_void_p), ("batch_indices", ctypes.c_void_p), ("positions", ctypes.c_void_p),
                ("kv_indptr", ctypes.c_void_p), ("kv_indices", ctypes.c_void_p)]


@c_struct("yk_append_kv_rope")
class _Rope(ctypes.Structure):
    """yk_append_kv_rope."""

    _fields_ = [("positions", ctypes.c_void_p), ("cos_sin_cache", ctypes.c_void_p), ("style", ctypes.c_int)]


@c_struct("yk_kv_scales")
class _Scales(ctypes.Structure):
    """yk_kv_scales (include/yk/kv.h)."""

    _fields_ = [("k", ctypes.c_float), ("v", ctypes.c_float)]


_CSR = ("batch_indices", "positions", "kv_indptr", "kv_indices")


def append_kv(k, v, k_cache, v_cache, slot_mapping=None, *, layout="NHD", batch_indices=None, positions=None,
              kv_indptr=None, kv_indices=None, rope_positions=None, cos_sin_cache=None, rope_style="neox", k_scale=None,
              v_scale=None):
    """Writes token t's k[t] and v[t] into the page its index names, in place; returns None.

    k, v [tokens, kv_heads, head_dim] in the caches' dtype; k_cache, v_cache one layer's blocks as
    paged_attention_forward takes them (NHD or HND by layout; a KVCacheManager.layer(i) pair too).
    Where each token goes, one of:
      - slot_mapping int32 or int64 [tokens] (KVCacheManager.append's slots): block slot //
        page_size, offset slot % page_size; a negative slot skips the token (batch padding);
      - batch_indices, positions, kv_indptr, kv_indices (int32, FlashInfer's; KVCacheManager.csr's
        indptr and indices): token t is at position positions[t] of sequence batch_indices[t].
    Slots must be distinct. rope_positions with cos_sin_cache ([max_position, rotary_dim], cos
    then sin in each row, as rope()'s) rotate k on its way in (k itself is unchanged): the cache
    gets exactly the bits rope() then a plain append would write.

    Float8 caches (float8_e4m3fn): k and v are float32, float16 or
    bfloat16, and the cache gets each value times 1 / k_scale (1 / v_scale), rounded to nearest
    even and saturated to +-448, as vLLM's reshape_and_cache with its scales; None means 1.

    Index values the host can read are checked first (a slot or block outside the cache fails
    with nothing written); in device memory a token whose slot lies outside is skipped."""
    op = "append_kv"
    k_s, v_s = kv_scales(k_scale, v_scale, op)
    given = [n for n, x in zip(_CSR, (batch_indices, positions, kv_indptr, kv_indices)) if x is not None]
    if slot_mapping is not None and given:
        raise ValueError(f"{op}: give slot_mapping or FlashInfer's (batch_indices, positions, kv_indptr, "
                         f"kv_indices), not both (got slot_mapping and {', '.join(given)})")
    if slot_mapping is None and len(given) != len(_CSR):
        missing = [n for n in _CSR if n not in given]
        raise ValueError(f"{op}: no index: give slot_mapping, or all of batch_indices, positions, kv_indptr and "
                         f"kv_indices (missing {', '.join(missing)})")
    if (rope_positions is None) != (cos_sin_cache is None):
        raise ValueError(f"{op}: RoPE needs both rope_positions and cos_sin_cache (got only "
                         f"{'rope_positions' if cos_sin_cache is None else 'cos_sin_cache'})")
    code = _layout(layout, op)
    style = _style(rope_style, op)
    ad = adapter(k, op, "k")
    kd, vd = ad.describe(k, op, "k"), describe(v, op, "v")
    for c, name in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        adapter(c, op, name).check_writable(c, op, name)
    ctx, stream = place(ad, kd)
    buf, base = scratch()
    pk, pv = pack(buf, base, 0, kd), pack(buf, base, 1, vd)
    pkc = pack(buf, base, 2, describe(k_cache, op, "k_cache"))
    pvc = pack(buf, base, 3, describe(v_cache, op, "v_cache"))
    index = _Index()
    if slot_mapping is not None:
        index.slot_mapping = pack(buf, base, 4, describe(slot_mapping, op, "slot_mapping"))
        slot = 5
    else:
        for i, (name, x) in enumerate(zip(_CSR, (batch_indices, positions, kv_indptr, kv_indices))):
            setattr(index, name, pack(buf, base, 4 + i, describe(x, op, name)))
        slot = 8
    rope = None
    if rope_positions is not None:
        rope = _Rope(pack(buf, base, slot, describe(rope_positions, op, "rope_positions")),
                     pack(buf, base, slot + 1, describe(cos_sin_cache, op, "cos_sin_cache")), style)
    scales = _Scales(k_s, v_s) if (k_s, v_s) != (0.0, 0.0) else None
    st = C.yk_append_kv(ctx, pk, pv, pkc, pvc, code, ctypes.addressof(index),
                        ctypes.addressof(rope) if rope is not None else None,
                        ctypes.addressof(scales) if scales is not None else None, stream)
    if st:
        raise_status(st, ctx, op)
    written(k_cache, op, "k_cache")
    written(v_cache, op, "v_cache")
