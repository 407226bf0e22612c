"""RadixAttentionBlock: libyk's radix tree of cached prefixes (yk_radix_*, SGLang's RadixCache)
over page ids someone else owns, for engines with their own block manager.

The tree holds one reference to each cached page through a page owner: RadixPageOwner by
default, or any object with retain(pages) and release(pages) methods, called from inside the
tree's calls with the page ids as a numpy int32 array (a copy). The C callbacks are ctypes
functions kept alive by the tree's handle, so they outlive every call that can reach them,
destroy included.

A tree is used by one thread at a time, as libyk's is.
"""

import ctypes
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._host import _address, _np, int_array
from ._lib import C, RadixNode, c_struct, context_for, raise_status
from ._pool import Closable, Handle, nonnegative

__all__ = ["RadixAttentionBlock", "RadixPageOwner", "RadixMatch", "RadixInsert", "RadixStats", "RadixNodeHandle"]

_log = logging.getLogger("yaie_kernels")

_RETAIN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_RELEASE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_INVALID_ARGUMENT, _OUT_OF_MEMORY = 1, 6


@c_struct("yk_radix_page_owner")
class _PageOwner(ctypes.Structure):
    """yk_radix_page_owner."""

    _fields_ = [("retain", ctypes.c_void_p), ("release", ctypes.c_void_p), ("user", ctypes.c_void_p)]


@c_struct("yk_radix_match")
class _Match(ctypes.Structure):
    _fields_ = [("matched_tokens", ctypes.c_int64), ("node", RadixNode)]


@c_struct("yk_radix_insert_result")
class _InsertResult(ctypes.Structure):
    _fields_ = [("cached_tokens", ctypes.c_int64), ("inserted_tokens", ctypes.c_int64),
                ("duplicate_count", ctypes.c_int64)]


@c_struct("yk_radix_stats")
class _Stats(ctypes.Structure):
    _fields_ = [("cached_tokens", ctypes.c_int64), ("cached_pages", ctypes.c_int64),
                ("evictable_pages", ctypes.c_int64), ("locked_pages", ctypes.c_int64), ("nodes", ctypes.c_int64)]


class RadixNodeHandle(NamedTuple):
    """A node of the tree, for lock and unlock (yk_radix_node). Valid while its node is locked;
    once unlocked the node may be evicted, and the handle then fails with InvalidArgumentError
    (never names another node)."""

    index: int
    generation: int


class RadixMatch(NamedTuple):
    """match_prefix's answer: length (cached tokens, whole pages), pages (numpy int32 page ids
    covering them) and node (where the match ends, to lock; the root when nothing matched)."""

    length: int
    pages: Any
    node: RadixNodeHandle


class RadixInsert(NamedTuple):
    """insert's answer: cached_tokens (leading tokens the tree had already; it kept its own pages),
    inserted_tokens (newly cached; their pages retained through the owner) and duplicates (numpy
    int32: the caller's pages in the cached part that differ from the tree's; the tree never holds
    them, so they are the caller's to release)."""

    cached_tokens: int
    inserted_tokens: int
    duplicates: Any


@dataclass(frozen=True)
class RadixStats:
    """yk_radix_stats: cached_pages = evictable_pages + locked_pages; nodes without the root."""

    cached_tokens: int
    cached_pages: int
    evictable_pages: int
    locked_pages: int
    nodes: int


def tokens_array(tokens, op, name="tokens"):
    """Token ids as a C-contiguous int32 numpy array (a list, a numpy array or a host tensor)."""
    return int_array(tokens, op, name)


def order_requests(fn, ptr, requests, op):
    """The scheduling helper's call shared by the tree and the prefix cache: (order, matched)."""
    np = _np()
    arrays = [tokens_array(t, op, f"requests[{i}]") for i, t in enumerate(requests)]
    n = len(arrays)
    pointers = (ctypes.c_void_p * max(n, 1))(*(_address(a) for a in arrays))
    lengths = np.array([a.shape[0] for a in arrays], np.int64)
    order, matched = np.empty(n, np.int64), np.empty(n, np.int64)
    return fn(ptr, pointers, _address(lengths), n, _address(order), _address(matched)), order, matched


def _pages(address, count):
    np = _np()
    out = np.empty(count, np.int32)
    if count:
        ctypes.memmove(_address(out), address, 4 * count)
    return out


