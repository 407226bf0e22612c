/* copy_blocks: whole blocks copied in every cache of a call as memcpy would copy them, on the CPU
 * and on the GPU; more pairs and caches than one launch holds; bad input writing nothing; a CUDA
 * graph replaying a captured call; and the KV cache's copy-on-write flush through it: forks
 * appending, a fork of a fork whose copy reads the block an earlier copy writes, append_kv after. */
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "tests/kv_support.h"

#define BLOCK_ELEMS 96 /* [4, 3, 8] a block */
static const int64_t inner[3] = {4, 3, 8};

/* n caches of `blocks` blocks, each block padded by `pad` elements (a block stride that is not
 * the compact one), random contents gaps included. */
static void make_caches(yh_tensor *caches, DLTensor **list, int n, yk_ctx *ctx, int dtype, int64_t blocks, int64_t pad,
                        yh_rng *rng) {
  const int64_t shape[4] = {blocks, inner[0], inner[1], inner[2]}, strides[4] = {BLOCK_ELEMS + pad, 24, 8, 1};
  for (int i = 0; i < n; i++) {
    cr_assert_eq(yh_tensor_init(&caches[i], ctx, dtype, 4, shape, strides, ctx->device == YK_DEVICE_CUDA), 0);
    yh_fill_uniform(&caches[i], rng, -4, 4);
    list[i] = &caches[i].dl;
  }
}

/* memcpy semantics on the host copies (snapshots taken before the call). */
static void expect_copies(yh_tensor *caches, void **snapshots, int n, const int32_t *mapping, int64_t pairs) {
  for (int i = 0; i < n; i++) {
    const size_t stride = (size_t)caches[i].strides[0] * (size_t)caches[i].elem_bytes;
    const size_t bytes = BLOCK_ELEMS * (size_t)caches[i].elem_bytes;
    char *s = snapshots[i];
    for (int64_t p = 0; p < pairs; p++) memmove(s + mapping[2 * p + 1] * stride, s + mapping[2 * p] * stride, bytes);
  }
}

/* pairs sources from the first half of the blocks and distinct destinations from the second,
 * shuffled: no block both read and written. */
static int32_t *random_pairs(int64_t pairs, int64_t blocks, yh_rng *rng) {
  int32_t *m = malloc((size_t)pairs * 2 * sizeof *m), *dst = malloc((size_t)(blocks / 2) * sizeof *dst);
  for (int64_t i = 0; i < blocks / 2; i++) dst[i] = (int32_t)(blocks / 2 + i);
  for (int64_t i = blocks / 2 - 1; i > 0; i--) {
    const int64_t j = (int64_t)(yh_next(rng) % (uint64_t)(i + 1));
    const int32_t x = dst[i];
    dst[i] = dst[j], dst[j] = x;
  }
  for (int64_t p = 0; p < pairs; p++) {
    m[2 * p] = (int32_t)(yh_next(rng) % (uint64_t)(blocks / 2));
    m[2 * p + 1] = dst[p];
  }
  free(dst);
  return m;
}

