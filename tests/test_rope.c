/* rope: the CPU fallback against float64, the GPU against the fallback, bad input, and positions
 * out of range. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/rope.h"
#include "tests/support.h"

typedef struct {
  int64_t tokens, q_heads, kv_heads, head_dim, rot_dim;
  int fused_qkv; /* q and k are views into one [tokens, (q + 2 kv) heads, head_dim] buffer */
} rope_case;

static const rope_case cases[] = {
    {1, 1, 1, 2, 2, 0},       {7, 4, 2, 64, 64, 0},    {16, 32, 8, 128, 128, 1}, {5, 8, 0, 128, 64, 0},
    {3, 2, 1, 80, 48, 1},     {9, 16, 8, 256, 256, 0}, {4, 3, 3, 96, 32, 0},     {2, 1, 1, 6, 6, 0},
    {33, 28, 4, 128, 128, 1}, {3, 5, 1, 10, 10, 1},
};
#define CASE_COUNT (int)(sizeof cases / sizeof cases[0])
#define MAX_POSITION 1000

typedef struct {
  yh_tensor qkv, q, k, cache, positions; /* q and k alias qkv when fused */
  int has_qkv;
} rope_tensors;

/* q and k as DLTensors over their own storage, or as views into qkv. */
static void make(rope_tensors *r, yk_ctx *ctx, int dtype, int cache_type, int pos_type, rope_case c, int on_device,
                 yh_rng *rng) {
  memset(r, 0, sizeof *r);
  const int64_t qd[3] = {c.tokens, c.q_heads, c.head_dim}, kd[3] = {c.tokens, c.kv_heads, c.head_dim};
  if (c.fused_qkv) {
    const int64_t all[3] = {c.tokens, c.q_heads + 2 * c.kv_heads, c.head_dim};
    cr_assert_eq(yh_tensor_init(&r->qkv, ctx, dtype, 3, all, NULL, on_device), 0);
    yh_fill_uniform(&r->qkv, rng, -2, 2);
    const int64_t strides[3] = {all[1] * c.head_dim, c.head_dim, 1};
    cr_assert_eq(yh_tensor_init(&r->q, ctx, dtype, 3, qd, strides, 0), 0); /* layout only */
    cr_assert_eq(yh_tensor_init(&r->k, ctx, dtype, 3, kd, strides, 0), 0);
    r->q.dl.data = r->qkv.dl.data;
    r->k.dl.data = (char *)r->qkv.dl.data + c.q_heads * c.head_dim * r->qkv.elem_bytes;
    r->q.dl.device = r->k.dl.device = r->qkv.dl.device;
    r->has_qkv = 1;
  } else {
    cr_assert_eq(yh_tensor_init(&r->q, ctx, dtype, 3, qd, NULL, on_device), 0);
    cr_assert_eq(yh_tensor_init(&r->k, ctx, dtype, 3, kd, NULL, on_device), 0);
    yh_fill_uniform(&r->q, rng, -2, 2);
    yh_fill_uniform(&r->k, rng, -2, 2);
  }
  const int64_t cd[2] = {MAX_POSITION, c.rot_dim}, tokens = c.tokens;
  cr_assert_eq(yh_tensor_init(&r->cache, ctx, cache_type, 2, cd, NULL, on_device), 0);
  double *cache = malloc((size_t)(MAX_POSITION * c.rot_dim) * sizeof *cache);
  for (int64_t p = 0; p < MAX_POSITION; p++)
    for (int64_t i = 0; i < c.rot_dim / 2; i++) {
      const double angle = (double)p * pow(10000.0, -2.0 * (double)i / (double)c.rot_dim);
      cache[p * c.rot_dim + i] = cos(angle);
      cache[p * c.rot_dim + c.rot_dim / 2 + i] = sin(angle);
    }
  yh_from_double(&r->cache, cache);
  free(cache);
  cr_assert_eq(yh_tensor_init(&r->positions, ctx, pos_type, 1, &tokens, NULL, on_device), 0);
  yh_fill_integers(&r->positions, rng, 0, MAX_POSITION);
}

