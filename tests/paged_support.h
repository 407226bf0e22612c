/* What the paged attention tests share (test_paged_attention.c, test_paged_attention_bad_input.c,
 * test_cascade_attention.c): scenarios of sequences over pages, their tensors, and the paged call
 * on them.
 *
 * A scenario keeps every sequence's keys twice: dense ([total_k, kv_heads, head_dim], for the
 * reference call) and scattered over shuffled blocks of a cache whose other rows hold noise. */
#ifndef YK_TESTS_PAGED_SUPPORT_H
#define YK_TESTS_PAGED_SUPPORT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"
#include "gen/attention.h"
#include "tests/support.h"

#define MAX_BATCH 9
#define CACHE_PAD 16 /* elements after each block: caches with a block stride that is not compact */

typedef struct paged_case {
  int batch;
  int32_t lens_k[MAX_BATCH], lens_q[MAX_BATCH]; /* lens_q: prefill queries (the last keys) */
  int q_heads, kv_heads, head_dim, page_size;
} paged_case;

typedef struct scenario {
  paged_case c;
  int decode, causal, csr;
  int dense_q; /* prefill with equal lens_q: q, out [batch, seq_q, q_heads, head_dim] and lse
                  [batch, q_heads, seq_q], views of the ragged tensors (run_paged) */
  yk_kv_layout layout;
  int32_t cu_k[MAX_BATCH + 1], cu_q[MAX_BATCH + 1], indptr[MAX_BATCH + 1], last[MAX_BATCH];
  int64_t total_k, total_q, num_blocks, max_blocks, nnz;
  int32_t *table;   /* block_tables [batch][max_blocks], unused entries past the cache */
  int32_t *indices; /* CSR kv_indices: the same blocks */
  double *q, *k, *v, *k_cache, *v_cache;
  /* float8 caches: k, v and the caches hold stored * scale (float8_scenario), the caches'
   * tensors the stored values */
  int float8;
  yk_kv_scales scales;
} scenario;

/* Tensors of a scenario in one memory. */
typedef struct paged_tensors {
  yh_tensor q, out, lse, k_cache, v_cache, table, lens, indptr, indices, last;
  yk_paged_kv kv;
} paged_tensors;

static inline int64_t cache_index(const scenario *s, int64_t block, int64_t offset, int64_t head, int64_t col) {
  const int64_t P = s->c.page_size, H = s->c.kv_heads, D = s->c.head_dim;
  return s->layout == YK_KV_NHD ? ((block * P + offset) * H + head) * D + col
                                : ((block * H + head) * P + offset) * D + col;
}

static inline void place_tokens(scenario *s);

static inline void make_scenario(scenario *s, const paged_case *c, int decode, int causal, int csr, yk_kv_layout layout,
                                 yh_rng *rng) {
  memset(s, 0, sizeof *s);
  s->c = *c, s->decode = decode, s->causal = causal, s->csr = csr, s->layout = layout;
  const int64_t P = c->page_size, H = c->kv_heads, D = c->head_dim;
  int64_t blocks = 0;
  for (int b = 0; b < c->batch; b++) {
    s->cu_k[b + 1] = s->cu_k[b] + c->lens_k[b];
    s->cu_q[b + 1] = s->cu_q[b] + (decode ? 1 : c->lens_q[b]);
    const int64_t n = (c->lens_k[b] + P - 1) / P;
    s->indptr[b + 1] = s->indptr[b] + (int32_t)n;
    s->last[b] = n ? (int32_t)(c->lens_k[b] - (n - 1) * P) : 1;
    if (n > s->max_blocks) s->max_blocks = n;
    blocks += n;
  }
  s->max_blocks += 2; /* rows of block_tables longer than any sequence needs */
  s->total_k = s->cu_k[c->batch], s->total_q = s->cu_q[c->batch], s->nnz = blocks + 1;
  s->num_blocks = blocks + 3;
  /* blocks in shuffled order, so neighbouring pages of a sequence are far apart */
  int32_t *order = malloc((size_t)s->num_blocks * sizeof *order);
  for (int64_t i = 0; i < s->num_blocks; i++) order[i] = (int32_t)i;
  for (int64_t i = s->num_blocks - 1; i > 0; i--) {
    const int64_t j = (int64_t)(yh_next(rng) % (uint64_t)(i + 1));
    const int32_t t = order[i];
    order[i] = order[j], order[j] = t;
  }
  s->table = malloc((size_t)(c->batch * s->max_blocks) * sizeof *s->table);
  s->indices = malloc((size_t)s->nnz * sizeof *s->indices);
  for (int64_t i = 0; i < c->batch * s->max_blocks; i++) s->table[i] = (int32_t)(s->num_blocks + 7 + i);
  s->indices[s->nnz - 1] = (int32_t)s->num_blocks + 9; /* an entry no sequence owns */
  for (int b = 0, next = 0; b < c->batch; b++)
    for (int32_t j = 0; j < s->indptr[b + 1] - s->indptr[b]; j++, next++)
      s->table[b * s->max_blocks + j] = s->indices[s->indptr[b] + j] = order[next];
  free(order);

  s->q = ts_sixty_fourths(rng, s->total_q * c->q_heads * D);
  s->k = ts_sixty_fourths(rng, s->total_k * H * D), s->v = ts_sixty_fourths(rng, s->total_k * H * D);
  s->k_cache = ts_sixty_fourths(rng, s->num_blocks * P * H * D),
  s->v_cache = ts_sixty_fourths(rng, s->num_blocks * P * H * D);
  place_tokens(s);
}

