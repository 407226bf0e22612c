"""yaie_kernels: the YAIE engine's kernel names over libyk (ctypes; tensors through DLPack).

    import torch, yaie_kernels as yk
    y = yk.rms_norm(x, weight, 1e-6)          # torch in, torch out, on x's device and current stream
    o = yk.flash_attention_forward(q, k, v, causal_mask=True)

torch tensors (CUDA or CPU), numpy arrays and other DLPack arrays are passed without copies;
outputs are new tensors of the caller's type. GPU calls run on torch's current stream. Errors
from libyk raise ValueError (bad input) or RuntimeError (device, compile), with its message.

libyk is found on first use: $YK_LIBRARY, else ../build/libyk.so beside this package's source,
else ctypes.util.find_library('yk'), else libyk.so on the loader's path.
"""

from ._append import append_kv
from ._attention import (
    FlashInferAttention,
    attention_decode,
    cpu_attention_forward,
    flash_attention_backward,
    flash_attention_forward,
    merge_attention_states,
)
from ._copy import copy_blocks
from ._dlpack import BufferView
from ._kv import KVCacheBlock, KVCacheInfo, KVCacheManager, SeqInfo
from ._lib import (
    DeviceError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NotFoundError,
    OutOfMemoryError,
    UnsupportedError,
    YKError,
    library_path,
    library_version,
)
from ._ops import (
    apply_rope_qk,
    cpu_rms_norm,
    cpu_rope_embeddings,
    fused_add_rms_norm,
    gelu_and_mul,
    gelu_tanh_and_mul,
    rms_norm,
    rope,
    silu_and_mul,
)
from ._paged import FlashInferPagedAttention, paged_attention_forward
from ._pool import (
    MemoryPool,
    PoolAllocation,
    PoolStats,
    default_memory_pool,
    memory_pool_allocate,
    memory_pool_free,
)
from ._prefix_cache import PrefixCacheStats, RadixAttentionWithPagedKVCache
from ._radix import RadixAttentionBlock, RadixInsert, RadixMatch, RadixNodeHandle, RadixPageOwner, RadixStats

__version__ = "0.1.0"

__all__ = [
    # the engine's names (kernels-guide.txt)
    "flash_attention_forward",
    "flash_attention_backward",
    "paged_attention_forward",
    "apply_rope_qk",
    "rms_norm",
    "silu_and_mul",
    "memory_pool_allocate",
    "memory_pool_free",
    "cpu_attention_forward",
    "cpu_rms_norm",
    "cpu_rope_embeddings",
    "KVCacheBlock",
    "KVCacheManager",
    "RadixAttentionBlock",
    "RadixAttentionWithPagedKVCache",
    "FlashInferAttention",
    "FlashInferPagedAttention",
    # the rest of libyk's ops
    "fused_add_rms_norm",
    "gelu_and_mul",
    "gelu_tanh_and_mul",
    "rope",
    "attention_decode",
    "merge_attention_states",
    "copy_blocks",
    "append_kv",
    # memory: the pool and the paged KV cache
    "MemoryPool",
    "PoolStats",
    "PoolAllocation",
    "default_memory_pool",
    "KVCacheInfo",
    "SeqInfo",
    "BufferView",
    # prefix sharing: the radix tree alone and on the KV cache
    "RadixPageOwner",
    "RadixMatch",
    "RadixInsert",
    "RadixNodeHandle",
    "RadixStats",
    "PrefixCacheStats",
    # the library and its errors
    "library_path",
    "library_version",
    "YKError",
    "InvalidArgumentError",
    "UnsupportedError",
    "DeviceError",
    "OutOfMemoryError",
    "NotFoundError",
    "LibraryNotFoundError",
]
