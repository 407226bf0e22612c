"""libyk through ctypes: finding and loading it, the prototypes, the per-device contexts, and
turning a failed status into a Python exception.

The library is loaded on first use, not at import, so `import yaie_kernels` works on a machine
without it (the first call then raises LibraryNotFoundError).
"""

import ctypes
import ctypes.util
import logging
import os
import threading

__all__ = [
    "LibraryNotFoundError",
    "YKError",
    "InvalidArgumentError",
    "UnsupportedError",
    "DeviceError",
    "OutOfMemoryError",
    "NotFoundError",
    "library_path",
    "library_version",
]

# DLPack device types the library accepts (dlpack.h): host memory runs on the CPU fallback,
# device memory on the GPU of the same ordinal.
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13
HOST_DEVICE_TYPES = (DL_CPU, DL_CUDA_HOST)

_YK_DEVICE_CPU, _YK_DEVICE_CUDA = 1, 2
_STATUS_NAMES = {
    0: "YK_OK",
    1: "YK_ERR_INVALID_ARGUMENT",
    2: "YK_ERR_UNSUPPORTED",
    3: "YK_ERR_NO_DEVICE",
    4: "YK_ERR_COMPILE",
    5: "YK_ERR_CUDA",
    6: "YK_ERR_OUT_OF_MEMORY",
    7: "YK_ERR_IO",
    8: "YK_ERR_NOT_FOUND",
    9: "YK_ERR_INTERNAL",
}


class LibraryNotFoundError(ImportError):
    """libyk could not be loaded; the message lists every place that was tried and why it failed."""


class YKError(Exception):
    """A failed libyk call. `status` is the C status name ("YK_ERR_CUDA"); the message is the
    library's own (yk_ctx_last_error)."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(YKError, ValueError):
    """YK_ERR_INVALID_ARGUMENT: misshaped, inconsistent or misplaced tensors or values."""


class UnsupportedError(YKError, ValueError):
    """YK_ERR_UNSUPPORTED: well-formed input outside what the kernels are built for."""


class DeviceError(YKError, RuntimeError):
    """Every other status: no device, NVRTC or driver failure, out of memory, cache I/O, internal."""


class OutOfMemoryError(DeviceError, MemoryError):
    """YK_ERR_OUT_OF_MEMORY: a pool, the KV cache's blocks or the device ran out. A DeviceError
    (RuntimeError, as torch's own OutOfMemoryError) and a MemoryError; the call changed nothing."""


class NotFoundError(YKError, KeyError):
    """YK_ERR_NOT_FOUND: an id or name the library does not hold (a freed KV cache sequence)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


_ERROR_CLASSES = {1: InvalidArgumentError, 2: UnsupportedError, 6: OutOfMemoryError, 8: NotFoundError}


def _error_class(status):
    return _ERROR_CLASSES.get(status, DeviceError)


# ---- finding the library ----


def _candidates():
    """(description, path-or-name) pairs in the order they are tried."""
    env = os.environ.get("YK_LIBRARY")
    if env:
        # An explicit choice is the only one tried: falling back to another libyk would hide the
        # mistake and test the wrong build.
        return [("YK_LIBRARY", env)]
    here = os.path.dirname(os.path.abspath(__file__))
    out = [("the build tree beside the package source", os.path.normpath(os.path.join(here, "..", "..", "build", "libyk.so")))]
    found = ctypes.util.find_library("yk")
    out.append(("ctypes.util.find_library('yk')", found))
    out.append(("the dynamic loader's search path", "libyk.so"))
    return out


def _open_library():
    tried = []
    for where, path in _candidates():
        if path is None:
            tried.append(f"  {where}: not found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"  {where}: {path} does not exist")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append(f"  {where}: {path}: {e}")
    raise LibraryNotFoundError(
        "yaie_kernels: cannot load libyk. Build it (cmake -S . -B build && cmake --build build --target yk) "
        "and set YK_LIBRARY to the libyk.so to use. Tried:\n" + "\n".join(tried)
    )


# ---- prototypes ----

_p = ctypes.c_void_p
_i = ctypes.c_int
_f = ctypes.c_float
_i64 = ctypes.c_int64


# ---- struct layouts: each ctypes copy of a public C struct, checked against the library's sizeof ----

_LAYOUTS = []  # (ctypes class, C type name)
_loaded_path = None  # the libyk in use, once loaded and checked


def c_struct(name):
    """Class decorator: cls copies the C struct `name`; load() (or this, if already loaded) checks
    that libyk's sizeof(name) equals ctypes.sizeof(cls), so a struct that grew in C fails at load
    instead of the library writing past a Python buffer."""

    def register(cls):
        if _loaded_path is not None:
            check_layouts([(cls, name)])
        _LAYOUTS.append((cls, name))
        return cls

    return register


def check_layouts(layouts, path=None):
    """Raises LibraryNotFoundError naming every struct whose copy differs from the library's."""
    wrong = []
    for cls, name in layouts:
        size = C.yk_struct_size(name.encode())
        if size != ctypes.sizeof(cls):
            wrong.append(f"{name}: {ctypes.sizeof(cls)} bytes here, {size} in libyk" if size else f"{name}: not in libyk")
    if wrong:
        raise LibraryNotFoundError(
            f"yaie_kernels: {path or _loaded_path} does not match these bindings' struct layouts ({'; '.join(wrong)})"
        )


@c_struct("yk_ctx_options")
class CtxOptions(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_int),
        ("device_ordinal", ctypes.c_int),
        ("cache_dir", ctypes.c_char_p),
        ("cache_path", ctypes.c_char_p),
        ("cache_memory_only", ctypes.c_int),
        ("cpu_threads", ctypes.c_int),
        ("log", ctypes.c_void_p),
        ("log_user", ctypes.c_void_p),
    ]


