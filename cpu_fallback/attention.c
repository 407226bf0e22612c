/* Attention on the CPU: the forward (prefill and decode fallback) with an online softmax over key
 * tiles, the backward as two passes that each own their outputs, the merge of partial attentions,
 * and the float64 references.
 *
 * Tiles live on the stack: every tile buffer holds TILE_FLOATS floats, so a tile has
 * TILE_FLOATS / head_dim rows (64 at head_dim 64, 32 at 128, 4 at 1024) and no pass takes more
 * than about 90 KiB of a thread's stack whatever head_dim is (the forward: four tiles, a tile's
 * scores and one key row). Nothing is allocated, so a call that
 * cannot report an error cannot fail half-way either. */
#include "cpu_fallback/attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"

#define MAX_HEAD_DIM 1024
#define TILE_FLOATS 4096
#define MAX_TILE_ROWS 64

static int64_t tile_rows(int64_t head_dim) {
  const int64_t rows = TILE_FLOATS / head_dim;
  return rows < 1 ? 1 : rows > MAX_TILE_ROWS ? MAX_TILE_ROWS : rows;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Eight partial sums let the compiler keep them in vector lanes without -ffast-math; the fixed
 * order of the final additions keeps results the same on every run. */
static inline float dot(const float *a, const float *b, int64_t n) {
  float s[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; u++) s[u] += a[i + u] * b[i + u];
  float tail = 0;
  for (; i < n; i++) tail += a[i] * b[i];
  return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail;
}

static inline void axpy(float *y, float a, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

static inline void scale_row(float *y, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] *= a;
}

/* The forward's two products, blocked so that each value loaded feeds several multiply-adds (a
 * row-by-row dot and axpy load two values a multiply-add, and ran at ~20 GFLOP/s on two cores).
 * Both are one matrix product (matrix_product): S = Q K^T over the keys transposed, and O += P V,
 * in blocks held in GNU C 4-float vectors (what the compiler keeps in registers, where an
 * accumulator array stayed in memory); each sum runs over its terms in order, so results do not
 * depend on the blocking. */
typedef float f32x4 __attribute__((vector_size(16)));

static inline f32x4 load4(const float *p) {
  f32x4 v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* e^x for four floats, Cephes' expf (range reduction by ln 2 in two parts, a degree-6 polynomial,
 * 2^n by the exponent bits): within 2 ulp of expf for x in [-87, 88], clamped outside. The
 * softmax's exponentials, one a score, cost as much as a head_dim of 64's products with expf. */
typedef int32_t i32x4 __attribute__((vector_size(16)));

static inline f32x4 exp4(f32x4 x) {
  const f32x4 hi = {88.3762626647949f, 88.3762626647949f, 88.3762626647949f, 88.3762626647949f};
  const f32x4 lo = {-87.3365447504f, -87.3365447504f, -87.3365447504f, -87.3365447504f};
  i32x4 m = x > hi; /* -1 where true: select by bits (C has no ?: on vectors) */
  x = (f32x4)(((i32x4)x & ~m) | ((i32x4)hi & m));
  m = x < lo;
  x = (f32x4)(((i32x4)x & ~m) | ((i32x4)lo & m));
  const f32x4 fx = x * 1.44269504088896341f + 0.5f;
  i32x4 n = __builtin_convertvector(fx, i32x4); /* toward zero; floor below */
  f32x4 fn = __builtin_convertvector(n, f32x4);
  const i32x4 over = fn > fx; /* -1 where truncation rounded up */
  n += over;
  fn = __builtin_convertvector(n, f32x4);
  x = x - fn * 0.693359375f - fn * -2.12194440e-4f;
  f32x4 y = 1.9875691500e-4f * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const i32x4 bits = (n + 127) << 23;
  f32x4 scale;
  memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

/* c[r * ldc + j] = (c's value when accumulate, else 0) + sum over k of a[r * lda + k] b[k * ldb + j]
 * for rows R (4 or 1) from row 0 and the 8 columns from j = 0, held in registers over k; each value
 * of b loaded feeds R rows, each sum runs over k in order. */
static inline void product_block(float *c, int64_t ldc, const float *a, int64_t lda, const float *b, int64_t ldb,
                                 int64_t k, int R, int accumulate) {
  const int64_t a_step = R == 4 ? lda : 0, c_step = R == 4 ? ldc : 0; /* one row: no pointer past the rows */
  const float *a0 = a, *a1 = a0 + a_step, *a2 = a1 + a_step, *a3 = a2 + a_step;
  float *rows[4] = {c, c + c_step, c + 2 * c_step, c + 3 * c_step};
  f32x4 acc[4][2] = {{{0}}};
  for (int r = 0; accumulate && r < R; r++) acc[r][0] = load4(rows[r]), acc[r][1] = load4(rows[r] + 4);
  f32x4 x0 = acc[0][0], x1 = acc[0][1], y0 = acc[1][0], y1 = acc[1][1], z0 = acc[2][0], z1 = acc[2][1], w0 = acc[3][0],
        w1 = acc[3][1]; /* named: what the compiler keeps in registers */
  for (int64_t i = 0; i < k; i++) {
    const f32x4 b0 = load4(b + i * ldb), b1 = load4(b + i * ldb + 4);
    x0 += a0[i] * b0, x1 += a0[i] * b1;
    if (R == 4) {
      y0 += a1[i] * b0, y1 += a1[i] * b1;
      z0 += a2[i] * b0, z1 += a2[i] * b1;
      w0 += a3[i] * b0, w1 += a3[i] * b1;
    }
  }
  const f32x4 out[4][2] = {{x0, x1}, {y0, y1}, {z0, z1}, {w0, w1}};
  for (int r = 0; r < R; r++) memcpy(rows[r], out[r], sizeof out[r]);
}

/* The same for a rows x cols block: blocks of four rows by eight columns, then the rows and the
 * columns left over one by one, each sum in the same order. */
static void matrix_product(float *c, int64_t ldc, const float *a, int64_t lda, const float *b, int64_t ldb,
                           int64_t rows, int64_t cols, int64_t k, int accumulate) {
  const int64_t cols8 = cols / 8 * 8;
  for (int64_t j = 0; j < cols8; j += 8) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) product_block(c + r * ldc + j, ldc, a + r * lda, lda, b + j, ldb, k, 4, accumulate);
    for (; r < rows; r++) product_block(c + r * ldc + j, ldc, a + r * lda, lda, b + j, ldb, k, 1, accumulate);
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = cols8; j < cols; j++) {
      float sum = accumulate ? c[r * ldc + j] : 0;
      for (int64_t i = 0; i < k; i++) sum += a[r * lda + i] * b[i * ldb + j];
      c[r * ldc + j] = sum;
    }
}

