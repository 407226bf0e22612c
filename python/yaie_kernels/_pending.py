"""The engine's names whose C ops have not landed in libyk yet. Each raises NotImplementedError
naming the missing op and the issue that brings it, before touching any input: an engine that
falls back on NotImplementedError then runs its own path, and never gets a wrong result.

When the op lands in C, its binding replaces the stub here (with the same name and signature).
"""

__all__ = [
    "paged_attention_forward",
    "memory_pool_allocate",
    "memory_pool_free",
    "KVCacheBlock",
    "KVCacheManager",
    "RadixAttentionBlock",
    "RadixAttentionWithPagedKVCache",
    "FlashInferPagedAttention",
]

_PAGED = "issue 4 (paged KV cache and paged attention)"
_RADIX = "issue 5 (radix attention)"


def _missing(name, what):
    return NotImplementedError(f"yaie_kernels.{name}: libyk has no {what} yet; {name} raises instead of computing "
                               "anything")


def paged_attention_forward(q, k_cache, v_cache, block_tables, context_lens, max_context_len):
    """Decode attention over a paged KV cache: not in libyk yet (issue 4)."""
    raise _missing("paged_attention_forward", f"paged attention op (paged decode over block tables, {_PAGED})")


def memory_pool_allocate(size):
    """Allocation from the device memory pool: not in libyk yet (yk_pool_alloc, issue 4)."""
    raise _missing("memory_pool_allocate", f"device memory pool (yk_pool_alloc, {_PAGED})")


def memory_pool_free(ptr):
    """Release to the device memory pool: not in libyk yet (yk_pool_free, issue 4)."""
    raise _missing("memory_pool_free", f"device memory pool (yk_pool_free, {_PAGED})")


class KVCacheBlock:
    """A block of the paged KV cache: not in libyk yet (issue 4)."""

    def __init__(self, *args, **kwargs):
        raise _missing("KVCacheBlock", f"paged KV cache block type ({_PAGED})")


class KVCacheManager:
    """The paged KV cache manager: not in libyk yet (issue 4). Its methods raise as well."""

    def __init__(self, *args, **kwargs):
        raise _missing("KVCacheManager", f"paged KV cache manager ({_PAGED})")

    def swap_blocks_to_cpu(self, block_ids):
        raise _missing("KVCacheManager.swap_blocks_to_cpu", f"block swapping to a pinned host pool ({_PAGED})")

    def swap_blocks_from_cpu(self, block_ids):
        raise _missing("KVCacheManager.swap_blocks_from_cpu", f"block swapping from a pinned host pool ({_PAGED})")


class RadixAttentionBlock:
    """The radix tree of cached prefixes: not in libyk yet (issue 5)."""

    def __init__(self, *args, **kwargs):
        raise _missing("RadixAttentionBlock", f"radix prefix tree ({_RADIX}, on top of {_PAGED})")


class RadixAttentionWithPagedKVCache:
    """Radix prefix sharing over the paged KV cache: not in libyk yet (issue 5)."""

    def __init__(self, *args, **kwargs):
        raise _missing("RadixAttentionWithPagedKVCache",
                       f"radix prefix sharing over the paged KV cache ({_RADIX}, on top of {_PAGED})")


class FlashInferPagedAttention:
    """FlashInfer-style attention over pages: not in libyk yet (issue 4)."""

    def __init__(self, *args, **kwargs):
        raise _missing("FlashInferPagedAttention", f"paged attention op (paged prefill and decode, {_PAGED})")
