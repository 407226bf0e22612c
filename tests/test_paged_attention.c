/* Paged attention: decode and prefill over pages, both table forms, both layouts, page sizes 1 to
 * 128, against dense attention over the same tokens (the CPU path bit for bit, the GPU within the
 * attention tolerances); the plan/run split and a captured CUDA graph's replay; the paged KV cache
 * manager's tables. The scenarios are tests/paged_support.h's; bad input is
 * test_paged_attention_bad_input.c's, and the cascade over a shared prefix, which builds on these
 * calls, test_cascade_attention.c's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/module.h"
#include "tests/paged_support.h"

/* Whether every sequence of a prefill scenario has as many queries (a dense q can hold them). */
static int equal_queries(const scenario *s) {
  if (s->decode) return 0;
  for (int b = 1; b < s->c.batch; b++)
    if (s->c.lens_q[b] != s->c.lens_q[0]) return 0;
  return 1;
}

/* The same attention over dense ragged keys on the CPU: out and lse as float64. */
typedef struct dense_result {
  double *out, *lse;
} dense_result;

static dense_result dense_cpu(yk_ctx *cpu, const scenario *s, int dtype) {
  const int64_t QH = s->c.q_heads, H = s->c.kv_heads, D = s->c.head_dim, B = s->c.batch;
  yh_tensor q, k, v, out, lse, cu_q, cu_k;
  const int64_t q_shape[3] = {s->decode ? B : s->total_q, QH, D}, k_shape[3] = {s->total_k, H, D};
  const int64_t lse_shape[2] = {s->decode ? B : QH, s->decode ? QH : s->total_q}, n_cu = B + 1;
  cr_assert_eq(yh_tensor_init(&q, cpu, dtype, 3, q_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&out, cpu, dtype, 3, q_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&k, cpu, dtype, 3, k_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&v, cpu, dtype, 3, k_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&lse, cpu, YK_F32, 2, lse_shape, NULL, 0), 0);
  index_tensor(&cu_q, cpu, 1, &n_cu, s->cu_q, 0);
  index_tensor(&cu_k, cpu, 1, &n_cu, s->cu_k, 0);
  yh_from_double(&q, s->q), yh_from_double(&k, s->k), yh_from_double(&v, s->v);
  yk_attention_params p = {.causal = s->causal, .cu_seqlens_k = &cu_k.dl};
  yk_status st;
  if (s->decode) {
    st = yk_attention_decode(cpu, &q.dl, &k.dl, &v.dl, &p, &out.dl, &lse.dl, NULL);
  } else {
    p.cu_seqlens_q = &cu_q.dl;
    st = yk_flash_attention_forward(cpu, &q.dl, &k.dl, &v.dl, &p, &out.dl, &lse.dl, NULL);
  }
  cr_assert_eq(st, YK_OK, "%s", yk_ctx_last_error(cpu));
  dense_result r = {malloc((size_t)out.numel * sizeof(double)), malloc((size_t)lse.numel * sizeof(double))};
  yh_to_double(&out, r.out), yh_to_double(&lse, r.lse);
  yh_tensor *all[] = {&q, &k, &v, &out, &lse, &cu_q, &cu_k};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
  return r;
}

static void free_result(dense_result *r) { free(r->out), free(r->lse); }

static void label_of(char *buf, size_t n, const char *what, const scenario *s, int dtype, int i) {
  snprintf(buf, n, "%s case %d %s page %d %s %s%s", what, i, ts_type_name(dtype), s->c.page_size,
           s->layout == YK_KV_NHD ? "NHD" : "HND", s->csr ? "csr" : "block_table", s->causal ? " causal" : "");
}

static const paged_case decode_cases[] = {
    {4, {1, 17, 300, 0}, {0}, 8, 2, 128, 16},
    {3, {129, 1000, 64}, {0}, 4, 4, 64, 1},
    {2, {5000, 37}, {0}, 32, 8, 128, 16}, /* splits: the long sequence's chunks, the short one's mostly empty */
    {5, {128, 256, 1, 255, 700}, {0}, 8, 1, 128, 128},
    {2, {40, 90}, {0}, 6, 2, 80, 7},
    /* head dims whose float8 fragments take other pieces: 256 (two warps a team, Q from shared
       memory), 112 (three k steps and 14 bytes a lane past the whole pieces) */
    {2, {300, 33}, {0}, 8, 2, 256, 16},
    {3, {77, 1, 520}, {0}, 4, 1, 112, 16},
};
static const paged_case prefill_cases[] = {
    {3, {300, 17, 64}, {45, 17, 1}, 8, 2, 128, 16},
    {2, {1000, 129}, {200, 129}, 4, 4, 64, 1},
    {4, {256, 300, 128, 700}, {256, 1, 100, 64}, 8, 1, 128, 128},
    {2, {90, 40}, {33, 40}, 6, 2, 80, 7},
    {2, {400, 130}, {150, 130}, 4, 2, 256, 16}, /* on sm_90 the Hopper prefill's 64-key tiles at 256 */
    /* a few queries a sequence (at most 256 (token, q head) rows a kv head): on the GPU the paged
       decode kernel, split where the keys are long; a sequence of no queries, rows that see no key */
    {3, {3000, 17, 600}, {4, 1, 16}, 32, 8, 128, 16},
    {3, {700, 129, 2}, {2, 5, 2}, 4, 4, 64, 1},
    {2, {90, 40}, {6, 7}, 6, 2, 80, 7},
    {3, {500, 64, 1000}, {3, 0, 2}, 8, 1, 256, 16},
    /* equal queries, also run as a dense q (equal_queries): the decode kernel's few queries (8 x 2
       rows; 4 x 8; 20 x 4, a block of 8 row tiles), and the prefill kernel past 256 rows (66 x 4) */
    {2, {2500, 300}, {8, 8}, 16, 8, 128, 16},
    {3, {40, 1000, 7}, {4, 4, 4}, 8, 1, 64, 1},
    {2, {600, 100}, {20, 20}, 8, 2, 128, 16},
    {2, {600, 100}, {66, 66}, 8, 2, 128, 16},
    /* 32 rows past one wave of 16-row blocks (9 x 8 kv heads x 2 on 132 SMs): blocks of 2 row
       tiles, float8 too (bench/NOTES.md item 74) */
    {9, {300, 40, 17, 129, 64, 8, 1000, 33, 9}, {8, 8, 8, 8, 8, 8, 8, 8, 8}, 32, 8, 128, 16},
};
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* One paged call over poisoned outputs against the dense result: on the CPU bit for bit (both run
 * the same fallback), on the GPU within the attention tolerances. */
