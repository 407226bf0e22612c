"""Tensors into DLTensor structs, and outputs of the caller's type.

Three adapters, picked by the tensor's type (and cached per type):
- torch.Tensor: passed as it is, through torch's own DLPack export in C++ (fill); for a view
  the C API takes in another order (attention in SDPA layout, RoPE), described from data_ptr(),
  shape, stride() and dtype and packed (describe + pack).
- numpy.ndarray: described from the array interface (strides from bytes to elements): numpy's
  own __dlpack__ refuses read-only arrays, which weights often are.
- anything else with __dlpack__ / __dlpack_device__ (CuPy, JAX, ...): a capsule is taken for the
  call and the DLTensor read from it. Outputs come from the array's __array_namespace__().

Described tensors are written with one struct.pack_into into a per-thread scratch buffer of
slots (48 bytes of DLTensor, then 8 shape and 8 stride int64s). The C calls read them before
returning and keep no pointer to them, so a thread's next call reuses the slots.
"""

import ctypes
import struct
import sys
import threading

from ._lib import DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED, HOST_DEVICE_TYPES, context_for, _contexts

MAX_DIMS = 8
_SLOT_BYTES = 48 + 2 * 8 * MAX_DIMS
_SLOTS = 12
_SHAPE_AT, _STRIDES_AT = 48, 48 + 8 * MAX_DIMS

# DLTensor: data, device {type, id}, ndim, dtype {code u8, bits u8, lanes u16}, shape*, strides*,
# byte_offset; then the shape and stride arrays the two pointers point at.
_PACKERS = [struct.Struct(f"<QiiiBBHQQQ{n}q{(MAX_DIMS - n) * 8}x{n}q") for n in range(MAX_DIMS + 1)]

DL_INT, DL_UINT, DL_FLOAT, DL_BFLOAT, DL_BOOL, DL_FLOAT8_E4M3FN = 0, 1, 2, 4, 6, 10


class _Scratch(threading.local):
    def __init__(self):
        self.buf = ctypes.create_string_buffer(_SLOT_BYTES * _SLOTS)
        self.base = ctypes.addressof(self.buf)


_scratch = _Scratch()


def scratch():
    s = _scratch
    return s.buf, s.base


def pack(buf, base, slot, d, shape=None, strides=None):
    """Writes tensor description d (from an adapter's describe) into slot; returns its address.
    shape and strides, when given, replace d's (a permuted or broadcast view of the same memory)."""
    if shape is None:
        shape, strides = d[5], d[6]
    n = len(shape)
    if n > MAX_DIMS:
        raise ValueError(f"tensors of more than {MAX_DIMS} dimensions are not supported (got {n})")
    off = slot * _SLOT_BYTES
    addr = base + off
    _PACKERS[n].pack_into(buf, off, d[0], d[1], d[2], n, d[3], d[4], 1, addr + _SHAPE_AT, addr + _STRIDES_AT, 0,
                          *shape, *strides)
    return addr


# A description is a tuple:
#   (data address, DLPack device type, device id, type code, bits, shape, strides in elements, keepalive)
# keepalive holds what must outlive the C call (a DLPack capsule), or None.


def device_text(d):
    if d[1] == DL_CPU:
        return "host memory"
    if d[1] == DL_CUDA_HOST:
        return "pinned host memory"
    if d[1] in (DL_CUDA, DL_CUDA_MANAGED):
        return f"cuda:{d[2]}"
    return f"memory of DLPack device type {d[1]}"


# ---- torch ----