/* Scores of fewer query rows than this take the keys' rows, a dot a score: transposing a tile
 * costs more than it saves there (decode, one query a tile: 0.6x). From it on, the keys come
 * transposed (element i of key c at i * n + c) so that eight keys sit in vector lanes. */
#define TRANSPOSED_KEYS_FROM_ROWS 4

/* s[r * n + c] = q_r . k_c for every row and key of the tile, k in the layout the rows take. */
static void tile_scores(float *s, const float *q, const float *k, int64_t rows, int64_t n, int64_t d) {
  if (rows >= TRANSPOSED_KEYS_FROM_ROWS) {
    matrix_product(s, n, q, d, k, n, rows, n, d, 0);
    return;
  }
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c++) s[r * n + c] = dot(q + r * d, k + c * d, d);
}

/* One sequence of a batch: where its queries and keys start on the token axes and how many there
 * are. compact: start on a [total, heads, dim] array (the references) rather than on an operand,
 * whose dense batches step by batch_stride instead. */
typedef struct seq_span {
  int64_t q0, len_q, k0, len_k;
} seq_span;

static seq_span sequence(const yk_attention_shape *s, int64_t b, int compact) {
  seq_span g;
  if (s->cu_seqlens_q)
    g.q0 = s->cu_seqlens_q[b], g.len_q = s->cu_seqlens_q[b + 1] - s->cu_seqlens_q[b];
  else
    g.q0 = compact ? b * s->seq_q : 0, g.len_q = s->seq_q;
  if (s->kv_pages)
    g.k0 = 0, g.len_k = yk_page_map_len(s->kv_pages, b);
  else if (s->cu_seqlens_k)
    g.k0 = s->cu_seqlens_k[b], g.len_k = s->cu_seqlens_k[b + 1] - s->cu_seqlens_k[b];
  else
    g.k0 = compact ? b * s->seq_k : 0, g.len_k = s->seq_k;
  return g;
}

