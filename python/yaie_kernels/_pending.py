"""The engine's names whose C ops have not landed in libyk yet. Each raises NotImplementedError
naming the missing op and the issue that brings it, before touching any input: an engine that
falls back on NotImplementedError then runs its own path, and never gets a wrong result.

When the op lands in C, its binding replaces the stub here (with the same name and signature).
"""

__all__ = [
    "paged_attention_forward",
    "RadixAttentionBlock",
    "RadixAttentionWithPagedKVCache",
    "FlashInferPagedAttention",
]

_PAGED = "issue 4 (paged attention over the KV cache)"
_RADIX = "issue 5 (radix attention)"


def _missing(name, what):
    return NotImplementedError(f"yaie_kernels.{name}: libyk has no {what} yet; {name} raises instead of computing "
                               "anything")


def paged_attention_forward(q, k_cache, v_cache, block_tables, context_lens, max_context_len):
    """Decode attention over a paged KV cache: not in libyk yet (issue 4)."""
    raise _missing("paged_attention_forward", f"paged attention op (paged decode over block tables, {_PAGED})")


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
