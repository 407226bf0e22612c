/* Swapping KV blocks to host memory and back: raw batched block copies and whole sequences, on
 * the CPU (where both sides are host memory and the copies memcpy) and on the GPU (device memory
 * and pinned host memory, asynchronous on a stream); and copy-on-write on the GPU. */
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "tests/kv_support.h"

Test(kv_swap, sequence_round_trip_keeps_its_bytes) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 2, 2, 8, 4, 8, 6);
  kv_fill_device(cache, "kv_swap.round_trip");
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 10, NULL); /* device blocks 0 1 2 */
  const size_t bb = cache->block_bytes;
  unsigned char *original = malloc(3 * bb);
  memcpy(original, kv_block_bytes(cache, 0, 0), 3 * bb);

  cr_assert_eq(yk_kv_seq_swap_out(cache, a, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  yk_kv_seq_info s = kv_seq(cache, a);
  cr_assert_eq(s.swapped_out, 1);
  cr_assert_eq(s.tokens, 10);
  cr_assert_eq(kv_info(cache).free_blocks, 8, "device blocks released");
  cr_assert_eq(kv_info(cache).free_host_blocks, 3);
  for (int i = 0; i < 3; i++)
    cr_assert_eq(memcmp(kv_block_bytes(cache, 1, s.table[i]), original + i * bb, bb), 0, "host block %d", i);

  /* Occupy the blocks it had, so it comes back into other ones. */
  const int64_t b = kv_add(cache);
  kv_append(cache, b, 12, NULL);
  kv_fill_device(cache, "kv_swap.round_trip.again");
  cr_assert_eq(yk_kv_seq_swap_in(cache, a, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  s = kv_seq(cache, a);
  cr_assert_eq(s.swapped_out, 0);
  cr_assert_eq(s.blocks, 3);
  for (int i = 0; i < 3; i++) {
    cr_assert_geq(s.table[i], 3, "block %d came back into a block b did not hold", i);
    cr_assert_eq(memcmp(kv_block_bytes(cache, 0, s.table[i]), original + i * bb, bb), 0, "device block %d", i);
  }
  cr_assert_eq(kv_info(cache).free_host_blocks, 6);
  cr_assert_eq(kv_info(cache).free_blocks, 2);
  int64_t slot;
  kv_append(cache, a, 1, &slot);
  cr_assert_eq(slot, s.table[2] * 4 + 2, "appends continue where it stopped");
  free(original);
  kv_done(ctx, cache);
}

Test(kv_swap, shared_blocks_stay_with_the_fork_and_full_host_refuses) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 1, 1, 8, 4, 8, 2);
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 8, NULL);
  int64_t b;
  cr_assert_eq(yk_kv_seq_fork(cache, a, &b), YK_OK);
  cr_assert_eq(yk_kv_seq_swap_out(cache, a, NULL), YK_OK);
  cr_assert_eq(kv_seq(cache, b).table[0], 0);
  cr_assert_eq(cache->device.refs[0], 1, "the fork keeps the device block");
  cr_assert_eq(kv_info(cache).free_blocks, 6);
  kv_append(cache, b, 1, NULL);
  ts_assert_rejected(ctx, yk_kv_seq_swap_out(cache, b, NULL), YK_ERR_OUT_OF_MEMORY,
                     "needs 3 free host blocks, 0 are free");
  cr_assert_eq(kv_seq(cache, b).swapped_out, 0, "nothing changed");
  cr_assert_eq(kv_info(cache).free_blocks, 5);
  cr_assert_eq(yk_kv_seq_free(cache, a), YK_OK, "a swapped-out sequence frees its host blocks");
  cr_assert_eq(kv_info(cache).free_host_blocks, 2);
  kv_done(ctx, cache);
}

Test(kv_swap, raw_block_copies_in_batches) {
  yk_ctx *ctx;
  yk_kv_cache *cache = kv_cpu_cache(&ctx, 2, 1, 16, 2, 6, 4);
  kv_fill_device(cache, "kv_swap.raw");
  const size_t bb = cache->block_bytes;
  const int32_t dev[4] = {1, 2, 5, 0}, host[4] = {0, 1, 2, 3};
  cr_assert_eq(yk_kv_cache_swap_blocks_to_cpu(cache, dev, host, 4, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  for (int i = 0; i < 4; i++)
    cr_assert_eq(memcmp(kv_block_bytes(cache, 1, host[i]), kv_block_bytes(cache, 0, dev[i]), bb), 0, "pair %d", i);
  const int32_t back[4] = {3, 4, 1, 2};
  cr_assert_eq(yk_kv_cache_swap_blocks_from_cpu(cache, host, back, 4, NULL), YK_OK);
  for (int i = 0; i < 4; i++)
    cr_assert_eq(memcmp(kv_block_bytes(cache, 0, back[i]), kv_block_bytes(cache, 1, host[i]), bb), 0, "pair %d", i);
  cr_assert_eq(kv_info(cache).free_blocks, 6, "raw copies allocate nothing");

  const int32_t out_of_range[2] = {0, 6}, twice[2] = {1, 1}, negative[1] = {-1};
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_to_cpu(cache, out_of_range, host, 2, NULL), YK_ERR_INVALID_ARGUMENT,
                     "source block 6 (entry 1) is not in 0..5");
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_to_cpu(cache, dev, twice, 2, NULL), YK_ERR_INVALID_ARGUMENT,
                     "destination block 1 appears twice");
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_from_cpu(cache, negative, dev, 1, NULL), YK_ERR_INVALID_ARGUMENT,
                     "source block -1");
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_from_cpu(cache, host, out_of_range, 2, NULL), YK_ERR_INVALID_ARGUMENT,
                     "destination block 6");
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_to_cpu(cache, NULL, host, 1, NULL), YK_ERR_INVALID_ARGUMENT, "NULL");
  ts_assert_rejected(ctx, yk_kv_cache_swap_blocks_to_cpu(cache, dev, host, -1, NULL), YK_ERR_INVALID_ARGUMENT,
                     "negative");
  cr_assert_eq(yk_kv_cache_swap_blocks_to_cpu(cache, dev, twice, 1, NULL), YK_OK, "the duplicate check resets");
  cr_assert_null(yk_kv_cache_event(cache), "no event on the CPU");
  cr_assert_eq(yk_kv_cache_sync(cache), YK_OK);
  kv_done(ctx, cache);
}

