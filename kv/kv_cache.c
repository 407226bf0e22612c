/* yk_kv_cache: the configuration, the block memory (own or from a pool), the layer tensors. */
#include "kv/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"
#include "runtime/pool.h"
#include "runtime/tensor.h"

void yk_kv_cache_config_init(yk_kv_cache_config *c) {
  *c = (yk_kv_cache_config){
      .page_size = YK_KV_PAGE_SIZE_DEFAULT,
      .dtype = {kDLBfloat, 16, 1},
      .layout = YK_KV_NHD,
  };
}

static yk_status check_config(yk_ctx *ctx, const yk_kv_cache_config *c) {
  const char *op = "yk_kv_cache_create";
  if (c->layers < 1 || c->kv_heads < 1 || c->head_dim < 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: layers (%d), kv_heads (%d) and head_dim (%d) must be >= 1", op,
                    c->layers, c->kv_heads, c->head_dim);
  if (c->page_size < 1 || c->page_size > YK_KV_PAGE_SIZE_MAX)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: page_size %d is not in 1..%d", op, c->page_size,
                    YK_KV_PAGE_SIZE_MAX);
  const DLDataType t = c->dtype;
  const int type = yk_type_of(t, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3);
  if (type != YK_F16 && type != YK_BF16 && type != YK_E4M3)
    return yk_error(ctx, YK_ERR_UNSUPPORTED,
                    "%s: dtype (code %u, %u bits, %u lanes) is not float16, bfloat16 or float8_e4m3fn", op, t.code,
                    t.bits, t.lanes);
  if (c->layout != YK_KV_NHD && c->layout != YK_KV_HND)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: layout %d is not YK_KV_NHD or YK_KV_HND", op, (int)c->layout);
  if (c->num_blocks < 0 || c->host_blocks < 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: num_blocks and host_blocks must be >= 0", op);
  if (c->num_blocks == 0 && c->device_bytes == 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: set num_blocks or device_bytes", op);
  if (c->pool && yk_pool_context(c->pool) != ctx)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the pool belongs to another context", op);
  return YK_OK;
}

/* Sizes; fails when a block, a block count or a slot id would overflow what the tables hold. */
static yk_status size_cache(yk_kv_cache *c) {
  const char *op = "yk_kv_cache_create";
  yk_kv_cache_config *k = &c->config;
  c->elem_bytes = k->dtype.bits / 8;
  const uint64_t page_elems = (uint64_t)k->page_size * (uint64_t)k->kv_heads * (uint64_t)k->head_dim;
  const uint64_t block_bytes = 2ull * (uint64_t)k->layers * page_elems * (uint64_t)c->elem_bytes;
  if (page_elems > ((uint64_t)1 << 40) || block_bytes > ((uint64_t)1 << 40))
    return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: a block of %llu bytes is too large", op,
                    (unsigned long long)block_bytes);
  c->page_bytes = (size_t)(page_elems * (uint64_t)c->elem_bytes);
  c->block_bytes = (size_t)block_bytes;
  if (k->num_blocks == 0) k->num_blocks = (int64_t)(k->device_bytes / c->block_bytes);
  if (k->num_blocks == 0)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: device_bytes %zu holds no block of %zu bytes", op,
                    k->device_bytes, c->block_bytes);
  /* Block ids are int32 in the page tables, slot ids block * page_size + offset int64. */
  if (k->num_blocks > INT32_MAX || k->host_blocks > INT32_MAX)
    return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^31 - 1 blocks", op);
  if ((uint64_t)k->num_blocks > SIZE_MAX / c->block_bytes || (uint64_t)k->host_blocks > SIZE_MAX / c->block_bytes)
    return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: the blocks' bytes overflow size_t", op);
  const int nhd = k->layout == YK_KV_NHD;
  const int64_t heads = k->kv_heads, page = k->page_size, dim = k->head_dim;
  c->device_shape[0] = k->num_blocks;
  c->device_shape[1] = nhd ? page : heads;
  c->device_shape[2] = nhd ? heads : page;
  c->device_shape[3] = dim;
  memcpy(c->host_shape, c->device_shape, sizeof c->host_shape);
  c->host_shape[0] = k->host_blocks;
  c->strides[0] = (int64_t)(c->block_bytes / (size_t)c->elem_bytes);
  c->strides[1] = c->device_shape[2] * dim;
  c->strides[2] = dim;
  c->strides[3] = 1;
  return YK_OK;
}

