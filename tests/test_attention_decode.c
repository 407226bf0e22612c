/* attention_decode: how it splits the keys, the CPU fallback against the float64 reference, and the
 * GPU's decode kernel (split or not, a few queries a sequence, its spec's knobs) against the
 * fallback. */
#include "tests/attention_support.h"

/* How decode cuts its keys, on a context given an H100's 132 SMs: by the batch alone when the
 * lengths are equal or unknown, by the lengths when a ragged batch's are known, and no deeper
 * than a caller's workspace holds. */
Test(attention_decode, decode_splits_follow_the_lengths) {
  yk_ctx *ctx = ts_cpu_ctx();
  ctx->multiprocessors = 132;
  /* batch 1 x 32768, 32 q / 8 kv heads: 8 blocks, 16 splits of 2048 keys; the lengths agree */
  yk_decode_split s = yk_decode_splits(ctx, 1, 32, 8, 32768, 0, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 1, 32, 8, 32768, 32768, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* equal lengths: the batch's rule whether or not they are known (8 x 8 blocks: 2 splits) */
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 8 * 4096, 0).splits, 2);
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 0, 0).splits, 2);
  cr_assert_eq(yk_decode_splits(ctx, 64, 32, 8, 4096, 64 * 4096, 0).splits, 1);
  /* 32 sequences, one of 32768 keys and 31 of 512: 256 blocks fill the SMs, but the long one's 8
   * would hold the batch; 132 x 32768 / (48640 x 8) = 11.1 -> 16 splits of 2048 keys */
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* 4 of 16384 among 60 of 1024: the share's 2.1 -> 4 splits, then 8 for chunks of 2048 keys */
  s = yk_decode_splits(ctx, 64, 32, 8, 16384, 4 * 16384 + 60 * 1024, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* lengths less than twice apart stay on the batch's rule (2 x 8 blocks: 8 splits) */
  s = yk_decode_splits(ctx, 2, 32, 8, 32768, 32768 + 16384, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 4096, "%d %d", s.splits, s.chunk_keys);
  cr_assert_eq(yk_decode_splits(ctx, 32, 32, 8, 32768, 0, 0).splits, 1);
  /* never chunks below 256 keys (3000 / 256 = 11 -> 8), nor past 128 splits */
  s = yk_decode_splits(ctx, 8, 32, 8, 3000, 3446, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 375, "%d %d", s.splits, s.chunk_keys);
  cr_assert_eq(yk_decode_splits(ctx, 2, 1, 1, 16384, 16385, 0).splits, 64);
  cr_assert_eq(yk_decode_splits(ctx, 4, 1, 1, 1 << 24, (1 << 24) + 3, 0).splits, 128);
  cr_assert_eq(yk_decode_splits(ctx, 4, 1, 1, 4096, 4099, 0).splits, 16);
  /* a total that overstates the keys (k's whole token axis) only falls back to the batch's rule */
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 1 << 20, 0).splits, 2);
  /* an explicit count: the longest sequence's splits, the others in chunks of the same size;
   * every sequence in that many chunks where the lengths are unknown */
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 5);
  cr_assert(s.splits == 5 && s.chunk_keys == 6554, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 0, 5);
  cr_assert(s.splits == 5 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 1);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);

  /* a caller's workspace: halved until the partials fit, never below the batch's rule */
  const int64_t blocks_32_on_8 = yk_decode_sequence_blocks(32, 8);
  cr_assert_eq(blocks_32_on_8, 8);
  cr_assert_eq(yk_decode_sequence_blocks(64, 2), 4);                    /* 32 q heads a kv head: two blocks each */
  cr_assert_eq(yk_decode_splits_of(ctx, 1, 32, 32768, 0, 0).splits, 4); /* 132 / 32 blocks */
  const int64_t per_split = 32 * 32 * 129, room4[1] = {4 * per_split}, room1[1] = {per_split / 2};
  const size_t split_floats = yk_decode_split_floats(32, 32, 128);
  cr_assert_eq(split_floats, (size_t)per_split);
  DLTensor ws = {.ndim = 1, .dtype = {kDLFloat, 32, 1}, .shape = (int64_t *)room4};
  s = yk_decode_splits_within(ctx, 32, blocks_32_on_8, 32768, 32768 + 31 * 512, 0, &ws, split_floats, 1);
  cr_assert(s.splits == 4 && s.chunk_keys == 8192, "%d %d", s.splits, s.chunk_keys);
  ws.shape = (int64_t *)room1;
  s = yk_decode_splits_within(ctx, 32, blocks_32_on_8, 32768, 32768 + 31 * 512, 0, &ws, split_floats, 1);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 32, blocks_32_on_8, 32768, 32768 + 31 * 512, 0, NULL, split_floats, 1);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* batch 1 keeps the batch's 16 splits, however small the workspace; the prefill calls' few
   * queries (keep_batch_split 0) go down to none, an explicit count aside */
  const size_t one_split = yk_decode_split_floats(1, 32, 128);
  s = yk_decode_splits_within(ctx, 1, blocks_32_on_8, 32768, 32768, 0, &ws, one_split * 64, 1);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, blocks_32_on_8, 32768, 32768, 0, &ws, one_split * 64, 0);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, blocks_32_on_8, 32768, 32768, 0, &ws, one_split * 4, 0); /* room for 4 */
  cr_assert(s.splits == 4 && s.chunk_keys == 8192, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, blocks_32_on_8, 32768, 32768, 8, &ws, one_split * 64, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 4096, "%d %d", s.splits, s.chunk_keys);
  /* the few queries' workspace, batch 1 of 32768 keys, 32 q heads on 8: splits x queries x 32 rows
   * of head_dim + 1 floats. 4 queries of 4 q heads a kv head are one tile of 16 rows, 8 blocks (16
   * splits); 8 (32 rows) two blocks of one tile (8); 16 (64 rows) one block of 4 tiles (16); past
   * 64 rows blocks of 8 tiles (4 at head_dim 256): 17 queries (68 rows) one a kv head (16), 50
   * (200 rows) and 64 (256) two (8), at head_dim 256 four (4); 65 queries (260 rows) take the
   * prefill kernel (no workspace) */
  static const struct {
    int queries, head_dim, splits;
  } batch1[] = {{4, 128, 16}, {8, 128, 8},  {16, 128, 16}, {17, 128, 16},
                {50, 128, 8}, {50, 256, 4}, {64, 128, 8},  {65, 128, 0}};
  for (size_t i = 0; i < sizeof batch1 / sizeof batch1[0]; i++) {
    const int64_t q = batch1[i].queries, d = batch1[i].head_dim;
    const size_t got = yk_flash_attention_forward_workspace_floats(ctx, 1, q, q, 32, 8, d, 32768, 32768, 0);
    cr_assert_eq(got, (size_t)batch1[i].splits * (size_t)(q * 32 * (d + 1)), "%lld queries, head_dim %lld: %zu floats",
                 (long long)q, (long long)d, got);
  }
  /* batch 2 (16 blocks): 8 splits, or 3 given */
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 2, 8, 4, 32, 8, 128, 32768, 2 * 32768, 0),
               (size_t)8 * 8 * 32 * 129);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 2, 8, 4, 32, 8, 128, 32768, 2 * 32768, 3),
               (size_t)3 * 8 * 32 * 129);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 64, 256, 4, 32, 8, 128, 4096, 64 * 4096, 0), 0);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 1, 4, 4, 32, 6, 128, 32768, 32768, 0), 0);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 1, 4, 4, 32, 8, 128, 32768, 32768, 129), 0);
  /* the workspace query: the call's own split for a dense batch, or for a ragged one of total_k
   * keys; max_seqlen_k as total_k bounds every ragged batch of that length */
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 1, 32, 8, 128, 32768, 0, 0), (size_t)16 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 0, 0), 0);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768 + 31 * 512, 0),
               (size_t)16 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32 * 32768, 0), 0);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768, 0), (size_t)32 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768, 3), (size_t)3 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, -1, 0), 0);
  yk_ctx_destroy(ctx);
}