class _Torch:
    name = "torch"

    def __init__(self, torch):
        self.torch = torch
        t = torch
        self.dtypes = {t.float32: (DL_FLOAT, 32), t.float16: (DL_FLOAT, 16), t.bfloat16: (DL_BFLOAT, 16),
                       t.float64: (DL_FLOAT, 64), t.int32: (DL_INT, 32), t.int64: (DL_INT, 64),
                       t.int16: (DL_INT, 16), t.int8: (DL_INT, 8), t.uint8: (DL_UINT, 8), t.bool: (DL_BOOL, 8)}
        if hasattr(t, "float8_e4m3fn"):  # float8 KV caches (torch 2.1 and later)
            self.dtypes[t.float8_e4m3fn] = (DL_FLOAT8_E4M3FN, 8)
        graph = getattr(getattr(torch, "autograd", None), "graph", None)
        self.increment_version = getattr(graph, "increment_version", None) or torch._C._increment_version
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        # The raw-stream query is what torch's own compiled code calls per launch (a few hundred ns);
        # torch.cuda.current_stream() builds a Stream object and costs microseconds.
        self.raw_stream = raw if raw is not None else (lambda i: torch.cuda.current_stream(i).cuda_stream)

    def describe(self, t, op, name):
        dt = self.dtypes.get(t.dtype)
        if dt is None:
            raise ValueError(f"{op}: {name} has dtype {t.dtype}, which DLPack cannot carry here")
        if t.is_cuda:
            return (t.data_ptr(), DL_CUDA, t.get_device(), dt[0], dt[1], t.shape, t.stride(), None)
        if t.device.type != "cpu":
            raise ValueError(f"{op}: {name} is on {t.device}; libyk takes CUDA or CPU tensors")
        return (t.data_ptr(), DL_CPU, 0, dt[0], dt[1], t.shape, t.stride(), None)

    def stream(self, device_id):
        return self.raw_stream(device_id)

    def empty(self, like, shape, dtype=None):
        # new_empty(*shape) parses its sizes twice as fast as new_empty(shape) (torch 2.x)
        if dtype is None:
            return like.new_empty(*shape) if len(shape) else like.new_empty(())
        return like.new_empty(*shape, dtype=getattr(self.torch, dtype)) if len(shape) else like.new_empty(
            (), dtype=getattr(self.torch, dtype))

    def empty_same(self, like):
        """A compact tensor of like's shape, dtype and device; empty_like skips parsing a shape."""
        if like.is_contiguous():
            return self.torch.empty_like(like)
        return self.torch.empty_like(like, memory_format=self.torch.contiguous_format)

    def check_writable(self, t, op, name):
        pass  # torch tensors are always writable through their storage

    def written(self, t):
        """t was written in place: bump its version counter, as torch's own in-place ops do, so
        autograd (and the lse registry) see the change."""
        self.increment_version(t)

    def version(self, t):
        return t._version  # bumped by every in-place change

    def max_abs_diff(self, a, b):
        return float((a.float() - b.float()).abs().max().item()) if a.numel() else 0.0

    def max_abs(self, a):
        return float(a.float().abs().max().item()) if a.numel() else 0.0


# ---- numpy ----