static void check_paged_run(yk_ctx *ctx, const scenario *s, paged_tensors *t, yh_tensor *cu_q, const dense_result *want,
                            const char *label, uint64_t seed) {
  const int gpu = t->out.device != 0;
  yh_poison(&t->out), yh_poison(&t->lse);
  cr_assert_eq(run_paged(ctx, s, t, cu_q, 0), YK_OK, "%s: %s", label, yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "%s: kernel failed", label);
  double *got = as_doubles(&t->out);
  if (gpu) {
    const double err = ts_gpu_error(got, want->out, t->out.numel);
    cr_assert(err < ts_gpu_tolerance(t->out.type), "%s: error %.3g (seed %llu)", label, err, (unsigned long long)seed);
    check_lse(&t->lse, want->lse, 1e-3, label, seed);
  } else {
    for (int64_t e = 0; e < t->out.numel; e++)
      cr_assert(got[e] == want->out[e], "%s: out[%lld] %g, dense %g (seed %llu)", label, (long long)e, got[e],
                want->out[e], (unsigned long long)seed);
    check_lse(&t->lse, want->lse, 0, label, seed);
  }
  free(got);
}

/* Every case, layout and form: the paged call against the dense one over the same tokens. On the
 * CPU both run the same fallback, so they must agree bit for bit. only_dtype: one of the dtypes
 * the context takes, or EVERY_DTYPE (a GPU test's shards split them). */
static void paged_matches_dense(yk_ctx *ctx, yk_ctx *cpu, int decode, int only_dtype, uint64_t seed) {
  yh_rng rng = {seed};
  const paged_case *cases = decode ? decode_cases : prefill_cases;
  const int count = decode ? COUNT(decode_cases) : COUNT(prefill_cases), gpu = ctx != cpu;
  for (int i = 0; i < count; i++)
    for (int variant = 0; variant < 4; variant++)
      for (int causal = 0; causal <= !decode; causal++) {
        scenario s;
        make_scenario(&s, &cases[i], decode, causal, variant & 1, variant & 2 ? YK_KV_HND : YK_KV_NHD, &rng);
        for (int dtype = gpu ? YK_F16 : YK_F32; dtype <= YK_BF16; dtype++) {
          if (!ts_runs_dtype(only_dtype, dtype)) continue;
          paged_tensors t;
          yh_tensor cu_q;
          make_tensors(&t, ctx, &s, dtype, gpu);
          cu_q_tensor(&cu_q, ctx, &s, gpu);
          void *k_before = yh_snapshot(&t.k_cache);
          dense_result want = dense_cpu(cpu, &s, dtype);
          char label[160];
          label_of(label, sizeof label, decode ? "decode" : "prefill", &s, dtype, i);
          check_paged_run(ctx, &s, &t, &cu_q, &want, label, seed);
          if (equal_queries(&s)) {
            char dense[200];
            snprintf(dense, sizeof dense, "%s dense q", label);
            s.dense_q = 1;
            check_paged_run(ctx, &s, &t, &cu_q, &want, dense, seed);
            s.dense_q = 0;
          }
          /* a table in device memory without max_context_len: prefill's few queries a sequence
             split by what the table holds, each sequence cutting its own keys */
          if (gpu && !decode && variant == 3) {
            t.kv.max_context_len = 0;
            strncat(label, " max_context_len 0", sizeof label - strlen(label) - 1);
            check_paged_run(ctx, &s, &t, &cu_q, &want, label, seed);
          }
          cr_assert_eq(yh_bytes_changed(&t.k_cache, k_before), 0, "%s: the cache changed", label);
          free(k_before), free_result(&want);
          yh_tensor_free(&cu_q), free_tensors(&t);
        }
        free_scenario(&s);
      }
}

static void float8_matches_dense(yk_ctx *ctx, yk_ctx *cpu, int decode, int only_dtype, uint64_t seed); /* below */

Test(paged_attention, cpu_decode_matches_dense) {
  yk_ctx *cpu = ts_cpu_ctx();
  paged_matches_dense(cpu, cpu, 1, EVERY_DTYPE, ts_seed("paged_attention.cpu_decode"));
  float8_matches_dense(cpu, cpu, 1, EVERY_DTYPE, ts_seed("paged_attention.cpu_float8_decode"));
  yk_ctx_destroy(cpu);
}

Test(paged_attention, cpu_prefill_matches_dense) {
  yk_ctx *cpu = ts_cpu_ctx();
  paged_matches_dense(cpu, cpu, 0, EVERY_DTYPE, ts_seed("paged_attention.cpu_prefill"));
  float8_matches_dense(cpu, cpu, 0, EVERY_DTYPE, ts_seed("paged_attention.cpu_float8_prefill"));
  yk_ctx_destroy(cpu);
}

