/* Memory for pools and caches, wherever the context keeps it: CUDA device memory or pinned host
 * memory on a CUDA context; plain host memory for both on a CPU context, so that the code above it
 * (pool bookkeeping, KV blocks, swaps) runs and is tested without a GPU. */
#ifndef YK_RUNTIME_MEMORY_H
#define YK_RUNTIME_MEMORY_H

#include <stddef.h>

#include "yk/context.h"

typedef enum yk_memory_kind {
  YK_MEMORY_DEVICE = 0,     /* cuMemAlloc; host memory on a CPU context */
  YK_MEMORY_PINNED_HOST = 1 /* cuMemAllocHost (page-locked: async copies); host memory on a CPU context */
} yk_memory_kind;

/* Whether memory of this kind is host memory the CPU can touch: always on a CPU context. */
int yk_memory_is_host(const yk_ctx *ctx, yk_memory_kind kind);

/* bytes > 0. Addresses are 256-byte aligned at least (device addresses as void *). The message
 * names op. */
yk_status yk_memory_alloc(yk_ctx *ctx, const char *op, yk_memory_kind kind, size_t bytes, void **ptr);
void yk_memory_free(yk_ctx *ctx, yk_memory_kind kind, void *ptr);

/* Copies bytes between two allocations of these kinds: asynchronously on stream (a CUstream, NULL
 * the legacy default stream) on a CUDA context, with memcpy on a CPU one. */
yk_status yk_memory_copy(yk_ctx *ctx, const char *op, yk_memory_kind dst_kind, void *dst, yk_memory_kind src_kind,
                         const void *src, size_t bytes, void *stream);

#endif
