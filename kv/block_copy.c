/* Whole-block copies: the copy-on-write flush (through the copy_blocks op), and the transfer
 * loop swaps share; the cache's event that follows them. A block is one contiguous run of every
 * layer's K and V, so a run of consecutive blocks is one transfer and a block one row to copy. */
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

/* The pending copies from `start` that may run together: yk_copy_blocks copies its pairs
 * concurrently, and a copy can read a block an earlier pending copy writes (a fork of a fork that
 * appended before the flush: X -> Y, then Y -> Z). Such a copy ends the run, and the next run is
 * ordered after it on the stream. Returns the end of the run. */
static int64_t independent_run(yk_kv_cache *c, int64_t start) {
  enum { READ = 1, WRITTEN = 2 };
  uint8_t *marks = c->device.marks; /* all 0 between calls */
  int64_t end = start;
  for (; end < c->copy_count; end++) {
    const int32_t src = c->copies[2 * end], dst = c->copies[2 * end + 1];
    if ((marks[src] & WRITTEN) || marks[dst]) break;
    marks[src] |= READ, marks[dst] |= WRITTEN;
  }
  for (int64_t i = start; i < end; i++) marks[c->copies[2 * i]] = marks[c->copies[2 * i + 1]] = 0;
  return end;
}

/* The device blocks as one [num_blocks, block elements] tensor: a row is a whole block, every
 * layer's K and V. */
static DLTensor whole_blocks(const yk_kv_cache *c, int64_t shape[2]) {
  shape[0] = c->config.num_blocks;
  shape[1] = (int64_t)(c->block_bytes / (size_t)c->elem_bytes);
  const int cuda = c->ctx->device == YK_DEVICE_CUDA;
  return (DLTensor){.data = c->device_base,
                    .device = {cuda ? kDLCUDA : kDLCPU, cuda ? c->ctx->ordinal : 0},
                    .ndim = 2,
                    .dtype = c->config.dtype,
                    .shape = shape};
}

yk_status yk_kv_cache_copy_blocks(yk_kv_cache *c, void *stream) {
  const char *op = "yk_kv_cache_copy_blocks";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!c->copy_count) return YK_OK;
  /* On failure the list stays as it is: the copies already issued are repeated by the next call,
   * which is harmless since nothing may write the destinations before the copies are done. */
  int64_t shape[2];
  DLTensor blocks = whole_blocks(c, shape);
  DLTensor *caches[1] = {&blocks};
  yk_status st = YK_OK;
  for (int64_t start = 0, end; start < c->copy_count && st == YK_OK; start = end) {
    end = independent_run(c, start);
    st = yk_copy_blocks(c->ctx, caches, 1, c->copies + 2 * start, end - start, stream);
  }
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
