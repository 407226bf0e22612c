/* The KV cache manager on the CPU: configuration and layer tensors, append across block
 * boundaries, fork and copy-on-write, free, a full cache, bad input, both page-table forms. Swaps
 * and the GPU are in test_kv_swap.c, the randomized run in test_kv_random.c. */
#include <string.h>

#include "runtime/tensor.h"
#include "tests/kv_support.h"

Test(kv_cache, layer_tensors_describe_the_block_layout) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_kv_cache_config config = kv_test_config(3, 2, 8, 4, 10, 5);
  yk_kv_cache *cache = kv_test_cache(ctx, &config);
  yk_kv_cache_info info = kv_info(cache);
  cr_assert_eq(info.block_bytes, 2 * 3 * 4 * 2 * 8 * 2, "K and V of 3 layers, 4 tokens, 2 heads, 8 dims, f16");
  cr_assert_eq(info.num_blocks, 10);
  cr_assert_eq(info.free_blocks, 10);
  cr_assert_eq(info.host_blocks, 5);
  cr_assert_eq(info.free_host_blocks, 5);
  cr_assert_eq(info.on_device, 0);
  DLTensor k, v;
  cr_assert_eq(yk_kv_cache_layer(cache, 1, &k, &v), YK_OK);
  const int64_t nhd_shape[4] = {10, 4, 2, 8}, strides[4] = {384, 16, 8, 1};
  cr_assert_eq(k.ndim, 4);
  for (int i = 0; i < 4; i++) {
    cr_assert_eq(k.shape[i], nhd_shape[i], "dim %d", i);
    cr_assert_eq(k.strides[i], strides[i], "dim %d: a block holds every layer, so pages are 384 apart", i);
    cr_assert_eq(v.shape[i], nhd_shape[i]);
  }
  const char *base = (const char *)cache->device_base;
  cr_assert_eq((const char *)k.data - base, 2 * 128, "layer 1's K page follows layer 0's K and V pages");
  cr_assert_eq((const char *)v.data - base, 3 * 128);
  cr_assert_eq(k.device.device_type, kDLCPU);
  cr_assert(k.dtype.code == kDLFloat && k.dtype.bits == 16 && k.dtype.lanes == 1);
  yk_view view;
  cr_assert_eq(yk_view_of(ctx, "test", "k", &k, YK_ACCEPT_FLOAT, 4, 4, &view), YK_OK, "ops accept the tensor");

  cr_assert_eq(yk_kv_cache_host_layer(cache, 2, &k, NULL), YK_OK);
  cr_assert_eq(k.shape[0], 5);
  cr_assert_eq((const char *)k.data - (const char *)cache->host_base, 4 * 128);
  ts_assert_rejected(ctx, yk_kv_cache_layer(cache, 3, &k, &v), YK_ERR_INVALID_ARGUMENT, "layer 3 is not in 0..2");
  yk_kv_cache_destroy(cache);

  config.layout = YK_KV_HND;
  config.num_blocks = 0;
  config.device_bytes = 768 * 7 + 5;
  config.host_blocks = 0;
  cache = kv_test_cache(ctx, &config);
  cr_assert_eq(kv_info(cache).num_blocks, 7, "num_blocks from the byte budget");
  cr_assert_eq(yk_kv_cache_layer(cache, 0, &k, &v), YK_OK);
  const int64_t hnd_shape[4] = {7, 2, 4, 8}, hnd_strides[4] = {384, 32, 8, 1};
  for (int i = 0; i < 4; i++) cr_assert(k.shape[i] == hnd_shape[i] && k.strides[i] == hnd_strides[i], "dim %d", i);
  ts_assert_rejected(ctx, yk_kv_cache_host_layer(cache, 0, &k, &v), YK_ERR_INVALID_ARGUMENT, "no host blocks");
  kv_done(ctx, cache);
}

/* A float8_e4m3fn cache: a byte an element (twice the blocks of a 16-bit cache in the same
 * bytes), layer tensors of that type that the ops accept, and copy-on-write copies and swaps that
 * move its bytes unchanged. */