static void check_copies(yk_ctx *ctx, int n, int dtype, int64_t blocks, int64_t pad, int64_t pairs,
                         const char *seed_name) {
  const uint64_t seed = ts_seed(seed_name);
  yh_rng rng = {seed};
  yh_tensor *caches = calloc((size_t)n, sizeof *caches);
  DLTensor **list = calloc((size_t)n, sizeof *list);
  void **want = calloc((size_t)n, sizeof *want);
  make_caches(caches, list, n, ctx, dtype, blocks, pad, &rng);
  for (int i = 0; i < n; i++) want[i] = yh_snapshot(&caches[i]);
  int32_t *mapping = random_pairs(pairs, blocks, &rng);
  cr_assert_eq(yk_copy_blocks(ctx, list, n, mapping, pairs, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "kernel failed");
  expect_copies(caches, want, n, mapping, pairs);
  for (int i = 0; i < n; i++) {
    cr_assert_eq(yh_bytes_changed(&caches[i], want[i]), 0,
                 "cache %d of %d, %s, %lld pairs: not memcpy's bytes (seed %llu)", i, n, ts_type_name(dtype),
                 (long long)pairs, (unsigned long long)seed);
    free(want[i]);
    yh_tensor_free(&caches[i]);
  }
  free(mapping), free(want), free(list), free(caches);
}

Test(copy_blocks, cpu_copies_like_memcpy) {
  yk_ctx *ctx = ts_cpu_ctx();
  check_copies(ctx, 1, YK_F16, 16, 0, 5, "copy_blocks.cpu1");
  check_copies(ctx, 3, YK_F32, 64, 5, 30, "copy_blocks.cpu3");
  check_copies(ctx, 70, YK_BF16, 2100, 8, 1000, "copy_blocks.cpu70"); /* > 64 caches, > 1 launch of pairs */
  check_copies(ctx, 2, YK_E4M3, 32, 3, 9, "copy_blocks.cpu_float8");  /* float8 caches, odd block stride */
  yk_ctx_destroy(ctx);
}

Test(copy_blocks, cpu_bad_inputs_write_nothing) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {3};
  yh_tensor caches[2];
  DLTensor *list[2];
  make_caches(caches, list, 2, ctx, YK_F16, 8, 4, &rng);
  void *before[2] = {yh_snapshot(&caches[0]), yh_snapshot(&caches[1])};
  const int32_t good[4] = {1, 5, 2, 6}, bad_src[2] = {8, 1}, bad_dst[4] = {1, 2, 3, -1};
  DLTensor t = caches[1].dl, *mixed[2] = {list[0], &t};
  int64_t shape[4], strides[4];
#define REJECT(call, needle)                                                                                           \
  do {                                                                                                                 \
    ts_assert_rejected(ctx, call, YK_ERR_INVALID_ARGUMENT, needle);                                                    \
    cr_assert_eq(yh_bytes_changed(&caches[0], before[0]) + yh_bytes_changed(&caches[1], before[1]), 0, "%s", needle);  \
  } while (0)
  cr_assert_eq(yk_copy_blocks(NULL, list, 2, good, 2, NULL), YK_ERR_INVALID_ARGUMENT);
  REJECT(yk_copy_blocks(ctx, NULL, 2, good, 2, NULL), "caches is NULL or num_caches 2 is below 1");
  REJECT(yk_copy_blocks(ctx, list, 0, good, 2, NULL), "num_caches 0 is below 1");
  REJECT(yk_copy_blocks(ctx, list, 2, good, -1, NULL), "num_pairs -1 is negative");
  REJECT(yk_copy_blocks(ctx, list, 2, NULL, 2, NULL), "block_mapping is NULL");
  REJECT(yk_copy_blocks(ctx, list, 2, bad_src, 1, NULL), "pair 0: source block 8 is not in 0..7");
  REJECT(yk_copy_blocks(ctx, list, 2, bad_dst, 2, NULL), "pair 1: destination block -1 is not in 0..7");
  /* the pairs run concurrently: each destination once, and no block both read and written */
  const int32_t twice[6] = {0, 4, 1, 5, 2, 4}, read_after[4] = {0, 4, 4, 5}, read_before[4] = {4, 5, 0, 4},
                self[2] = {3, 3};
  REJECT(yk_copy_blocks(ctx, list, 2, twice, 3, NULL), "destination block 4 appears twice (pairs 0 and 2)");
  REJECT(yk_copy_blocks(ctx, list, 2, read_after, 2, NULL),
         "block 4 is both a source (pair 1) and a destination (pair 0)");
  REJECT(yk_copy_blocks(ctx, list, 2, read_before, 2, NULL),
         "block 4 is both a source (pair 0) and a destination (pair 1)");
  REJECT(yk_copy_blocks(ctx, list, 2, self, 1, NULL), "block 3 is both a source (pair 0) and a destination (pair 0)");
  int32_t many[600]; /* past the check's stack keys */
  for (int i = 0; i < 300; i++) many[2 * i] = i % 4, many[2 * i + 1] = 4 + i % 4;
  REJECT(yk_copy_blocks(ctx, list, 2, many, 300, NULL), "destination block 4 appears twice (pairs 0 and 4)");
  t.dtype.code = kDLBfloat;
  REJECT(yk_copy_blocks(ctx, mixed, 2, good, 2, NULL), "caches[1] is bfloat16 but caches[0] is float16");
  t = caches[1].dl, memcpy(shape, caches[1].shape, sizeof shape), shape[0] = 7, t.shape = shape;
  REJECT(yk_copy_blocks(ctx, mixed, 2, good, 2, NULL), "caches[1] has shape [7, 4, 3, 8]");
  t = caches[1].dl, memcpy(strides, caches[1].strides, sizeof strides), strides[0] = 200, t.strides = strides;
  REJECT(yk_copy_blocks(ctx, mixed, 2, good, 2, NULL), "caches[1] has other strides than caches[0]");
  t = caches[0].dl, strides[0] = 200, strides[1] = 25, strides[2] = 8, strides[3] = 1, t.strides = strides;
  DLTensor *gapped[1] = {&t};
  REJECT(yk_copy_blocks(ctx, gapped, 1, good, 2, NULL), "a block must be contiguous (dimension 1 has stride 25");
  t = caches[0].dl, strides[0] = 50, strides[1] = 24, t.strides = strides;
  REJECT(yk_copy_blocks(ctx, gapped, 1, good, 2, NULL), "blocks overlap");
  t = caches[1].dl, t.device.device_type = kDLCUDA;
  REJECT(yk_copy_blocks(ctx, mixed, 2, good, 2, NULL), "tensors mix host and device memory");
  mixed[1] = NULL;
  REJECT(yk_copy_blocks(ctx, mixed, 2, good, 2, NULL), "caches[1] is NULL");
#undef REJECT
  cr_assert_eq(yk_copy_blocks(ctx, list, 2, NULL, 0, NULL), YK_OK, "no pairs, nothing to do");
  free(before[0]), free(before[1]);
  yh_tensor_free(&caches[0]), yh_tensor_free(&caches[1]);
  yk_ctx_destroy(ctx);
}