@c_struct("yk_attention_params")
class AttentionParams(ctypes.Structure):
    """yk_attention_params (include/yk/ops.h)."""

    _fields_ = [
        ("causal", ctypes.c_int),
        ("scale", ctypes.c_float),
        ("cu_seqlens_q", ctypes.c_void_p),
        ("cu_seqlens_k", ctypes.c_void_p),
        ("max_seqlen_q", ctypes.c_int),
        ("max_seqlen_k", ctypes.c_int),
        ("num_splits", ctypes.c_int),
        ("workspace", ctypes.c_void_p),
        ("deterministic", ctypes.c_int),
    ]


@c_struct("yk_radix_node")
class RadixNode(ctypes.Structure):
    """yk_radix_node (include/yk/radix.h): passed by value to lock and unlock."""

    _fields_ = [("index", ctypes.c_uint32), ("generation", ctypes.c_uint32)]


_PROTOTYPES = {
    # name: (restype, argtypes)
    "yk_version": (ctypes.c_char_p, []),
    "yk_struct_size": (ctypes.c_size_t, [ctypes.c_char_p]),
    "yk_status_name": (ctypes.c_char_p, [_i]),
    "yk_ctx_options_init": (None, [_p]),
    "yk_ctx_create": (_i, [_p, _p]),
    "yk_ctx_destroy": (None, [_p]),
    "yk_ctx_last_error": (ctypes.c_char_p, [_p]),
    "yk_rms_norm": (_i, [_p, _p, _p, _f, _p, _p]),
    "yk_fused_add_rms_norm": (_i, [_p, _p, _p, _p, _f, _p]),
    "yk_rope": (_i, [_p, _p, _p, _p, _p, _i, _p]),
    "yk_rope_cos_sin": (_i, [_p, _p, _p, _p, _p, _p, _i, _i, _p]),
    "yk_silu_and_mul": (_i, [_p, _p, _p, _p]),
    "yk_gelu_and_mul": (_i, [_p, _p, _p, _p]),
    "yk_gelu_tanh_and_mul": (_i, [_p, _p, _p, _p]),
    "yk_flash_attention_forward": (_i, [_p, _p, _p, _p, _p, _p, _p, _p]),
    "yk_flash_attention_forward_workspace_floats": (ctypes.c_size_t, [_p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i]),
    "yk_flash_attention_backward": (_i, [_p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p]),
    "yk_flash_attention_backward_workspace_floats": (ctypes.c_size_t, [_i64, _i64, _i64, _i64, _i]),
    "yk_attention_decode": (_i, [_p, _p, _p, _p, _p, _p, _p, _p]),
    "yk_attention_decode_workspace_floats": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, _i]),
    "yk_merge_attention_states": (_i, [_p, _p, _p, _p, _p, _p, _p, _p]),
    # the memory pool (yk/pool.h)
    "yk_pool_options_init": (None, [_p]),
    "yk_pool_create": (_i, [_p, _p, _p]),
    "yk_pool_destroy": (None, [_p]),
    "yk_pool_alloc": (_i, [_p, ctypes.c_size_t, _p]),
    "yk_pool_free": (_i, [_p, _p]),
    "yk_pool_get_stats": (_i, [_p, _p]),
    # the paged KV cache (yk/kv.h)
    "yk_kv_cache_config_init": (None, [_p]),
    "yk_kv_cache_create": (_i, [_p, _p, _p]),
    "yk_kv_cache_destroy": (None, [_p]),
    "yk_kv_cache_get_info": (_i, [_p, _p]),
    "yk_kv_cache_layer": (_i, [_p, _i, _p, _p]),
    "yk_kv_cache_host_layer": (_i, [_p, _i, _p, _p]),
    "yk_kv_seq_add": (_i, [_p, _p]),
    "yk_kv_seq_append": (_i, [_p, _i64, _i64, _p]),
    "yk_kv_seq_blocks_needed": (_i, [_p, _i64, _i64, _p]),
    "yk_kv_seq_fork": (_i, [_p, _i64, _p]),
    "yk_kv_seq_free": (_i, [_p, _i64]),
    "yk_kv_seq_get_info": (_i, [_p, _i64, _p]),
    "yk_kv_cache_copy_blocks": (_i, [_p, _p]),
    "yk_kv_cache_swap_blocks_to_cpu": (_i, [_p, _p, _p, _i64, _p]),
    "yk_kv_cache_swap_blocks_from_cpu": (_i, [_p, _p, _p, _i64, _p]),
    "yk_kv_seq_swap_out": (_i, [_p, _i64, _p]),
    "yk_kv_seq_swap_in": (_i, [_p, _i64, _p]),
    "yk_kv_cache_event": (_p, [_p]),
    "yk_kv_cache_sync": (_i, [_p]),
    "yk_kv_cache_table_sizes": (_i, [_p, _p, _i64, _p, _p]),
    "yk_kv_cache_block_tables": (_i, [_p, _p, _i64, _p, _i64, _p]),
    "yk_kv_cache_csr": (_i, [_p, _p, _i64, _p, _p, _i64, _p]),
    "yk_copy_blocks": (_i, [_p, _p, _i, _p, _i64, _p]),
    "yk_append_kv": (_i, [_p, _p, _p, _p, _p, _i, _p, _p, _p, _p]),
    # paged attention (yk/ops.h)
    "yk_paged_attention_decode": (_i, [_p, _p, _p, _p, _p, _p, _p]),
    "yk_paged_attention_prefill": (_i, [_p, _p, _p, _p, _p, _p, _p]),
    "yk_paged_plan_create": (_i, [_p, _p]),
    "yk_paged_plan_destroy": (None, [_p]),
    "yk_paged_decode_plan": (_i, [_p, _p, _p, _i64, _p]),
    "yk_paged_decode_run": (_i, [_p, _p, _p, _p, _p, _p, _p]),
    "yk_cascade_attention_decode": (_i, [_p, _p, _p, _p, _p, _p, _p, _p]),
    "yk_cascade_decode_workspace_floats": (ctypes.c_size_t, [_p, _i64, _i64, _i64, _i64, _i64, _i]),
    # the radix tree and the prefix cache (yk/radix.h)
    "yk_radix_create": (_i, [_p, _i, _p, _p]),
    "yk_radix_destroy": (None, [_p]),
    "yk_radix_match_prefix": (_i, [_p, _p, _i64, _p, _i64, _p]),
    "yk_radix_prefix_length": (_i, [_p, _p, _i64, _p]),
    "yk_radix_insert": (_i, [_p, _p, _i64, _p, _p, _p]),
    "yk_radix_lock": (_i, [_p, RadixNode]),
    "yk_radix_unlock": (_i, [_p, RadixNode]),
    "yk_radix_evict": (_i, [_p, _i64, _p]),
    "yk_radix_get_stats": (_i, [_p, _p]),
    "yk_radix_order_by_prefix": (_i, [_p, _p, _p, _i64, _p, _p]),
    "yk_prefix_cache_create": (_i, [_p, _p]),
    "yk_prefix_cache_destroy": (None, [_p]),
    "yk_prefix_cache_start": (_i, [_p, _p, _i64, _p, _p]),
    "yk_prefix_cache_append": (_i, [_p, _i64, _i64, _p]),
    "yk_prefix_cache_reserve": (_i, [_p, _i64]),
    "yk_prefix_cache_insert": (_i, [_p, _i64, _p, _i64]),
    "yk_prefix_cache_finish": (_i, [_p, _i64, _p, _i64]),
    "yk_prefix_cache_order_by_prefix": (_i, [_p, _p, _p, _i64, _p, _p]),
    "yk_prefix_cache_get_stats": (_i, [_p, _p]),
}