Test(kv_cache, float8_cache_is_a_byte_an_element) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_kv_cache_config config = kv_test_config(3, 2, 8, 4, 0, 4);
  config.dtype = (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1};
  config.device_bytes = 2 * 3 * 4 * 2 * 8 * 2 * 5; /* five float16 blocks */
  yk_kv_cache *cache = kv_test_cache(ctx, &config);
  yk_kv_cache_info info = kv_info(cache);
  cr_assert_eq(info.elem_bytes, 1);
  cr_assert_eq(info.block_bytes, 2 * 3 * 4 * 2 * 8, "K and V of 3 layers, 4 tokens, 2 heads, 8 dims, a byte each");
  cr_assert_eq(info.num_blocks, 10, "twice the float16 blocks in the same bytes");
  DLTensor k, v;
  cr_assert_eq(yk_kv_cache_layer(cache, 1, &k, &v), YK_OK);
  cr_assert(k.dtype.code == YK_DL_FLOAT8_E4M3FN && k.dtype.bits == 8 && k.dtype.lanes == 1);
  const int64_t strides[4] = {384, 16, 8, 1}; /* blocks of 384 bytes */
  for (int i = 0; i < 4; i++) cr_assert_eq(k.strides[i], strides[i], "dim %d", i);
  cr_assert_eq((const char *)v.data - (const char *)cache->device_base, 3 * 64, "layer 1's V: the fourth page");
  yk_view view;
  cr_assert_eq(yk_view_of(ctx, "test", "k", &k, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 4, 4, &view), YK_OK);
  cr_assert_eq(view.type, YK_E4M3);
  cr_assert_eq(view.elem_bytes, 1);
  ts_assert_rejected(ctx, yk_view_of(ctx, "test", "k", &k, YK_ACCEPT_FLOAT, 4, 4, &view), YK_ERR_INVALID_ARGUMENT,
                     "k: expected dtype float32, float16 or bfloat16, got float8_e4m3fn");

  /* fork, copy-on-write, swap out and in: the bytes travel as they are */
  kv_fill_device(cache, "kv_cache.float8");
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 6, NULL);
  int64_t b;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &b), YK_OK);
  kv_append(cache, b, 1, NULL);
  const int32_t copy = kv_seq(cache, b).table[1];
  cr_assert_eq(yk_kv_cache_copy_blocks(cache, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(memcmp(kv_block_bytes(cache, 0, copy), kv_block_bytes(cache, 0, 1), cache->block_bytes), 0);
  unsigned char before[2 * 384];
  memcpy(before, kv_block_bytes(cache, 0, kv_seq(cache, a).table[0]), 384);
  memcpy(before + 384, kv_block_bytes(cache, 0, kv_seq(cache, a).table[1]), 384);
  cr_assert_eq(yk_kv_seq_swap_out(cache, a, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_kv_seq_free(cache, b), YK_OK);
  memset(kv_block_bytes(cache, 0, 0), 0x5a, cache->block_bytes * 10); /* every device block overwritten */
  cr_assert_eq(yk_kv_seq_swap_in(cache, a, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(memcmp(before, kv_block_bytes(cache, 0, kv_seq(cache, a).table[0]), 384), 0);
  cr_assert_eq(memcmp(before + 384, kv_block_bytes(cache, 0, kv_seq(cache, a).table[1]), 384), 0);
  kv_done(ctx, cache);
}

Test(kv_cache, blocks_come_from_a_pool_and_go_back) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool_options o;
  yk_pool_options_init(&o);
  o.bytes = 1 << 20;
  yk_pool *pool;
  cr_assert_eq(yk_pool_create(ctx, &o, &pool), YK_OK);
  yk_kv_cache_config config = kv_test_config(2, 2, 16, 16, 0, 0);
  config.pool = pool;
  config.device_bytes = 100000;
  yk_kv_cache *cache = kv_test_cache(ctx, &config);
  const size_t block = 2 * 2 * 16 * 2 * 16 * 2;
  cr_assert_eq(kv_info(cache).num_blocks, 100000 / block);
  yk_pool_stats s;
  yk_pool_get_stats(pool, &s);
  cr_assert_eq(s.used_bytes, (100000 / block * block + 255) / 256 * 256);
  cr_assert_eq(s.allocations, 1);
  yk_kv_cache_destroy(cache);
  yk_pool_get_stats(pool, &s);
  cr_assert_eq(s.used_bytes, 0);
  config.device_bytes = 2 << 20; /* more than the pool */
  yk_kv_cache *none = NULL;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &config, &none), YK_ERR_OUT_OF_MEMORY, "no free extent");
  cr_assert_null(none);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

/* Appends in uneven chunks to two interleaved sequences; every slot must be block * page + offset
 * of the sequence's table, and a new block is taken only when the last is full. */
static void append_across_boundaries(int page) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, page, 64, 0);
  const int64_t a = kv_add(cache), b = kv_add(cache);
  cr_assert_eq(kv_seq(cache, a).blocks, 0);
  const int64_t chunks[] = {1, 0, page - 1, 1, 1, 2 * page + 3, page, 5};
  int64_t slots[8 * 128 + 16], tokens = 0;
  for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
    const int64_t n = chunks[i] < 0 ? 0 : chunks[i];
    if (tokens + n > 30 * page) break;
    int64_t need;
    cr_assert_eq(yk_kv_seq_blocks_needed(cache, a, n, &need), YK_OK);
    const int64_t before = kv_seq(cache, a).blocks;
    cr_assert_eq(need, (tokens + n + page - 1) / page - before, "page %d chunk %zu", page, i);
    kv_append(cache, a, n, slots);
    kv_append(cache, b, 1, NULL); /* interleaved: a's blocks are not consecutive */
    const yk_kv_seq_info s = kv_seq(cache, a);
    cr_assert_eq(s.tokens, tokens + n);
    cr_assert_eq(s.blocks, (tokens + n + page - 1) / page, "page %d: a new block only when the last is full", page);
    for (int64_t j = 0; j < n; j++) {
      const int64_t t = tokens + j;
      cr_assert_eq(slots[j], (int64_t)s.table[t / page] * page + t % page, "page %d token %lld", page, (long long)t);
    }
    tokens += n;
  }
  const yk_kv_cache_info info = kv_info(cache);
  cr_assert_eq(info.free_blocks, 64 - kv_seq(cache, a).blocks - kv_seq(cache, b).blocks);
  cr_assert_eq(yk_kv_seq_free(cache, a), YK_OK);
  cr_assert_eq(yk_kv_seq_free(cache, b), YK_OK);
  cr_assert_eq(kv_info(cache).free_blocks, 64);
  cr_assert_eq(kv_info(cache).sequences, 0);
  kv_done(ctx, cache);
}