/* Each sequence's keys and values into its blocks of the cache. */
static inline void place_tokens(scenario *s) {
  const paged_case *c = &s->c;
  const int64_t P = c->page_size, H = c->kv_heads, D = c->head_dim;
  for (int b = 0; b < c->batch; b++)
    for (int64_t t = 0; t < c->lens_k[b]; t++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t d = 0; d < D; d++) {
          const int64_t at = cache_index(s, s->indices[s->indptr[b] + t / P], t % P, h, d);
          s->k_cache[at] = s->k[((s->cu_k[b] + t) * H + h) * D + d];
          s->v_cache[at] = s->v[((s->cu_k[b] + t) * H + h) * D + d];
        }
}

/* Every key and value (and the caches' noise) replaced by what a float8 cache with these scales
 * gives back: the nearest float8 value of x / scale, times scale. */
static inline void float8_scenario(scenario *s, yk_kv_scales scales) {
  s->float8 = 1, s->scales = scales;
  const int64_t row = s->c.kv_heads * s->c.head_dim, cache = s->num_blocks * s->c.page_size * row;
  double *all[4] = {s->k, s->v, s->k_cache, s->v_cache};
  const int64_t n[4] = {s->total_k * row, s->total_k * row, cache, cache};
  for (int i = 0; i < 4; i++) {
    const double scale = i % 2 ? scales.v : scales.k;
    for (int64_t e = 0; e < n[i]; e++)
      all[i][e] = yk_e4m3_to_float(yk_float_to_e4m3((float)(all[i][e] / scale))) * scale;
  }
}

static inline void free_scenario(scenario *s) {
  free(s->table), free(s->indices), free(s->q), free(s->k), free(s->v), free(s->k_cache), free(s->v_cache);
}

static inline void index_tensor(yh_tensor *t, yk_ctx *ctx, int ndim, const int64_t *shape, const int32_t *values,
                                int on_device) {
  cr_assert_eq(yh_tensor_init(t, ctx, YK_I32, ndim, shape, NULL, on_device), 0);
  memcpy(t->host, values, (size_t)t->numel * sizeof(int32_t));
  cr_assert_eq(yh_upload(t), 0);
}

static inline void make_tensors(paged_tensors *t, yk_ctx *ctx, const scenario *s, int dtype, int on_device) {
  memset(t, 0, sizeof *t);
  const int64_t B = s->c.batch, QH = s->c.q_heads, H = s->c.kv_heads, D = s->c.head_dim, P = s->c.page_size;
  const int64_t q_shape[3] = {s->decode ? B : s->total_q, QH, D};
  cr_assert_eq(yh_tensor_init(&t->q, ctx, dtype, 3, q_shape, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&t->out, ctx, dtype, 3, q_shape, NULL, on_device), 0);
  const int64_t lse_shape[2] = {s->decode ? B : QH, s->decode ? QH : s->total_q};
  cr_assert_eq(yh_tensor_init(&t->lse, ctx, YK_F32, 2, lse_shape, NULL, on_device), 0);
  yh_from_double(&t->q, s->q);
  const int64_t nhd[4] = {s->num_blocks, P, H, D}, hnd[4] = {s->num_blocks, H, P, D};
  const int64_t *shape = s->layout == YK_KV_NHD ? nhd : hnd;
  const int64_t strides[4] = {P * H * D + CACHE_PAD, shape[2] * D, D, 1};
  const int cache_type = s->float8 ? YK_E4M3 : dtype;
  cr_assert_eq(yh_tensor_init(&t->k_cache, ctx, cache_type, 4, shape, strides, on_device), 0);
  cr_assert_eq(yh_tensor_init(&t->v_cache, ctx, cache_type, 4, shape, strides, on_device), 0);
  yh_rng pad = {99};
  yh_fill_uniform(&t->k_cache, &pad, -1, 1), yh_fill_uniform(&t->v_cache, &pad, -1, 1); /* the gaps too */
  if (s->float8) { /* the stored values: x / scale, which float8 holds exactly */
    const int64_t n = s->num_blocks * P * H * D;
    double *stored = malloc((size_t)n * sizeof *stored);
    for (int64_t e = 0; e < n; e++) stored[e] = s->k_cache[e] / s->scales.k;
    yh_from_double(&t->k_cache, stored);
    for (int64_t e = 0; e < n; e++) stored[e] = s->v_cache[e] / s->scales.v;
    yh_from_double(&t->v_cache, stored);
    free(stored);
  } else {
    yh_from_double(&t->k_cache, s->k_cache), yh_from_double(&t->v_cache, s->v_cache);
  }
  t->kv = (yk_paged_kv){.k_cache = &t->k_cache.dl, .v_cache = &t->v_cache.dl, .layout = s->layout};
  if (s->float8) t->kv.scales = s->scales;
  if (s->csr) {
    const int64_t n_indptr = B + 1, n_last = B;
    index_tensor(&t->indptr, ctx, 1, &n_indptr, s->indptr, on_device);
    index_tensor(&t->indices, ctx, 1, &s->nnz, s->indices, on_device);
    index_tensor(&t->last, ctx, 1, &n_last, s->last, on_device);
    t->kv.kv_indptr = &t->indptr.dl, t->kv.kv_indices = &t->indices.dl, t->kv.kv_last_page_len = &t->last.dl;
  } else {
    const int64_t table_shape[2] = {B, s->max_blocks};
    index_tensor(&t->table, ctx, 2, table_shape, s->table, on_device);
    index_tensor(&t->lens, ctx, 1, &table_shape[0], s->c.lens_k, on_device);
    t->kv.block_tables = &t->table.dl, t->kv.context_lens = &t->lens.dl;
  }
  int32_t longest = 0;
  for (int b = 0; b < B; b++) longest = s->c.lens_k[b] > longest ? s->c.lens_k[b] : longest;
  t->kv.max_context_len = longest;
}