/* ---- GPU ---- */

static void download(yk_ctx *ctx, void *dst, const char *device, size_t bytes) {
  cr_assert_eq(ctx->cu.cuMemcpyDtoH(dst, (CUdeviceptr)(uintptr_t)device, bytes), CUDA_SUCCESS);
}

/* A GPU context (or the test skipped) and a bf16 cache of 24 blocks of 256 KiB on it, its device
 * blocks filled from the seed; *bytes holds what they were filled with. */
static yk_kv_cache *gpu_cache(yk_ctx **ctx_out, const char *seed_name, unsigned char **bytes) {
  yk_ctx *ctx = *ctx_out = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  yh_rng rng = {ts_seed(seed_name)};
  yk_kv_cache_config config = kv_test_config(4, 8, 128, 16, 24, 16);
  config.dtype = (DLDataType){kDLBfloat, 16, 1};
  yk_kv_cache *cache = kv_test_cache(ctx, &config);
  const size_t total = (size_t)config.num_blocks * cache->block_bytes;
  *bytes = malloc(total);
  for (size_t i = 0; i < total; i++) (*bytes)[i] = (unsigned char)yh_next(&rng);
  cr_assert_eq(ctx->cu.cuMemcpyHtoD((CUdeviceptr)(uintptr_t)cache->device_base, *bytes, total), CUDA_SUCCESS);
  return cache;
}

Test(kv_swap, gpu_sequence_round_trip_keeps_its_bytes) {
  yk_ctx *ctx;
  unsigned char *original;
  yk_kv_cache *cache = gpu_cache(&ctx, "kv_swap.gpu", &original);
  const size_t bb = cache->block_bytes;
  DLTensor k;
  cr_assert_eq(yk_kv_cache_layer(cache, 0, &k, NULL), YK_OK);
  cr_assert_eq(k.device.device_type, kDLCUDA);
  cr_assert_eq(yk_kv_cache_host_layer(cache, 0, &k, NULL), YK_OK);
  cr_assert_eq(k.device.device_type, kDLCUDAHost);
  CUstream stream;
  cr_assert_eq(ctx->cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);

  const int64_t a = kv_add(cache), pad = kv_add(cache);
  kv_append(cache, pad, 16, NULL); /* block 0 */
  kv_append(cache, a, 100, NULL);  /* blocks 1..7 */
  cr_assert_eq(yk_kv_seq_swap_out(cache, a, stream), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_not_null(yk_kv_cache_event(cache));
  cr_assert_eq(yk_kv_cache_sync(cache), YK_OK, "%s", yk_ctx_last_error(ctx));
  yk_kv_seq_info s = kv_seq(cache, a);
  for (int i = 0; i < 7; i++)
    cr_assert_eq(memcmp(kv_block_bytes(cache, 1, s.table[i]), original + (size_t)(1 + i) * bb, bb), 0,
                 "pinned host block %d", i);
  kv_append(cache, pad, 16 * 8, NULL); /* takes blocks 1..8: a must come back elsewhere */
  cr_assert_eq(yk_kv_seq_swap_in(cache, a, stream), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_kv_cache_sync(cache), YK_OK);
  s = kv_seq(cache, a);
  unsigned char *block = malloc(bb);
  for (int i = 0; i < 7; i++) {
    cr_assert_geq(s.table[i], 9);
    download(ctx, block, cache->device_base + (size_t)s.table[i] * bb, bb);
    cr_assert_eq(memcmp(block, original + (size_t)(1 + i) * bb, bb), 0, "device block %d after the round trip", i);
  }
  free(block);
  free(original);
  ctx->cu.cuStreamDestroy(stream);
  kv_done(ctx, cache);
}

Test(kv_swap, gpu_copy_on_write_copies_on_the_device) {
  yk_ctx *ctx;
  unsigned char *original;
  yk_kv_cache *cache = gpu_cache(&ctx, "kv_swap.gpu_cow", &original);
  const size_t bb = cache->block_bytes;
  const int64_t a = kv_add(cache);
  kv_append(cache, a, 40, NULL); /* blocks 0 1 2, the last with 8 of 16 */
  int64_t children[3], slot;
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(yk_kv_seq_fork(cache, a, &children[i]), YK_OK);
    kv_append(cache, children[i], 1, &slot);
  }
  cr_assert_eq(kv_info(cache).pending_copies, 3);
  cr_assert_eq(yk_kv_cache_copy_blocks(cache, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_kv_cache_sync(cache), YK_OK);
  unsigned char *block = malloc(bb);
  for (int i = 0; i < 3; i++) {
    const int32_t copy = kv_seq(cache, children[i]).table[2];
    cr_assert_neq(copy, 2);
    download(ctx, block, cache->device_base + (size_t)copy * bb, bb);
    cr_assert_eq(memcmp(block, original + 2 * bb, bb), 0, "child %d: every layer's K and V of block 2", i);
  }
  free(block);
  free(original);
  kv_done(ctx, cache);
}
