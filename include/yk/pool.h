/* A device memory pool: one allocation made when the pool is created, carved afterwards without
 * another cuMemAlloc, so that inference never meets the driver's allocator (its calls synchronise
 * the device and its failures come at the worst moment). The KV cache can live in a pool, and so
 * can scratch such as split-KV decode workspace.
 *
 * On a CUDA context the pool is device memory; on a CPU context it is host memory, with the same
 * bookkeeping, so an engine and the tests run the same logic without a GPU.
 *
 * A pool is thread-safe: alloc, free and stats take its mutex (they are not on the kernel-launch
 * path). Allocations are 256-byte aligned and rounded up to 256 bytes. */
#ifndef YK_POOL_H
#define YK_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "yk/context.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct yk_pool yk_pool;

#define YK_POOL_ALIGNMENT 256

typedef struct yk_pool_options {
  size_t bytes;         /* size of the one allocation (rounded down to 256); 0: free_fraction */
  double free_fraction; /* bytes 0 on a CUDA context: this share of the device's free memory
                           (cuMemGetInfo) when the pool is created; default 0.9. A CPU context
                           needs bytes: it has no "free device memory" to take a share of. */
} yk_pool_options;

/* Fills the defaults above. */
YK_API void yk_pool_options_init(yk_pool_options *options);

/* Makes the pool's one allocation. options may be NULL only on a CUDA context (the defaults).
 * The pool must be destroyed before ctx. On failure *out is NULL. */
YK_API yk_status yk_pool_create(yk_ctx *ctx, const yk_pool_options *options, yk_pool **out);

/* Frees the pool's memory, and so every allocation carved from it. NULL is ignored. */
YK_API void yk_pool_destroy(yk_pool *pool);

/* Carves bytes (> 0) from the pool: *ptr is a device address (as a DLTensor's data holds it) on a
 * CUDA context, a host address on a CPU one. The smallest free extent that fits is used, lowest
 * address first among equals. YK_ERR_OUT_OF_MEMORY when no free extent is large enough, with
 * the pool unchanged and *ptr untouched. */
YK_API yk_status yk_pool_alloc(yk_pool *pool, size_t bytes, void **ptr);

/* Returns an allocation; neighbouring free extents merge. Freeing a pointer the pool did not hand
 * out (or freeing twice) is YK_ERR_INVALID_ARGUMENT and changes nothing. NULL is ignored. */
YK_API yk_status yk_pool_free(yk_pool *pool, void *ptr);

typedef struct yk_pool_stats {
  size_t total_bytes;      /* the one allocation */
  size_t used_bytes;       /* carved out now (rounded sizes) */
  size_t free_bytes;       /* total_bytes - used_bytes */
  size_t high_water_bytes; /* the most used_bytes has been */
  size_t largest_free_bytes;
  double fragmentation;   /* 1 - largest_free_bytes / free_bytes; 0 when nothing is free */
  uint64_t allocations;   /* live allocations */
  uint64_t alloc_calls;   /* successful yk_pool_alloc calls since creation */
  uint64_t failed_allocs; /* yk_pool_alloc calls refused for lack of room */
  int on_device;          /* 1: CUDA device memory; 0: host memory */
} yk_pool_stats;

YK_API yk_status yk_pool_get_stats(yk_pool *pool, yk_pool_stats *out);

#ifdef __cplusplus
}
#endif
#endif
