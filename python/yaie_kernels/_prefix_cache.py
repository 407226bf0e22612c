"""RadixAttentionWithPagedKVCache: the radix tree joined to a KVCacheManager (yk_prefix_cache_*).
Requests starting with cached tokens share those blocks by reference; finished requests' full
pages join the tree; allocating through it evicts cached blocks no request uses, least recently
used first.

The prefix cache keeps its KVCacheManager's C cache alive (libyk destroys the prefix cache before
the cache), and is used by one thread at a time, with the manager, as libyk's are.
"""

import ctypes
from dataclasses import dataclass

from ._host import _address, _np
from ._kv import KVCacheManager, slots_out
from ._lib import C, c_struct, raise_status
from ._pool import Closable, Handle, nonnegative
from ._radix import order_requests, tokens_array

__all__ = ["RadixAttentionWithPagedKVCache", "PrefixCacheStats"]


@c_struct("yk_prefix_cache_stats")
class _Stats(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in (
        "cached_tokens", "cached_blocks", "evictable_blocks", "locked_blocks", "nodes", "free_blocks", "total_blocks",
        "requests", "requested_tokens", "hit_tokens", "evicted_blocks", "duplicate_blocks")]


@dataclass(frozen=True)
class PrefixCacheStats:
    """yk_prefix_cache_stats: the tree's blocks (cached_blocks = evictable_blocks +
    locked_blocks, cached_tokens = cached_blocks * block_size, nodes), the KV cache's device
    blocks (free_blocks, total_blocks), requests started and not finished, and since creation
    requested_tokens (passed to start), hit_tokens (of them found cached), evicted_blocks and
    duplicate_blocks (table entries that held their own copy of a page the tree already cached,
    switched to the tree's block by insert or finish).

    The field list mirrors the C struct exactly: libyk writes all of it, so a missing field here
    would be a write past the end of the ctypes buffer."""

    cached_tokens: int
    cached_blocks: int
    evictable_blocks: int
    locked_blocks: int
    nodes: int
    free_blocks: int
    total_blocks: int
    requests: int
    requested_tokens: int
    hit_tokens: int
    evicted_blocks: int
    duplicate_blocks: int