Test(paged_attention, gpu_decode_matches_dense) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  paged_matches_dense(gpu, cpu, 1, EVERY_DTYPE, ts_seed("paged_attention.gpu_decode"));
  float8_matches_dense(gpu, cpu, 1, EVERY_DTYPE, ts_seed("paged_attention.gpu_float8_decode"));
  yk_ctx_destroy(cpu), yk_ctx_destroy(gpu);
}

/* The prefill's kernels by shard (what runs, and a dtype): Criterion's workers run them side by
 * side, where one test took ~390 s of the H100 host's time, nearly all NVRTC. */
typedef struct prefill_shard {
  int part; /* PREFILL_DEFAULT, PREFILL_FLOAT8, or a Hopper prefill loop (PREFILL_LOOPS + i) */
  int dtype;
} prefill_shard;

enum { PREFILL_DEFAULT, PREFILL_FLOAT8, PREFILL_LOOPS, PREFILL_PARTS = PREFILL_LOOPS + 2 };

ParameterizedTestParameters(paged_attention, gpu_prefill_matches_dense) {
  static prefill_shard shards[PREFILL_PARTS * 2];
  for (int i = 0; i < PREFILL_PARTS * 2; i++) shards[i] = (prefill_shard){i / 2, YK_F16 + i % 2};
  return cr_make_param_array(prefill_shard, shards, PREFILL_PARTS * 2);
}

ParameterizedTest(prefill_shard *shard, paged_attention, gpu_prefill_matches_dense) {
  /* the Hopper prefill's producer-warpgroup loops read pages too */
  static const char *const loops[PREFILL_PARTS - PREFILL_LOOPS] = {"pipeline=1,warpgroups=1",
                                                                   "pipeline=2,warpgroups=2"};
  yk_ctx *gpu = shard->part < PREFILL_LOOPS
                    ? ts_gpu_ctx()
                    : ts_gpu_ctx_forcing("attention_prefill_sm90", loops[shard->part - PREFILL_LOOPS]);
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  /* float8 caches: the mma.sync prefill widens their tiles (the Hopper one takes 16-bit keys only) */
  if (shard->part == PREFILL_FLOAT8)
    float8_matches_dense(gpu, cpu, 0, shard->dtype, ts_seed("paged_attention.gpu_float8_prefill"));
  else
    paged_matches_dense(gpu, cpu, 0, shard->dtype, ts_seed("paged_attention.gpu_prefill"));
  yk_ctx_destroy(gpu), yk_ctx_destroy(cpu);
}

/* ---- float8 caches ---- */

/* Paged attention over a float8 cache against dense attention over the values it holds (stored *
 * scale, in q's dtype) on the CPU. Scales that are powers of two make every product of the scaled
 * path exact, so the CPU must agree bit for bit; others (float32 q) within float32's rounding. The
 * GPU (ctx != cpu; float16 and bfloat16) against the CPU over the same cache, within the attention
 * tolerances. */
static void float8_matches_dense(yk_ctx *ctx, yk_ctx *cpu, int decode, int only_dtype, uint64_t seed) {
  yh_rng rng = {seed};
  const paged_case *cases = decode ? decode_cases : prefill_cases;
  const int count = decode ? COUNT(decode_cases) : COUNT(prefill_cases), gpu = ctx != cpu;
  static const yk_kv_scales scales[] = {{1.f, 1.f}, {0.5f, 4.f}, {0.0625f, 2.f}, {0.3f, 1.7f}};
  for (int i = 0; i < count; i++)
    for (int variant = 0; variant < 4; variant++)
      for (int causal = 0; causal <= !decode; causal++) {
        const int sc = (variant + causal + i) % 4, bitwise = sc < 3; /* every case meets each scale */
        scenario s;
        make_scenario(&s, &cases[i], decode, causal, variant & 1, variant & 2 ? YK_KV_HND : YK_KV_NHD, &rng);
        float8_scenario(&s, scales[sc]);
        /* GPU: q of other magnitudes too, as decode takes bfloat16 q as float16 times a power of
           two of its own (attention_decode.cu's q_shift); exact in bfloat16, and in float16 the GPU
           and the CPU read the same rounded q */
        static const double q_gains[] = {1, 0x1p-20, 0x1p5};
        for (int64_t e = 0; gpu && e < s.total_q * s.c.q_heads * s.c.head_dim; e++)
          s.q[e] *= q_gains[(i + variant) % 3];
        const int first = gpu ? YK_F16 : YK_F32, last = gpu || bitwise ? YK_BF16 : YK_F32;
        for (int dtype = first; dtype <= last; dtype++) {
          if (!ts_runs_dtype(only_dtype, dtype)) continue;
          paged_tensors t;
          yh_tensor cu_q;
          make_tensors(&t, ctx, &s, dtype, gpu);
          if (sc == 0) t.kv.scales = (yk_kv_scales){0, 0}; /* 0 reads as 1 */
          cu_q_tensor(&cu_q, ctx, &s, gpu);
          char label[160];
          label_of(label, sizeof label, decode ? "float8 decode" : "float8 prefill", &s, dtype, i);
          snprintf(label + strlen(label), sizeof label - strlen(label), " scales %g %g", (double)s.scales.k,
                   (double)s.scales.v);
          yh_poison(&t.out), yh_poison(&t.lse);
          cr_assert_eq(run_paged(ctx, &s, &t, &cu_q, 0), YK_OK, "%s: %s", label, yk_ctx_last_error(ctx));
          cr_assert_eq(yh_sync(ctx), 0, "%s: kernel failed", label);
          dense_result want = dense_cpu(cpu, &s, dtype);
          double *got = as_doubles(&t.out);
          if (gpu) { /* against the CPU fallback over the same float8 cache: dense keys in q's 16-bit
                        dtype round stored * scale where the scale is not a power of two */
            paged_tensors c;
            yh_tensor c_cu_q;
            make_tensors(&c, cpu, &s, dtype, 0);
            c.kv.scales = t.kv.scales;
            cu_q_tensor(&c_cu_q, cpu, &s, 0);
            cr_assert_eq(run_paged(cpu, &s, &c, &c_cu_q, 0), YK_OK, "%s", yk_ctx_last_error(cpu));
            double *ref = as_doubles(&c.out), *ref_lse = as_doubles(&c.lse);
            const double err = ts_gpu_error(got, ref, t.out.numel);
            cr_assert(err < ts_gpu_tolerance(dtype), "%s: error %.3g (seed %llu)", label, err,
                      (unsigned long long)seed);
            check_lse(&t.lse, ref_lse, 1e-3, label, seed);
            free(ref), free(ref_lse), yh_tensor_free(&c_cu_q), free_tensors(&c);
          } else if (bitwise) {
            for (int64_t e = 0; e < t.out.numel; e++)
              cr_assert(got[e] == want.out[e], "%s: out[%lld] %g, dense %g (seed %llu)", label, (long long)e, got[e],
                        want.out[e], (unsigned long long)seed);
            check_lse(&t.lse, want.lse, 0, label, seed);
          } else {
            const double err = ts_gpu_error(got, want.out, t.out.numel);
            cr_assert(err < 1e-5, "%s: relative error %.3g (seed %llu)", label, err, (unsigned long long)seed);
            check_lse(&t.lse, want.lse, 1e-5, label, seed);
          }
          free(got), free_result(&want);
          yh_tensor_free(&cu_q), free_tensors(&t);
        }
        free_scenario(&s);
      }
}

