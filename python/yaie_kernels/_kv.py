"""The paged KV cache (yk_kv_cache_*, yk_kv_seq_*): KVCacheManager and KVCacheBlock.

The cache owns fixed-size blocks of K and V for every layer (one run of block_bytes a block:
layer 0 K, layer 0 V, layer 1 K, ...), the sequences' block tables, copy-on-write for forks,
swapping to host blocks, and the page tables paged attention reads. Sequences are int ids the
cache hands out. The tables come back as numpy arrays (copies); the blocks as BufferViews that
torch.from_dlpack / numpy.from_dlpack turn into views of the cache itself.

Order within an engine step (yk/kv.h): append (slots; copy-on-write recorded) -> copy_blocks()
-> write the new tokens into their slots -> block_tables() / csr() -> paged attention.

A cache is used by one thread at a time, as libyk's is.
"""

import ctypes
import operator
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._dlpack import BufferView
from ._host import _address, _np
from ._lib import C, c_struct, context_for, raise_status
from ._pool import Closable, Handle, device_key, device_name, nonnegative
from ._tensor import DLTensor, _DLDataType

__all__ = ["KVCacheManager", "KVCacheBlock", "KVCacheInfo", "SeqInfo"]

_DTYPES = {"float16": (2, 16), "half": (2, 16), "fp16": (2, 16), "bfloat16": (4, 16), "bf16": (4, 16),
           "float8_e4m3fn": (10, 8), "fp8": (10, 8), "fp8_e4m3": (10, 8)}
_DTYPE_OF_CODE = {(2, 16): "float16", (4, 16): "bfloat16", (10, 8): "float8_e4m3fn"}
_LAYOUTS = {"NHD": 0, "HND": 1}


@c_struct("yk_kv_cache_config")
class _Config(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int), ("kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("page_size", ctypes.c_int), ("dtype", _DLDataType), ("layout", ctypes.c_int),
                ("num_blocks", ctypes.c_int64), ("device_bytes", ctypes.c_size_t), ("host_blocks", ctypes.c_int64),
                ("pool", ctypes.c_void_p)]


@c_struct("yk_kv_cache_info")
class _Info(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int), ("kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("page_size", ctypes.c_int), ("elem_bytes", ctypes.c_int), ("layout", ctypes.c_int),
                ("block_bytes", ctypes.c_size_t), ("num_blocks", ctypes.c_int64), ("free_blocks", ctypes.c_int64),
                ("host_blocks", ctypes.c_int64), ("free_host_blocks", ctypes.c_int64), ("sequences", ctypes.c_int64),
                ("pending_copies", ctypes.c_int64), ("on_device", ctypes.c_int)]


@c_struct("yk_kv_seq_info")
class _SeqInfo(ctypes.Structure):
    _fields_ = [("tokens", ctypes.c_int64), ("blocks", ctypes.c_int64), ("swapped_out", ctypes.c_int),
                ("table", ctypes.POINTER(ctypes.c_int32))]


@dataclass(frozen=True)
class KVCacheInfo:
    """yk_kv_cache_info: the shape of the cache and what is in use now."""

    num_layers: int
    num_heads: int  # KV heads
    head_dim: int
    block_size: int  # tokens a block (libyk's page_size)
    elem_bytes: int
    layout: str  # "NHD" or "HND"
    block_bytes: int  # one block: K and V of every layer
    num_blocks: int
    free_blocks: int
    host_blocks: int
    free_host_blocks: int
    sequences: int  # live ids, on the device or swapped out
    pending_copies: int  # copy-on-write copies recorded, not yet performed by copy_blocks()
    on_device: bool


class SeqInfo(NamedTuple):
    """A sequence: its tokens, its blocks (block_table, a numpy int32 copy: device block ids, or
    host ones while swapped_out). A NamedTuple: a scheduler reads these every step, and a frozen
    dataclass costs several times more to make."""

    tokens: int
    num_blocks: int
    swapped_out: bool
    block_table: Any