/* Keys [0, n) that query i of the sequence sees: bottom-right causal, or all of them. */
static int64_t keys_seen(const yk_attention_shape *s, const seq_span *g, int64_t i) {
  if (!s->causal) return g->len_k;
  const int64_t n = i + g->len_k - g->len_q + 1;
  return n < 0 ? 0 : n > g->len_k ? g->len_k : n;
}

/* The longest sequence on the query (keys 0) or key (keys 1) axis: it sets how many tiles each
 * (sequence, head) gets in the task space; shorter sequences skip their extra tiles. */
static int64_t longest(const yk_attention_shape *s, int keys) {
  const int32_t *cu = keys ? s->cu_seqlens_k : s->cu_seqlens_q;
  int64_t most = 0;
  if (keys && s->kv_pages) {
    for (int64_t b = 0; b < s->batch; b++)
      if (yk_page_map_len(s->kv_pages, b) > most) most = yk_page_map_len(s->kv_pages, b);
    return most;
  }
  if (!cu) return keys ? s->seq_k : s->seq_q;
  for (int64_t b = 0; b < s->batch; b++)
    if (cu[b + 1] - cu[b] > most) most = cu[b + 1] - cu[b];
  return most;
}

static inline char *row_at(const yk_attn_operand *o, int64_t elem, int64_t b, int64_t token, int64_t h) {
  if (o->pages) {
    const int64_t block = yk_page_map_block(o->pages, b, token / o->pages->page_size);
    return o->data +
           elem * (block * o->block_stride + token % o->pages->page_size * o->seq_stride + h * o->head_stride);
  }
  return o->data + elem * (b * o->batch_stride + token * o->seq_stride + h * o->head_stride);
}

typedef struct attn_job {
  const yk_attention_shape *s;
  yk_attn_operand q, k, v, out, lse, dout, dq, dk, dv;
  int64_t elem, group, rows, tiles; /* rows a tile, tiles a (sequence, head) */
} attn_job;

/* Loads count rows starting at token first of head h into dst (count x head_dim floats). */
static void load_rows(const attn_job *j, const yk_attn_operand *o, int64_t b, int64_t first, int64_t count, int64_t h,
                      float *dst) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < count; r++) yk_load_floats(j->s->dtype, row_at(o, j->elem, b, first + r, h), dst + r * d, d);
}

static void store_rows(const attn_job *j, const yk_attn_operand *o, int64_t b, int64_t first, int64_t count, int64_t h,
                       const float *src) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < count; r++) yk_store_floats(j->s->dtype, row_at(o, j->elem, b, first + r, h), src + r * d, d);
}

static inline float *lse_at(const attn_job *j, int64_t b, int64_t token, int64_t h) {
  return (float *)(void *)row_at(&j->lse, 4, b, token, h);
}

/* Tasks are (sequence, head, tile) with the tile fastest. Returns 0 for a tile past the end of its
 * sequence's axis (queries: keys 0; keys: keys 1). */
static int task_tile(const attn_job *j, int64_t task, int64_t heads, int keys, int64_t *b, int64_t *h, seq_span *g,
                     int64_t *first, int64_t *count) {
  const int64_t tile = task % j->tiles;
  *h = task / j->tiles % heads;
  *b = task / j->tiles / heads;
  *g = sequence(j->s, *b, 0);
  const int64_t len = keys ? g->len_k : g->len_q;
  *first = tile * j->rows;
  if (*first >= len) return 0;
  *count = min64(j->rows, len - *first);
  return 1;
}

