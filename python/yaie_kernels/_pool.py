"""The memory pool (yk_pool): one allocation made up front and carved without the driver's
allocator. MemoryPool is a pool of its own; memory_pool_allocate / memory_pool_free, the engine's
names, use a default pool per device, made on first use (default_memory_pool).

Also what the pool and the KV cache share: naming devices, and Handle, which owns a C object and
destroys it when the last Python holder (the pool or cache object, or a view of its memory) goes.
"""

import ctypes
import operator
import os
import sys
import threading
from dataclasses import dataclass

from ._dlpack import BufferView
from ._lib import C, DL_CPU, DL_CUDA, InvalidArgumentError, YKError, c_struct, context_for, raise_status

__all__ = ["MemoryPool", "PoolStats", "PoolAllocation", "default_memory_pool", "memory_pool_allocate",
           "memory_pool_free"]

DEFAULT_POOL_BYTES = 1 << 30  # a default pool's size unless default_memory_pool() was told otherwise


# ---- devices ----

_probed_key = None  # the default device found by trying CUDA device 0 (torch not imported)


def _torch_cuda():
    torch = sys.modules.get("torch")  # a torch user's device is torch's current one
    return torch if torch is not None and torch.cuda.is_available() else None


def _default_key():
    global _probed_key
    env = os.environ.get("YK_DEVICE", "")  # libyk's own choice of device, as its YK_DEVICE_AUTO reads it
    if env == "cpu":
        return -1
    torch = _torch_cuda()
    if torch is not None:
        return torch.cuda.current_device()
    if env == "cuda":
        return 0
    if _probed_key is None:
        try:
            context_for(0)
            _probed_key = 0
        except YKError as e:
            if e.status != "YK_ERR_NO_DEVICE":
                raise
            _probed_key = -1  # no CUDA device: host memory, as libyk's YK_DEVICE_AUTO chooses
    return _probed_key


def device_key(device, op):
    """-1 for host memory, else the CUDA ordinal. device: None (host memory with YK_DEVICE=cpu or
    without a CUDA device; else CUDA, torch's current device when torch is imported, else device
    0), "cpu", "cuda", "cuda:N", an ordinal, or a torch.device."""
    if device is None:
        return _default_key()
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise ValueError(f"{op}: device {device} is not a CUDA ordinal (>= 0) or 'cpu'")
        return device
    kind = getattr(device, "type", None)  # torch.device
    if isinstance(kind, str):
        device = kind if device.index is None else f"{kind}:{device.index}"
    text = str(device).strip().lower()
    if text == "cpu":
        return -1
    if text == "cuda":
        torch = _torch_cuda()
        return torch.cuda.current_device() if torch is not None else 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise ValueError(f"{op}: device {device!r} is not 'cpu', 'cuda', 'cuda:N', an ordinal or a torch.device")


def device_name(key):
    return "cpu" if key < 0 else f"cuda:{key}"


def dlpack_device(key):
    return (DL_CPU, 0) if key < 0 else (DL_CUDA, key)


class Handle:
    """A C object, destroyed when the last holder lets go: the Python object that made it, and
    every view of its memory (so close() never frees memory a tensor still uses). keep: a handle
    that must outlive this one (a KV cache's pool)."""

    __slots__ = ("ptr", "_destroy", "_keep")

    def __init__(self, ptr, destroy, keep=None):
        self.ptr, self._destroy, self._keep = ptr, destroy, keep

    def __del__(self):
        ptr, self.ptr = self.ptr, None
        # At interpreter exit the process frees everything; destroying then could race streams.
        if ptr and not sys.is_finalizing():
            self._destroy(ptr)


class Closable:
    """A Python owner of a Handle (in _handle): close(), closed, and `with` closing it. close()
    lets go of the C object, which is destroyed once nothing else holds it: for a pool, no view of
    its memory and no KV cache on it; for a KV cache, no view of its blocks (synchronise the
    streams that copy or swap first). The object cannot be used after close()."""

    _handle = None

    @property
    def closed(self):
        return self._handle is None

    def close(self):
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nonnegative(value, op, name):
    v = operator.index(value)
    if v < 0:
        raise ValueError(f"{op}: {name} is {v}, which is negative")
    return v


