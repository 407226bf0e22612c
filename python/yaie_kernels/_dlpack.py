"""libyk's own memory (pool allocations, the KV cache's blocks) handed out through DLPack, so
that torch.from_dlpack and numpy.from_dlpack give views of it without a copy.

A BufferView describes one strided array in that memory and holds its owner (the C object's
handle), so the memory outlives every view and every tensor made from one. __dlpack__ makes a
DLManagedTensorVersioned ("dltensor_versioned", DLPack 1.0: numpy only makes writable arrays of
those) when the consumer asks with max_version, else a legacy DLManagedTensor ("dltensor", older
torch). Each export is kept in a table until the consumer calls its deleter, or the capsule dies
unconsumed.

The deleter and the capsule destructor are ctypes callbacks that C code calls whenever the last
tensor goes, possibly while the interpreter is shutting down: they are made immortal (one leaked
reference each) so that the code they point at is never freed under a caller.
"""

import ctypes

from ._tensor import DLTensor

__all__ = ["BufferView"]

_READ_ONLY_FLAG = 1  # DLPACK_FLAG_BITMASK_READ_ONLY
_DTYPE_NAMES = {(2, 16): "float16", (4, 16): "bfloat16", (2, 32): "float32", (1, 8): "uint8", (0, 32): "int32",
                (0, 64): "int64", (10, 8): "float8_e4m3fn"}
_DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host"}

_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _Legacy(ctypes.Structure):
    """DLManagedTensor."""

    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _Versioned(ctypes.Structure):
    """DLManagedTensorVersioned (DLPack 1.0)."""

    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _DELETER), ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


_LEGACY_NAME, _VERSIONED_NAME = b"dltensor", b"dltensor_versioned"  # module constants: capsules keep the pointers
_exports = {}  # address of a managed tensor -> (the struct, its shape and strides, the view)


def _release(address):
    try:
        _exports.pop(address, None)
    except Exception:  # noqa: BLE001 - at shutdown the table may be gone; there is nothing left to free
        pass


_deleter = _DELETER(_release)

_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


def _capsule_died(capsule):
    """A capsule going away: unconsumed (its name unchanged), its export is released here;
    consumed, the consumer renamed it and calls the deleter itself."""
    try:
        for name in (_VERSIONED_NAME, _LEGACY_NAME):
            if _capsule_is_valid(capsule, name):
                _release(_capsule_pointer(capsule, name))
                return
    except Exception:  # noqa: BLE001 - see _release
        pass


_destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_capsule_died)
_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype = ctypes.py_object
_new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
for _callback in (_deleter, _destructor):
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(_callback))


class BufferView:
    """A strided array in libyk's memory, for torch.from_dlpack / numpy.from_dlpack (no copy).

    data_ptr: its address (a device address for CUDA memory); device: the DLPack (type, id);
    dtype: "float16", "bfloat16", "uint8", ...; shape and strides in elements. Keeps its owner
    (the pool or the KV cache) alive as long as it, or a tensor made from it, lives.

    The view does not order streams: a consumer's stream passed to __dlpack__ is not waited on.
    Make the reader wait for the writer (the same stream, KVCacheManager.sync(), or its event)."""

    __slots__ = ("data_ptr", "device", "dtype", "shape", "strides", "_code", "_owner")

    def __init__(self, data_ptr, device, code, shape, strides, owner):
        self.data_ptr = int(data_ptr)
        self.device = (int(device[0]), int(device[1]))
        self._code = code  # (DLPack type code, bits)
        self.dtype = _DTYPE_NAMES.get(code, f"code{code[0]}x{code[1]}")
        self.shape = tuple(int(n) for n in shape)
        self.strides = tuple(int(s) for s in strides)
        self._owner = owner

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if copy:
            raise BufferError("a BufferView is exported without copies (copy=True was asked)")
        if dl_device is not None and tuple(dl_device) != self.device:
            raise BufferError(f"the view is on DLPack device {self.device}, not {tuple(dl_device)}")
        versioned = max_version is not None and max_version[0] >= 1
        m = _Versioned() if versioned else _Legacy()
        n = len(self.shape)
        dims = (ctypes.c_int64 * (2 * n))(*self.shape, *self.strides)
        t = m.dl_tensor
        t.data = self.data_ptr
        t.device.device_type, t.device.device_id = self.device
        t.ndim = n
        t.dtype.code, t.dtype.bits, t.dtype.lanes = self._code[0], self._code[1], 1
        t.shape = ctypes.cast(dims, ctypes.POINTER(ctypes.c_int64))
        t.strides = ctypes.cast(ctypes.addressof(dims) + 8 * n, ctypes.POINTER(ctypes.c_int64))
        t.byte_offset = 0
        m.deleter = _deleter
        if versioned:
            m.major, m.minor, m.flags = 1, 0, 0
        address = ctypes.addressof(m)
        _exports[address] = (m, dims, self)
        return _new_capsule(address, _VERSIONED_NAME if versioned else _LEGACY_NAME,
                            ctypes.cast(_destructor, ctypes.c_void_p))

    @property
    def nbytes(self):
        """Bytes from the first element to one past the last (the span the view covers)."""
        if 0 in self.shape:
            return 0
        return (1 + sum((d - 1) * s for d, s in zip(self.shape, self.strides))) * (self._code[1] // 8)

    def __repr__(self):
        kind = _DEVICE_NAMES.get(self.device[0], f"dlpack device {self.device[0]}")
        where = kind if self.device[0] == 1 else f"{kind}:{self.device[1]}"
        return (f"BufferView({self.dtype}, shape={self.shape}, strides={self.strides}, {where}, "
                f"data_ptr={self.data_ptr:#x})")
