/* What the KV cache tests share: a small cache on a context, and its blocks as bytes. */
#ifndef YK_TESTS_KV_SUPPORT_H
#define YK_TESTS_KV_SUPPORT_H

#include "kv/kv_cache.h"
#include "tests/support.h"

static inline yk_kv_cache_config kv_test_config(int layers, int kv_heads, int head_dim, int page_size,
                                                int64_t num_blocks, int64_t host_blocks) {
  yk_kv_cache_config c;
  yk_kv_cache_config_init(&c);
  c.layers = layers, c.kv_heads = kv_heads, c.head_dim = head_dim, c.page_size = page_size;
  c.num_blocks = num_blocks, c.host_blocks = host_blocks;
  c.dtype = (DLDataType){kDLFloat, 16, 1};
  return c;
}

static inline yk_kv_cache *kv_test_cache(yk_ctx *ctx, const yk_kv_cache_config *config) {
  yk_kv_cache *cache = NULL;
  cr_assert_eq(yk_kv_cache_create(ctx, config, &cache), YK_OK, "%s", yk_ctx_last_error(ctx));
  return cache;
}

/* A CPU context and a cache on it (f16, NHD), for tests that need nothing else; kv_done frees both. */
static inline yk_kv_cache *kv_cpu_cache(yk_ctx **ctx, int layers, int kv_heads, int head_dim, int page_size,
                                        int64_t num_blocks, int64_t host_blocks) {
  *ctx = ts_cpu_ctx();
  const yk_kv_cache_config config = kv_test_config(layers, kv_heads, head_dim, page_size, num_blocks, host_blocks);
  return kv_test_cache(*ctx, &config);
}

static inline void kv_done(yk_ctx *ctx, yk_kv_cache *cache) {
  yk_kv_cache_destroy(cache);
  yk_ctx_destroy(ctx);
}

static inline yk_kv_cache_info kv_info(yk_kv_cache *cache) {
  yk_kv_cache_info info;
  cr_assert_eq(yk_kv_cache_get_info(cache, &info), YK_OK);
  return info;
}

static inline yk_kv_seq_info kv_seq(yk_kv_cache *cache, int64_t seq) {
  yk_kv_seq_info info;
  cr_assert_eq(yk_kv_seq_get_info(cache, seq, &info), YK_OK, "%s", yk_ctx_last_error(cache->ctx));
  return info;
}

static inline int64_t kv_add(yk_kv_cache *cache) {
  int64_t seq;
  cr_assert_eq(yk_kv_seq_add(cache, &seq), YK_OK, "%s", yk_ctx_last_error(cache->ctx));
  return seq;
}

static inline void kv_append(yk_kv_cache *cache, int64_t seq, int64_t n, int64_t *slots) {
  cr_assert_eq(yk_kv_seq_append(cache, seq, n, slots), YK_OK, "append %lld: %s", (long long)n,
               yk_ctx_last_error(cache->ctx));
}

/* Block b of a CPU cache's device (host = 0) or host (host = 1) blocks: every layer's K and V. */
static inline unsigned char *kv_block_bytes(yk_kv_cache *cache, int host, int32_t b) {
  return (unsigned char *)(host ? cache->host_base : cache->device_base) + (size_t)b * cache->block_bytes;
}

/* Element (block, token offset, head, dim) of layer l's K (kv 0) or V (kv 1) among a CPU cache's
 * device (host 0) or host (host 1) blocks, found through the layer tensors a kernel reads. */
static inline uint16_t *kv_element(yk_kv_cache *c, int host, int layer, int kv, int64_t block, int64_t offset, int head,
                                   int dim) {
  DLTensor t;
  if (host)
    yk_kv_cache_host_layer(c, layer, kv ? NULL : &t, kv ? &t : NULL);
  else
    yk_kv_cache_layer(c, layer, kv ? NULL : &t, kv ? &t : NULL);
  const int nhd = c->config.layout == YK_KV_NHD;
  return (uint16_t *)t.data + block * t.strides[0] + (nhd ? offset : head) * t.strides[1] +
         (nhd ? head : offset) * t.strides[2] + dim;
}

/* Fills every device block of a CPU cache with bytes that differ between blocks and positions. */
static inline void kv_fill_device(yk_kv_cache *cache, const char *seed_name) {
  yh_rng rng = {ts_seed(seed_name)};
  unsigned char *p = kv_block_bytes(cache, 0, 0);
  const size_t n = (size_t)cache->config.num_blocks * cache->block_bytes;
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)yh_next(&rng);
}

#endif