/* A plan for float8 caches (kv_dtype) runs what a direct call computes, bit for bit; a plan for
 * 16-bit caches refuses them. */
Test(paged_attention, gpu_float8_plan_run) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yh_rng rng = {ts_seed("paged_attention.gpu_float8_plan")};
  static const paged_case c = {2, {3000, 41}, {0}, 32, 8, 128, 16};
  scenario s;
  make_scenario(&s, &c, 1, 0, 1, YK_KV_NHD, &rng);
  float8_scenario(&s, (yk_kv_scales){0.5f, 3.f});
  paged_tensors t;
  make_tensors(&t, gpu, &s, YK_BF16, 1);
  const yk_attention_params p = {0};
  cr_assert_eq(yk_paged_attention_decode(gpu, &t.q.dl, &t.kv, &p, &t.out.dl, &t.lse.dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(gpu));
  cr_assert_eq(yh_sync(gpu), 0);
  void *direct = yh_snapshot(&t.out);
  yk_paged_plan *plan;
  cr_assert_eq(yk_paged_plan_create(gpu, &plan), YK_OK);
  yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, 32, 8, 128, 16, 1, 0, 0, {YK_DL_FLOAT8_E4M3FN, 8, 1}};
  size_t floats = 0;
  cr_assert_eq(yk_paged_decode_plan(plan, &shape, c.lens_k, c.batch, &floats), YK_OK, "%s", yk_ctx_last_error(gpu));
  yh_tensor ws;
  const int64_t n = floats ? (int64_t)floats : 1;
  cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &n, NULL, 1), 0);
  yh_poison(&t.out);
  cr_assert_eq(yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, &t.lse.dl, floats ? &ws.dl : NULL, NULL), YK_OK,
               "%s", yk_ctx_last_error(gpu));
  cr_assert_eq(yh_sync(gpu), 0);
  cr_assert_eq(yh_bytes_changed(&t.out, direct), 0, "planned and direct float8 decode differ");
  shape.kv_dtype = (DLDataType){0, 0, 0};
  cr_assert_eq(yk_paged_decode_plan(plan, &shape, c.lens_k, c.batch, &floats), YK_OK, "%s", yk_ctx_last_error(gpu));
  ts_assert_rejected(gpu, yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, &t.lse.dl, &ws.dl, NULL),
                     YK_ERR_INVALID_ARGUMENT, "bfloat16 over float8_e4m3fn caches) are not the plan's");
  yk_paged_plan_destroy(plan);
  free(direct), yh_tensor_free(&ws), free_tensors(&t), free_scenario(&s);
  yk_ctx_destroy(gpu);
}

/* The teams of a paged decode launch follow its grid: 8 one-warp teams of 2 stages where it is one
 * wave of single blocks, split or not (8 queries of batch 8 x 4096 read 1.26x on them unsplit), 4
 * of 3 stages past that; contiguous keys keep 4. */
static void expect_spec(yk_ctx *ctx, const yk_decode_launch *L, const char *want, const char *label) {
  yk_spec spec;
  char text[512];
  yk_decode_spec(ctx, L, &spec);
  yk_spec_format(&spec, text, sizeof text);
  cr_assert_not_null(strstr(text, want), "%s: %s, want %s", label, text, want);
}

