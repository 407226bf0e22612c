/* yk_pool: one allocation (runtime/memory.c) carved by an extent list (runtime/extent_list.c)
 * under a mutex. */
#include "runtime/pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/extent_list.h"
#include "runtime/memory.h"
#include "runtime/module.h"

struct yk_pool {
  yk_ctx *ctx;
  char *base; /* device address on a CUDA context, as a pointer for arithmetic only */
  pthread_mutex_t lock;
  yk_extent_list extents;
  uint64_t alloc_calls, failed_allocs;
};

#define ALIGN ((size_t)YK_POOL_ALIGNMENT)

void yk_pool_options_init(yk_pool_options *o) { *o = (yk_pool_options){.bytes = 0, .free_fraction = 0.9}; }

yk_ctx *yk_pool_context(const yk_pool *pool) { return pool->ctx; }

static yk_status pool_bytes(yk_ctx *ctx, const yk_pool_options *o, size_t *bytes) {
  if (o->bytes) {
    *bytes = o->bytes / ALIGN * ALIGN;
    if (!*bytes) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_create: %zu bytes is less than 256", o->bytes);
    return YK_OK;
  }
  if (ctx->device != YK_DEVICE_CUDA)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "yk_pool_create: a pool on a CPU context needs options.bytes (free_fraction is a share of "
                    "free device memory)");
  if (!(o->free_fraction > 0 && o->free_fraction <= 1))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_create: free_fraction %g is not in (0, 1]",
                    o->free_fraction);
  yk_status st = yk_cuda_make_current(ctx);
  if (st != YK_OK) return st;
  size_t free_bytes = 0, total_bytes = 0;
  CUresult r = ctx->cu.cuMemGetInfo(&free_bytes, &total_bytes);
  if (r != CUDA_SUCCESS) return yk_cuda_error(ctx, r, "yk_pool_create: cuMemGetInfo");
  *bytes = (size_t)((double)free_bytes * o->free_fraction) / ALIGN * ALIGN;
  if (!*bytes)
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "yk_pool_create: %g of %zu free bytes is nothing", o->free_fraction,
                    free_bytes);
  return YK_OK;
}

yk_status yk_pool_create(yk_ctx *ctx, const yk_pool_options *options, yk_pool **out) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!out) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_create: out is NULL");
  *out = NULL;
  yk_pool_options o;
  if (options)
    o = *options;
  else
    yk_pool_options_init(&o);
  size_t bytes;
  yk_status st = pool_bytes(ctx, &o, &bytes);
  if (st != YK_OK) return st;

  yk_pool *pool = calloc(1, sizeof *pool);
  if (!pool) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "yk_pool_create: out of host memory");
  pool->ctx = ctx;
  if (pthread_mutex_init(&pool->lock, NULL)) {
    free(pool);
    return yk_error(ctx, YK_ERR_INTERNAL, "yk_pool_create: cannot create a mutex");
  }
  if (yk_extent_list_init(&pool->extents, bytes) != YK_EXTENT_OK) {
    st = yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "yk_pool_create: out of host memory");
    goto fail;
  }
  void *base = NULL;
  if ((st = yk_memory_alloc(ctx, "yk_pool_create", YK_MEMORY_DEVICE, bytes, &base)) != YK_OK) goto fail_extents;
  pool->base = base;
  *out = pool;
  return YK_OK;

fail_extents:
  yk_extent_list_destroy(&pool->extents);
fail:
  pthread_mutex_destroy(&pool->lock);
  free(pool);
  return st;
}

void yk_pool_destroy(yk_pool *pool) {
  if (!pool) return;
  yk_memory_free(pool->ctx, YK_MEMORY_DEVICE, pool->base);
  yk_extent_list_destroy(&pool->extents);
  pthread_mutex_destroy(&pool->lock);
  free(pool);
}

yk_status yk_pool_alloc(yk_pool *pool, size_t bytes, void **ptr) {
  if (!pool) return YK_ERR_INVALID_ARGUMENT;
  if (!ptr) return yk_error(pool->ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_alloc: ptr is NULL");
  if (bytes == 0 || bytes > SIZE_MAX - ALIGN)
    return yk_error(pool->ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_alloc: cannot allocate %zu bytes", bytes);
  const uint64_t size = (bytes + ALIGN - 1) / ALIGN * ALIGN;
  uint64_t offset = 0;
  pthread_mutex_lock(&pool->lock);
  const int r = yk_extent_alloc(&pool->extents, size, &offset);
  if (r == YK_EXTENT_NO_ROOM) pool->failed_allocs++;
  if (r == YK_EXTENT_OK) pool->alloc_calls++;
  const uint64_t free_bytes = pool->extents.total - pool->extents.used_bytes;
  const uint64_t largest = r == YK_EXTENT_NO_ROOM ? yk_extent_largest_free(&pool->extents) : 0;
  pthread_mutex_unlock(&pool->lock);
  if (r == YK_EXTENT_NO_ROOM)
    return yk_error(pool->ctx, YK_ERR_OUT_OF_MEMORY,
                    "yk_pool_alloc: no free extent of %llu bytes (%llu bytes free, the largest extent %llu)",
                    (unsigned long long)size, (unsigned long long)free_bytes, (unsigned long long)largest);
  if (r != YK_EXTENT_OK) return yk_error(pool->ctx, YK_ERR_OUT_OF_MEMORY, "yk_pool_alloc: out of host memory");
  *ptr = pool->base + offset;
  return YK_OK;
}

yk_status yk_pool_free(yk_pool *pool, void *ptr) {
  if (!pool) return YK_ERR_INVALID_ARGUMENT;
  if (!ptr) return YK_OK;
  const uintptr_t p = (uintptr_t)ptr, base = (uintptr_t)pool->base;
  int r = YK_EXTENT_NOT_ALLOCATED;
  if (p >= base && p - base < pool->extents.total) {
    pthread_mutex_lock(&pool->lock);
    r = yk_extent_free(&pool->extents, p - base);
    pthread_mutex_unlock(&pool->lock);
  }
  if (r != YK_EXTENT_OK)
    return yk_error(pool->ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_free: %p is not an allocation of this pool", ptr);
  return YK_OK;
}

yk_status yk_pool_get_stats(yk_pool *pool, yk_pool_stats *out) {
  if (!pool) return YK_ERR_INVALID_ARGUMENT;
  if (!out) return yk_error(pool->ctx, YK_ERR_INVALID_ARGUMENT, "yk_pool_get_stats: out is NULL");
  pthread_mutex_lock(&pool->lock);
  const yk_extent_list *e = &pool->extents;
  const uint64_t free_bytes = e->total - e->used_bytes, largest = yk_extent_largest_free(e);
  *out = (yk_pool_stats){
      .total_bytes = e->total,
      .used_bytes = e->used_bytes,
      .free_bytes = free_bytes,
      .high_water_bytes = e->high_water_bytes,
      .largest_free_bytes = largest,
      .fragmentation = free_bytes ? 1.0 - (double)largest / (double)free_bytes : 0.0,
      .allocations = e->live,
      .alloc_calls = pool->alloc_calls,
      .failed_allocs = pool->failed_allocs,
      .on_device = pool->ctx->device == YK_DEVICE_CUDA,
  };
  pthread_mutex_unlock(&pool->lock);
  return YK_OK;
}
