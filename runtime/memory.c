#include "runtime/memory.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"

#define HOST_ALIGNMENT 4096 /* a page: what cuMemAllocHost gives, and more than any vector access needs */

int yk_memory_is_host(const yk_ctx *ctx, yk_memory_kind kind) {
  return ctx->device != YK_DEVICE_CUDA || kind == YK_MEMORY_PINNED_HOST;
}

yk_status yk_memory_alloc(yk_ctx *ctx, const char *op, yk_memory_kind kind, size_t bytes, void **ptr) {
  if (ctx->device != YK_DEVICE_CUDA) {
    void *p = NULL;
    if (posix_memalign(&p, HOST_ALIGNMENT, bytes))
      return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of host memory", op, bytes);
    *ptr = p;
    return YK_OK;
  }
  yk_status st = yk_cuda_make_current(ctx);
  if (st != YK_OK) return st;
  CUresult r;
  if (kind == YK_MEMORY_DEVICE) {
    CUdeviceptr d = 0;
    if ((r = ctx->cu.cuMemAlloc(&d, bytes)) == CUDA_SUCCESS) *ptr = (void *)(uintptr_t)d;
  } else {
    r = ctx->cu.cuMemAllocHost(ptr, bytes);
  }
  if (r == CUDA_SUCCESS) return YK_OK;
  char what[160];
  snprintf(what, sizeof what, "%s: %s of %zu bytes", op, kind == YK_MEMORY_DEVICE ? "cuMemAlloc" : "cuMemAllocHost",
           bytes);
  return yk_cuda_error(ctx, r, what);
}

void yk_memory_free(yk_ctx *ctx, yk_memory_kind kind, void *ptr) {
  if (!ptr) return;
  if (ctx->device != YK_DEVICE_CUDA) {
    free(ptr);
    return;
  }
  /* Nothing to report to: a failure here means the context is already broken. */
  if (yk_cuda_make_current(ctx) != YK_OK) return;
  if (kind == YK_MEMORY_DEVICE)
    ctx->cu.cuMemFree((CUdeviceptr)(uintptr_t)ptr);
  else
    ctx->cu.cuMemFreeHost(ptr);
}

yk_status yk_memory_copy(yk_ctx *ctx, const char *op, yk_memory_kind dst_kind, void *dst, yk_memory_kind src_kind,
                         const void *src, size_t bytes, void *stream) {
  if (ctx->device != YK_DEVICE_CUDA) {
    memcpy(dst, src, bytes);
    return YK_OK;
  }
  CUstream s = (CUstream)stream;
  const CUdeviceptr d = (CUdeviceptr)(uintptr_t)dst, sd = (CUdeviceptr)(uintptr_t)src;
  CUresult r;
  const char *call;
  if (dst_kind == YK_MEMORY_DEVICE && src_kind == YK_MEMORY_DEVICE)
    r = ctx->cu.cuMemcpyDtoDAsync(d, sd, bytes, s), call = "cuMemcpyDtoDAsync";
  else if (dst_kind == YK_MEMORY_PINNED_HOST && src_kind == YK_MEMORY_DEVICE)
    r = ctx->cu.cuMemcpyDtoHAsync(dst, sd, bytes, s), call = "cuMemcpyDtoHAsync";
  else if (dst_kind == YK_MEMORY_DEVICE && src_kind == YK_MEMORY_PINNED_HOST)
    r = ctx->cu.cuMemcpyHtoDAsync(d, src, bytes, s), call = "cuMemcpyHtoDAsync";
  else /* pinned to pinned: through the stream too, so it stays ordered after earlier transfers */
    r = ctx->cu.cuMemcpyAsync(d, sd, bytes, s), call = "cuMemcpyAsync";
  if (r == CUDA_SUCCESS) return YK_OK;
  char what[160];
  snprintf(what, sizeof what, "%s: %s of %zu bytes", op, call, bytes);
  return yk_cuda_error(ctx, r, what);
}