class _Functions:
    """The bound C functions, filled in by load(); ops read them as attributes of `C`. Reading one
    before the library is loaded loads it (only a missing attribute reaches __getattr__)."""

    def __getattr__(self, name):
        if name.startswith("__") or (name not in _PROTOTYPES and name != "lib"):
            raise AttributeError(name)
        load()
        return object.__getattribute__(self, name)


C = _Functions()
_load_lock = threading.Lock()

_log = logging.getLogger("yaie_kernels")
_LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


def _on_log(user, level, message):
    # The library's warnings (an untrusted cache directory, a corrupt entry recompiled) go to the
    # logging module: it never prints on its own.
    text = message.decode("utf-8", "replace") if message else ""
    _log.log(logging.WARNING if level == 1 else logging.INFO, "%s", text)


_log_callback = _LOG_FN(_on_log)  # kept alive for the life of the process, as the contexts are


def load():
    """Loads libyk (once) and binds the prototypes. Raises LibraryNotFoundError."""
    global _loaded_path
    if _loaded_path is not None:
        return
    with _load_lock:
        if _loaded_path is not None:
            return
        lib, path = _open_library()
        missing = []
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                missing.append(name)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(C, name, fn)
        if missing:
            raise LibraryNotFoundError(f"yaie_kernels: {path} lacks {', '.join(missing)}: a libyk older than these bindings")
        C.lib = lib
        check_layouts(_LAYOUTS, path)  # before anyone may use it: nothing runs on wrong layouts
        _loaded_path = path