Test(paged_attention, decode_teams_follow_the_grid) {
  yk_ctx *ctx = ts_cpu_ctx();
  ctx->multiprocessors = 132;
  yk_decode_launch L = {.a = {.dtype = YK_BF16, .batch = 16, .q_heads = 32, .kv_heads = 8, .head_dim = 128},
                        .paged = 1,
                        .page_size = 16,
                        .max_seqlen_k = INT32_MAX,
                        .splits = 1};
  expect_spec(ctx, &L, "warps=8,d_split=1,stages=2", "decode B16: 128 blocks");
  expect_spec(ctx, &L, "kv_hint=none", "decode B16: 128 blocks");
  L.a.batch = 17;
  expect_spec(ctx, &L, "warps=4,d_split=1,stages=3", "decode B17: 136 blocks");
  expect_spec(ctx, &L, "kv_hint=none", "decode B17: 136 blocks");
  L.splits = 2, L.a.batch = 8;
  expect_spec(ctx, &L, "warps=8,d_split=1,stages=2", "decode B8 split 2");
  L.splits = 1, L.paged = 2;
  expect_spec(ctx, &L, "warps=8,d_split=1,stages=2", "decode B8, a CSR table");
  /* a few queries a sequence: 8 tokens x 4 q heads = 32 rows a kv head, one block of 2 row tiles
     (their team's tiles twice as long) */
  const int32_t cu_q_stub = 0;
  L.queries = 1, L.cu_q = &cu_q_stub, L.max_seqlen_q = 8, L.total_q = 128, L.causal = 1, L.a.batch = 16;
  expect_spec(ctx, &L, "block_n=32,warps=8,d_split=1,stages=2", "8 queries of B16: 128 blocks");
  expect_spec(ctx, &L, "kv_hint=evict_first", "8 queries of B16: 128 blocks");
  expect_spec(ctx, &L, "row_tiles=2", "8 queries of B16: 128 blocks");
  L.a.batch = 17, L.total_q = 136;
  expect_spec(ctx, &L, "block_n=32,warps=4,d_split=1,stages=3", "8 queries of B17: 136 blocks");
  L.cu_q = NULL; /* dense queries: the same rows */
  expect_spec(ctx, &L, "block_n=32,warps=4,d_split=1,stages=3", "8 dense queries of B17: 136 blocks");
  L.a.batch = 16, L.total_q = 128;
  expect_spec(ctx, &L, "warps=8,d_split=1,stages=2", "8 dense queries of B16: 128 blocks");
  L.a.batch = 8, L.total_q = 64; /* 32 rows within one wave of 16-row blocks: those */
  expect_spec(ctx, &L, "block_n=16,warps=8,d_split=1,stages=2", "8 dense queries of B8: 128 blocks");
  expect_spec(ctx, &L, "row_tiles=1", "8 dense queries of B8: 128 blocks");
  L.a.batch = 16, L.max_seqlen_q = 16, L.total_q = 256; /* 64 rows: 4 row tiles */
  expect_spec(ctx, &L, "block_n=32,warps=8,d_split=1,stages=2", "16 dense queries of B16: 128 blocks");
  expect_spec(ctx, &L, "row_tiles=4", "16 dense queries of B16: 128 blocks");
  L.max_seqlen_q = 32, L.total_q = 512; /* 128 rows: 8 row tiles, their 8 warps one team of 3 stages */
  expect_spec(ctx, &L, "block_n=32,warps=8,d_split=1,stages=3", "32 dense queries of B16: 128 blocks");
  expect_spec(ctx, &L, "row_tiles=8", "32 dense queries of B16: 128 blocks");
  expect_spec(ctx, &L, "kv_hint=evict_first", "32 dense queries of B16: 128 blocks");
  L.a.kv_float8 = 1; /* one float8 piece a thread a tile: ptxas miscompiles their evict-first loads */
  expect_spec(ctx, &L, "kv_hint=none", "32 float8 queries of B16: 128 blocks");
  L.splits = 2;
  expect_spec(ctx, &L, "kv_hint=none", "32 float8 queries of B16, split");
  L.a.kv_float8 = 0;
  expect_spec(ctx, &L, "kv_hint=evict_first", "32 queries of B16, split");
  L.splits = 1;
  L.a.batch = 64, L.max_seqlen_q = 64, L.total_q = 4096; /* 256 rows: two blocks of 8, no longer one wave */
  expect_spec(ctx, &L, "block_n=32,warps=8,d_split=1,stages=3", "64 dense queries of B64: 1024 blocks");
  expect_spec(ctx, &L, "row_tiles=8", "64 dense queries of B64: 1024 blocks");
  L.a.batch = 16;
  L.max_seqlen_q = 4, L.total_q = 64; /* 16 rows: one tile */
  expect_spec(ctx, &L, "block_n=16,warps=8,d_split=1,stages=2", "4 dense queries of B16: 128 blocks");
  expect_spec(ctx, &L, "row_tiles=1", "4 dense queries of B16: 128 blocks");
  L.max_seqlen_q = 8, L.total_q = 128, L.a.head_dim = 256; /* two warps a team already */
  expect_spec(ctx, &L, "warps=8,d_split=2,stages=3", "head_dim 256");
  L.max_seqlen_q = 32, L.total_q = 512; /* 128 rows at head_dim 256: two blocks of 4 row tiles */
  expect_spec(ctx, &L, "row_tiles=4", "32 queries at head_dim 256");
  expect_spec(ctx, &L, "warps=8,d_split=2,stages=3", "32 queries at head_dim 256");
  L = (yk_decode_launch){.a = {.dtype = YK_BF16, .batch = 16, .q_heads = 32, .kv_heads = 8, .head_dim = 128},
                         .max_seqlen_k = 4096,
                         .splits = 1};
  expect_spec(ctx, &L, "warps=4,d_split=1,stages=3", "contiguous keys");
  yk_ctx_destroy(ctx);
}

/* A plan compiles the kernel its runs launch, so that running never compiles (a captured graph
 * must not wait on NVRTC): unsplit (the spec then depends on the grid: one block an SM takes 8
 * teams) and split, both table forms; the unsplit run gives the direct call's bits. */