# ---- the pool ----


@c_struct("yk_pool_options")
class _Options(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_size_t), ("free_fraction", ctypes.c_double)]


@c_struct("yk_pool_stats")
class _Stats(ctypes.Structure):
    _fields_ = [("total_bytes", ctypes.c_size_t), ("used_bytes", ctypes.c_size_t), ("free_bytes", ctypes.c_size_t),
                ("high_water_bytes", ctypes.c_size_t), ("largest_free_bytes", ctypes.c_size_t),
                ("fragmentation", ctypes.c_double), ("allocations", ctypes.c_uint64),
                ("alloc_calls", ctypes.c_uint64), ("failed_allocs", ctypes.c_uint64), ("on_device", ctypes.c_int)]


@dataclass(frozen=True)
class PoolStats:
    """yk_pool_stats: sizes in bytes (allocations are rounded up to 256); fragmentation is
    1 - largest_free_bytes / free_bytes; allocations live now; alloc_calls and failed_allocs
    since the pool was made."""

    total_bytes: int
    used_bytes: int
    free_bytes: int
    high_water_bytes: int
    largest_free_bytes: int
    fragmentation: float
    allocations: int
    alloc_calls: int
    failed_allocs: int
    on_device: bool


class PoolAllocation(BufferView):
    """Bytes carved from a MemoryPool: a uint8 BufferView of `size` bytes (torch.from_dlpack /
    numpy.from_dlpack give it as a tensor; .view(dtype) reinterprets). int(a) and a.ptr are its
    address. Freed only by memory_pool_free / MemoryPool.free (or with the whole pool); using it
    after that is using freed memory, as with any allocator."""

    __slots__ = ("size", "pool")

    def __init__(self, ptr, size, pool):
        super().__init__(ptr, dlpack_device(pool._key), (1, 8), (size,), (1,), pool._handle)
        self.size, self.pool = size, pool

    @property
    def ptr(self):
        return self.data_ptr

    def __int__(self):
        return self.data_ptr

    def __repr__(self):
        return f"PoolAllocation({self.size} bytes at {self.data_ptr:#x} on {self.pool.device})"


class MemoryPool(Closable):
    """A pool over one allocation (yk_pool_create): size_bytes of device memory on a CUDA device
    (None: free_fraction -- default 0.9 -- of the device's free memory), or of host memory for
    device="cpu" (size_bytes required there). Thread-safe. close() (or leaving a `with` block)
    frees the pool, and every allocation from it, once no allocation view or KV cache built on
    the pool remains."""

    def __init__(self, size_bytes=None, *, device=None, free_fraction=None):
        op = "MemoryPool"
        self._key = device_key(device, op)
        self._ctx = context_for(self._key)
        opts = _Options()
        C.yk_pool_options_init(ctypes.byref(opts))
        if size_bytes is not None:
            opts.bytes = nonnegative(size_bytes, op, "size_bytes")
            if not opts.bytes:
                raise ValueError(f"{op}: size_bytes is 0; pass None for a share of free device memory")
        if free_fraction is not None:
            opts.free_fraction = float(free_fraction)
        out = ctypes.c_void_p()
        st = C.yk_pool_create(self._ctx, ctypes.byref(opts), ctypes.byref(out))
        if st:
            raise_status(st, self._ctx, op)
        self._handle = Handle(out.value, C.yk_pool_destroy)
        self._live = {}  # address -> bytes asked for, of each allocation not yet freed
        self.device = device_name(self._key)
        self.size_bytes = self.stats().total_bytes

    def _ptr(self, op):
        h = self._handle
        if h is None:
            raise ValueError(f"{op}: the memory pool is closed")
        return h.ptr

    def allocate(self, size, *, _op="MemoryPool.allocate"):
        """size bytes (> 0) from the pool, 256-byte aligned: a PoolAllocation. OutOfMemoryError
        (a MemoryError) when no free extent fits; the pool is then unchanged."""
        p = self._ptr(_op)
        n = nonnegative(size, _op, "size")
        out = ctypes.c_void_p()
        st = C.yk_pool_alloc(p, n, ctypes.byref(out))
        if st:
            raise_status(st, self._ctx, _op)
        self._live[out.value] = n
        return PoolAllocation(out.value, n, self)

    def free(self, ptr, *, _op="MemoryPool.free"):
        """Returns an allocation (a PoolAllocation or its address) to the pool. One the pool did
        not hand out, or freed already, raises InvalidArgumentError (a ValueError); None is
        ignored."""
        p = self._ptr(_op)
        if ptr is None:
            return
        address = int(ptr)
        st = C.yk_pool_free(p, address)
        if st:
            raise_status(st, self._ctx, _op)
        self._live.pop(address, None)

    def stats(self):
        """The pool's PoolStats now."""
        s = _Stats()
        st = C.yk_pool_get_stats(self._ptr("MemoryPool.stats"), ctypes.byref(s))
        if st:
            raise_status(st, self._ctx, "MemoryPool.stats")
        return PoolStats(*(getattr(s, f) for f, _ in _Stats._fields_[:-1]), on_device=bool(s.on_device))

    def __repr__(self):
        state = "closed" if self._handle is None else f"{len(self._live)} allocations"
        return f"MemoryPool({self.size_bytes} bytes on {self.device}, {state})"