class RadixPageOwner:
    """The default page owner: counts the references the tree holds on each page (held: page id
    -> count, 1 for a cached page unless the caller inserted one page id twice) and records the
    pages it lets go, in order (freed). take_freed() hands them over and forgets them, for an
    engine returning them to its allocator."""

    def __init__(self):
        self.held = {}
        self.freed = []

    def retain(self, pages):
        held = self.held
        for p in pages.tolist():
            held[p] = held.get(p, 0) + 1

    def release(self, pages):
        held = self.held
        for p in pages.tolist():
            n = held.get(p, 0)
            if n <= 0:
                raise ValueError(f"RadixPageOwner: the tree released page {p}, which it did not hold")
            if n == 1:
                del held[p]
            else:
                held[p] = n - 1
            self.freed.append(p)

    def take_freed(self):
        freed, self.freed = self.freed, []
        return freed


class _Bridge:
    """What the C callbacks reach: the owner, the exception a refusing retain raised (re-raised
    by the call that asked), and the pages released during an evict (its answer). The callbacks
    hold this, not the tree object, so dropping the tree object destroys the tree at once."""

    __slots__ = ("owner", "error", "released")

    def __init__(self, owner):
        self.owner, self.error, self.released = owner, None, None


def _callbacks(bridge):
    """(retain, release) ctypes functions over bridge."""

    def retain(user, pages, count):
        try:
            bridge.owner.retain(_pages(pages, count))
            return 0
        except BaseException as e:  # noqa: BLE001 - an exception must not cross into C; the call re-raises it
            bridge.error = e
            return _OUT_OF_MEMORY if isinstance(e, MemoryError) else _INVALID_ARGUMENT

    def release(user, pages, count):
        ids = _pages(pages, count)
        if bridge.released is not None:
            bridge.released.append(ids)
        try:
            bridge.owner.release(ids)
        except BaseException:  # noqa: BLE001 - release cannot fail in C: the tree has let go of the pages
            _log.exception("RadixAttentionBlock: the page owner's release(%s) raised; the tree let go of them anyway",
                           ids.tolist())

    return _RETAIN(retain), _RELEASE(release)