Test(paged_attention, gpu_plan_compiles_what_runs) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yh_rng rng = {ts_seed("paged_attention.gpu_plan_compiles")};
  static const paged_case cases[] = {{2, {3000, 41}, {0}, 32, 8, 128, 16},
                                     {6, {700, 9, 300, 1, 2048, 64}, {0}, 32, 8, 128, 16}};
  for (int i = 0; i < 2; i++)
    for (int csr = 0; csr <= 1; csr++)
      for (int num_splits = 0; num_splits <= 1; num_splits++) {
        const paged_case c = cases[i]; /* unsplit, 2 or 6 sequences x 8 kv heads: one wave */
        char label[64];
        snprintf(label, sizeof label, "case %d %s num_splits %d", i, csr ? "csr" : "block_table", num_splits);
        scenario s;
        make_scenario(&s, &c, 1, 0, csr, YK_KV_NHD, &rng);
        paged_tensors t;
        make_tensors(&t, gpu, &s, YK_BF16, 1);
        yk_paged_plan *plan;
        cr_assert_eq(yk_paged_plan_create(gpu, &plan), YK_OK);
        const yk_paged_plan_shape shape = {.dtype = {kDLBfloat, 16, 1},
                                           .q_heads = 32,
                                           .kv_heads = 8,
                                           .head_dim = 128,
                                           .page_size = 16,
                                           .csr = csr,
                                           .num_splits = num_splits};
        size_t floats = 0;
        cr_assert_eq(yk_paged_decode_plan(plan, &shape, c.lens_k, c.batch, &floats), YK_OK, "%s",
                     yk_ctx_last_error(gpu));
        cr_assert_eq(floats == 0, num_splits == 1, "%s: %zu workspace floats", label, floats);
        yh_tensor ws;
        const int64_t n = floats ? (int64_t)floats : 1;
        cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &n, NULL, 1), 0);
        yk_ctx_stats before, after;
        cr_assert_eq(yk_ctx_get_stats(gpu, &before), YK_OK);
        yh_poison(&t.out);
        cr_assert_eq(yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, NULL, floats ? &ws.dl : NULL, NULL), YK_OK,
                     "%s", yk_ctx_last_error(gpu));
        cr_assert_eq(yh_sync(gpu), 0);
        cr_assert_eq(yk_ctx_get_stats(gpu, &after), YK_OK);
        cr_assert_eq(after.kernels, before.kernels, "%s: the run built %llu kernels", label,
                     (unsigned long long)(after.kernels - before.kernels));
        if (num_splits == 1) { /* the direct call of the same split: the same kernel, the same bits */
          void *planned = yh_snapshot(&t.out);
          const yk_attention_params p = {.num_splits = 1};
          yh_poison(&t.out);
          cr_assert_eq(yk_paged_attention_decode(gpu, &t.q.dl, &t.kv, &p, &t.out.dl, NULL, NULL), YK_OK, "%s",
                       yk_ctx_last_error(gpu));
          cr_assert_eq(yh_sync(gpu), 0);
          cr_assert_eq(yh_bytes_changed(&t.out, planned), 0, "%s: planned and direct decode differ", label);
          free(planned);
        }
        yk_paged_plan_destroy(plan);
        yh_tensor_free(&ws), free_tensors(&t), free_scenario(&s);
      }
  yk_ctx_destroy(gpu);
}

/* ---- plan / run and CUDA graphs ---- */

/* Tables grown in place: the same device buffers hold the next step's lengths (each sequence
 * `grow` tokens longer, within the blocks the scenario already filled). */
static void set_lengths(const scenario *s, paged_tensors *t, int grow) {
  for (int b = 0; b < s->c.batch; b++) {
    const int32_t len = s->c.lens_k[b] - 8 + grow, P = s->c.page_size, n = (len + P - 1) / P;
    if (s->csr) {
      ((int32_t *)t->last.host)[b] = n ? len - (n - 1) * P : 1;
      /* the scenario's blocks stay where they are; only the entry counts change */
      ((int32_t *)t->indptr.host)[b + 1] = ((int32_t *)t->indptr.host)[b] + n;
      for (int32_t j = 0; j < n; j++)
        ((int32_t *)t->indices.host)[((int32_t *)t->indptr.host)[b] + j] = s->indices[s->indptr[b] + j];
    } else {
      ((int32_t *)t->lens.host)[b] = len;
    }
  }
  yh_tensor *all[] = {&t->last, &t->indptr, &t->indices, &t->lens};
  for (int i = 0; i < 4; i++)
    if (all[i]->numel) cr_assert_eq(yh_upload(all[i]), 0);
}