# ---- the engine's functions over a default pool per device ----

_defaults = {}  # device key -> MemoryPool
_defaults_lock = threading.Lock()


def default_memory_pool(device=None, *, size_bytes=None, free_fraction=None):
    """The pool memory_pool_allocate uses for device (named as MemoryPool's device), made on
    first use: DEFAULT_POOL_BYTES (1 GiB) unless size_bytes or free_fraction is given then.
    Sizing a pool that exists already raises ValueError. A closed default pool is made anew."""
    key = device_key(device, "default_memory_pool")
    with _defaults_lock:
        pool = _defaults.get(key)
        if pool is None or pool.closed:
            if size_bytes is None and free_fraction is None:
                size_bytes = DEFAULT_POOL_BYTES
            pool = MemoryPool(size_bytes, device=device_name(key), free_fraction=free_fraction)
            _defaults[key] = pool
        elif (size_bytes is not None and size_bytes // 256 * 256 != pool.size_bytes) or free_fraction is not None:
            raise ValueError(f"default_memory_pool: the default pool of {pool.device} exists already "
                             f"({pool.size_bytes} bytes); size it before its first use")
    return pool


def memory_pool_allocate(size, *, device=None, pool=None):
    """size bytes from the default pool of device (see default_memory_pool), or from pool: a
    PoolAllocation, whose int() is the address and whose __dlpack__ gives a uint8 tensor of size
    bytes. OutOfMemoryError (a MemoryError and a RuntimeError) when the pool has no room."""
    if pool is not None and device is not None:
        raise ValueError("memory_pool_allocate: pass device or pool, not both")
    if pool is None:
        pool = default_memory_pool(device)
    return pool.allocate(size, _op="memory_pool_allocate")


def memory_pool_free(ptr, *, pool=None):
    """Returns an allocation from memory_pool_allocate: the PoolAllocation, or its address (an
    address is looked up among the default pools, unless pool= says where it came from). None
    and 0 are ignored. Freeing twice, or memory no pool handed out, raises InvalidArgumentError
    (a ValueError)."""
    op = "memory_pool_free"
    if ptr is None:
        return
    if pool is None:
        pool = ptr.pool if isinstance(ptr, PoolAllocation) else None
    if pool is None:
        address = int(ptr)
        if address == 0:
            return
        pool = next((p for p in list(_defaults.values()) if address in p._live), None)
        if pool is None:
            raise InvalidArgumentError(f"{op}: {address:#x} is not a live allocation of a default memory pool (freed "
                                       "already, or pass pool=) [YK_ERR_INVALID_ARGUMENT]", "YK_ERR_INVALID_ARGUMENT")
    pool.free(ptr, _op=op)
