/* Whole-block copies: the copy-on-write flush, and the transfer loop swaps share; the cache's
 * event that follows them. A block is one contiguous run of every layer's K and V, so a run of
 * consecutive blocks is one transfer. */
#include <stdio.h>

#include "kv/kv_cache.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"

yk_status yk_kv_copy_blocks_between(yk_kv_cache *c, const char *op, yk_kv_block_set to, yk_kv_block_set from,
                                    const int32_t *src, const int32_t *dst, int64_t step, int64_t n, void *stream) {
  if (n > 0 && c->ctx->device == YK_DEVICE_CUDA) {
    yk_status st = yk_cuda_make_current(c->ctx);
    if (st != YK_OK) return st;
  }
  for (int64_t i = 0; i < n;) {
    int64_t run = 1;
    while (i + run < n && src[(i + run) * step] == src[i * step] + run && dst[(i + run) * step] == dst[i * step] + run)
      run++;
    yk_status st =
        yk_memory_copy(c->ctx, op, to.kind, to.base + (size_t)dst[i * step] * c->block_bytes, from.kind,
                       from.base + (size_t)src[i * step] * c->block_bytes, (size_t)run * c->block_bytes, stream);
    if (st != YK_OK) return st;
    i += run;
  }
  return YK_OK;
}

yk_status yk_kv_record_event(yk_kv_cache *c, const char *op, void *stream) {
  if (!c->event) return YK_OK;
  CUresult r = c->ctx->cu.cuEventRecord((CUevent)c->event, (CUstream)stream);
  if (r != CUDA_SUCCESS) {
    char what[96];
    snprintf(what, sizeof what, "%s: cuEventRecord", op);
    return yk_cuda_error(c->ctx, r, what);
  }
  c->event_recorded = 1;
  return YK_OK;
}

yk_status yk_kv_cache_copy_blocks(yk_kv_cache *c, void *stream) {
  const char *op = "yk_kv_cache_copy_blocks";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!c->copy_count) return YK_OK;
  /* On failure the list stays as it is: the copies already issued are repeated by the next call,
   * which is harmless since nothing may write the destinations before the copies are done. */
  yk_status st = yk_kv_copy_blocks_between(c, op, yk_kv_device_set(c), yk_kv_device_set(c), c->copies, c->copies + 1, 2,
                                           c->copy_count, stream);
  if (st == YK_OK) st = yk_kv_record_event(c, op, stream);
  if (st != YK_OK) return st;
  for (int64_t i = 0; i < 2 * c->copy_count; i++) yk_block_release_hold(&c->device, c->copies[i]);
  c->copy_count = 0;
  return YK_OK;
}

void *yk_kv_cache_event(yk_kv_cache *c) { return c ? c->event : NULL; }

yk_status yk_kv_cache_sync(yk_kv_cache *c) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!c->event || !c->event_recorded) return YK_OK;
  yk_status st = yk_cuda_make_current(c->ctx);
  if (st != YK_OK) return st;
  CUresult r = c->ctx->cu.cuEventSynchronize((CUevent)c->event);
  return r == CUDA_SUCCESS ? YK_OK : yk_cuda_error(c->ctx, r, "yk_kv_cache_sync: cuEventSynchronize");
}