Test(paged_attention, gpu_plan_run_and_graph_replay) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  cr_assert_not_null(gpu->cu.cuStreamBeginCapture, "the driver has no graph capture");
  const uint64_t seed = ts_seed("paged_attention.gpu_graph");
  yh_rng rng = {seed};
  static const paged_case c = {3, {708, 41, 2008}, {0}, 32, 8, 128, 16};
  CUstream stream;
  cr_assert_eq(yk_cuda_make_current(gpu), YK_OK);
  cr_assert_eq(gpu->cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  for (int csr = 0; csr <= 1; csr++) {
    scenario s;
    make_scenario(&s, &c, 1, 0, csr, csr ? YK_KV_HND : YK_KV_NHD, &rng);
    paged_tensors t, direct;
    make_tensors(&t, gpu, &s, YK_BF16, 1);
    make_tensors(&direct, gpu, &s, YK_BF16, 1);
    set_lengths(&s, &t, 0), set_lengths(&s, &direct, 0);

    yk_paged_plan *plan;
    cr_assert_eq(yk_paged_plan_create(gpu, &plan), YK_OK);
    const yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, c.q_heads, c.kv_heads, c.head_dim, c.page_size, csr, 0, 0};
    int32_t lens[3];
    for (int b = 0; b < 3; b++) lens[b] = c.lens_k[b] - 8;
    size_t floats = 0;
    cr_assert_eq(yk_paged_decode_plan(plan, &shape, lens, 3, &floats), YK_OK, "%s", yk_ctx_last_error(gpu));
    cr_assert_gt(floats, 0, "a 2008-token sequence in a batch of 3 should be split");
    yh_tensor ws;
    const int64_t n_ws = (int64_t)floats;
    cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &n_ws, NULL, 1), 0);

    /* capture one run, then replay it for two steps of growing tables */
    CUgraph graph;
    CUgraphExec exec;
    yh_poison(&t.out), yh_poison(&t.lse);
    cr_assert_eq(gpu->cu.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), CUDA_SUCCESS);
    const yk_status captured = yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, &t.lse.dl, &ws.dl, stream);
    cr_assert_eq(gpu->cu.cuStreamEndCapture(stream, &graph), CUDA_SUCCESS);
    cr_assert_eq(captured, YK_OK, "%s", yk_ctx_last_error(gpu));
    cr_assert_eq(gpu->cu.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
    for (int step = 0; step <= 8; step += 8) {
      set_lengths(&s, &t, step), set_lengths(&s, &direct, step);
      yh_poison(&t.out), yh_poison(&t.lse), yh_poison(&direct.out), yh_poison(&direct.lse);
      cr_assert_eq(gpu->cu.cuGraphLaunch(exec, stream), CUDA_SUCCESS);
      cr_assert_eq(gpu->cu.cuStreamSynchronize(stream), CUDA_SUCCESS);
      /* the plan run outside a graph launches the same kernels: the same bits */
      cr_assert_eq(yk_paged_decode_run(plan, &direct.q.dl, &direct.kv, &direct.out.dl, &direct.lse.dl, &ws.dl, NULL),
                   YK_OK, "%s", yk_ctx_last_error(gpu));
      cr_assert_eq(yh_sync(gpu), 0);
      double *a = as_doubles(&t.out), *b = as_doubles(&direct.out);
      for (int64_t e = 0; e < t.out.numel; e++)
        cr_assert(a[e] == b[e], "%s step %d: replay out[%lld] %g, direct %g (seed %llu)", csr ? "csr" : "block_table",
                  step, (long long)e, a[e], b[e], (unsigned long long)seed);
      /* and the unplanned call agrees (the plan cut its keys by the planned lengths: its chunks
       * may differ, so within rounding) */
      yk_attention_params p = {.num_splits = 0};
      yh_poison(&direct.out), yh_poison(&direct.lse);
      cr_assert_eq(yk_paged_attention_decode(gpu, &direct.q.dl, &direct.kv, &p, &direct.out.dl, &direct.lse.dl, NULL),
                   YK_OK, "%s", yk_ctx_last_error(gpu));
      cr_assert_eq(yh_sync(gpu), 0);
      double *unplanned = as_doubles(&direct.out);
      const double err = ts_gpu_error(a, unplanned, t.out.numel);
      cr_assert(err < 1e-2, "%s step %d: replay against the unplanned call %.3g (seed %llu)",
                csr ? "csr" : "block_table", step, err, (unsigned long long)seed);
      free(a), free(b), free(unplanned);
    }
    /* the run refuses tensors that are not the plan's */
    yk_paged_plan_shape other = shape;
    other.kv_heads = 4;
    cr_assert_eq(yk_paged_decode_plan(plan, &other, lens, 3, NULL), YK_OK);
    ts_assert_rejected(gpu, yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, &t.lse.dl, &ws.dl, stream),
                       YK_ERR_INVALID_ARGUMENT, "not the plan's");
    cr_assert_eq(yk_paged_decode_plan(plan, &shape, lens, 3, NULL), YK_OK);
    ts_assert_rejected(gpu, yk_paged_decode_run(plan, &t.q.dl, &t.kv, &t.out.dl, &t.lse.dl, NULL, stream),
                       YK_ERR_INVALID_ARGUMENT, "workspace");
    gpu->cu.cuGraphExecDestroy(exec), gpu->cu.cuGraphDestroy(graph);
    yk_paged_plan_destroy(plan);
    yh_tensor_free(&ws), free_tensors(&t), free_tensors(&direct), free_scenario(&s);
  }
  gpu->cu.cuStreamDestroy(stream);
  yk_ctx_destroy(gpu);
}

/* ---- the paged KV cache manager's tables ---- */

/* Sequences of a yk_kv_cache (forked, appended, one freed): their K and V written through the
 * layer tensors, their tables exported in both forms, attention over them against dense. */