static void forward_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->rows;
  float q[TILE_FLOATS], acc[TILE_FLOATS], kt_t[TILE_FLOATS], vt[TILE_FLOATS], key[MAX_HEAD_DIM];
  float scores[MAX_TILE_ROWS * MAX_TILE_ROWS], m[MAX_TILE_ROWS], l[MAX_TILE_ROWS];
  for (int64_t task = begin; task < end; task++) {
    int64_t b, h, i0, rows;
    seq_span g;
    if (!task_tile(j, task, s->q_heads, 0, &b, &h, &g, &i0, &rows)) continue;
    const int64_t kvh = h / j->group;
    load_rows(j, &j->q, b, g.q0 + i0, rows, h, q);
    memset(acc, 0, (size_t)(rows * d) * sizeof *acc);
    for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    const int64_t keys = keys_seen(s, &g, i0 + rows - 1); /* the last row sees the most */
    for (int64_t k0 = 0; k0 < keys; k0 += bn) {
      const int64_t n = min64(bn, keys - k0);
      if (rows < TRANSPOSED_KEYS_FROM_ROWS) /* as tile_scores takes them */
        load_rows(j, &j->k, b, g.k0 + k0, n, kvh, kt_t);
      else
        for (int64_t c = 0; c < n; c++) {
          load_rows(j, &j->k, b, g.k0 + k0 + c, 1, kvh, key);
          for (int64_t i = 0; i < d; i++) kt_t[i * n + c] = key[i];
        }
      load_rows(j, &j->v, b, g.k0 + k0, n, kvh, vt);
      tile_scores(scores, q, kt_t, rows, n, d);
      /* each row's probabilities in place of its scores, 0 for the keys it does not see; its
       * output rescaled to the new maximum; then P V for the whole tile */
      for (int64_t r = 0; r < rows; r++) {
        const int64_t seen = min64(n, keys_seen(s, &g, i0 + r) - k0);
        float *score = scores + r * n, top = m[r];
        for (int64_t c = 0; c < seen; c++) {
          score[c] *= s->scale;
          if (score[c] > top) top = score[c];
        }
        if (seen <= 0 || top == -INFINITY) {
          memset(score, 0, (size_t)n * sizeof *score);
          continue;
        }
        float sum = 0;
        const float rescale = expf(m[r] - top); /* 0 for the first tile a row sees */
        if (rescale != 1.f) scale_row(acc + r * d, rescale, d);
        int64_t c = 0;
        for (; c + 4 <= seen; c += 4) {
          const f32x4 e = exp4(load4(score + c) - top);
          memcpy(score + c, &e, sizeof e);
          sum += (e[0] + e[1]) + (e[2] + e[3]);
        }
        for (; c < seen; c++) sum += score[c] = expf(score[c] - top);
        for (; c < n; c++) score[c] = 0;
        l[r] = l[r] * rescale + sum;
        m[r] = top;
      }
      matrix_product(acc, d, scores, n, vt, d, rows, d, n, 1); /* acc += P V */
    }
    for (int64_t r = 0; r < rows; r++) {
      /* l is 0 only for a row that saw no key: out 0, lse -inf */
      scale_row(acc + r * d, l[r] > 0 ? 1.f / l[r] : 0.f, d);
      if (j->lse.data) *lse_at(j, b, g.q0 + i0 + r, h) = l[r] > 0 ? m[r] + logf(l[r]) : -INFINITY;
    }
    store_rows(j, &j->out, b, g.q0 + i0, rows, h, acc);
  }
}

static attn_job make_job(const yk_attention_shape *s, int keys) {
  attn_job j = {.s = s};
  j.elem = (int64_t)yk_dtype_size((yk_dtype)s->dtype);
  j.group = s->q_heads / s->kv_heads;
  j.rows = tile_rows(s->head_dim);
  j.tiles = (longest(s, keys) + j.rows - 1) / j.rows;
  return j;
}

void yk_cpu_attention_forward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand q,
                              yk_attn_operand k, yk_attn_operand v, yk_attn_operand out, yk_attn_operand lse) {
  if (shape->head_dim < 1 || shape->head_dim > MAX_HEAD_DIM || shape->kv_heads < 1) return;
  attn_job j = make_job(shape, 0);
  j.q = q, j.k = k, j.v = v, j.out = out, j.lse = lse;
  yk_parallel_for(pool, shape->batch * shape->q_heads * j.tiles, 1, forward_tiles, &j);
}

/* ---- backward ----
 * P = exp(score - lse) recomputed from the forward's lse; D_i = dout_i . out_i;
 * dS = P (dout_i . v_j - D_i). Pass one owns query rows (dq), pass two owns key rows of a kv head
 * (dk, dv) and walks every q head of its group in order, so each output has one writer and a fixed
 * order of summation. */