class _Numpy:
    name = "numpy"

    def __init__(self, np):
        self.np = np
        self.dtypes = {np.dtype(np.float32): (DL_FLOAT, 32), np.dtype(np.float16): (DL_FLOAT, 16),
                       np.dtype(np.float64): (DL_FLOAT, 64), np.dtype(np.int32): (DL_INT, 32),
                       np.dtype(np.int64): (DL_INT, 64), np.dtype(np.int16): (DL_INT, 16),
                       np.dtype(np.int8): (DL_INT, 8), np.dtype(np.uint8): (DL_UINT, 8),
                       np.dtype(np.bool_): (DL_BOOL, 8)}

    def _dtype(self, dt, op, name):
        c = self.dtypes.get(dt)
        if c is None:
            if dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes' bfloat16
                c = (DL_BFLOAT, 16)
                self.dtypes[dt] = c
            elif dt.name == "float8_e4m3fn" and dt.itemsize == 1:  # ml_dtypes' float8, for KV caches
                c = (DL_FLOAT8_E4M3FN, 8)
                self.dtypes[dt] = c
            else:
                raise ValueError(f"{op}: {name} has dtype {dt.str}, which DLPack cannot carry here "
                                 "(native byte order float16/32/64, bfloat16 or integers)")
        return c

    def describe(self, a, op, name):
        dt = a.dtype
        code, bits = self._dtype(dt, op, name)
        size = dt.itemsize
        strides = a.strides
        el = tuple(s // size for s in strides)
        for s, e in zip(strides, el):
            if s != e * size:
                raise ValueError(f"{op}: {name} has byte strides {strides} that are not whole elements")
        return (a.__array_interface__["data"][0], DL_CPU, 0, code, bits, a.shape, el, None)

    def stream(self, device_id):
        return None

    def empty(self, like, shape, dtype=None):
        return self.np.empty(shape, dtype=like.dtype if dtype is None else dtype)

    def empty_same(self, like):
        return self.np.empty(like.shape, dtype=like.dtype)

    def check_writable(self, a, op, name):
        if not a.flags.writeable:
            raise ValueError(f"{op}: {name} is read-only and would be written in place")

    def written(self, a):
        pass  # numpy keeps no version counter

    def version(self, a):
        return None

    def max_abs_diff(self, a, b):
        np = self.np
        return float(np.max(np.abs(a.astype(np.float32) - b.astype(np.float32)))) if a.size else 0.0

    def max_abs(self, a):
        np = self.np
        return float(np.max(np.abs(a.astype(np.float32)))) if a.size else 0.0


# ---- any other array with __dlpack__ ----


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_read_pointer = ctypes.c_void_p.from_address


def _capsule_pointer_offset():
    """Where a capsule keeps its pointer, right after the object header (PyCapsule in CPython's
    capsule.c), if reading it there gives what PyCapsule_GetPointer gives; else None. Reading it
    directly costs 0.8 us less a tensor than the ctypes call (measured)."""
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    target = ctypes.c_int64(0)
    probe = new(ctypes.addressof(target), b"yaie_kernels.probe", None)
    offset = object.__basicsize__
    if _read_pointer(id(probe) + offset).value == ctypes.addressof(target) == _capsule_pointer(
            probe, b"yaie_kernels.probe"):
        return offset
    return None


_CAPSULE_POINTER_AT = _capsule_pointer_offset()


class _Generic:
    name = "dlpack"

    def describe(self, x, op, name):
        dev_type, dev_id = x.__dlpack_device__()
        # For device arrays the producer orders its pending work before the legacy default stream
        # (the protocol's stream=1), which is the stream the call then runs on.
        cap = x.__dlpack__(stream=1) if dev_type in (DL_CUDA, DL_CUDA_MANAGED) else x.__dlpack__()
        t = DLTensor.from_address(_capsule_pointer(cap, b"dltensor"))
        n = t.ndim
        if t.dtype.lanes != 1:
            raise ValueError(f"{op}: {name} has {t.dtype.lanes} lanes; libyk takes scalar elements")
        shape = tuple(t.shape[i] for i in range(n))
        if t.strides:
            strides = tuple(t.strides[i] for i in range(n))
        else:
            strides, step = [0] * n, 1
            for i in range(n - 1, -1, -1):
                strides[i] = step
                step *= shape[i]
            strides = tuple(strides)
        return ((t.data or 0) + t.byte_offset, t.device.device_type, t.device.device_id, t.dtype.code, t.dtype.bits,
                shape, strides, cap)

    def stream(self, device_id):
        return None  # the legacy default stream, matching stream=1 above

    def empty(self, like, shape, dtype=None):
        ns_of = getattr(like, "__array_namespace__", None)
        if ns_of is None:
            raise TypeError(f"cannot make an output like a {type(like).__name__}: it has no __array_namespace__; "
                            "pass torch tensors or numpy arrays")
        ns = ns_of()
        kw = {"dtype": like.dtype if dtype is None else getattr(ns, dtype)}
        if hasattr(like, "device"):
            kw["device"] = like.device
        return ns.empty(shape, **kw)

    def empty_same(self, like):
        return self.empty(like, tuple(like.shape))

    def check_writable(self, x, op, name):
        pass

    def written(self, x):
        pass

    def version(self, x):
        return None

    def _ns(self, a):
        if not hasattr(a, "__array_namespace__"):
            raise TypeError(f"cannot compare arrays of type {type(a).__name__}")
        return a.__array_namespace__()

    def max_abs_diff(self, a, b):
        ns = self._ns(a)
        return float(ns.max(ns.abs(ns.astype(a, ns.float32) - ns.astype(b, ns.float32))))

    def max_abs(self, a):
        ns = self._ns(a)
        return float(ns.max(ns.abs(ns.astype(a, ns.float32))))


def _torch_exporter(torch):
    """torch._C._to_dlpack if it makes a legacy "dltensor" capsule whose DLTensor is the
    tensor's (checked once on a probe tensor), else None: then torch tensors are described from
    their attributes like any other."""
    export = getattr(torch._C, "_to_dlpack", None)
    if export is None:
        return None
    try:
        probe = torch.arange(6, dtype=torch.float32).reshape(2, 3)[:, 1:]
        cap = export(probe)
        t = DLTensor.from_address(_capsule_pointer(cap, b"dltensor"))
        ok = (t.ndim == 2 and (t.data or 0) + t.byte_offset == probe.data_ptr() and t.dtype.code == DL_FLOAT
              and t.dtype.bits == 32 and [t.shape[0], t.shape[1]] == [2, 2] and bool(t.strides)
              and [t.strides[0], t.strides[1]] == [3, 1] and t.device.device_type == DL_CPU)
        return export if ok else None
    except Exception:  # noqa: BLE001 - any surprise disables the shortcut, never the call
        return None


class _TorchFast:
    """What the small ops' inline torch path needs (_ops.rms_norm, _ops._act_and_mul). Filled
    when the first torch tensor is seen, if torch's DLPack export passed its probe and capsules
    can be read directly; until then `types` is empty and every call takes the general path."""

    types = frozenset()  # torch.Tensor and the subclasses seen (nn.Parameter, ...)
    export = None  # torch._C._to_dlpack
    read = _read_pointer
    at = 0  # _CAPSULE_POINTER_AT
    empty_like = None
    raw_stream = None
    increment_version = None


torch_fast = _TorchFast()
_GENERIC = _Generic()
_ADAPTERS = {}  # type -> adapter, filled on first sight of each type
_adapter_lock = threading.Lock()
_torch_adapter = None
_numpy_adapter = None
_to_dlpack = None


def _find_adapter(x, op, name):
    global _torch_adapter, _numpy_adapter, _to_dlpack
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch was imported
    np = sys.modules.get("numpy")
    with _adapter_lock:
        if torch is not None and isinstance(x, torch.Tensor):
            if _torch_adapter is None:
                _torch_adapter = _Torch(torch)
                _to_dlpack = _torch_exporter(torch)
                if _to_dlpack is not None and _CAPSULE_POINTER_AT is not None:
                    torch_fast.export, torch_fast.at = _to_dlpack, _CAPSULE_POINTER_AT
                    torch_fast.empty_like, torch_fast.raw_stream = torch.empty_like, _torch_adapter.raw_stream
                    torch_fast.increment_version = _torch_adapter.increment_version
            a = _torch_adapter
            if torch_fast.export is not None:
                torch_fast.types = torch_fast.types | {type(x)}
        elif np is not None and isinstance(x, np.ndarray):
            if _numpy_adapter is None:
                _numpy_adapter = _Numpy(np)
            a = _numpy_adapter
        elif hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
            a = _GENERIC
        else:
            raise TypeError(f"{op}: {name} is a {type(x).__name__}; expected a torch tensor, a numpy array or an "
                            "array with __dlpack__")
        _ADAPTERS[type(x)] = a
    return a


def adapter(x, op, name):
    a = _ADAPTERS.get(type(x))
    return a if a is not None else _find_adapter(x, op, name)


def describe(x, op, name):
    a = _ADAPTERS.get(type(x))
    if a is None:
        a = _find_adapter(x, op, name)
    return a.describe(x, op, name)


def fill(buf, base, slot, t, op, name):
    """The DLTensor of a tensor passed as it is (no permuted view), for the small ops' hot path.
    Returns (address, keepalive); keepalive must outlive the C call.

    torch tensors go through torch's own DLPack export (torch._C._to_dlpack, in C++), which
    measured 2.4x faster than reading data_ptr(), shape, stride() and dtype from Python and
    packing them: each of those attribute reads costs about as much as the whole export."""
    if _ADAPTERS.get(type(t)) is _torch_adapter and _to_dlpack is not None:
        try:
            cap = _to_dlpack(t)
        except Exception:  # noqa: BLE001 - a tensor DLPack cannot carry: describe() says why
            cap = None
        if cap is not None:
            if _CAPSULE_POINTER_AT is not None:
                return _read_pointer(id(cap) + _CAPSULE_POINTER_AT).value, cap
            return _capsule_pointer(cap, b"dltensor"), cap
    d = describe(t, op, name)
    return pack(buf, base, slot, d), d[7]


def context_and_stream(t, op, name):
    """The context and stream for a call whose tensors are where t is: the caller's current
    torch stream for torch CUDA tensors, the legacy default stream for other device arrays,
    none for host memory."""
    a = _ADAPTERS.get(type(t))
    if a is _torch_adapter and a is not None:
        key = t.get_device()  # -1 on the CPU, the ordinal on CUDA
        if key >= 0 and not t.is_cuda:
            raise ValueError(f"{op}: {name} is on {t.device}; libyk takes CUDA or CPU tensors")
    elif a is _numpy_adapter and a is not None:
        key = -1
    else:
        dev_type, dev_id = t.__dlpack_device__()
        key = -1 if dev_type in HOST_DEVICE_TYPES else dev_id
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = context_for(key)
    if key < 0:
        return ctx, None
    return ctx, (a.raw_stream(key) if a is _torch_adapter else a.stream(key))


def place(ad, d):
    """The context and stream for a call whose tensors are where d is."""
    if d[1] in HOST_DEVICE_TYPES:
        ctx = _contexts.get(-1)
        return (ctx if ctx is not None else context_for(-1)), None
    ctx = _contexts.get(d[2])
    return (ctx if ctx is not None else context_for(d[2])), ad.stream(d[2])


def written(t, op, name):
    """Tells t's framework that a call wrote t in place (torch: its version counter)."""
    adapter(t, op, name).written(t)


def require_host(d, op, name):
    if d[1] not in HOST_DEVICE_TYPES:
        raise ValueError(f"{op}: {name} is in {device_text(d)}; the cpu_ functions take host tensors "
                         "(numpy arrays or torch CPU tensors)")