Test(paged_attention, cpu_over_kv_cache_tables) {
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("paged_attention.kv_cache");
  yh_rng rng = {seed};
  yk_kv_cache_config cfg;
  yk_kv_cache_config_init(&cfg);
  cfg.layers = 2, cfg.kv_heads = 2, cfg.head_dim = 64, cfg.page_size = 16, cfg.num_blocks = 64;
  cfg.dtype = (DLDataType){kDLFloat, 16, 1};
  yk_kv_cache *cache;
  cr_assert_eq(yk_kv_cache_create(cpu, &cfg, &cache), YK_OK, "%s", yk_ctx_last_error(cpu));
  int64_t seqs[3], gone;
  const int64_t lens[3] = {37, 37 + 20, 130};
  cr_assert_eq(yk_kv_seq_add(cache, &seqs[0]), YK_OK);
  cr_assert_eq(yk_kv_seq_add(cache, &seqs[2]), YK_OK);
  cr_assert_eq(yk_kv_seq_add(cache, &gone), YK_OK);
  cr_assert_eq(yk_kv_seq_append(cache, gone, 50, NULL), YK_OK);
  cr_assert_eq(yk_kv_seq_append(cache, seqs[0], 37, NULL), YK_OK);
  cr_assert_eq(yk_kv_seq_fork(cache, seqs[0], &seqs[1]), YK_OK);
  cr_assert_eq(yk_kv_seq_append(cache, seqs[1], 20, NULL), YK_OK); /* copy-on-write of the shared last block */
  cr_assert_eq(yk_kv_seq_append(cache, seqs[2], 130, NULL), YK_OK);
  cr_assert_eq(yk_kv_seq_free(cache, gone), YK_OK);
  cr_assert_eq(yk_kv_cache_copy_blocks(cache, NULL), YK_OK);

  /* each sequence's tokens: dense copies, and written into layer 1 through its table */
  DLTensor kl, vl;
  cr_assert_eq(yk_kv_cache_layer(cache, 1, &kl, &vl), YK_OK);
  const int64_t D = 64, H = 2, total = lens[0] + lens[1] + lens[2];
  double *k = ts_sixty_fourths(&rng, total * H * D), *v = ts_sixty_fourths(&rng, total * H * D);
  /* the fork holds its parent's 37 tokens (in shared blocks) before its own 20 */
  memcpy(k + lens[0] * H * D, k, (size_t)(lens[0] * H * D) * sizeof *k);
  memcpy(v + lens[0] * H * D, v, (size_t)(lens[0] * H * D) * sizeof *v);
  for (int i = 0, first = 0; i < 3; first += (int)lens[i], i++) {
    yk_kv_seq_info info;
    cr_assert_eq(yk_kv_seq_get_info(cache, seqs[i], &info), YK_OK);
    cr_assert_eq(info.tokens, lens[i]);
    for (int64_t tkn = 0; tkn < lens[i]; tkn++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) {
          const int64_t at = info.table[tkn / 16] * kl.strides[0] + (tkn % 16) * kl.strides[1] + h * kl.strides[2] + d;
          ((uint16_t *)kl.data)[at] = yk_float_to_f16((float)k[((first + tkn) * H + h) * D + d]);
          ((uint16_t *)vl.data)[at] = yk_float_to_f16((float)v[((first + tkn) * H + h) * D + d]);
        }
  }
  scenario s = {.c = {3, {37, 57, 130}, {0}, 8, 2, 64, 16}, .decode = 1, .layout = YK_KV_NHD, .k = k, .v = v};
  for (int b = 0; b < 3; b++) s.cu_k[b + 1] = s.cu_k[b] + s.c.lens_k[b], s.cu_q[b + 1] = b + 1;
  s.total_k = total, s.total_q = 3;
  s.q = ts_sixty_fourths(&rng, 3 * 8 * D);
  dense_result want = dense_cpu(cpu, &s, YK_F16);

  int64_t max_blocks, total_blocks;
  cr_assert_eq(yk_kv_cache_table_sizes(cache, seqs, 3, &max_blocks, &total_blocks), YK_OK);
  int32_t table[3 * 16], context_lens[3], indptr[4], indices[32], last[3];
  cr_assert_eq(yk_kv_cache_block_tables(cache, seqs, 3, table, max_blocks, context_lens), YK_OK);
  cr_assert_eq(yk_kv_cache_csr(cache, seqs, 3, indptr, indices, 32, last), YK_OK);
  paged_tensors t = {0};
  const int64_t q_shape[3] = {3, 8, D}, lse_shape[2] = {3, 8}, table_shape[2] = {3, max_blocks}, n3 = 3, n4 = 4;
  cr_assert_eq(yh_tensor_init(&t.q, cpu, YK_F16, 3, q_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&t.out, cpu, YK_F16, 3, q_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&t.lse, cpu, YK_F32, 2, lse_shape, NULL, 0), 0);
  yh_from_double(&t.q, s.q);
  index_tensor(&t.table, cpu, 2, table_shape, table, 0);
  index_tensor(&t.lens, cpu, 1, &n3, context_lens, 0);
  index_tensor(&t.indptr, cpu, 1, &n4, indptr, 0);
  index_tensor(&t.indices, cpu, 1, &total_blocks, indices, 0);
  index_tensor(&t.last, cpu, 1, &n3, last, 0);
  for (int csr = 0; csr <= 1; csr++) {
    yk_paged_kv kv = {.k_cache = &kl, .v_cache = &vl, .layout = YK_KV_NHD};
    if (csr)
      kv.kv_indptr = &t.indptr.dl, kv.kv_indices = &t.indices.dl, kv.kv_last_page_len = &t.last.dl;
    else
      kv.block_tables = &t.table.dl, kv.context_lens = &t.lens.dl;
    yh_poison(&t.out);
    yk_attention_params p = {0};
    cr_assert_eq(yk_paged_attention_decode(cpu, &t.q.dl, &kv, &p, &t.out.dl, &t.lse.dl, NULL), YK_OK, "%s",
                 yk_ctx_last_error(cpu));
    double *got = as_doubles(&t.out);
    for (int64_t e = 0; e < t.out.numel; e++)
      cr_assert(got[e] == want.out[e], "%s: out[%lld] %g, dense %g (seed %llu)", csr ? "csr" : "block_table",
                (long long)e, got[e], want.out[e], (unsigned long long)seed);
    free(got);
  }
  /* a freed sequence has no table */
  const int64_t with_gone[2] = {seqs[0], gone};
  ts_assert_rejected(cpu, yk_kv_cache_block_tables(cache, with_gone, 2, table, max_blocks, context_lens),
                     YK_ERR_NOT_FOUND, "");
  free_result(&want), free(s.q), free(k), free(v), free_tensors(&t);
  yk_kv_cache_destroy(cache);
  yk_ctx_destroy(cpu);
}