/* ---- decode ---- */

static const int32_t lens_decode[] = {1, 17, 128, 1000, 4100, 513};
static const int32_t lens_decode_long[] = {2049, 1, 1024};
/* one long sequence among short ones (and an empty one): on the GPU the long one splits further
 * than the batch alone would (8 against 2 on 132 SMs), the short ones stay whole */
static const int32_t lens_decode_skewed[] = {3000, 17, 1, 250, 0, 40, 129, 9};
static const attn_case decode_cases[] = {
    {3, 8, 2, 128, 1, 100},
    {2, 4, 4, 64, 1, 1},
    {4, 8, 1, 64, 1, 0, NULL, lens_decode},
    {2, 16, 4, 256, 1, 0, NULL, lens_decode + 1, .pad = 8},
    {1, 2, 2, 80, 1, 300},
    /* keys in stretches of 1024 folded in order (decode_splits): a batch of one on a tail of 552, and
     * lengths each side of a stretch's edge */
    {1, 8, 2, 128, 1, 2600},
    {3, 4, 1, 64, 1, 0, NULL, lens_decode_long},
    /* groups of three (blocks of two rows and one) and of 32 (keys transposed, not read in place) */
    {2, 6, 2, 96, 1, 77},
    {2, 32, 1, 64, 1, 300},
};
#define DECODE_CASES (int)(sizeof decode_cases / sizeof decode_cases[0])