static void free_tensors(rope_tensors *r) {
  if (r->has_qkv) {
    free(r->q.host), free(r->k.host); /* layout-only tensors own no device memory */
    yh_tensor_free(&r->qkv);
  } else {
    yh_tensor_free(&r->q), yh_tensor_free(&r->k);
  }
  yh_tensor_free(&r->cache), yh_tensor_free(&r->positions);
}

/* The whole storage of q and k (all of qkv when fused), as float64. */
static double *storage(rope_tensors *r, int64_t *n) {
  yh_tensor *parts[2] = {r->has_qkv ? &r->qkv : &r->q, r->has_qkv ? NULL : &r->k};
  *n = parts[0]->numel + (parts[1] ? parts[1]->numel : 0);
  double *d = malloc((size_t)(*n ? *n : 1) * sizeof *d);
  yh_to_double(parts[0], d);
  if (parts[1]) yh_to_double(parts[1], d + parts[0]->numel);
  return d;
}

/* The float64 reference applied to the storage: gathers q and k, rotates, scatters back. */
static double *reference(rope_tensors *r, rope_case c, int neox) {
  int64_t n;
  double *all = storage(r, &n);
  const int64_t heads = c.q_heads + 2 * c.kv_heads;
  double *q = malloc((size_t)(c.tokens * c.q_heads * c.head_dim + 1) * sizeof *q);
  double *k = malloc((size_t)(c.tokens * c.kv_heads * c.head_dim + 1) * sizeof *k);
  double *cache = malloc((size_t)(MAX_POSITION * c.rot_dim) * sizeof *cache);
  double *pos_d = malloc((size_t)c.tokens * sizeof *pos_d);
  int64_t *pos = malloc((size_t)c.tokens * sizeof *pos);
  yh_to_double(&r->cache, cache);
  yh_to_double(&r->positions, pos_d);
  for (int64_t t = 0; t < c.tokens; t++) pos[t] = (int64_t)pos_d[t];
  for (int64_t t = 0; t < c.tokens; t++)
    for (int64_t h = 0; h < c.q_heads + c.kv_heads; h++) {
      const int is_q = h < c.q_heads;
      double *dst = is_q ? q + (t * c.q_heads + h) * c.head_dim : k + (t * c.kv_heads + h - c.q_heads) * c.head_dim;
      const double *src = r->has_qkv ? all + (t * heads + h) * c.head_dim
                          : is_q
                              ? all + (t * c.q_heads + h) * c.head_dim
                              : all + c.tokens * c.q_heads * c.head_dim + (t * c.kv_heads + h - c.q_heads) * c.head_dim;
      memcpy(dst, src, (size_t)c.head_dim * sizeof *dst);
    }
  yk_reference_rope(neox, c.tokens, c.q_heads, c.kv_heads, c.head_dim, c.rot_dim, q, c.kv_heads ? k : NULL, cache, pos);
  for (int64_t t = 0; t < c.tokens; t++)
    for (int64_t h = 0; h < c.q_heads + c.kv_heads; h++) {
      const int is_q = h < c.q_heads;
      const double *src =
          is_q ? q + (t * c.q_heads + h) * c.head_dim : k + (t * c.kv_heads + h - c.q_heads) * c.head_dim;
      double *dst = r->has_qkv ? all + (t * heads + h) * c.head_dim
                    : is_q     ? all + (t * c.q_heads + h) * c.head_dim
                           : all + c.tokens * c.q_heads * c.head_dim + (t * c.kv_heads + h - c.q_heads) * c.head_dim;
      memcpy(dst, src, (size_t)c.head_dim * sizeof *dst);
    }
  free(q), free(k), free(cache), free(pos_d), free(pos);
  return all;
}

static yk_status run(yk_ctx *ctx, rope_tensors *r, rope_case c, int neox) {
  return yk_rope(ctx, &r->q.dl, c.kv_heads ? &r->k.dl : NULL, &r->cache.dl, &r->positions.dl,
                 neox ? YK_ROPE_NEOX : YK_ROPE_GPTJ, NULL);
}