Test(kv_cache, append_across_blocks_page_1) { append_across_boundaries(1); }
Test(kv_cache, append_across_blocks_page_16) { append_across_boundaries(16); }
Test(kv_cache, append_across_blocks_page_128) { append_across_boundaries(128); }

Test(kv_cache, fork_shares_and_copy_on_write_copies_the_last_block) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 3, 2, 8, 4, 8, 0);
  kv_fill_device(cache, "kv_cache.cow");
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 6, NULL); /* blocks 0 (full) and 1 (2 of 4) */
  int64_t b;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &b), YK_OK);
  cr_assert_eq(kv_seq(cache, b).tokens, 6);
  cr_assert_eq(cache->device.refs[0], 2);
  cr_assert_eq(cache->device.refs[1], 2);
  cr_assert_eq(kv_info(cache).free_blocks, 6, "a fork takes no block");

  int64_t need, slot;
  cr_assert_eq(yk_kv_seq_blocks_needed(cache, b, 1, &need), YK_OK);
  cr_assert_eq(need, 1, "the shared last block must be copied");
  kv_append(cache, b, 1, &slot);
  const int32_t copy = kv_seq(cache, b).table[1];
  cr_assert_neq(copy, 1);
  cr_assert_eq(slot, copy * 4 + 2);
  cr_assert_eq(kv_seq(cache, b).table[0], 0, "full blocks stay shared");
  cr_assert_eq(kv_seq(cache, a).table[1], 1, "the parent keeps its block");
  cr_assert_eq(cache->device.refs[1], 1);
  cr_assert_eq(cache->device.refs[0], 2);
  cr_assert_eq(kv_info(cache).pending_copies, 1);
  cr_assert_neq(memcmp(kv_block_bytes(cache, 0, copy), kv_block_bytes(cache, 0, 1), cache->block_bytes), 0);
  cr_assert_eq(yk_kv_cache_copy_blocks(cache, NULL), YK_OK);
  cr_assert_eq(kv_info(cache).pending_copies, 0);
  for (int layer = 0; layer < 3; layer++) {
    DLTensor k, v;
    yk_kv_cache_layer(cache, layer, &k, &v);
    const size_t page_bytes = (size_t)k.strides[1] * 4 * 2;
    const char *kb = k.data, *vb = v.data;
    const size_t block = (size_t)k.strides[0] * 2;
    cr_assert_eq(memcmp(kb + copy * block, kb + 1 * block, page_bytes), 0, "layer %d K", layer);
    cr_assert_eq(memcmp(vb + copy * block, vb + 1 * block, page_bytes), 0, "layer %d V", layer);
  }
  kv_append(cache, a, 1, &slot);
  cr_assert_eq(slot, 1 * 4 + 2, "no longer shared: the parent writes in place");
  cr_assert_eq(kv_info(cache).pending_copies, 0);

  /* A fork of a sequence whose last block is full copies nothing. */
  kv_append(cache, a, 1, NULL); /* a: 8 tokens, 2 full blocks */
  int64_t c;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &c), YK_OK);
  kv_append(cache, c, 1, &slot);
  cr_assert_eq(kv_info(cache).pending_copies, 0);
  cr_assert_eq(kv_seq(cache, c).blocks, 3);
  cr_assert_eq(slot, kv_seq(cache, c).table[2] * 4);
  cr_assert_eq(yk_kv_seq_free(cache, a), YK_OK);
  cr_assert_eq(yk_kv_seq_free(cache, b), YK_OK);
  cr_assert_eq(yk_kv_seq_free(cache, c), YK_OK);
  cr_assert_eq(kv_info(cache).free_blocks, 8);
  kv_done(ctx, cache);
}