Test(attention_decode, cpu_decode_matches_reference) {
  char label[64];
  for (int build = 0; build < CPU_BUILDS; build++) {
    if (build_repeats(build)) continue;
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    const uint64_t seed = ts_seed("attention.cpu_decode");
    yh_rng rng = {seed};
    for (int i = 0; i < DECODE_CASES; i++) {
      attn_data a;
      make_data(&a, decode_cases[i], 0, 1, &rng);
      attn_ref want = reference(&a);
      for (int ty = 0; ty < 3; ty++) {
        attn_tensors t;
        make_tensors(&t, ctx, &a, ts_float_types[ty], 0, 0);
        cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
        check_forward(&t, &a, ts_float_types[ty], &want, 0, build_label(label, sizeof label, "cpu decode", build),
                      seed);
        /* causal has no effect on a decode */
        void *plain = yh_snapshot(&t.out);
        yh_poison(&t.out);
        yk_attention_params p = params_of(&a, &t, 0);
        p.causal = 1;
        cr_assert_eq(yk_attention_decode(ctx, &t.q.dl, &t.k.dl, &t.v.dl, &p, &t.out.dl, NULL, NULL), YK_OK, "%s",
                     yk_ctx_last_error(ctx));
        cr_assert_eq(yh_bytes_changed(&t.out, plain), 0, "decode case %d: causal or no lse changed out", i);
        free(plain);
        free_tensors(&t);
      }
      free_ref(&want);
      free_data(&a);
    }
    yk_ctx_destroy(ctx);
  }
}

/* ---- the GPU against the CPU fallback ---- */

static const attn_case gpu_decode_cases[] = {
    {1, 32, 8, 128, 1, 4100},
    {7, 8, 1, 64, 1, 513},
    {6, 4, 4, 256, 1, 0, NULL, lens_decode},
    {3, 16, 4, 64, 1, 0, NULL, lens_decode + 2},
    {2, 64, 8, 256, 1, 2000},
    {4, 8, 8, 128, 1, 0, NULL, lens_decode + 1},
    {8, 32, 8, 128, 1, 0, NULL, lens_decode_skewed},
};

/* num_splits 1, 8 and automatic, each with and without a caller's workspace, against the CPU and
 * against each other. An automatic split count is at most 128, so a workspace sized for 128
 * splits fits it. */