Test(rope, cpu_matches_float64_reference) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("rope.cpu");
  yh_rng rng = {seed};
  for (int t = 0; t < 3; t++)
    for (int i = 0; i < CASE_COUNT; i++)
      for (int neox = 0; neox <= 1; neox++) {
        const int dtype = ts_float_types[t], cache_type = (i % 2) ? YK_F32 : dtype,
                  pos_type = (i % 3) ? YK_I64 : YK_I32;
        rope_tensors r;
        make(&r, ctx, dtype, cache_type, pos_type, cases[i], 0, &rng);
        int64_t n;
        double *want = reference(&r, cases[i], neox);
        cr_assert_eq(run(ctx, &r, cases[i], neox), YK_OK, "%s", yk_ctx_last_error(ctx));
        double *got = storage(&r, &n);
        ts_round_to_dtype(dtype, want, n);
        double err = yh_rel_error(got, want, n);
        cr_assert(err < ts_reference_tolerance(dtype), "%s case %d neox=%d: rel err %.3g (seed %llu)",
                  ts_type_name(dtype), i, neox, err, (unsigned long long)seed);
        free(want), free(got);
        free_tensors(&r);
      }
  yk_ctx_destroy(ctx);
}

Test(rope, gpu_matches_cpu_fallback) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("rope.gpu");
  yh_rng rng = {seed};
  for (int t = 0; t < 3; t++)
    for (int i = 0; i < CASE_COUNT; i++)
      for (int neox = 0; neox <= 1; neox++) {
        const int dtype = ts_float_types[t], cache_type = (i % 2) ? YK_F32 : dtype,
                  pos_type = (i % 3) ? YK_I64 : YK_I32;
        rope_tensors h, d;
        make(&h, cpu, dtype, cache_type, pos_type, cases[i], 0, &rng);
        make(&d, gpu, dtype, cache_type, pos_type, cases[i], 1, &rng);
        if (h.has_qkv) {
          yh_tensor_copy(&d.qkv, &h.qkv);
        } else {
          yh_tensor_copy(&d.q, &h.q), yh_tensor_copy(&d.k, &h.k);
        }
        yh_tensor_copy(&d.cache, &h.cache), yh_tensor_copy(&d.positions, &h.positions);
        cr_assert_eq(run(cpu, &h, cases[i], neox), YK_OK);
        cr_assert_eq(run(gpu, &d, cases[i], neox), YK_OK, "%s", yk_ctx_last_error(gpu));
        cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
        int64_t n;
        double *want = storage(&h, &n), *got = storage(&d, &n);
        double err = ts_gpu_error(got, want, n);
        cr_assert(err < ts_gpu_tolerance(dtype), "%s case %d neox=%d: rel err %.3g (seed %llu)", ts_type_name(dtype), i,
                  neox, err, (unsigned long long)seed);
        free(want), free(got);
        free_tensors(&h), free_tensors(&d);
      }
  yk_ctx_destroy(cpu);
  yk_ctx_destroy(gpu);
}

/* The GPU cannot report a bad position before it runs; it leaves that token as it was. */
Test(rope, gpu_position_out_of_range_leaves_token) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yh_rng rng = {ts_seed("rope.range")};
  const rope_case c = {4, 4, 2, 64, 64, 0};
  rope_tensors r;
  make(&r, gpu, YK_BF16, YK_BF16, YK_I64, c, 1, &rng);
  yh_download(&r.positions);
  ((int64_t *)r.positions.host)[2] = MAX_POSITION + 3;
  ((int64_t *)r.positions.host)[3] = -1;
  yh_upload(&r.positions);
  void *q_before = yh_snapshot(&r.q);
  cr_assert_eq(run(gpu, &r, c, 1), YK_OK, "%s", yk_ctx_last_error(gpu));
  cr_assert_eq(yh_sync(gpu), 0);
  yh_download(&r.q);
  const size_t token_bytes = (size_t)(c.q_heads * c.head_dim) * 2;
  cr_assert(memcmp((char *)q_before + 2 * token_bytes, (char *)r.q.host + 2 * token_bytes, 2 * token_bytes) == 0,
            "tokens with bad positions changed");
  cr_assert(memcmp(q_before, r.q.host, 2 * token_bytes) != 0, "tokens with good positions were not rotated");
  free(q_before);
  free_tensors(&r);
  yk_ctx_destroy(gpu);
}