def _node(node, op):
    try:
        index, generation = node
        return RadixNode(int(index), int(generation))
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{op}: node must be a RadixNodeHandle (match_prefix's .node), got {node!r}") from e


class RadixAttentionBlock(Closable):
    """The radix tree of cached prefixes over token ids (yk_radix_create), whose nodes own runs
    of pages: SGLang's RadixCache in libyk, for an engine that owns its pages.

    page_size: tokens a page, 1..128; with more than 1 only whole pages are matched and cached.
    owner: retain(pages) / release(pages) over numpy int32 page ids (RadixPageOwner() if None);
    retain raising refuses an insert, which then raises that exception with the tree unchanged.

        tree = yk.RadixAttentionBlock(16)
        m = tree.match_prefix(tokens)          # m.length tokens cached, in pages m.pages
        tree.lock(m.node)                      # not evicted while the request runs
        ... prefill tokens[m.length:] into new pages, then:
        tree.insert(tokens, pages)             # pages of every whole page of tokens
        tree.unlock(m.node)
        freed = tree.evict(8)                  # least recently used unlocked leaves; page ids

    close() (or dropping the object) releases every cached page through the owner."""

    def __init__(self, page_size=1, *, owner=None):
        op = "RadixAttentionBlock"
        owner = RadixPageOwner() if owner is None else owner
        if not (callable(getattr(owner, "retain", None)) and callable(getattr(owner, "release", None))):
            raise TypeError(f"{op}: owner must have retain(pages) and release(pages) methods, got "
                            f"{type(owner).__name__}")
        self._ctx = context_for(-1)  # only for libyk's messages: the tree is host bookkeeping
        bridge = _Bridge(owner)
        retain, release = _callbacks(bridge)
        c_owner = _PageOwner(ctypes.cast(retain, ctypes.c_void_p), ctypes.cast(release, ctypes.c_void_p), None)
        out = ctypes.c_void_p()
        st = C.yk_radix_create(self._ctx, nonnegative(page_size, op, "page_size"), ctypes.byref(c_owner),
                               ctypes.byref(out))
        if st:
            raise_status(st, self._ctx, op)
        # the callbacks live as long as the tree: its destroy releases through them
        self._handle = Handle(out.value, C.yk_radix_destroy, (retain, release, bridge))
        self._bridge = bridge
        self.owner = owner
        self.page_size = int(page_size)

    def _c(self, op):
        h = self._handle
        if h is None:
            raise ValueError(f"RadixAttentionBlock.{op}: the tree is closed")
        return h.ptr

    def _check(self, st, op):
        error, self._bridge.error = self._bridge.error, None
        if st:
            if error is not None:
                try:
                    raise error
                finally:
                    error = None  # else the frame, through the traceback, would keep the tree alive
            raise_status(st, self._ctx, f"RadixAttentionBlock.{op}")

    def match_prefix(self, tokens):
        """The longest cached prefix of tokens, cut to whole pages: RadixMatch(length, pages,
        node). Marks the path as used now (eviction order), splitting the node where it ends."""
        np = _np()
        t = tokens_array(tokens, "RadixAttentionBlock.match_prefix")
        capacity = t.shape[0] // self.page_size
        pages = np.empty(capacity, np.int32)
        m = _Match()
        self._check(C.yk_radix_match_prefix(self._c("match_prefix"), _address(t), t.shape[0], _address(pages),
                                            capacity, ctypes.byref(m)), "match_prefix")
        return RadixMatch(m.matched_tokens, pages[:m.matched_tokens // self.page_size],
                          RadixNodeHandle(m.node.index, m.node.generation))

    def prefix_length(self, tokens):
        """The length match_prefix would return, with nothing changed (for looking at waiting
        requests)."""
        t = tokens_array(tokens, "RadixAttentionBlock.prefix_length")
        n = ctypes.c_int64()
        self._check(C.yk_radix_prefix_length(self._c("prefix_length"), _address(t), t.shape[0], ctypes.byref(n)),
                    "prefix_length")
        return n.value

    def insert(self, tokens, pages):
        """Caches tokens (cut to whole pages) held by pages, one id a whole page of tokens (a
        partial last page's id may follow; it is not cached). Returns RadixInsert. The new part's
        pages are retained through the owner in one call."""
        op = "RadixAttentionBlock.insert"
        np = _np()
        t = tokens_array(tokens, op)
        p = int_array(pages, op, "pages")
        whole = t.shape[0] // self.page_size
        if not whole <= p.shape[0] <= -(-t.shape[0] // self.page_size):
            raise ValueError(f"{op}: {t.shape[0]} tokens in pages of {self.page_size} need {whole} page ids, got "
                             f"{p.shape[0]}")
        duplicates = np.empty(whole, np.int32)
        r = _InsertResult()
        self._check(C.yk_radix_insert(self._c("insert"), _address(t), t.shape[0], _address(p), _address(duplicates),
                                      ctypes.byref(r)), "insert")
        return RadixInsert(r.cached_tokens, r.inserted_tokens, duplicates[:r.duplicate_count])

    def lock(self, node):
        """Holds the path from the root to node (a RadixNodeHandle) against eviction until it is
        unlocked as often as locked."""
        op = "RadixAttentionBlock.lock"
        self._check(C.yk_radix_lock(self._c("lock"), _node(node, op)), "lock")

    def unlock(self, node):
        op = "RadixAttentionBlock.unlock"
        self._check(C.yk_radix_unlock(self._c("unlock"), _node(node, op)), "unlock")

    def evict(self, num_pages):
        """Evicts unlocked leaves, least recently used first, until at least num_pages pages are
        released or nothing is evictable (whole nodes: it may release more). Returns the released
        page ids (numpy int32), in the order the owner got them."""
        np = _np()
        n = nonnegative(num_pages, "RadixAttentionBlock.evict", "num_pages")
        ptr = self._c("evict")
        self._bridge.released = released = []
        try:
            self._check(C.yk_radix_evict(ptr, n, None), "evict")
        finally:
            self._bridge.released = None
        return np.concatenate(released) if released else np.empty(0, np.int32)

    def stats(self):
        s = _Stats()
        self._check(C.yk_radix_get_stats(self._c("stats"), ctypes.byref(s)), "stats")
        return RadixStats(s.cached_tokens, s.cached_pages, s.evictable_pages, s.locked_pages, s.nodes)

    def order_by_prefix(self, requests):
        """SGLang's longest-prefix-match scheduling over waiting requests (token lists): (order,
        matched), numpy int64: the request indices longest cached prefix first (ties in the given
        order), and each request's cached length by index. Reads the tree only."""
        st, order, matched = order_requests(C.yk_radix_order_by_prefix, self._c("order_by_prefix"), requests,
                                            "RadixAttentionBlock.order_by_prefix")
        self._check(st, "order_by_prefix")
        return order, matched

    def __repr__(self):
        if self._handle is None:
            return f"RadixAttentionBlock(page_size={self.page_size}, closed)"
        s = self.stats()
        return (f"RadixAttentionBlock(page_size={self.page_size}, {s.cached_pages} pages cached in {s.nodes} nodes, "
                f"{s.locked_pages} locked)")