static void decode_matches_cpu(yk_ctx *gpu, yk_ctx *cpu, uint64_t seed, const attn_case *cases, int count,
                               int only_dtype) {
  yh_rng rng = {seed};
  static const int splits[3] = {1, 8, 0};
  for (int i = 0; i < count; i++) {
    attn_data a;
    make_data(&a, cases[i], 0, 1, &rng);
    for (int dtype = YK_F16; dtype <= YK_BF16; dtype++) {
      if (!ts_runs_dtype(only_dtype, dtype)) continue;
      attn_tensors h, d;
      cpu_and_gpu(cpu, gpu, &a, dtype, 0, &h, &d);
      attn_ref want = cpu_result(&h, &a);
      double *one_split = NULL;
      for (int s = 0; s < 3; s++)
        for (int with_workspace = 0; with_workspace <= (splits[s] != 1); with_workspace++) {
          yk_attention_params p = params_of(&a, &d, 1);
          p.num_splits = splits[s];
          yh_tensor ws = {0};
          if (with_workspace) {
            const int64_t floats =
                (int64_t)yk_attention_decode_workspace_floats(gpu, a.c.batch, a.c.q_heads, a.c.kv_heads, a.c.head_dim,
                                                              a.max_k, a.c.lens_k ? a.total_k : 0, splits[s]);
            cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &floats, NULL, 1), 0);
            p.workspace = &ws.dl;
          }
          yh_poison(&d.out), yh_poison(&d.lse);
          cr_assert_eq(yk_attention_decode(gpu, &d.q.dl, &d.k.dl, &d.v.dl, &p, &d.out.dl, &d.lse.dl, NULL), YK_OK, "%s",
                       yk_ctx_last_error(gpu));
          cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
          char label[64];
          snprintf(label, sizeof label, "gpu decode splits %d%s", splits[s], with_workspace ? " workspace" : "");
          check_forward(&d, &a, dtype, &want, 1, label, seed);
          double *got = doubles(&d.out);
          if (!one_split) {
            one_split = got;
          } else {
            const double err = ts_gpu_error(got, one_split, d.out.numel);
            cr_assert(err < 1e-2, "%s case %d: differs from one split by %.3g (seed %llu)", label, i, err,
                      (unsigned long long)seed);
            free(got);
          }
          yh_tensor_free(&ws);
        }
      free(one_split);
      free_ref(&want);
      free_tensors(&h), free_tensors(&d);
    }
    free_data(&a);
  }
}

ParameterizedTestParameters(attention_decode, gpu_decode_matches_cpu) { return ts_gpu_dtype_params(); }
ParameterizedTest(int *dtype, attention_decode, gpu_decode_matches_cpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_decode");
  const int count = (int)(sizeof gpu_decode_cases / sizeof gpu_decode_cases[0]);
  decode_matches_cpu(gpu, cpu, seed, gpu_decode_cases, count, *dtype);
  yk_ctx_destroy(gpu);
  /* the padded shared-memory layout and no L2 hint, which yk tune may choose */
  gpu = ts_gpu_ctx_forcing("attention_decode", "swizzle=0,kv_hint=none");
  cr_assert_not_null(gpu);
  decode_matches_cpu(gpu, cpu, seed, gpu_decode_cases, count, *dtype);
  yk_ctx_destroy(cpu), yk_ctx_destroy(gpu);
}

/* The decode's knobs as yk tune and bench --lengths set them (pipeline depth, teams a block, keys
 * a tile, the L2 hint), each forced on two cases with and without splits: whatever a tuning run
 * keeps gives the same answers. Forced to 4 stages, decode with the evict-first hint ran an
 * illegal instruction on the H100 (gen/ops/attention_decode.c); deeper pipelines now load without it.
 * A test a knob, so that Criterion's workers compile them side by side. */
static const char *const decode_knobs[] = {
    "stages=4",          "stages=6",         "stages=3,kv_hint=none", "warps=8",    "warps=6",
    "warps=12,stages=2", "warps=2,stages=3", "warps=3,stages=2",      "block_n=32", "block_n=64,warps=2,stages=2",
    "kv_hint=none"};
#define DECODE_KNOBS (int)(sizeof decode_knobs / sizeof decode_knobs[0])

ParameterizedTestParameters(attention_decode, gpu_decode_knobs_match_cpu) {
  static int knobs[DECODE_KNOBS];
  for (int k = 0; k < DECODE_KNOBS; k++) knobs[k] = k;
  return cr_make_param_array(int, knobs, DECODE_KNOBS);
}

ParameterizedTest(int *knob, attention_decode, gpu_decode_knobs_match_cpu) {
  yk_ctx *gpu = ts_gpu_ctx_forcing("attention_decode", decode_knobs[*knob]);
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  cr_log_info("decode forced to %s", decode_knobs[*knob]);
  decode_matches_cpu(gpu, cpu, ts_seed("attention.gpu_decode_knobs"), gpu_decode_cases, 2, EVERY_DTYPE);
  yk_ctx_destroy(gpu), yk_ctx_destroy(cpu);
}
