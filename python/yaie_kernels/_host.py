"""Integers on the host: token ids, block ids, page tables and the cache's slots as numpy arrays,
and their addresses for the C calls that take plain int32/int64 pointers."""

import ctypes

from ._lib import HOST_DEVICE_TYPES
from ._tensor import describe, device_text


def _np():
    try:
        import numpy
    except ImportError as e:  # pragma: no cover - numpy is in every engine's environment
        raise ImportError("yaie_kernels: the KV cache's tables and slots are numpy arrays; install numpy") from e
    return numpy


_char_view = ctypes.c_char.from_buffer


def _address(a):
    """The data address of a C-contiguous numpy array. Through the buffer protocol for writable
    ones: 2-3x faster than __array_interface__ or .ctypes.data, which build objects a call."""
    try:
        return ctypes.addressof(_char_view(a))
    except (TypeError, ValueError, BufferError):  # read-only or empty
        return a.__array_interface__["data"][0]


def host_array(x, op, name):
    """x as a numpy array: numpy arrays and lists as they are, host tensors without a copy, device
    tensors copied to the host (torch's .cpu(), CuPy's .get()): for what the host must read."""
    np = _np()
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        d = describe(x, op, name)
        if d[1] not in HOST_DEVICE_TYPES:
            if hasattr(x, "cpu"):
                x = x.cpu()
            elif hasattr(x, "get"):
                x = x.get()
            else:
                raise ValueError(f"{op}: {name} is in {device_text(d)}, which the host cannot read; pass it in host "
                                 "memory")
    return np.asarray(x)


def int_array(x, op, name, dtype="int32", ndim=1):
    """x as a C-contiguous host array of dtype (int32 or int64), of ndim dimensions unless ndim is
    None. Integers only; a value the dtype cannot hold raises ValueError rather than wrapping."""
    np = _np()
    a = host_array(x, op, name)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimension{'s' if ndim != 1 else ''} of integer ids, got "
                         f"shape {a.shape}")
    want = np.dtype(dtype)
    if a.dtype != want:
        if a.size == 0:
            return np.empty(a.shape, want)  # [] reads as float64
        if a.dtype.kind not in "iu":
            raise ValueError(f"{op}: {name} must hold integers, not {a.dtype}")
        info = np.iinfo(want)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"{op}: {name} holds {lo if lo < info.min else hi}, outside {want.name}")
    return np.ascontiguousarray(a, want)