static void backward_dq_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->rows;
  float q[TILE_FLOATS], dout[TILE_FLOATS], dq[TILE_FLOATS], kt[TILE_FLOATS], vt[TILE_FLOATS];
  float lse[MAX_TILE_ROWS], delta[MAX_TILE_ROWS];
  for (int64_t task = begin; task < end; task++) {
    int64_t b, h, i0, rows;
    seq_span g;
    if (!task_tile(j, task, s->q_heads, 0, &b, &h, &g, &i0, &rows)) continue;
    const int64_t kvh = h / j->group;
    load_rows(j, &j->q, b, g.q0 + i0, rows, h, q);
    load_rows(j, &j->dout, b, g.q0 + i0, rows, h, dout);
    load_rows(j, &j->out, b, g.q0 + i0, rows, h, dq); /* out only for D; dq is cleared after */
    for (int64_t r = 0; r < rows; r++) {
      delta[r] = dot(dout + r * d, dq + r * d, d);
      lse[r] = *lse_at(j, b, g.q0 + i0 + r, h);
    }
    memset(dq, 0, (size_t)(rows * d) * sizeof *dq);
    const int64_t keys = keys_seen(s, &g, i0 + rows - 1);
    for (int64_t k0 = 0; k0 < keys; k0 += bn) {
      const int64_t n = min64(bn, keys - k0);
      load_rows(j, &j->k, b, g.k0 + k0, n, kvh, kt);
      load_rows(j, &j->v, b, g.k0 + k0, n, kvh, vt);
      for (int64_t r = 0; r < rows; r++) {
        if (lse[r] == -INFINITY) continue; /* saw no key in the forward: exp(-inf - -inf) is NaN */
        const int64_t seen = min64(n, keys_seen(s, &g, i0 + r) - k0);
        for (int64_t c = 0; c < seen; c++) {
          const float pr = expf(s->scale * dot(q + r * d, kt + c * d, d) - lse[r]);
          const float ds = pr * (dot(dout + r * d, vt + c * d, d) - delta[r]);
          axpy(dq + r * d, ds, kt + c * d, d);
        }
      }
    }
    scale_row(dq, s->scale, rows * d);
    store_rows(j, &j->dq, b, g.q0 + i0, rows, h, dq);
  }
}

static void backward_dkdv_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim;
  float kt[TILE_FLOATS], vt[TILE_FLOATS], dk[TILE_FLOATS], dv[TILE_FLOATS];
  float q[MAX_HEAD_DIM], dout[MAX_HEAD_DIM], out[MAX_HEAD_DIM];
  for (int64_t task = begin; task < end; task++) {
    int64_t b, kvh, j0, n;
    seq_span g;
    if (!task_tile(j, task, s->kv_heads, 1, &b, &kvh, &g, &j0, &n)) continue;
    load_rows(j, &j->k, b, g.k0 + j0, n, kvh, kt);
    load_rows(j, &j->v, b, g.k0 + j0, n, kvh, vt);
    memset(dk, 0, (size_t)(n * d) * sizeof *dk);
    memset(dv, 0, (size_t)(n * d) * sizeof *dv);
    /* the first query that sees key j0: i + len_k - len_q >= j0 */
    const int64_t first = s->causal ? j0 - (g.len_k - g.len_q) : 0;
    for (int64_t h = kvh * j->group; h < (kvh + 1) * j->group; h++)
      for (int64_t i = first > 0 ? first : 0; i < g.len_q; i++) {
        const float lse = *lse_at(j, b, g.q0 + i, h);
        if (lse == -INFINITY) continue;
        load_rows(j, &j->q, b, g.q0 + i, 1, h, q);
        load_rows(j, &j->dout, b, g.q0 + i, 1, h, dout);
        load_rows(j, &j->out, b, g.q0 + i, 1, h, out);
        const float delta = dot(dout, out, d);
        const int64_t seen = min64(n, keys_seen(s, &g, i) - j0);
        for (int64_t c = 0; c < seen; c++) {
          const float pr = expf(s->scale * dot(q, kt + c * d, d) - lse);
          const float ds = pr * (dot(dout, vt + c * d, d) - delta);
          axpy(dv + c * d, pr, dout, d);
          axpy(dk + c * d, ds, q, d);
        }
      }
    scale_row(dk, s->scale, n * d);
    store_rows(j, &j->dk, b, g.k0 + j0, n, kvh, dk);
    store_rows(j, &j->dv, b, g.k0 + j0, n, kvh, dv);
  }
}