/* ---- copy-on-write through the KV cache ---- */

static void read_blocks(yk_kv_cache *c, unsigned char *out, size_t bytes) {
  if (c->ctx->device != YK_DEVICE_CUDA) {
    memcpy(out, c->device_base, bytes);
    return;
  }
  cr_assert_eq(yh_sync(c->ctx), 0, "kernel failed");
  cr_assert_eq(c->ctx->cu.cuMemcpyDtoH(out, (CUdeviceptr)(uintptr_t)c->device_base, bytes), CUDA_SUCCESS);
}

/* K and V of `n` tokens appended to layer 0 at slots; rows of k and v come back in *rows. */
static void append_tokens(yk_kv_cache *c, const int64_t *slots, int64_t n, yh_rng *rng, yh_tensor *k, yh_tensor *v) {
  const int on_device = c->ctx->device == YK_DEVICE_CUDA;
  const int64_t shape[3] = {n, c->config.kv_heads, c->config.head_dim};
  yh_tensor s;
  cr_assert_eq(yh_tensor_init(k, c->ctx, YK_F16, 3, shape, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(v, c->ctx, YK_F16, 3, shape, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&s, c->ctx, YK_I64, 1, &n, NULL, on_device), 0);
  yh_fill_uniform(k, rng, -2, 2), yh_fill_uniform(v, rng, -2, 2);
  memcpy(s.host, slots, (size_t)n * sizeof *slots);
  yh_upload(&s);
  DLTensor kc, vc;
  cr_assert_eq(yk_kv_cache_layer(c, 0, &kc, &vc), YK_OK);
  const yk_append_kv_index index = {.slot_mapping = &s.dl};
  cr_assert_eq(yk_append_kv(c->ctx, &k->dl, &v->dl, &kc, &vc, c->config.layout, &index, NULL, NULL, NULL), YK_OK, "%s",
               yk_ctx_last_error(c->ctx));
  yh_sync(c->ctx);
  yh_tensor_free(&s);
  yh_download(k), yh_download(v);
}

/* Token `pos` of seq holds row `row` of k and v (layer 0, NHD). */
static void assert_token(yk_kv_cache *c, const unsigned char *blocks, int64_t seq, int64_t pos, yh_tensor *k,
                         yh_tensor *v, int64_t row, const char *who) {
  const yk_kv_seq_info s = kv_seq(c, seq);
  const int32_t block = s.table[pos / c->config.page_size];
  const size_t bytes = c->page_bytes / (size_t)c->config.page_size, at = (size_t)(pos % c->config.page_size) * bytes;
  const unsigned char *kp = blocks + (size_t)block * c->block_bytes + at, *vp = kp + c->page_bytes;
  cr_assert_eq(memcmp(kp, (char *)k->host + (size_t)row * bytes, bytes), 0, "%s token %lld: K", who, (long long)pos);
  cr_assert_eq(memcmp(vp, (char *)v->host + (size_t)row * bytes, bytes), 0, "%s token %lld: V", who, (long long)pos);
}

static void check_copy_on_write(yk_ctx *ctx, const char *seed_name) {
  yh_rng rng = {ts_seed(seed_name)};
  yk_kv_cache_config config = kv_test_config(2, 2, 64, 16, 24, 0);
  yk_kv_cache *c = kv_test_cache(ctx, &config);
  const size_t bytes = (size_t)config.num_blocks * c->block_bytes;
  unsigned char *blocks = malloc(bytes);
  for (size_t i = 0; i < bytes; i++) blocks[i] = (unsigned char)yh_next(&rng);
  if (ctx->device == YK_DEVICE_CUDA)
    cr_assert_eq(ctx->cu.cuMemcpyHtoD((CUdeviceptr)(uintptr_t)c->device_base, blocks, bytes), CUDA_SUCCESS);
  else
    memcpy(c->device_base, blocks, bytes);

  int64_t slots[40], a = kv_add(c), b, d;
  kv_append(c, a, 40, slots); /* blocks 0 1 2, the last (X) with 8 of 16 */
  yh_tensor k0, v0, k1, v1;
  append_tokens(c, slots, 40, &rng, &k0, &v0);
  const int32_t x = kv_seq(c, a).table[2];
  int64_t fresh[3];
  cr_assert_eq(yk_kv_seq_fork(c, a, &b), YK_OK);
  kv_append(c, b, 1, &fresh[1]); /* X -> Y */
  cr_assert_eq(yk_kv_seq_fork(c, b, &d), YK_OK);
  kv_append(c, d, 1, &fresh[2]); /* Y -> Z: reads the block the first copy writes */
  kv_append(c, a, 1, &fresh[0]); /* X is a's alone again: no copy */
  const int32_t y = kv_seq(c, b).table[2], z = kv_seq(c, d).table[2];
  cr_assert(x != y && y != z && x != z, "blocks %d %d %d", x, y, z);
  cr_assert_eq(kv_info(c).pending_copies, 2);
  cr_assert_eq(yk_kv_cache_copy_blocks(c, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_kv_cache_sync(c), YK_OK);
  cr_assert_eq(kv_info(c).pending_copies, 0);
  read_blocks(c, blocks, bytes);
  cr_assert_eq(memcmp(blocks + (size_t)y * c->block_bytes, blocks + (size_t)x * c->block_bytes, c->block_bytes), 0,
               "Y holds X: every layer's K and V");
  cr_assert_eq(memcmp(blocks + (size_t)z * c->block_bytes, blocks + (size_t)x * c->block_bytes, c->block_bytes), 0,
               "Z holds X, copied after Y was");

  append_tokens(c, fresh, 3, &rng, &k1, &v1);
  read_blocks(c, blocks, bytes);
  const int64_t seqs[3] = {a, b, d};
  const char *names[3] = {"a", "b", "fork of b"};
  for (int s = 0; s < 3; s++)
    for (int64_t t = 0; t < 40; t++) assert_token(c, blocks, seqs[s], t, &k0, &v0, t, names[s]);
  assert_token(c, blocks, a, 40, &k1, &v1, 0, "a");
  assert_token(c, blocks, b, 40, &k1, &v1, 1, "b");
  assert_token(c, blocks, d, 41, &k1, &v1, 2, "fork of b");
  yh_tensor_free(&k0), yh_tensor_free(&v0), yh_tensor_free(&k1), yh_tensor_free(&v1);
  free(blocks);
  yk_kv_cache_destroy(c);
}

Test(copy_blocks, cpu_copy_on_write_flow) {
  yk_ctx *ctx = ts_cpu_ctx();
  check_copy_on_write(ctx, "copy_blocks.cow_cpu");
  yk_ctx_destroy(ctx);
}

/* ---- GPU ---- */

Test(copy_blocks, gpu_copies_like_memcpy) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  check_copies(ctx, 1, YK_F16, 16, 0, 5, "copy_blocks.gpu1");
  check_copies(ctx, 3, YK_F32, 64, 5, 30, "copy_blocks.gpu3");        /* odd padding: narrow words */
  check_copies(ctx, 40, YK_BF16, 2100, 8, 1000, "copy_blocks.gpu40"); /* > 32 caches and > 478 pairs a launch */
  check_copies(ctx, 2, YK_E4M3, 32, 2, 9, "copy_blocks.gpu_float8");  /* float8 blocks as 16-bit words */
  /* float8 blocks an odd number of bytes apart: refused, nothing copied */
  yh_rng rng = {5};
  yh_tensor caches[1];
  DLTensor *list[1];
  make_caches(caches, list, 1, ctx, YK_E4M3, 8, 1, &rng);
  void *before = yh_snapshot(&caches[0]);
  const int32_t pair[2] = {0, 5};
  ts_assert_rejected(ctx, yk_copy_blocks(ctx, list, 1, pair, 1, NULL), YK_ERR_UNSUPPORTED,
                     "float8 blocks of an odd number of bytes");
  cr_assert_eq(yh_bytes_changed(&caches[0], before), 0);
  free(before), yh_tensor_free(&caches[0]);
  yk_ctx_destroy(ctx);
}

Test(copy_blocks, gpu_copy_on_write_flow) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  check_copy_on_write(ctx, "copy_blocks.cow_gpu");
  yk_ctx_destroy(ctx);
}