static yk_status allocate_memory(yk_kv_cache *c) {
  const char *op = "yk_kv_cache_create";
  const size_t device_bytes = (size_t)c->config.num_blocks * c->block_bytes;
  void *p = NULL;
  yk_status st = c->config.pool ? yk_pool_alloc(c->config.pool, device_bytes, &p)
                                : yk_memory_alloc(c->ctx, op, YK_MEMORY_DEVICE, device_bytes, &p);
  if (st != YK_OK) return st;
  c->device_base = p;
  if (c->config.host_blocks) {
    if ((st = yk_memory_alloc(c->ctx, op, YK_MEMORY_PINNED_HOST, (size_t)c->config.host_blocks * c->block_bytes, &p)))
      return st;
    c->host_base = p;
  }
  if (c->ctx->device == YK_DEVICE_CUDA) {
    if ((st = yk_cuda_make_current(c->ctx))) return st;
    CUevent event;
    CUresult r = c->ctx->cu.cuEventCreate(&event, CU_EVENT_DISABLE_TIMING);
    if (r != CUDA_SUCCESS) return yk_cuda_error(c->ctx, r, "yk_kv_cache_create: cuEventCreate");
    c->event = event;
  }
  return YK_OK;
}

yk_status yk_kv_cache_create(yk_ctx *ctx, const yk_kv_cache_config *config, yk_kv_cache **out) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!config || !out) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_kv_cache_create: config or out is NULL");
  *out = NULL;
  yk_status st = check_config(ctx, config);
  if (st != YK_OK) return st;
  yk_kv_cache *c = calloc(1, sizeof *c);
  if (!c) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "yk_kv_cache_create: out of host memory");
  c->ctx = ctx;
  c->config = *config;
  c->free_seq = -1;
  if ((st = size_cache(c)) || (st = allocate_memory(c))) goto fail;
  if (yk_block_allocator_init(&c->device, c->config.num_blocks) ||
      yk_block_allocator_init(&c->host, c->config.host_blocks)) {
    st = yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "yk_kv_cache_create: out of host memory for the block lists");
    goto fail;
  }
  *out = c;
  return YK_OK;
fail:
  yk_kv_cache_destroy(c);
  return st;
}

void yk_kv_cache_destroy(yk_kv_cache *c) {
  if (!c) return;
  yk_ctx *ctx = c->ctx;
  if (c->event && yk_cuda_make_current(ctx) == YK_OK) ctx->cu.cuEventDestroy((CUevent)c->event);
  if (c->config.pool)
    yk_pool_free(c->config.pool, c->device_base);
  else
    yk_memory_free(ctx, YK_MEMORY_DEVICE, c->device_base);
  yk_memory_free(ctx, YK_MEMORY_PINNED_HOST, c->host_base);
  yk_block_allocator_destroy(&c->device);
  yk_block_allocator_destroy(&c->host);
  for (int32_t i = 0; i < c->seq_count; i++) free(c->seqs[i].blocks);
  free(c->seqs);
  free(c->copies);
  free(c->scratch);
  free(c);
}

yk_status yk_kv_cache_get_info(yk_kv_cache *c, yk_kv_cache_info *out) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!out) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "yk_kv_cache_get_info: out is NULL");
  const yk_kv_cache_config *k = &c->config;
  *out = (yk_kv_cache_info){
      .layers = k->layers,
      .kv_heads = k->kv_heads,
      .head_dim = k->head_dim,
      .page_size = k->page_size,
      .elem_bytes = c->elem_bytes,
      .layout = k->layout,
      .block_bytes = c->block_bytes,
      .num_blocks = k->num_blocks,
      .free_blocks = c->device.free_count,
      .host_blocks = k->host_blocks,
      .free_host_blocks = c->host.free_count,
      .sequences = c->live_seqs,
      .pending_copies = c->copy_count,
      .on_device = c->ctx->device == YK_DEVICE_CUDA,
  };
  return YK_OK;
}

static void layer_tensor(yk_kv_cache *c, char *base, int64_t *shape, DLDeviceType where, int index, DLTensor *t) {
  if (!t) return;
  *t = (DLTensor){
      .data = base + (size_t)index * c->page_bytes,
      .device = {where, where == kDLCPU ? 0 : c->ctx->ordinal},
      .ndim = 4,
      .dtype = c->config.dtype,
      .shape = shape,
      .strides = c->strides,
      .byte_offset = 0,
  };
}

static yk_status layers_of(yk_kv_cache *c, const char *op, int host, int layer, DLTensor *k, DLTensor *v) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (layer < 0 || layer >= c->config.layers)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: layer %d is not in 0..%d", op, layer, c->config.layers - 1);
  if (host && !c->config.host_blocks)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: the cache has no host blocks", op);
  const int cuda = c->ctx->device == YK_DEVICE_CUDA;
  const DLDeviceType where = !cuda ? kDLCPU : host ? kDLCUDAHost : kDLCUDA;
  char *base = host ? c->host_base : c->device_base;
  int64_t *shape = host ? c->host_shape : c->device_shape;
  layer_tensor(c, base, shape, where, 2 * layer, k);
  layer_tensor(c, base, shape, where, 2 * layer + 1, v);
  return YK_OK;
}

yk_status yk_kv_cache_layer(yk_kv_cache *c, int layer, DLTensor *k, DLTensor *v) {
  return layers_of(c, "yk_kv_cache_layer", 0, layer, k, v);
}

yk_status yk_kv_cache_host_layer(yk_kv_cache *c, int layer, DLTensor *k, DLTensor *v) {
  return layers_of(c, "yk_kv_cache_host_layer", 1, layer, k, v);
}