Test(kv_cache, pending_copies_keep_their_blocks_until_done) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, 4, 4, 0);
  int64_t a = kv_add(cache), b;
  kv_append(cache, a, 2, NULL);
  cr_assert_eq(yk_kv_seq_fork(cache, a, &b), YK_OK);
  kv_append(cache, b, 1, NULL); /* copy 0 -> 1 recorded */
  cr_assert_eq(yk_kv_seq_free(cache, a), YK_OK);
  cr_assert_eq(yk_kv_seq_free(cache, b), YK_OK);
  cr_assert_eq(kv_info(cache).free_blocks, 2, "the copy's source and destination are not reusable yet");
  cr_assert_eq(yk_kv_cache_copy_blocks(cache, NULL), YK_OK);
  cr_assert_eq(kv_info(cache).free_blocks, 4);
  cr_assert_eq(cache->device.refs[0] + cache->device.refs[1] + cache->device.holds[0] + cache->device.holds[1], 0);
  kv_done(ctx, cache);
}

Test(kv_cache, a_full_cache_refuses_and_changes_nothing) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, 4, 4, 0);
  const int64_t a = kv_add(cache), b = kv_add(cache);
  kv_append(cache, a, 10, NULL); /* 3 blocks */
  kv_append(cache, b, 1, NULL);  /* the 4th */
  int64_t slots[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, b, 5, slots), YK_ERR_OUT_OF_MEMORY, "need 1 free blocks, 0 are free");
  cr_assert_eq(slots[0], -7, "nothing written");
  cr_assert_eq(kv_seq(cache, b).tokens, 1);
  cr_assert_eq(kv_seq(cache, b).blocks, 1);
  kv_append(cache, b, 3, NULL); /* still fits in its block */
  int64_t c;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &c), YK_OK);
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, c, 1, slots), YK_ERR_OUT_OF_MEMORY, "need 1 free blocks");
  cr_assert_eq(kv_info(cache).pending_copies, 0, "no copy recorded");
  cr_assert_eq(kv_seq(cache, c).table[2], kv_seq(cache, a).table[2], "still shared");
  cr_assert_eq(cache->device.refs[kv_seq(cache, a).table[2]], 2);
  cr_assert_eq(kv_seq(cache, c).tokens, 10);
  cr_assert_eq(yk_kv_seq_free(cache, b), YK_OK);
  kv_append(cache, c, 1, NULL); /* now the copy fits */
  cr_assert_eq(kv_info(cache).pending_copies, 1);
  kv_done(ctx, cache);
}