static void bad_inputs(yk_ctx *ctx, int on_device) {
  yh_rng rng = {4};
  const rope_case c = {3, 4, 2, 64, 64, 0};
  rope_tensors r;
  make(&r, ctx, YK_F16, YK_F16, YK_I32, c, on_device, &rng);
  void *q_before = yh_snapshot(&r.q), *k_before = yh_snapshot(&r.k);
  DLTensor t;
  int64_t shape[3];
  cr_assert_eq(yk_rope(NULL, &r.q.dl, &r.k.dl, &r.cache.dl, &r.positions.dl, YK_ROPE_NEOX, NULL),
               YK_ERR_INVALID_ARGUMENT);
  ts_assert_rejected(ctx, yk_rope(ctx, NULL, &r.k.dl, &r.cache.dl, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "rope: q is NULL");
  t = r.q.dl, t.ndim = 2;
  ts_assert_rejected(ctx, yk_rope(ctx, &t, &r.k.dl, &r.cache.dl, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "q: expected 3 to 4 dimensions, got 2");
  t = r.k.dl, t.dtype.code = kDLBfloat;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &t, &r.cache.dl, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "k is bfloat16 but q is float16");
  memcpy(shape, r.k.shape, sizeof shape), shape[2] = 32, t = r.k.dl, t.shape = shape;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &t, &r.cache.dl, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "k has head_dim 32; it must match q's 64");
  shape[0] = 2, t = r.positions.dl, t.shape = shape;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &r.cache.dl, &t, YK_ROPE_NEOX, NULL), YK_ERR_INVALID_ARGUMENT,
                     "positions has 2 entries on dimension 0 for 3 tokens");
  t = r.positions.dl, t.dtype.code = kDLFloat;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &r.cache.dl, &t, YK_ROPE_NEOX, NULL), YK_ERR_INVALID_ARGUMENT,
                     "positions: expected dtype int32 or int64");
  t = r.cache.dl, t.dtype.code = kDLBfloat;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &t, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "cos and sin tables must be float32 or q's dtype");
  memcpy(shape, r.cache.shape, 2 * sizeof *shape), shape[1] = 7, t = r.cache.dl, t.shape = shape;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &t, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "rotary dim must be even");
  shape[1] = 66;
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &t, &r.positions.dl, YK_ROPE_NEOX, NULL),
                     YK_ERR_INVALID_ARGUMENT, "at most head_dim 64");
  ts_assert_rejected(ctx, yk_rope(ctx, &r.q.dl, &r.k.dl, &r.cache.dl, &r.positions.dl, (yk_rope_style)5, NULL),
                     YK_ERR_INVALID_ARGUMENT, "style 5");
  cr_assert_eq(yh_bytes_changed(&r.q, q_before), 0, "a rejected call wrote to q");
  cr_assert_eq(yh_bytes_changed(&r.k, k_before), 0, "a rejected call wrote to k");
  free(q_before), free(k_before);
  free_tensors(&r);
}

Test(rope, bad_input_cpu) {
  yk_ctx *ctx = ts_cpu_ctx();
  bad_inputs(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(rope, bad_input_gpu) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  bad_inputs(ctx, 1);
  yk_ctx_destroy(ctx);
}

/* The CPU path checks every position before it writes anything. */
Test(rope, cpu_position_out_of_range_is_rejected_whole) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {5};
  const rope_case c = {6, 2, 1, 32, 32, 0};
  rope_tensors r;
  make(&r, ctx, YK_BF16, YK_F32, YK_I64, c, 0, &rng);
  ((int64_t *)r.positions.host)[4] = MAX_POSITION;
  void *q_before = yh_snapshot(&r.q);
  ts_assert_rejected(ctx, run(ctx, &r, c, 1), YK_ERR_INVALID_ARGUMENT, "positions[4] = 1000 is outside [0, 1000)");
  cr_assert_eq(yh_bytes_changed(&r.q, q_before), 0, "rotated some tokens before refusing");
  free(q_before);
  free_tensors(&r);
  yk_ctx_destroy(ctx);
}