void yk_cpu_attention_backward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand dout,
                               yk_attn_operand q, yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                               yk_attn_operand lse, yk_attn_operand dq, yk_attn_operand dk, yk_attn_operand dv) {
  if (shape->head_dim < 1 || shape->head_dim > MAX_HEAD_DIM || shape->kv_heads < 1) return;
  attn_job j = make_job(shape, 0);
  j.q = q, j.k = k, j.v = v, j.out = out, j.lse = lse, j.dout = dout, j.dq = dq, j.dk = dk, j.dv = dv;
  yk_parallel_for(pool, shape->batch * shape->q_heads * j.tiles, 1, backward_dq_tiles, &j);
  j.tiles = (longest(shape, 1) + j.rows - 1) / j.rows;
  yk_parallel_for(pool, shape->batch * shape->kv_heads * j.tiles, 1, backward_dkdv_tiles, &j);
}

/* ---- merge ---- */

static void merge_rows(void *p, int64_t begin, int64_t end) {
  const yk_merge_args *a = p;
  const int64_t es = (int64_t)yk_dtype_size((yk_dtype)a->dtype), d = a->head_dim;
  float x[YK_CPU_CHUNK], y[YK_CPU_CHUNK];
  for (int64_t row = begin; row < end; row++) {
    const int64_t t = row / a->heads, h = row % a->heads;
    const float la = a->lse_a[t * a->lse_a_token_stride + h * a->lse_a_head_stride];
    const float lb = a->lse_b[t * a->lse_b_token_stride + h * a->lse_b_head_stride];
    /* written so that a NaN in either lse reaches the output */
    const float top = la > lb ? la : lb;
    const int empty = top == -INFINITY;
    const float wa = empty ? 0.f : expf(la - top), wb = empty ? 0.f : expf(lb - top);
    const float inv = empty ? 0.f : 1.f / (wa + wb);
    const char *ra = a->o_a + es * (t * a->o_a_token_stride + h * a->o_a_head_stride);
    const char *rb = a->o_b + es * (t * a->o_b_token_stride + h * a->o_b_head_stride);
    char *ro = a->out_o + es * (t * a->out_token_stride + h * a->out_head_stride);
    /* Chunk by chunk: when out_o is o_a or o_b, each chunk is read before the same chunk is
     * written. A state of weight 0 (lse -inf) is not read, so its contents cannot leak in as NaN. */
    for (int64_t c = 0; c < d; c += YK_CPU_CHUNK) {
      const int64_t n = min64(YK_CPU_CHUNK, d - c);
      memset(x, 0, (size_t)n * sizeof *x);
      if (wa != 0.f) {
        yk_load_floats(a->dtype, ra + c * es, y, n);
        for (int64_t i = 0; i < n; i++) x[i] = wa * y[i];
      }
      if (wb != 0.f) {
        yk_load_floats(a->dtype, rb + c * es, y, n);
        for (int64_t i = 0; i < n; i++) x[i] += wb * y[i];
      }
      scale_row(x, inv, n);
      yk_store_floats(a->dtype, ro + c * es, x, n);
    }
    if (a->out_lse)
      a->out_lse[t * a->out_lse_token_stride + h * a->out_lse_head_stride] = empty ? -INFINITY : top + logf(wa + wb);
  }
}

void yk_cpu_merge_attention_states(yk_thread_pool *pool, const yk_merge_args *args) {
  const int64_t grain = 16384 / (args->head_dim > 0 ? args->head_dim : 1);
  yk_parallel_for(pool, args->tokens * args->heads, grain > 0 ? grain : 1, merge_rows, (void *)args);
}

/* ---- float64 references ---- */