/* The pairs travel in the launch: a graph captured once replays the copies with no upload. */
Test(copy_blocks, gpu_call_replays_from_a_cuda_graph) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  const yk_cuda_api *cu = &ctx->cu;
  if (!cu->cuStreamBeginCapture || !cu->cuGraphInstantiateWithFlags) cr_skip_test("the driver has no stream capture");
  yh_rng rng = {ts_seed("copy_blocks.graph")};
  yh_tensor cache;
  DLTensor *list[1];
  make_caches(&cache, list, 1, ctx, YK_BF16, 64, 0, &rng);
  int32_t *mapping = random_pairs(20, 64, &rng);
  CUstream stream;
  cr_assert_eq(cu->cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  cr_assert_eq(yk_copy_blocks(ctx, list, 1, mapping, 1, stream), YK_OK); /* loads the kernel outside the capture */
  cr_assert_eq(cu->cuStreamSynchronize(stream), CUDA_SUCCESS);
  yh_fill_uniform(&cache, &rng, -4, 4);
  void *want = yh_snapshot(&cache);
  CUgraph graph;
  CUgraphExec exec;
  cr_assert_eq(cu->cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_RELAXED), CUDA_SUCCESS);
  cr_assert_eq(yk_copy_blocks(ctx, list, 1, mapping, 20, stream), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(cu->cuStreamEndCapture(stream, &graph), CUDA_SUCCESS);
  cr_assert_eq(cu->cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
  cr_assert_eq(yh_bytes_changed(&cache, want), 0, "capturing ran nothing");
  cr_assert_eq(cu->cuGraphLaunch(exec, stream), CUDA_SUCCESS);
  cr_assert_eq(cu->cuStreamSynchronize(stream), CUDA_SUCCESS);
  expect_copies(&cache, &want, 1, mapping, 20);
  cr_assert_eq(yh_bytes_changed(&cache, want), 0, "the replayed graph copied other bytes");
  cu->cuGraphExecDestroy(exec), cu->cuGraphDestroy(graph), cu->cuStreamDestroy(stream);
  free(want), free(mapping);
  yh_tensor_free(&cache);
  yk_ctx_destroy(ctx);
}