static void restore(yh_tensor *t, const void *snapshot) {
  memcpy(t->host, snapshot, (size_t)t->span * (size_t)t->elem_bytes);
  yh_upload(t);
}

/* Hugging Face's separate tables, [max_position, head_dim] with each half a copy of the other, give
 * the same bytes as vLLM's cos_sin_cache holding the same values; so do tables of half a row. */
static void separate_tables_match_cache(yk_ctx *ctx, int on_device) {
  yh_rng rng = {6};
  const rope_case c = {5, 4, 2, 64, 64, 0};
  rope_tensors a, b;
  make(&a, ctx, YK_BF16, YK_F32, YK_I64, c, on_device, &rng);
  make(&b, ctx, YK_BF16, YK_F32, YK_I64, c, on_device, &rng);
  yh_tensor_copy(&b.positions, &a.positions);
  void *q0 = yh_snapshot(&a.q), *k0 = yh_snapshot(&a.k);
  double *cache = malloc(sizeof(double) * MAX_POSITION * c.rot_dim);
  yh_to_double(&a.cache, cache);
  for (int half_rows = 0; half_rows <= 1; half_rows++) {
    const int64_t width = half_rows ? c.rot_dim / 2 : c.head_dim, td[2] = {MAX_POSITION, width};
    yh_tensor cos_t, sin_t;
    cr_assert_eq(yh_tensor_init(&cos_t, ctx, YK_F32, 2, td, NULL, on_device), 0);
    cr_assert_eq(yh_tensor_init(&sin_t, ctx, YK_F32, 2, td, NULL, on_device), 0);
    double *ct = malloc(sizeof(double) * MAX_POSITION * width), *st = malloc(sizeof(double) * MAX_POSITION * width);
    for (int64_t p = 0; p < MAX_POSITION; p++)
      for (int64_t i = 0; i < width; i++) {
        ct[p * width + i] = cache[p * c.rot_dim + i % (c.rot_dim / 2)];
        st[p * width + i] = cache[p * c.rot_dim + c.rot_dim / 2 + i % (c.rot_dim / 2)];
      }
    yh_from_double(&cos_t, ct), yh_from_double(&sin_t, st);
    restore(&a.q, q0), restore(&a.k, k0), restore(&b.q, q0), restore(&b.k, k0);
    cr_assert_eq(run(ctx, &a, c, 1), YK_OK, "%s", yk_ctx_last_error(ctx));
    cr_assert_eq(yk_rope_cos_sin(ctx, &b.q.dl, &b.k.dl, &cos_t.dl, &sin_t.dl, &b.positions.dl, (int)c.rot_dim,
                                 YK_ROPE_NEOX, NULL),
                 YK_OK, "%s", yk_ctx_last_error(ctx));
    cr_assert_eq(yh_sync(ctx), 0);
    void *want_q = yh_snapshot(&a.q), *want_k = yh_snapshot(&a.k);
    cr_assert_eq(yh_bytes_changed(&b.q, want_q), 0, "q: separate tables (half rows %d) rotate differently", half_rows);
    cr_assert_eq(yh_bytes_changed(&b.k, want_k), 0, "k: separate tables (half rows %d) rotate differently", half_rows);
    cr_assert_eq(yh_bytes_changed(&a.q, q0) > 0, 1, "nothing was rotated");
    void *before = yh_snapshot(&b.q);
    ts_assert_rejected(ctx,
                       yk_rope_cos_sin(ctx, &b.q.dl, &b.k.dl, &cos_t.dl, &sin_t.dl, &b.positions.dl, (int)width * 2 + 2,
                                       YK_ROPE_NEOX, NULL),
                       YK_ERR_INVALID_ARGUMENT, "rotary_dim");
    cr_assert_eq(yh_bytes_changed(&b.q, before), 0, "a rejected call wrote to q");
    free(before), free(want_q), free(want_k), free(ct), free(st);
    yh_tensor_free(&cos_t), yh_tensor_free(&sin_t);
  }
  free(q0), free(k0), free(cache);
  free_tensors(&a), free_tensors(&b);
}