def library_path():
    """The path (or loader name) of the libyk in use, loading it if needed."""
    load()
    return _loaded_path


def library_version():
    """yk_version() of the libyk in use ("0.1.0")."""
    load()
    return C.yk_version().decode()


# ---- contexts: one per device, created on first use ----

_contexts = {}  # key: -1 for host memory, else the CUDA ordinal -> yk_ctx* (int)
_ctx_lock = threading.Lock()


def context_for(key):
    """The shared context for host memory (key -1) or CUDA device `key`. Lookups take no lock;
    creation takes one, so two threads never create two contexts for one device."""
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    load()
    with _ctx_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = _create_context(key)
            _contexts[key] = ctx
    return ctx


def _create_context(key):
    opts = CtxOptions()
    C.yk_ctx_options_init(ctypes.byref(opts))
    if key < 0:
        opts.device = _YK_DEVICE_CPU  # host tensors: no CUDA driver is touched
    else:
        opts.device = _YK_DEVICE_CUDA
        opts.device_ordinal = key
    opts.log = ctypes.cast(_log_callback, ctypes.c_void_p)
    out = ctypes.c_void_p()
    st = C.yk_ctx_create(ctypes.byref(opts), ctypes.byref(out))
    if st != 0:
        msg = (C.yk_ctx_last_error(None) or b"").decode("utf-8", "replace")
        where = "the CPU" if key < 0 else f"CUDA device {key}"
        raise _error_class(st)(f"creating the libyk context for {where}: {msg}", _STATUS_NAMES.get(st, str(st)))
    # Contexts live as long as the process: an engine keeps using them until exit, and destroying
    # one at interpreter shutdown could race streams still running on it.
    return out.value


def raise_status(status, ctx, op):
    """Raises the exception for a failed call on ctx, with the library's message for this thread,
    led by the Python name of the op where the C op is named differently."""
    msg = (C.yk_ctx_last_error(ctx) or b"").decode("utf-8", "replace")
    name = _STATUS_NAMES.get(status, f"status {status}")
    if not msg.startswith(op + ":"):
        msg = f"{op}: {msg}" if msg else op
    raise _error_class(status)(f"{msg} [{name}]", name)