Test(kv_cache, bad_configurations_are_refused) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_kv_cache *cache = NULL;
  yk_kv_cache_config c = kv_test_config(2, 2, 8, 0, 4, 0);
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "page_size 0 is not in 1..128");
  c.page_size = 129;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "page_size 129");
  c.page_size = 16;
  c.dtype = (DLDataType){kDLFloat, 32, 1};
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_UNSUPPORTED,
                     "(code 2, 32 bits, 1 lanes) is not float16, bfloat16 or float8_e4m3fn");
  c.dtype = (DLDataType){kDLInt, 16, 1};
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_UNSUPPORTED, "not float16, bfloat16 or float8");
  c.dtype = (DLDataType){10, 16, 1}; /* float8 e4m3fn's code with 16 bits */
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_UNSUPPORTED, "not float16, bfloat16 or float8");
  c.dtype = (DLDataType){11, 8, 1}; /* float8 e4m3fnuz: another float8 */
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_UNSUPPORTED, "not float16, bfloat16 or float8");
  c.dtype = (DLDataType){kDLBfloat, 16, 1};
  c.layers = 0;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "must be >= 1");
  c.layers = 2;
  c.layout = (yk_kv_layout)7;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "layout 7");
  c.layout = YK_KV_NHD;
  c.num_blocks = 0;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "num_blocks or device_bytes");
  c.device_bytes = 100;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, "holds no block");
  c.num_blocks = -1;
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, &c, &cache), YK_ERR_INVALID_ARGUMENT, ">= 0");
  ts_assert_rejected(ctx, yk_kv_cache_create(ctx, NULL, &cache), YK_ERR_INVALID_ARGUMENT, "NULL");
  cr_assert_null(cache);
  cr_assert_eq(yk_kv_cache_create(NULL, &c, &cache), YK_ERR_INVALID_ARGUMENT);
  yk_kv_cache_destroy(NULL);
  yk_ctx_destroy(ctx);
}

Test(kv_cache, bad_sequence_calls_are_refused) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, 4, 4, 2);
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 3, NULL);
  int64_t child, slot;
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, 12345, 1, NULL), YK_ERR_NOT_FOUND, "not a sequence of this cache");
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, 0, 1, NULL), YK_ERR_NOT_FOUND, "not a sequence");
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, -1, 1, NULL), YK_ERR_NOT_FOUND, "not a sequence");
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, a, -1, NULL), YK_ERR_INVALID_ARGUMENT, "n -1 is negative");
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, a, INT32_MAX, NULL), YK_ERR_INVALID_ARGUMENT, "more than 2^31 - 1");
  ts_assert_rejected(ctx, yk_kv_seq_add(cache, NULL), YK_ERR_INVALID_ARGUMENT, "seq is NULL");
  ts_assert_rejected(ctx, yk_kv_seq_fork(cache, a, NULL), YK_ERR_INVALID_ARGUMENT, "child is NULL");
  cr_assert_eq(kv_seq(cache, a).tokens, 3, "nothing changed");

  cr_assert_eq(yk_kv_seq_free(cache, a), YK_OK);
  ts_assert_rejected(ctx, yk_kv_seq_free(cache, a), YK_ERR_NOT_FOUND, "was freed");
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, a, 1, &slot), YK_ERR_NOT_FOUND, "was freed");
  ts_assert_rejected(ctx, yk_kv_seq_fork(cache, a, &child), YK_ERR_NOT_FOUND, "was freed");
  const int64_t b = kv_add(cache); /* reuses a's slot under a new id */
  cr_assert_neq(b, a);
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, a, 1, &slot), YK_ERR_NOT_FOUND, "was freed");
  kv_append(cache, b, 1, NULL);

  cr_assert_eq(yk_kv_seq_swap_out(cache, b, NULL), YK_OK);
  ts_assert_rejected(ctx, yk_kv_seq_append(cache, b, 1, &slot), YK_ERR_INVALID_ARGUMENT, "swapped out");
  ts_assert_rejected(ctx, yk_kv_seq_fork(cache, b, &child), YK_ERR_INVALID_ARGUMENT, "swapped out");
  ts_assert_rejected(ctx, yk_kv_seq_swap_out(cache, b, NULL), YK_ERR_INVALID_ARGUMENT, "already swapped out");
  int32_t table[4], lens[1];
  ts_assert_rejected(ctx, yk_kv_cache_block_tables(cache, &b, 1, table, 4, lens), YK_ERR_INVALID_ARGUMENT,
                     "swapped out");
  cr_assert_eq(yk_kv_seq_swap_in(cache, b, NULL), YK_OK);
  ts_assert_rejected(ctx, yk_kv_seq_swap_in(cache, b, NULL), YK_ERR_INVALID_ARGUMENT, "already on the device");
  cr_assert_eq(yk_kv_seq_append(NULL, b, 1, NULL), YK_ERR_INVALID_ARGUMENT);
  cr_assert_eq(yk_kv_seq_free(NULL, b), YK_ERR_INVALID_ARGUMENT);
  kv_done(ctx, cache);
}