class RadixAttentionWithPagedKVCache(Closable):
    """Prefix sharing over a KVCacheManager's blocks (yk_prefix_cache_create). A request's life:

        seq, cached = pc.start(tokens)         # tokens[:cached] are in KV already (whole blocks)
        slots = pc.append(seq, len(tokens) - cached)   # blocks for the rest only, evicting if needed
        kv_cache.copy_blocks(); write tokens[cached:]'s K and V into slots; attention ...
        slot = pc.append(seq, 1)               # each decode step
        pc.finish(seq, all_tokens)             # its full blocks join the tree; seq is freed

    seq is an ordinary sequence of kv_cache meanwhile (block_tables, csr, fork, swap take it).
    Free it with finish, not kv_cache.free: the prefix cache holds its matched path locked until
    then. An engine that needs the logits of the prompt's last token starts with tokens[:-1].

    Errors as KVCacheManager's: OutOfMemoryError when the free blocks plus everything evictable
    do not suffice (nothing evicted then), NotFoundError for a freed or unknown sequence,
    InvalidArgumentError (a ValueError) for bad input; a failed call changes nothing."""

    def __init__(self, kv_cache):
        op = "RadixAttentionWithPagedKVCache"
        if not isinstance(kv_cache, KVCacheManager):
            raise TypeError(f"{op}: kv_cache must be a KVCacheManager, got {type(kv_cache).__name__}")
        self.kv_cache = kv_cache
        self._ctx = kv_cache._ctx
        out = ctypes.c_void_p()
        st = C.yk_prefix_cache_create(kv_cache._c("RadixAttentionWithPagedKVCache"), ctypes.byref(out))
        if st:
            raise_status(st, self._ctx, op)
        self._handle = Handle(out.value, C.yk_prefix_cache_destroy, kv_cache._handle)
        self.block_size = kv_cache.block_size
        self._seq, self._cached = ctypes.c_int64(), ctypes.c_int64()

    def _c(self, op):
        h = self._handle
        if h is None:
            raise ValueError(f"RadixAttentionWithPagedKVCache.{op}: the prefix cache is closed")
        if self.kv_cache.closed:
            raise ValueError(f"RadixAttentionWithPagedKVCache.{op}: its KVCacheManager is closed")
        return h.ptr

    def _check(self, st, op):
        if st:
            raise_status(st, self._ctx, f"RadixAttentionWithPagedKVCache.{op}")

    def start(self, tokens):
        """A new request over tokens: a new sequence of the KV cache whose first blocks are the
        longest cached prefix's, shared by reference, and that path locked. Returns (seq,
        cached_tokens): tokens[:cached_tokens] (a multiple of the block size) need no prefill.
        Takes no free block."""
        t = tokens_array(tokens, "RadixAttentionWithPagedKVCache.start")
        self._check(C.yk_prefix_cache_start(self._c("start"), _address(t), t.shape[0], ctypes.byref(self._seq),
                                            ctypes.byref(self._cached)), "start")
        return self._seq.value, self._cached.value

    def append(self, seq, num_tokens=1, *, out=None):
        """KVCacheManager.append through the prefix cache: when the free blocks do not suffice,
        unlocked cached blocks are evicted first, least recently used first. Returns the new
        tokens' slots (numpy int64, or written into out)."""
        n = int(num_tokens)
        out = slots_out(_np(), n, out, "RadixAttentionWithPagedKVCache.append")
        self._check(C.yk_prefix_cache_append(self._c("append"), seq, n, _address(out)), "append")
        return out

    def reserve(self, free_blocks):
        """Makes at least free_blocks device blocks free, evicting as append does (for a scheduler
        admitting a batch)."""
        self._check(C.yk_prefix_cache_reserve(self._c("reserve"), nonnegative(
            free_blocks, "RadixAttentionWithPagedKVCache.reserve", "free_blocks")), "reserve")

    def insert(self, seq, tokens):
        """Caches seq's blocks holding tokens (its first len(tokens) tokens, their K and V
        written; whole blocks) while the request runs: a long prefill's blocks become shareable
        before it finishes. Where another request cached the same tokens first (both ran at
        once), seq's table switches to the tree's blocks for those whole pages and its own copies
        are released (stats().duplicate_blocks counts them): slots append handed out inside a
        switched page must not be written any more. A swapped-out seq with a page or more of
        tokens is an InvalidArgumentError: swap it in first."""
        t = tokens_array(tokens, "RadixAttentionWithPagedKVCache.insert")
        self._check(C.yk_prefix_cache_insert(self._c("insert"), seq, _address(t), t.shape[0]), "insert")

    def finish(self, seq, tokens=None):
        """Ends the request: caches seq's blocks holding tokens (None: nothing, for a request
        dropped before its prefill, or swapped out), unlocks its path and frees seq; blocks the
        tree did not take become free, its copies of pages the tree already held included (as
        insert switches them)."""
        op = "RadixAttentionWithPagedKVCache.finish"
        t = tokens_array([] if tokens is None else tokens, op)
        self._check(C.yk_prefix_cache_finish(self._c("finish"), seq, _address(t), t.shape[0]), "finish")

    def prefix_length(self, tokens):
        """The tokens start(tokens) would find cached now; changes nothing."""
        return int(self.order_by_prefix([tokens])[1][0])

    def order_by_prefix(self, requests):
        """SGLang's longest-prefix-match scheduling over waiting requests (token lists): (order,
        matched), numpy int64: the request indices longest cached prefix first (ties in the given
        order), and each request's cached length by index. Reads the tree only."""
        st, order, matched = order_requests(C.yk_prefix_cache_order_by_prefix, self._c("order_by_prefix"), requests,
                                            "RadixAttentionWithPagedKVCache.order_by_prefix")
        self._check(st, "order_by_prefix")
        return order, matched

    def stats(self):
        s = _Stats()
        self._check(C.yk_prefix_cache_get_stats(self._c("stats"), ctypes.byref(s)), "stats")
        return PrefixCacheStats(*(getattr(s, f) for f, _ in _Stats._fields_))

    def __repr__(self):
        if self._handle is None:
            return "RadixAttentionWithPagedKVCache(closed)"
        s = self.stats()
        return (f"RadixAttentionWithPagedKVCache({s.cached_blocks} blocks cached, {s.requests} requests, over "
                f"{self.kv_cache!r})")