static double dot64(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static int64_t total_tokens(const yk_attention_shape *s, int keys) {
  const int32_t *cu = keys ? s->cu_seqlens_k : s->cu_seqlens_q;
  return cu ? cu[s->batch] : s->batch * (keys ? s->seq_k : s->seq_q);
}

static void fill(double *x, int64_t n, double value) {
  for (int64_t i = 0; i < n; i++) x[i] = value;
}

/* Probabilities softmax(q_i k^T * scale) over the keys [0, len_k) of the sequence into p, 0 for
 * the keys query i does not see, and their log-sum-exp into *lse (-inf when it sees none). The
 * mask is stated here key by key rather than through keys_seen, so that a slip in the fallback's
 * bounds shows up as a difference. */
static void reference_probs(const yk_attention_shape *s, const seq_span *g, int64_t i, const double *qi,
                            const double *k, int64_t kvh, double *p, double *lse) {
  const int64_t d = s->head_dim;
  double top = -INFINITY, sum = 0;
  for (int64_t j = 0; j < g->len_k; j++) {
    const int seen = !s->causal || j - i <= g->len_k - g->len_q;
    p[j] = seen ? (double)s->scale * dot64(qi, k + ((g->k0 + j) * s->kv_heads + kvh) * d, d) : -INFINITY;
    if (p[j] > top) top = p[j];
  }
  for (int64_t j = 0; j < g->len_k; j++) sum += p[j] = top == -INFINITY ? 0 : exp(p[j] - top);
  for (int64_t j = 0; j < g->len_k; j++) p[j] = sum > 0 ? p[j] / sum : 0;
  *lse = sum > 0 ? top + log(sum) : -INFINITY;
}

void yk_reference_attention_forward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                    double *out, double *lse) {
  const yk_attention_shape *s = shape;
  const int64_t d = s->head_dim, hq = s->q_heads, total_q = total_tokens(s, 0), group = hq / s->kv_heads;
  double *p = malloc((size_t)(longest(s, 1) + 1) * sizeof *p);
  if (!p) { /* no way to report it: make the failure impossible to miss */
    fill(out, total_q * hq * d, NAN);
    if (lse) fill(lse, hq * total_q, NAN);
    return;
  }
  for (int64_t b = 0; b < s->batch; b++) {
    const seq_span g = sequence(s, b, 1);
    for (int64_t h = 0; h < hq; h++)
      for (int64_t i = 0; i < g.len_q; i++) {
        const int64_t row = (g.q0 + i) * hq + h;
        double row_lse, *o = out + row * d;
        reference_probs(s, &g, i, q + row * d, k, h / group, p, &row_lse);
        fill(o, d, 0);
        for (int64_t j = 0; j < g.len_k; j++)
          for (int64_t c = 0; c < d; c++) o[c] += p[j] * v[((g.k0 + j) * s->kv_heads + h / group) * d + c];
        if (lse) lse[h * total_q + g.q0 + i] = row_lse;
      }
  }
  free(p);
}

void yk_reference_attention_backward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                     const double *dout, double *dq, double *dk, double *dv) {
  const yk_attention_shape *s = shape;
  const int64_t d = s->head_dim, hq = s->q_heads, hk = s->kv_heads, group = hq / hk;
  const int64_t total_q = total_tokens(s, 0), total_k = total_tokens(s, 1), most = longest(s, 1) + 1;
  fill(dq, total_q * hq * d, 0);
  fill(dk, total_k * hk * d, 0);
  fill(dv, total_k * hk * d, 0);
  double *p = malloc((size_t)(2 * most) * sizeof *p);
  if (!p) {
    fill(dq, total_q * hq * d, NAN);
    fill(dk, total_k * hk * d, NAN);
    fill(dv, total_k * hk * d, NAN);
    return;
  }
  double *dp = p + most;
  for (int64_t b = 0; b < s->batch; b++) {
    const seq_span g = sequence(s, b, 1);
    for (int64_t h = 0; h < hq; h++)
      for (int64_t i = 0; i < g.len_q; i++) {
        const int64_t row = (g.q0 + i) * hq + h, kvh = h / group;
        const double *qi = q + row * d, *gi = dout + row * d;
        double row_lse, delta = 0; /* sum_j P_ij dP_ij, which equals dout_i . out_i */
        reference_probs(s, &g, i, qi, k, kvh, p, &row_lse);
        for (int64_t j = 0; j < g.len_k; j++) {
          dp[j] = dot64(gi, v + ((g.k0 + j) * hk + kvh) * d, d);
          delta += p[j] * dp[j];
        }
        for (int64_t j = 0; j < g.len_k; j++) {
          const int64_t key = ((g.k0 + j) * hk + kvh) * d;
          const double ds = p[j] * (dp[j] - delta) * (double)s->scale;
          for (int64_t c = 0; c < d; c++) {
            dq[row * d + c] += ds * k[key + c];
            dk[key + c] += ds * qi[c];
            dv[key + c] += p[j] * gi[c];
          }
        }
      }
  }
  free(p);
}