/* A: 10 tokens (blocks 0 1 2), B: 4 tokens (block 3), C: empty, D: A's fork plus one token, which
 * copies A's last block (2) to block 4; page 4. */
Test(kv_cache, page_tables_in_both_forms) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, 4, 8, 0);
  const int64_t a = kv_add(cache), b = kv_add(cache), c = kv_add(cache);
  kv_append(cache, a, 10, NULL);
  kv_append(cache, b, 4, NULL);
  int64_t d;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &d), YK_OK);
  kv_append(cache, d, 1, NULL);
  const int64_t seqs[5] = {a, b, c, d, b};
  int64_t max_blocks, total;
  cr_assert_eq(yk_kv_cache_table_sizes(cache, seqs, 5, &max_blocks, &total), YK_OK);
  cr_assert_eq(max_blocks, 3);
  cr_assert_eq(total, 8);

  int32_t tables[5 * 4], lens[5];
  memset(tables, 0x7f, sizeof tables);
  cr_assert_eq(yk_kv_cache_block_tables(cache, seqs, 5, tables, 4, lens), YK_OK, "%s", yk_ctx_last_error(ctx));
  const int32_t want_tables[5 * 4] = {0, 1, 2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 4, 0, 3, 0, 0, 0};
  const int32_t want_lens[5] = {10, 4, 0, 11, 4};
  for (int i = 0; i < 20; i++) cr_assert_eq(tables[i], want_tables[i], "block_tables[%d][%d]", i / 4, i % 4);
  for (int i = 0; i < 5; i++) cr_assert_eq(lens[i], want_lens[i], "context_lens[%d]", i);

  int32_t indptr[6], indices[8], last[5];
  cr_assert_eq(yk_kv_cache_csr(cache, seqs, 5, indptr, indices, 8, last), YK_OK, "%s", yk_ctx_last_error(ctx));
  const int32_t want_indptr[6] = {0, 3, 4, 4, 7, 8}, want_indices[8] = {0, 1, 2, 3, 0, 1, 4, 3},
                want_last[5] = {2, 4, 0, 3, 4};
  for (int i = 0; i < 6; i++) cr_assert_eq(indptr[i], want_indptr[i], "kv_indptr[%d]", i);
  for (int i = 0; i < 8; i++) cr_assert_eq(indices[i], want_indices[i], "kv_indices[%d]", i);
  for (int i = 0; i < 5; i++) cr_assert_eq(last[i], want_last[i], "kv_last_page_len[%d]", i);

  memset(tables, 0x7f, sizeof tables);
  ts_assert_rejected(ctx, yk_kv_cache_block_tables(cache, seqs, 5, tables, 2, lens), YK_ERR_INVALID_ARGUMENT,
                     "3 blocks, more than max_blocks 2");
  cr_assert_eq(tables[0], 0x7f7f7f7f, "nothing written");
  ts_assert_rejected(ctx, yk_kv_cache_csr(cache, seqs, 5, indptr, indices, 7, last), YK_ERR_INVALID_ARGUMENT,
                     "8 blocks, more than capacity 7");
  const int64_t stale[2] = {a, 999};
  ts_assert_rejected(ctx, yk_kv_cache_csr(cache, stale, 2, indptr, indices, 8, last), YK_ERR_NOT_FOUND,
                     "999 is not a sequence");
  ts_assert_rejected(ctx, yk_kv_cache_block_tables(cache, seqs, 5, NULL, 4, lens), YK_ERR_INVALID_ARGUMENT, "NULL");
  cr_assert_eq(yk_kv_cache_csr(cache, seqs, 0, indptr, NULL, 0, NULL), YK_OK, "an empty batch");
  cr_assert_eq(indptr[0], 0);
  kv_done(ctx, cache);
}