static inline void free_tensors(paged_tensors *t) {
  yh_tensor *all[] = {&t->q,     &t->out,  &t->lse,    &t->k_cache, &t->v_cache,
                      &t->table, &t->lens, &t->indptr, &t->indices, &t->last};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
}

static inline double *as_doubles(yh_tensor *t) {
  double *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *d);
  yh_to_double(t, d);
  return d;
}

/* lse: -inf exactly where the reference has it, else within tol. */
static inline void check_lse(yh_tensor *lse, const double *want, double tol, const char *label, uint64_t seed) {
  double *got = as_doubles(lse);
  for (int64_t i = 0; i < lse->numel; i++) {
    if (isinf(want[i]) || isinf(got[i]))
      cr_assert(got[i] == want[i], "%s: lse[%lld] %g, want %g (seed %llu)", label, (long long)i, got[i], want[i],
                (unsigned long long)seed);
    else
      cr_assert(fabs(got[i] - want[i]) <= tol, "%s: lse[%lld] %g, want %g (seed %llu)", label, (long long)i, got[i],
                want[i], (unsigned long long)seed);
  }
  free(got);
}

/* Tensors of the scenario's cu_seqlens_q (prefill) in ctx's memory. */
static inline void cu_q_tensor(yh_tensor *t, yk_ctx *ctx, const scenario *s, int on_device) {
  const int64_t n = s->c.batch + 1;
  index_tensor(t, ctx, 1, &n, s->cu_q, on_device);
}

/* The scenario's paged call (decode, or prefill over a dense q where it can or cu_seqlens_q) on t. */
static inline yk_status run_paged(yk_ctx *ctx, const scenario *s, paged_tensors *t, yh_tensor *cu_q, int num_splits) {
  yk_attention_params p = {.causal = s->causal, .num_splits = num_splits};
  if (s->decode) return yk_paged_attention_decode(ctx, &t->q.dl, &t->kv, &p, &t->out.dl, &t->lse.dl, NULL);
  if (s->dense_q) { /* the same memory as [batch, seq_q, ...] and [batch, q_heads, seq_q] */
    const int64_t B = s->c.batch, S = s->c.lens_q[0], H = s->c.q_heads, D = s->c.head_dim;
    int64_t q_shape[4] = {B, S, H, D}, q_strides[4] = {S * H * D, H * D, D, 1};
    int64_t lse_shape[3] = {B, H, S}, lse_strides[3] = {S, s->total_q, 1};
    DLTensor q = t->q.dl, out = t->out.dl, lse = t->lse.dl;
    q.ndim = out.ndim = 4, lse.ndim = 3;
    q.shape = out.shape = q_shape, q.strides = out.strides = q_strides;
    lse.shape = lse_shape, lse.strides = lse_strides;
    return yk_paged_attention_prefill(ctx, &q, &t->kv, &p, &out, &lse, NULL);
  }
  p.cu_seqlens_q = &cu_q->dl;
  for (int b = 0; b < s->c.batch; b++)
    p.max_seqlen_q = s->c.lens_q[b] > p.max_seqlen_q ? s->c.lens_q[b] : p.max_seqlen_q;
  return yk_paged_attention_prefill(ctx, &t->q.dl, &t->kv, &p, &t->out.dl, &t->lse.dl, NULL);
}

#endif