def slots_out(np, n, out, op):
    """The int64 array append-like calls write the new tokens' slots into: out, checked, or a new one."""
    if out is None:
        return np.empty(max(n, 0), np.int64)
    if not (isinstance(out, np.ndarray) and out.dtype == np.int64 and out.ndim == 1 and out.shape[0] == n
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{op}: out must be a writable C-contiguous numpy int64 array of {n} entries")
    return out


def _c_int(value, op, name):
    v = operator.index(value)
    if not -(1 << 31) <= v < (1 << 31):
        raise ValueError(f"{op}: {name} {v} does not fit a C int")
    return v


def _dtype_code(dtype, op):
    if isinstance(dtype, str):
        name = dtype
    elif isinstance(dtype, type):
        name = dtype.__name__  # numpy.float16, ml_dtypes.bfloat16
    else:
        name = str(dtype)  # torch.float16, numpy.dtype('float16')
    code = _DTYPES.get(name.lower().replace("torch.", ""))
    if code is None:
        raise ValueError(f"{op}: dtype {dtype!r} is not float16, bfloat16 or float8_e4m3fn, the KV cache's dtypes")
    return code


def _view(t, owner):
    n = t.ndim
    return BufferView(t.data or 0, (t.device.device_type, t.device.device_id), (t.dtype.code, t.dtype.bits),
                      [t.shape[i] for i in range(n)], [t.strides[i] for i in range(n)], owner)


class KVCacheManager(Closable):
    """The paged KV cache (yk_kv_cache_create).

    num_blocks blocks of block_size tokens (1..128) of K and V, for num_layers layers of num_heads
    KV heads of head_dim, in dtype (float16, bfloat16 or float8_e4m3fn: a string, torch or numpy
    dtype). A float8 cache holds a byte an element, written by append_kv with k_scale and v_scale
    and read by the paged attention calls with the same scales.
    num_blocks None: as many as device_bytes holds. layout "NHD" (a block's page is
    [block_size, heads, head_dim]) or "HND". host_blocks: host blocks for swapping (pinned on
    CUDA). pool: carve the blocks from a MemoryPool (its device is the cache's). device: as
    MemoryPool's. The block contents start undefined.

    Errors: OutOfMemoryError (a MemoryError) when blocks run out, with the cache unchanged;
    NotFoundError (a KeyError) for a freed or unknown sequence id; InvalidArgumentError (a
    ValueError) for the rest; each carries libyk's message. close() frees the blocks once no view
    of them and no RadixAttentionWithPagedKVCache on the cache remains (synchronise the streams
    that copy or swap first)."""

    def __init__(self, num_blocks, block_size, num_heads, head_dim, dtype="float16", *, num_layers=1, layout="NHD",
                 device=None, device_bytes=None, host_blocks=0, pool=None):
        op = "KVCacheManager"
        if pool is not None:
            if device is not None and device_key(device, op) != pool._key:
                raise ValueError(f"{op}: device {device!r} is not the pool's ({pool.device})")
            key, pool_ptr = pool._key, pool._ptr(op)
        else:
            key, pool_ptr = device_key(device, op), None
        self._key = key
        self._ctx = context_for(key)
        cfg = _Config()
        C.yk_kv_cache_config_init(ctypes.byref(cfg))
        cfg.layers = _c_int(num_layers, op, "num_layers")
        cfg.kv_heads = _c_int(num_heads, op, "num_heads")
        cfg.head_dim = _c_int(head_dim, op, "head_dim")
        cfg.page_size = _c_int(block_size, op, "block_size")
        cfg.dtype.code, cfg.dtype.bits = _dtype_code(dtype, op)
        cfg.dtype.lanes = 1
        upper = str(layout).upper()
        if upper not in _LAYOUTS:
            raise ValueError(f"{op}: layout {layout!r} is not 'NHD' or 'HND'")
        cfg.layout = _LAYOUTS[upper]
        cfg.num_blocks = 0 if num_blocks is None else nonnegative(num_blocks, op, "num_blocks")
        cfg.device_bytes = 0 if device_bytes is None else nonnegative(device_bytes, op, "device_bytes")
        cfg.host_blocks = nonnegative(host_blocks, op, "host_blocks")
        cfg.pool = pool_ptr
        out = ctypes.c_void_p()
        st = C.yk_kv_cache_create(self._ctx, ctypes.byref(cfg), ctypes.byref(out))
        if st:
            raise_status(st, self._ctx, op)
        self._handle = Handle(out.value, C.yk_kv_cache_destroy, pool._handle if pool is not None else None)
        # Out-parameters made once: the cache is used by one thread at a time, and a scheduler calls
        # append / seq_info every step (making a ctypes object and its byref costs about 1 us).
        self._out, self._seq_out = ctypes.c_int64(), _SeqInfo()
        self._out_ref, self._seq_out_ref = ctypes.byref(self._out), ctypes.byref(self._seq_out)
        self.pool = pool
        self.device = device_name(key)
        i = self.info()
        self.num_layers, self.num_heads, self.head_dim, self.block_size = (i.num_layers, i.num_heads, i.head_dim,
                                                                           i.block_size)
        self.num_blocks, self.host_blocks, self.layout = i.num_blocks, i.host_blocks, i.layout
        self.block_bytes, self.elem_bytes = i.block_bytes, i.elem_bytes
        self.dtype = _DTYPE_OF_CODE[(cfg.dtype.code, cfg.dtype.bits)]

    # ---- plumbing ----

    def _c(self, op):
        h = self._handle
        if h is None:
            raise ValueError(f"KVCacheManager.{op}: the cache is closed")
        return h.ptr

    def _check(self, st, op):
        if st:
            raise_status(st, self._ctx, f"KVCacheManager.{op}")

    def _stream(self, stream):
        """The CUstream for a copy or swap: stream (a torch.cuda.Stream or a raw handle), else
        torch's current stream on the cache's device when torch is imported, else the legacy
        default stream. None on a CPU cache, whose copies are memcpy."""
        if self._key < 0:
            return None
        if stream is None:
            torch = sys.modules.get("torch")
            if torch is None:
                return None
            raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            return raw(self._key) if raw is not None else torch.cuda.current_stream(self._key).cuda_stream
        return int(getattr(stream, "cuda_stream", stream)) or None

    def info(self):
        """KVCacheInfo: the cache's shape and its free blocks, sequences and pending copies now."""
        i = _Info()
        self._check(C.yk_kv_cache_get_info(self._c("info"), ctypes.byref(i)), "info")
        return KVCacheInfo(i.layers, i.kv_heads, i.head_dim, i.page_size, i.elem_bytes, "HND" if i.layout else "NHD",
                           i.block_bytes, i.num_blocks, i.free_blocks, i.host_blocks, i.free_host_blocks, i.sequences,
                           i.pending_copies, bool(i.on_device))

    # ---- sequences ----

    def add_sequence(self):
        """A new empty sequence; returns its id (an int, never reused)."""
        self._check(C.yk_kv_seq_add(self._c("add_sequence"), self._out_ref), "add_sequence")
        return self._out.value

    def append(self, seq, num_tokens=1, *, out=None):
        """Makes room for num_tokens more tokens at the end of seq (on the device): its last block
        first, then new blocks; a shared, not full last block is copied first (copy-on-write,
        recorded for copy_blocks()). Returns the new tokens' slot ids (block * block_size +
        offset) as numpy int64, written into out (1-D C-contiguous int64 of num_tokens) if given.
        OutOfMemoryError when the free blocks do not suffice; nothing changes then."""
        n = int(num_tokens)
        out = slots_out(_np(), n, out, "KVCacheManager.append")
        self._check(C.yk_kv_seq_append(self._c("append"), seq, n, _address(out)), "append")
        return out

    def blocks_needed(self, seq, num_tokens=1):
        """Device blocks append(seq, num_tokens) would take now (a copy-on-write one included)."""
        self._check(C.yk_kv_seq_blocks_needed(self._c("blocks_needed"), seq, int(num_tokens), self._out_ref),
                    "blocks_needed")
        return self._out.value

    def fork(self, seq):
        """A new sequence with seq's tokens, sharing all its blocks (parallel sampling, beam
        search); returns its id. Appending to either copies a shared last block first."""
        self._check(C.yk_kv_seq_fork(self._c("fork"), seq, self._out_ref), "fork")
        return self._out.value

    def free(self, seq):
        """Releases seq's blocks (a block is free once no sequence or pending copy holds it); the
        id becomes invalid."""
        self._check(C.yk_kv_seq_free(self._c("free"), seq), "free")

    def seq_info(self, seq):
        """SeqInfo of seq, its block table copied."""
        np = _np()
        self._check(C.yk_kv_seq_get_info(self._c("seq_info"), seq, self._seq_out_ref), "seq_info")
        i = self._seq_out
        n = i.blocks
        table = np.empty(n, np.int32)
        if n:
            ctypes.memmove(_address(table), i.table, 4 * n)
        return SeqInfo(i.tokens, n, i.swapped_out != 0, table)

    def seq_blocks(self, seq):
        """seq's blocks as KVCacheBlocks (host ones while it is swapped out)."""
        i = self.seq_info(seq)
        return [KVCacheBlock(self, b, host=i.swapped_out) for b in i.block_table.tolist()]

    def block(self, block_id, *, host=False):
        """Device block block_id (a host block with host=True) as a KVCacheBlock."""
        return KVCacheBlock(self, block_id, host=host)

    # ---- copies and swaps ----

    def copy_blocks(self, src_block_ids=None, dst_block_ids=None, *, stream=None):
        """With no block ids: performs the copy-on-write copies append recorded, whole blocks, and
        clears the list; call it before writing the step's new tokens. On CUDA asynchronous on
        stream (see swap_out), then the cache's event is recorded; on the CPU complete on return.

        With block ids: copies device block src_block_ids[i] over dst_block_ids[i] (or a mapping
        {src: dst} as src_block_ids), whole blocks, every layer's K and V (yk_copy_blocks, as
        vLLM's copy_blocks). The pairs run concurrently, so a block may not be both a source and
        a destination, nor a destination twice (ValueError). Raw copies: no reference count or
        table changes, the recorded copy-on-write copies are left for copy_blocks(); on CUDA on
        stream, without the cache's event (order readers on that stream)."""
        op = "copy_blocks"
        if src_block_ids is None:
            if dst_block_ids is not None:
                raise ValueError("KVCacheManager.copy_blocks: dst_block_ids without src_block_ids")
            self._check(C.yk_kv_cache_copy_blocks(self._c(op), self._stream(stream)), op)
            return
        from ._copy import block_pairs, copy_pairs  # _copy builds on this module

        name = f"KVCacheManager.{op}"
        if dst_block_ids is None and not hasattr(src_block_ids, "keys"):
            raise ValueError(f"{name}: give dst_block_ids, or a mapping {{src: dst}} as src_block_ids")
        pairs = block_pairs(src_block_ids, name, dst_block_ids)
        self._c(op)
        k = self.layer(0)[0]
        # every block as one row (block b = [layer 0 K][layer 0 V][layer 1 K] ...): one copy a pair
        row = self.block_bytes // self.elem_bytes
        blocks = (k.data_ptr, k.device[0], k.device[1], k._code[0], k._code[1], (self.num_blocks, row), (row, 1), None)
        copy_pairs(self._ctx, self._stream(stream), [blocks], pairs, name)

    def swap_out(self, seq, *, stream=None):
        """Moves seq to host blocks (its table follows; its device blocks are released, those
        shared with forks stay theirs). Its id stays valid; append, fork and the page tables
        refuse it until swap_in. OutOfMemoryError when the free host blocks do not suffice.
        stream: a torch.cuda.Stream or a CUstream handle; None: torch's current stream when torch
        is imported, else the legacy default stream. Order writers of released blocks after it."""
        self._check(C.yk_kv_seq_swap_out(self._c("swap_out"), seq, self._stream(stream)), "swap_out")

    def swap_in(self, seq, *, stream=None):
        """Moves a swapped-out seq back into free device blocks (generally not the ones it had)."""
        self._check(C.yk_kv_seq_swap_in(self._c("swap_in"), seq, self._stream(stream)), "swap_in")

    def _raw_swap(self, fn, op, block_ids, dst_ids, stream):
        np = _np()
        if hasattr(block_ids, "keys"):  # {src: dst}, as vLLM's swap maps
            if dst_ids is not None:
                raise ValueError(f"KVCacheManager.{op}: block_ids is a mapping; it already names the destinations")
            src, dst = list(block_ids.keys()), list(block_ids.values())
        else:
            src = block_ids
            dst = block_ids if dst_ids is None else dst_ids
        src, dst = (np.ascontiguousarray(a, dtype=np.int32).reshape(-1) for a in (src, dst))
        if src.shape != dst.shape:
            raise ValueError(f"KVCacheManager.{op}: {src.shape[0]} source blocks but {dst.shape[0]} destinations")
        self._check(fn(self._c(op), _address(src), _address(dst), src.shape[0], self._stream(stream)), op)
        return dst

    def swap_blocks_to_cpu(self, block_ids, *, host_block_ids=None, stream=None):
        """Copies device blocks to host blocks: block_ids (ints) to host_block_ids, by default the
        same ids, or a mapping {device id: host id}. Raw copies for an engine that maps blocks
        itself: nothing is allocated or freed, and host blocks holding swapped-out sequences are
        not protected. Returns the host ids (numpy int32). Asynchronous on CUDA, as swap_out."""
        return self._raw_swap(C.yk_kv_cache_swap_blocks_to_cpu, "swap_blocks_to_cpu", block_ids, host_block_ids,
                              stream)

    def swap_blocks_from_cpu(self, block_ids, *, device_block_ids=None, stream=None):
        """Copies host blocks block_ids to device blocks (device_block_ids, by default the same
        ids, or a mapping {host id: device id}); as swap_blocks_to_cpu. Returns the device ids."""
        return self._raw_swap(C.yk_kv_cache_swap_blocks_from_cpu, "swap_blocks_from_cpu", block_ids,
                              device_block_ids, stream)

    @property
    def event(self):
        """The CUevent (an int) recorded after the cache's last copy or swap, for
        cuStreamWaitEvent; None on a CPU cache, whose copies finish before returning."""
        return C.yk_kv_cache_event(self._c("event"))

    def sync(self):
        """Waits until the cache's last copy or swap has completed."""
        self._check(C.yk_kv_cache_sync(self._c("sync")), "sync")

    # ---- page tables ----

    def _seqs(self, seqs):
        np = _np()
        s = np.ascontiguousarray(seqs, dtype=np.int64)
        if s.ndim != 1:
            raise ValueError(f"KVCacheManager: seqs must be a list of sequence ids, got shape {s.shape}")
        return np, s

    def _sizes(self, s, op):
        max_blocks, total = ctypes.c_int64(), ctypes.c_int64()
        self._check(C.yk_kv_cache_table_sizes(self._c(op), _address(s), s.shape[0], ctypes.byref(max_blocks),
                                              ctypes.byref(total)), op)
        return max_blocks.value, total.value

    def block_tables(self, seqs, *, max_blocks=None):
        """vLLM's dense page table: (block_tables int32 [len(seqs), max_blocks], rows padded with
        0, and context_lens int32 [len(seqs)]). max_blocks: the most blocks a listed sequence
        has, unless given. Every sequence must be on the device; one may be listed twice."""
        np, s = self._seqs(seqs)
        if max_blocks is None:
            max_blocks = self._sizes(s, "block_tables")[0]
        max_blocks = nonnegative(max_blocks, "KVCacheManager.block_tables", "max_blocks")
        tables = np.empty((s.shape[0], max_blocks), np.int32)
        lens = np.empty(s.shape[0], np.int32)
        self._check(C.yk_kv_cache_block_tables(self._c("block_tables"), _address(s), s.shape[0], _address(tables),
                                               max_blocks, _address(lens)), "block_tables")
        return tables, lens

    def csr(self, seqs):
        """FlashInfer's page table: (kv_indptr int32 [len(seqs) + 1], kv_indices int32 [total
        blocks], kv_last_page_len int32 [len(seqs)]: tokens in each last block, 0 for an empty
        sequence)."""
        np, s = self._seqs(seqs)
        total = self._sizes(s, "csr")[1]
        indptr = np.empty(s.shape[0] + 1, np.int32)
        indices = np.empty(total, np.int32)
        last = np.empty(s.shape[0], np.int32)
        self._check(C.yk_kv_cache_csr(self._c("csr"), _address(s), s.shape[0], _address(indptr), _address(indices),
                                      total, _address(last)), "csr")
        return indptr, indices, last

    # ---- the memory ----

    def _layer(self, fn, op, layer):
        k, v = DLTensor(), DLTensor()
        self._check(fn(self._c(op), _c_int(layer, f"KVCacheManager.{op}", "layer"), ctypes.byref(k), ctypes.byref(v)),
                    op)
        return _view(k, self._handle), _view(v, self._handle)

    def layer(self, layer):
        """(k, v) of one layer over every device block, as BufferViews for torch.from_dlpack /
        numpy.from_dlpack: [num_blocks, block_size, num_heads, head_dim] (NHD) or [num_blocks,
        num_heads, block_size, head_dim] (HND), with a block stride of block_bytes / elem_bytes
        elements, not the compact page size. Views of the cache itself; they keep it alive."""
        return self._layer(C.yk_kv_cache_layer, "layer", layer)

    def host_layer(self, layer):
        """As layer() over the host (swap) blocks."""
        return self._layer(C.yk_kv_cache_host_layer, "host_layer", layer)

    def __repr__(self):
        return (f"KVCacheManager({self.num_blocks} blocks of {self.block_size} tokens, {self.num_layers} layers x "
                f"{self.num_heads} heads x {self.head_dim}, {self.dtype}, {self.layout}, {self.device}"
                f"{', closed' if self._handle is None else ''})")


class KVCacheBlock:
    """One block of a KVCacheManager: block_size tokens of K and V for every layer. keys and
    values are BufferViews [num_layers, block_size, num_heads, head_dim] (NHD; HND pages are
    [num_heads, block_size, head_dim]) into the cache's memory, for torch.from_dlpack /
    numpy.from_dlpack. host: a host (swap) block. Which sequences hold a block, and how many, is
    not exposed by libyk."""

    __slots__ = ("manager", "block_id", "host", "size", "num_heads", "head_dim", "dtype", "num_layers")

    def __init__(self, manager, block_id, *, host=False):
        count = manager.host_blocks if host else manager.num_blocks
        b = operator.index(block_id)
        if not 0 <= b < count:
            raise ValueError(f"KVCacheBlock: block {b} is not in 0..{count - 1} ({'host' if host else 'device'} "
                             "blocks)")
        self.manager, self.block_id, self.host = manager, b, bool(host)
        self.size, self.num_heads, self.head_dim = manager.block_size, manager.num_heads, manager.head_dim
        self.dtype, self.num_layers = manager.dtype, manager.num_layers

    def _views(self, which):
        m = self.manager
        layer = m.host_layer if self.host else m.layer
        first = layer(0)[which]
        # a layer's K and V pages sit 2 * page apart inside the block: layer l is l * that further
        step = 2 * m.block_size * m.num_heads * m.head_dim
        data = first.data_ptr + self.block_id * first.strides[0] * m.elem_bytes
        return BufferView(data, first.device, first._code, (m.num_layers, *first.shape[1:]),
                          (step, *first.strides[1:]), first._owner)

    @property
    def keys(self):
        return self._views(0)

    @property
    def values(self):
        return self._views(1)

    def __repr__(self):
        return f"KVCacheBlock({'host ' if self.host else ''}block {self.block_id} of {self.manager!r})"
