"""vLLM's copy_blocks(key_caches, value_caches, block_mapping) over yk_copy_blocks: whole blocks
copied within caches, the (source, destination) pairs passed by value in the launch.
KVCacheManager.copy_blocks(src, dst) runs it on the cache's own blocks."""

import ctypes

from ._host import _address, _np, int_array
from ._lib import C, raise_status
from ._tensor import _SLOT_BYTES, adapter, describe, pack, place, written

__all__ = ["copy_blocks"]


def block_pairs(block_mapping, op, dst=None):
    """The copies as a C-contiguous int32 [n, 2] array of (source, destination) pairs, from a
    mapping {src: dst} (or vLLM's older {src: [dst, ...]}), [n, 2] pairs (a list, numpy array or
    tensor, on any device), or sources with their destinations in dst. yk_copy_blocks checks that
    the pairs are independent (they run concurrently)."""
    np = _np()
    if hasattr(block_mapping, "keys"):
        if dst is not None:
            raise ValueError(f"{op}: block_mapping is a mapping; it already names the destinations")
        pairs = [(s, d) for s, ds in block_mapping.items() for d in (ds if isinstance(ds, (list, tuple)) else (ds,))]
        a = int_array(pairs if pairs else np.empty((0, 2), np.int32), op, "block_mapping", ndim=2)
    elif dst is not None:
        src, dst = int_array(block_mapping, op, "src_block_ids"), int_array(dst, op, "dst_block_ids")
        if src.shape != dst.shape:
            raise ValueError(f"{op}: {src.shape[0]} source blocks but {dst.shape[0]} destinations")
        a = np.stack([src, dst], axis=1)
    else:
        a = int_array(block_mapping, op, "block_mapping", ndim=None)
        if a.size == 0:
            a = a.reshape(0, 2)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{op}: block_mapping must be (source, destination) pairs [n, 2], got shape {a.shape}")
    return np.ascontiguousarray(a, np.int32)


def copy_pairs(ctx, stream, descs, pairs, op):
    """yk_copy_blocks over the described caches. Their DLTensors go into a buffer of their own:
    a model's caches (every layer's K and V) outnumber the per-thread scratch slots."""
    n = len(descs)
    buf = ctypes.create_string_buffer(n * _SLOT_BYTES)
    base = ctypes.addressof(buf)
    caches = (ctypes.c_void_p * n)(*(pack(buf, base, i, d) for i, d in enumerate(descs)))
    st = C.yk_copy_blocks(ctx, caches, n, _address(pairs), pairs.shape[0], stream)
    if st:
        raise_status(st, ctx, op)


def copy_blocks(key_caches, value_caches, block_mapping):
    """vLLM's copy_blocks: in every tensor of key_caches and value_caches (one a layer, all of one
    shape, dtype, strides and device: [num_blocks, ...] with each block contiguous, any block
    stride), block src is copied over block dst for each pair of block_mapping: [n, 2] (source,
    destination) pairs (vLLM's int64 tensor, on any device: it is read on the host) or a mapping
    {src: dst}. A block may not be both a source and a destination, nor a destination twice
    (ValueError): the copies run concurrently. In place, on torch's current stream for CUDA
    tensors; returns None."""
    op = "copy_blocks"
    key_caches, value_caches = list(key_caches), list(value_caches)
    caches = key_caches + value_caches
    if not caches:
        raise ValueError(f"{op}: key_caches and value_caches are empty")
    names = [f"key_caches[{i}]" for i in range(len(key_caches))] + [
        f"value_caches[{i}]" for i in range(len(value_caches))]
    pairs = block_pairs(block_mapping, op)
    ad = adapter(caches[0], op, names[0])
    descs = []
    for c, name in zip(caches, names):
        adapter(c, op, name).check_writable(c, op, name)
        descs.append(describe(c, op, name))
    ctx, stream = place(ad, descs[0])
    copy_pairs(ctx, stream, descs, pairs, op)
    for c, name in zip(caches, names):
        written(c, op, name)