Test(rope, cpu_separate_tables_match_cache) {
  yk_ctx *ctx = ts_cpu_ctx();
  separate_tables_match_cache(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(rope, gpu_separate_tables_match_cache) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  separate_tables_match_cache(ctx, 1);
  yk_ctx_destroy(ctx);
}

/* q and k as [batch, heads, seq, head_dim] tensors (Hugging Face's layout) passed as strided
 * [batch, seq, heads, head_dim] views with [batch, seq] positions rotate exactly like the same
 * values laid out token-major. */
static void batched_views_match_tokens(yk_ctx *ctx, int on_device) {
  yh_rng rng = {7};
  enum { B = 3, S = 5, H = 4, KH = 2, D = 64 };
  const rope_case c = {B * S, H, KH, D, D, 0};
  rope_tensors t; /* token-major [B*S, heads, D] */
  make(&t, ctx, YK_F16, YK_F16, YK_I64, c, on_device, &rng);
  const int64_t qd[4] = {B, H, S, D}, kd[4] = {B, KH, S, D}, pd[2] = {B, S};
  yh_tensor q4, k4, p2;
  cr_assert_eq(yh_tensor_init(&q4, ctx, YK_F16, 4, qd, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&k4, ctx, YK_F16, 4, kd, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&p2, ctx, YK_I64, 2, pd, NULL, on_device), 0);
  double *qt = malloc(sizeof(double) * B * S * H * D), *kt = malloc(sizeof(double) * B * S * KH * D),
         *pos = malloc(sizeof(double) * B * S), *q4d = malloc(sizeof(double) * B * H * S * D),
         *k4d = malloc(sizeof(double) * B * KH * S * D);
  yh_to_double(&t.q, qt), yh_to_double(&t.k, kt), yh_to_double(&t.positions, pos);
  for (int b = 0; b < B; b++)
    for (int s = 0; s < S; s++)
      for (int d = 0; d < D; d++) {
        for (int h = 0; h < H; h++) q4d[((b * H + h) * S + s) * D + d] = qt[((b * S + s) * H + h) * D + d];
        for (int h = 0; h < KH; h++) k4d[((b * KH + h) * S + s) * D + d] = kt[((b * S + s) * KH + h) * D + d];
      }
  yh_from_double(&q4, q4d), yh_from_double(&k4, k4d), yh_from_double(&p2, pos);
  /* the [B, S, H, D] views of the [B, H, S, D] tensors */
  DLTensor qv = q4.dl, kv = k4.dl;
  int64_t qshape[4] = {B, S, H, D}, qstr[4] = {H * S * D, D, S * D, 1}, kshape[4] = {B, S, KH, D},
          kstr[4] = {KH * S * D, D, S * D, 1};
  qv.shape = qshape, qv.strides = qstr, kv.shape = kshape, kv.strides = kstr;
  cr_assert_eq(run(ctx, &t, c, 1), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_rope(ctx, &qv, &kv, &t.cache.dl, &p2.dl, YK_ROPE_NEOX, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0);
  yh_to_double(&t.q, qt), yh_to_double(&t.k, kt), yh_to_double(&q4, q4d), yh_to_double(&k4, k4d);
  for (int b = 0; b < B; b++)
    for (int s = 0; s < S; s++)
      for (int d = 0; d < D; d++) {
        for (int h = 0; h < H; h++)
          cr_assert_eq(q4d[((b * H + h) * S + s) * D + d], qt[((b * S + s) * H + h) * D + d], "q b%d s%d h%d d%d", b, s,
                       h, d);
        for (int h = 0; h < KH; h++)
          cr_assert_eq(k4d[((b * KH + h) * S + s) * D + d], kt[((b * S + s) * KH + h) * D + d], "k b%d s%d h%d d%d", b,
                       s, h, d);
      }
  free(qt), free(kt), free(pos), free(q4d), free(k4d);
  yh_tensor_free(&q4), yh_tensor_free(&k4), yh_tensor_free(&p2);
  free_tensors(&t);
}

Test(rope, cpu_batched_views_match_tokens) {
  yk_ctx *ctx = ts_cpu_ctx();
  batched_views_match_tokens(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(rope, gpu_batched_views_match_tokens) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  batched_views_match_tokens(ctx, 1);
  yk_ctx_destroy(ctx);
}
