/* Attention on the CPU: the forward (prefill and decode fallback) with an online softmax over key
 * tiles, the backward as two passes that each own their outputs, the merge of partial attentions,
 * and the float64 references.
 *
 * Tiles live on the stack: a query tile buffer holds TILE_FLOATS floats, so a tile has
 * TILE_FLOATS / head_dim rows (64 at head_dim 64, 32 at 128, 4 at 1024), and the rows are the q
 * heads of a kv head's group over a run of tokens, so the group shares each key and value loaded
 * (decode: the groups of several kv heads, one token's, each key tile read for each in turn).
 * No pass takes more than about 110 KiB of a thread's stack whatever head_dim is (the forward on
 * AMX tiles: its buffers, 106 KiB at most; the backward's first: three query tiles, three key tiles
 * of half the size, two score blocks and one row, about 100).
 * Nothing is allocated but a split decode's partial states (see DECODE_SPLIT_KEYS), and where they
 * find no room the same stretches are folded as they go, so a call that cannot report an error
 * cannot fail half-way either. */
#include "cpu_fallback/attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* The tile kernels are built three times on x86-64: here, for every CPU (names ending _plain), and
 * by attention_avx2.c and attention_avx512.c, which include this file with YK_CPU_BUILD_AVX2 or
 * YK_CPU_BUILD_AVX512 defined (names ending _avx2: 2.1-2.6x the plain build at prefill and
 * backward, float16 decode 2x; _avx512: 1.3-1.5x _avx2 at prefill and backward). The AVX-512 build
 * also holds the bfloat16 forward on AMX tiles (attention_amx.h: 2.6-4.5x at prefill), which it
 * runs where the pool says YK_CPU_AMX. The pool says which build a call runs (yk_thread_pool.isa). */
#if defined(YK_CPU_BUILD_AVX512)
#define ISA_NAME(name) name##_avx512
#elif defined(YK_CPU_BUILD_AVX2)
#define ISA_NAME(name) name##_avx2
#else
#define ISA_NAME(name) name##_plain
#endif
#define DECLARE_BUILD(isa)                                                                                             \
  void yk_cpu_attention_forward_##isa(yk_thread_pool *, const yk_attention_shape *, yk_attn_operand, yk_attn_operand,  \
                                      yk_attn_operand, yk_attn_operand, yk_attn_operand);                              \
  void yk_cpu_attention_backward_##isa(yk_thread_pool *, const yk_attention_shape *, yk_attn_operand, yk_attn_operand, \
                                       yk_attn_operand, yk_attn_operand, yk_attn_operand, yk_attn_operand,             \
                                       yk_attn_operand, yk_attn_operand, yk_attn_operand);                             \
  void yk_cpu_kv_row_floats_##isa(int kv_type, const void *row, float *dst, int64_t n);
DECLARE_BUILD(plain)
DECLARE_BUILD(avx2)
DECLARE_BUILD(avx512)

#define MAX_HEAD_DIM 1024
#define TILE_FLOATS 4096
#define MAX_TILE_ROWS (TILE_FLOATS / 64)

/* Rows of a tile whose buffers hold tile_floats floats, at most tile_floats / 64 (a score block
 * then holds rows x rows floats, no more than a tile buffer). */
static int64_t tile_rows(int64_t head_dim, int64_t tile_floats) {
  const int64_t rows = tile_floats / head_dim, most = tile_floats / 64;
  return rows < 1 ? 1 : rows > most ? most : rows;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static inline void scale_row(float *y, float a, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] *= a;
}

/* The products, blocked so that each value loaded feeds several multiply-adds (a dot a score and
 * an axpy an update load two values a multiply-add, and ran at ~20 GFLOP/s on two cores). All are one
 * matrix product (matrix_product): S = Q K^T over the keys transposed, O += P V and the
 * backward's, in blocks held in GNU C vectors of LANES floats (what the compiler keeps in
 * registers, where an accumulator array stayed in memory); each sum runs over its terms in order,
 * so results do not depend on the blocking. LANES is 16 where this file is built for AVX-512
 * (attention_avx512.c), 8 for AVX2 (attention_avx2.c), else 4 (SSE2, which every x86-64 has; NEON). */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float f32v __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t i32v __attribute__((vector_size(LANES * sizeof(float))));

static inline f32v loadv(const float *p) {
  f32v v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* a where mask is set (-1), else b, lane by lane: C has no ?: on vectors, so by bits. */
static inline f32v pick(i32v mask, f32v a, f32v b) { return (f32v)(((i32v)a & mask) | ((i32v)b & ~mask)); }

/* The lanes' sum, in pairs. */
static inline float lane_sum(f32v v) {
  float sum = 0;
  for (int i = 0; i < LANES; i += 4) sum += (v[i] + v[i + 1]) + (v[i + 2] + v[i + 3]);
  return sum;
}

/* Two vectors of partial sums (lo over the first LANES of each 2 x LANES elements, hi the next)
 * keep two chains of adds in flight without -ffast-math (in the AVX2 build one vector is one chain
 * of fused multiply-adds, waiting on each one's latency); the fixed order of the final additions
 * keeps results the same on every run. */
static inline float dot(const float *a, const float *b, int64_t n) {
  f32v lo = {0}, hi = {0};
  int64_t i = 0;
  for (; i + 2 * LANES <= n; i += 2 * LANES)
    lo += loadv(a + i) * loadv(b + i), hi += loadv(a + i + LANES) * loadv(b + i + LANES);
  float tail = 0;
  for (; i < n; i++) tail += a[i] * b[i];
  return lane_sum(lo + hi) + tail;
}

/* e^x for LANES floats, Cephes' expf (range reduction by ln 2 in two parts, a degree-6 polynomial,
 * 2^n by the exponent bits): within 2 ulp of expf for x in [-87, 88], clamped outside. The
 * softmax's exponentials, one a score, cost as much as a head_dim of 64's products with expf. */
#if LANES == 16
/* With AVX-512: n rounded by one instruction and 2^n applied by scalef (which underflows to 0 and
 * overflows to inf as expf does), so no floor by conversions and no clamp above: 14 instructions
 * where the generic form takes 24, the softmax's largest part once AMX takes the products.
 * Below -104 (e^x under float's smallest denormal) x is raised to it, so -inf gives 0, not
 * -inf - -inf; NaN stays NaN (max returns its second operand when one is NaN). */
static inline f32v expv(f32v x) {
  __m512 v;
  memcpy(&v, &x, sizeof v);
  v = _mm512_max_ps(_mm512_set1_ps(-104.f), v);
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  y = _mm512_scalef_ps(y, n);
  memcpy(&x, &y, sizeof x);
  return x;
}
#else
static inline f32v expv(f32v x) {
  const f32v hi = (f32v){0} + 88.3762626647949f, lo = (f32v){0} - 87.3365447504f;
  x = pick(x > hi, hi, x);
  x = pick(x < lo, lo, x);
  const f32v fx = x * 1.44269504088896341f + 0.5f;
  i32v n = __builtin_convertvector(fx, i32v); /* toward zero; floor below */
  f32v fn = __builtin_convertvector(n, f32v);
  const i32v over = fn > fx; /* -1 where truncation rounded up */
  n += over;
  fn = __builtin_convertvector(n, f32v);
  x = x - fn * 0.693359375f - fn * -2.12194440e-4f;
  f32v y = 1.9875691500e-4f * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const i32v bits = (n + 127) << 23;
  f32v scale;
  memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
#endif

/* c[r * ldc + j] = (c's value when accumulate, else 0) + sum over i < k of a(r, i) b[i * ldb + j] for
 * rows R (4 or 1) from row 0 and the V vectors of columns (V 2 or 1, WIDTH columns each) from j = 0,
 * held in registers over i, with a(r, i) at a[r * a_row + i * a_k] (a_k 1: a's rows; a_row 1: a
 * transposed, which the backward's P^T and dS^T are); each value of b loaded feeds R rows, each sum
 * runs over i in order. Defined for vectors of LANES floats (product_block), and in the AVX-512
 * build for half ones too (product_block_half), so that eight columns still go by vectors. */
#define DEFINE_PRODUCT_BLOCK(NAME, VEC, WIDTH)                                                                         \
  static inline __attribute__((always_inline)) void NAME(float *c, int64_t ldc, const float *a, int64_t a_row,         \
                                                         int64_t a_k, const float *b, int64_t ldb, int64_t k, int R,   \
                                                         int accumulate, int V) {                                      \
    const int64_t a_step = R == 4 ? a_row : 0, c_step = R == 4 ? ldc : 0; /* one row: no pointer past the rows */      \
    const float *a0 = a, *a1 = a0 + a_step, *a2 = a1 + a_step, *a3 = a2 + a_step;                                      \
    float *rows[4] = {c, c + c_step, c + 2 * c_step, c + 3 * c_step};                                                  \
    VEC acc[4][2] = {{{0}}};                                                                                           \
    for (int r = 0; accumulate && r < R; r++)                                                                          \
      for (int v = 0; v < V; v++) memcpy(&acc[r][v], rows[r] + v * (WIDTH), sizeof(VEC));                              \
    VEC x0 = acc[0][0], x1 = acc[0][1], y0 = acc[1][0], y1 = acc[1][1], z0 = acc[2][0], z1 = acc[2][1],                \
        w0 = acc[3][0], w1 = acc[3][1]; /* named: what the compiler keeps in registers */                              \
    for (int64_t i = 0; i < k; i++) {                                                                                  \
      VEC b0, b1;                                                                                                      \
      memcpy(&b0, b + i * ldb, sizeof b0);                                                                             \
      if (V == 2) memcpy(&b1, b + i * ldb + (WIDTH), sizeof b1);                                                       \
      const int64_t at = i * a_k;                                                                                      \
      x0 += a0[at] * b0;                                                                                               \
      if (V == 2) x1 += a0[at] * b1;                                                                                   \
      if (R == 4) {                                                                                                    \
        y0 += a1[at] * b0, z0 += a2[at] * b0, w0 += a3[at] * b0;                                                       \
        if (V == 2) y1 += a1[at] * b1, z1 += a2[at] * b1, w1 += a3[at] * b1;                                           \
      }                                                                                                                \
    }                                                                                                                  \
    const VEC out[4][2] = {{x0, x1}, {y0, y1}, {z0, z1}, {w0, w1}};                                                    \
    for (int r = 0; r < R; r++) memcpy(rows[r], out[r], (size_t)V * sizeof out[r][0]);                                 \
  }
DEFINE_PRODUCT_BLOCK(product_block, f32v, LANES)
#if LANES == 16
typedef float f32h __attribute__((vector_size(LANES / 2 * sizeof(float))));
DEFINE_PRODUCT_BLOCK(product_block_half, f32h, LANES / 2)
#endif

/* The columns [j, j + V * LANES) of every row (V 0: the half vector's LANES / 2, in the AVX-512
 * build): blocks of four rows, then the rows left over. */
#if LANES == 16
#define PRODUCT_BLOCK(V, ...) ((V) ? product_block(__VA_ARGS__, (V)) : product_block_half(__VA_ARGS__, 1))
#else
#define PRODUCT_BLOCK(V, ...) product_block(__VA_ARGS__, (V))
#endif
static inline __attribute__((always_inline)) void product_columns(float *c, int64_t ldc, const float *a, int64_t a_row,
                                                                  int64_t a_k, const float *b, int64_t ldb,
                                                                  int64_t rows, int64_t j, int64_t k, int V,
                                                                  int accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    if (a_k == 1) /* a's rows, the forward's case: a constant step */
      PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, 1, b + j, ldb, k, 4, accumulate);
    else
      PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, a_k, b + j, ldb, k, 4, accumulate);
  for (; r < rows; r++) PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, a_k, b + j, ldb, k, 1, accumulate);
}

/* The same for a rows x cols block: columns two vectors at a time, then one vector, then the
 * columns left over one by one, each sum in the same order. (A key tile of eight keys, the
 * backward's at head_dim 256, is one vector of the AVX2 build, half of one of the AVX-512 build:
 * without a block that wide all its scores went one by one, at a sixth of the speed.) */
static inline __attribute__((always_inline)) void matrix_product(float *c, int64_t ldc, const float *a, int64_t a_row,
                                                                 int64_t a_k, const float *b, int64_t ldb, int64_t rows,
                                                                 int64_t cols, int64_t k, int accumulate) {
  int64_t j = 0;
  for (; j + 2 * LANES <= cols; j += 2 * LANES)
    product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 2, accumulate);
  for (; j + LANES <= cols; j += LANES) product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 1, accumulate);
#if LANES == 16
  for (; j + LANES / 2 <= cols; j += LANES / 2)
    product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 0, accumulate);
#endif
  for (int64_t r = 0; r < rows; r++)
    for (int64_t jj = j; jj < cols; jj++) {
      float sum = accumulate ? c[r * ldc + jj] : 0;
      for (int64_t i = 0; i < k; i++) sum += a[r * a_row + i * a_k] * b[i * ldb + jj];
      c[r * ldc + jj] = sum;
    }
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

/* How a call is cut into tiles. A query tile holds `tokens` tokens of a sequence for `heads` q
 * heads of one kv head's group, so the heads that share keys and values share every key tile
 * loaded (decode: a tile is the group, which each key then feeds four rows at once); a key tile
 * holds `keys` keys. rows = tokens x heads <= the rows a tile buffer holds. */
typedef struct attn_job {
  const yk_attention_shape *s;
  yk_attn_operand q, k, v, out, lse, dout, dq, dk, dv;
  int64_t elem, group, keys;
  int64_t kv_elem;                      /* bytes of a key or value element: elem, or 1 (float8) */
  int kv_type;                          /* their type: the dtype, or YK_E4M3 */
  float score_scale, out_scale;         /* the softmax scale (times k_scale), and v_scale: float8
                                           rows load as values times 2^-8, both times 2^8 then */
  int64_t heads, chunks, tokens, tiles; /* heads a query tile, such chunks a group, tokens a tile, tiles a chunk */
  int64_t most_tokens;                  /* the longest sequence's queries */
  int64_t whole_heads, whole_chunks;    /* heads and chunks when the tile takes as many heads as fit */
  int64_t kv_a_tile, kv_tiles;          /* kv heads a query tile, such tiles a sequence (see decode_tiles) */
  int transposed;                       /* scores over keys transposed: every tile's sums in one order (see make_job) */
  int64_t splits;                       /* decode: stretches of DECODE_SPLIT_KEYS keys a sequence (see decode_splits) */
  float *partials;                      /* NULL, or a split decode's states, slot_floats a (tile, split) */
  int64_t slot_floats;
} attn_job;

typedef struct query_tile {
  int64_t b, kvh, h0, heads, t0, tokens, rows; /* row r: token t0 + r / heads, head h0 + r % heads */
  int64_t kv_count; /* kv heads from kvh: more than 1 only for one token, each group's rows in turn */
  seq_span g;
} query_tile;

static int64_t row_token(const query_tile *t, int64_t r) { return t->t0 + r / t->heads; }
static int64_t row_head(const query_tile *t, int64_t r) { return t->h0 + r % t->heads; }

/* The tile of chunk c (heads_a_chunk heads from the group's first) over tokens [t0, t0 + tokens)
 * of sequence b, kv head kvh; 0 if it holds no token. */
static int query_tile_of(const attn_job *j, int64_t b, int64_t kvh, int64_t c, int64_t heads_a_chunk, int64_t t0,
                         query_tile *t) {
  t->b = b, t->kvh = kvh, t->g = sequence(j->s, b, 0);
  t->kv_count = min64(j->kv_a_tile, j->s->kv_heads - kvh);
  t->h0 = kvh * j->group + c * heads_a_chunk;
  t->heads = t->kv_count > 1 ? t->kv_count * j->group : min64(heads_a_chunk, (kvh + 1) * j->group - t->h0);
  t->t0 = t0;
  t->tokens = min64(j->tokens, t->g.len_q - t0);
  t->rows = t->tokens * t->heads;
  return t->tokens > 0;
}

/* Tasks are (sequence, kv heads, chunk, token tile) with the tile fastest. */
static int query_task(const attn_job *j, int64_t task, query_tile *t) {
  const int64_t tile = task % j->tiles, c = task / j->tiles % j->chunks;
  const int64_t kv_tile = task / j->tiles / j->chunks % j->kv_tiles, b = task / j->tiles / j->chunks / j->kv_tiles;
  return query_tile_of(j, b, kv_tile * j->kv_a_tile, c, j->heads, tile * j->tokens, t);
}

/* Moves a query tile's rows between an operand and rows x head_dim floats. */
static void load_tile(const attn_job *j, const yk_attn_operand *o, const query_tile *t, float *dst) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < t->rows; r++)
    yk_load_floats(j->s->dtype, row_at(o, j->elem, t->b, t->g.q0 + row_token(t, r), row_head(t, r)), dst + r * d, d);
}

static void store_tile(const attn_job *j, const yk_attn_operand *o, const query_tile *t, const float *src) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < t->rows; r++)
    yk_store_floats(j->s->dtype, row_at(o, j->elem, t->b, t->g.q0 + row_token(t, r), row_head(t, r)), src + r * d, d);
}

static inline float *lse_at(const attn_job *j, const query_tile *t, int64_t r) {
  return (float *)(void *)row_at(&j->lse, 4, t->b, t->g.q0 + row_token(t, r), row_head(t, r));
}

/* rows[c] = row_at(o, elem, b, token + c, h) for c < count: a page's rows a stride apart, its table
 * read once (a lookup a row, and its division, cost a paged decode 1.6x dense's time). */
static void rows_from(const yk_attn_operand *o, int64_t elem, int64_t b, int64_t token, int64_t h, int64_t count,
                      const char **rows) {
  const int64_t size = o->pages ? o->pages->page_size : 0;
  int64_t left = 0;
  for (int64_t c = 0; c < count; c++, left--) {
    if (left == 0) {
      rows[c] = row_at(o, elem, b, token + c, h);
      left = size ? size - (token + c) % size : count;
    } else {
      rows[c] = rows[c - 1] + elem * o->seq_stride;
    }
  }
}

/* Prefetches count keys from key k0 of kv head kvh, up to the sequence's end. */
static void prefetch_keys(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t k0, int64_t count) {
  const int64_t row_bytes = j->s->head_dim * j->kv_elem, end = min64(k0 + count, t->g.len_k);
  const char *rows[MAX_TILE_ROWS];
  for (int64_t c0 = k0; c0 < end; c0 += MAX_TILE_ROWS) { /* (the AMX forward's key tiles hold more) */
    const int64_t n = min64(MAX_TILE_ROWS, end - c0);
    rows_from(o, j->kv_elem, t->b, t->g.k0 + c0, t->kvh, n, rows);
    for (int64_t c = 0; c < n; c++)
      for (int64_t at = 0; at < row_bytes; at += 64) __builtin_prefetch(rows[c] + at);
  }
}

/* A key or value row of n elements as floats: float8 as the values times 2^-8, the job's scales
 * making up for it (yk_cpu_kv_row_floats). */
static inline __attribute__((always_inline)) void kv_row_floats(int kv_type, const void *row, float *dst, int64_t n) {
  if (kv_type == YK_E4M3)
    yk_e4m3_to_floats_2m8(row, dst, n);
  else
    yk_load_floats(kv_type, row, dst, n);
}
void ISA_NAME(yk_cpu_kv_row_floats)(int kv_type, const void *row, float *dst, int64_t n) {
  kv_row_floats(kv_type, row, dst, n);
}
static inline void load_kv_row(const attn_job *j, const char *row, float *dst) {
  kv_row_floats(j->kv_type, row, dst, j->s->head_dim);
}

/* The LANES x LANES block at column i of LANES rows, transposed: column c of the rows as one vector
 * at dst + c * ld (8 and 4 lanes: interleaved pairs, then pairs of pairs, then halves: unpcklps,
 * shufps and vperm2f128 where the compiler has them; 16 lanes: four rounds of interleaving row r
 * with row r + 8, a perfect shuffle each, vpermt2ps). */
static inline __attribute__((always_inline)) void transpose_lanes(const float *const *rows, int64_t i, float *dst,
                                                                  int64_t ld) {
  f32v r[LANES], c[LANES], *out = c;
  for (int k = 0; k < LANES; k++) r[k] = loadv(rows[k] + i);
#if LANES == 8
  f32v t[8], u[8];
  for (int p = 0; p < 4; p++) {
    t[2 * p] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * p + 1] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  static const int from_t[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};
  for (int p = 0; p < 4; p++) {
    const f32v x = t[from_t[p][0]], y = t[from_t[p][1]];
    u[2 * p] = __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13);
    u[2 * p + 1] = __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; k++) {
    c[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    c[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
#elif LANES == 16
  for (int round = 0; round < 4; round++) {
    f32v *from = round % 2 ? c : r, *to = round % 2 ? r : c;
    for (int k = 0; k < 8; k++) {
      to[2 * k] = __builtin_shufflevector(from[k], from[k + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      to[2 * k + 1] =
          __builtin_shufflevector(from[k], from[k + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
  }
  out = r; /* four rounds: the last wrote r */
#else
  const f32v t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5), t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  const f32v t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5), t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  c[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5), c[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
  c[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5), c[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
#endif
  for (int k = 0; k < LANES; k++) memcpy(dst + k * ld, &out[k], sizeof out[k]);
}

/* dst[i * rows + r] = src[r * cols + i]: LANES x LANES blocks in registers, the edges one by one
 * (the dq pass's key tile transposed a value at a time took a fifth of that pass's samples). */
static void transpose_rows(const float *src, int64_t rows, int64_t cols, float *dst) {
  int64_t r = 0;
  for (; r + LANES <= rows; r += LANES) {
    const float *from[LANES];
    for (int k = 0; k < LANES; k++) from[k] = src + (r + k) * cols;
    int64_t i = 0;
    for (; i + LANES <= cols; i += LANES) transpose_lanes(from, i, dst + i * rows + r, rows);
    for (; i < cols; i++)
      for (int k = 0; k < LANES; k++) dst[i * rows + r + k] = from[k][i];
  }
  for (; r < rows; r++)
    for (int64_t i = 0; i < cols; i++) dst[i * rows + r] = src[r * cols + i];
}

/* Columns of LANES keys a transposed load converts at a time: LANES of them fill the one row of
 * scratch (MAX_HEAD_DIM floats) its callers have. */
#define TRANSPOSE_COLUMNS (MAX_HEAD_DIM / LANES)

/* count keys from key k0 of kv head kvh: as rows (count x head_dim), or transposed (element i of
 * key c at i * count + c) so that keys sit side by side in vectors: LANES keys at a time, float32
 * rows where they are and others a stretch of columns converted into scratch, their LANES x LANES
 * blocks transposed in registers (a store a value, each to its own cache line, took 12% of the
 * prefill's time, the float32 rows' copy 6%: forward 1.08-1.14x at head_dim 128); the keys left
 * over through one row of scratch. The same number of keys after them is prefetched, up to the
 * sequence's end: a kv head's rows lie a page or more apart (heads x head_dim apart), where the
 * hardware's prefetchers stop, and decode waited on every row (float16 decode: 60% of its time on
 * the loads' first bytes). */
static void load_keys(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t k0, int64_t count,
                      int transposed, float *dst, float *scratch) {
  const int64_t d = j->s->head_dim;
  prefetch_keys(j, o, t, k0 + count, count);
  int64_t first = 0;
  for (; transposed && first + LANES <= count; first += LANES)
    for (int64_t i0 = 0; i0 < d; i0 += TRANSPOSE_COLUMNS) {
      const int64_t width = min64(TRANSPOSE_COLUMNS, d - i0);
      const float *from[LANES]; /* float32 rows where they are; others converted into scratch */
      for (int r = 0; r < LANES; r++) {
        const char *row = row_at(o, j->kv_elem, t->b, t->g.k0 + k0 + first + r, t->kvh) + i0 * j->kv_elem;
        if (j->kv_type == YK_F32) {
          from[r] = (const float *)(const void *)row;
        } else {
          from[r] = scratch + r * TRANSPOSE_COLUMNS;
          kv_row_floats(j->kv_type, row, scratch + r * TRANSPOSE_COLUMNS, width);
        }
      }
      int64_t i = 0;
      for (; i + LANES <= width; i += LANES) transpose_lanes(from, i, dst + (i0 + i) * count + first, count);
      for (; i < width; i++) {
        f32v column;
        for (int r = 0; r < LANES; r++) column[r] = from[r][i];
        memcpy(dst + (i0 + i) * count + first, &column, sizeof column);
      }
    }
  for (int64_t c = first; c < count; c++) {
    const char *row = row_at(o, j->kv_elem, t->b, t->g.k0 + k0 + c, t->kvh);
    if (!transposed) {
      load_kv_row(j, row, dst + c * d);
      continue;
    }
    load_kv_row(j, row, scratch);
    for (int64_t i = 0; i < d; i++) dst[i * count + c] = scratch[i];
  }
}

/* count values from key k0 as rows, *ld floats apart: float32 values of a dense operand where they
 * are, with no copy, else load_keys's rows in buf. (Decode without GQA 1.2-1.3x, GQA-4 about
 * 1.1x; the keys read in place instead cost the GQA-4 decode's scores 20%.) */
static const float *value_rows(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t k0,
                               int64_t count, float *buf, int64_t *ld) {
  if (j->kv_type != YK_F32 || o->pages) {
    load_keys(j, o, t, k0, count, 0, buf, NULL);
    *ld = j->s->head_dim;
    return buf;
  }
  prefetch_keys(j, o, t, k0 + count, count);
  *ld = o->seq_stride;
  return (const float *)(const void *)row_at(o, 4, t->b, t->g.k0 + k0, t->kvh);
}

/* Sums across lanes for LANES keys at once. fold<w> halves the lanes a key holds, from w to w / 2,
 * in two vectors each holding LANES / w keys: the result holds the keys of both, x's and y's
 * alternating, each one's lanes i and i + w / 2 added. key_sums folds LANES vectors of one key each
 * (v[i] the key key_slot[i], bits reversed, so that they come out in order) into one vector whose
 * lane c is key c's sum, in log2(LANES) rounds: a score a key now costs about three instructions of
 * sums, where a sum across one vector's lanes took fifteen (as much as a decode score's products).
 * Every key's lanes are added in the same pattern whatever its slot. */
#if LANES == 16
static inline f32v fold16(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
static inline f32v fold8(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
         __builtin_shufflevector(x, y, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
}
static inline f32v fold4(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
         __builtin_shufflevector(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}
static inline f32v fold2(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
static const int key_slot[LANES] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
static inline __attribute__((always_inline)) f32v key_sums(f32v *v) {
  for (int i = 0; i < 8; i++) v[i] = fold16(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 4; i++) v[i] = fold8(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 2; i++) v[i] = fold4(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 1; i++) v[i] = fold2(v[2 * i], v[2 * i + 1]);
  return v[0];
}
#elif LANES == 8
static inline f32v fold8(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15);
}
static inline f32v fold4(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
         __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
}
static inline f32v fold2(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
         __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
}
static const int key_slot[LANES] = {0, 4, 2, 6, 1, 5, 3, 7};
static inline __attribute__((always_inline)) f32v key_sums(f32v *v) {
  for (int i = 0; i < 4; i++) v[i] = fold8(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 2; i++) v[i] = fold4(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 1; i++) v[i] = fold2(v[2 * i], v[2 * i + 1]);
  return v[0];
}
#else
static inline f32v fold4(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 1, 4, 5) + __builtin_shufflevector(x, y, 2, 3, 6, 7);
}
static inline f32v fold2(f32v x, f32v y) {
  return __builtin_shufflevector(x, y, 0, 4, 2, 6) + __builtin_shufflevector(x, y, 1, 5, 3, 7);
}
static const int key_slot[LANES] = {0, 2, 1, 3};
static inline __attribute__((always_inline)) f32v key_sums(f32v *v) {
  for (int i = 0; i < 2; i++) v[i] = fold4(v[2 * i], v[2 * i + 1]);
  for (int i = 0; i < 1; i++) v[i] = fold2(v[2 * i], v[2 * i + 1]);
  return v[0];
}
#endif

static const float zero_row[MAX_HEAD_DIM];

/* ---- a tile's keys and values read where they lie ----
 * Where the scores take the keys' rows (a query tile of fewer rows than TRANSPOSED_KEYS_FROM_ROWS;
 * a decode tile of a group under TRANSPOSED_DECODE_FROM_ROWS), neither keys nor values are copied
 * into tiles of floats first: each LANES elements are converted as the products load them. The
 * copies were 40% of a float16 decode's time. */
typedef uint16_t u16v __attribute__((vector_size(LANES * 2)));
typedef uint32_t u32v __attribute__((vector_size(LANES * 4)));
typedef uint8_t u8v __attribute__((vector_size(LANES)));

/* LANES elements of a key or value row of kv_type from element i, as floats (float8: the values
 * times 2^-8, as kv_row_floats gives them). */
static inline __attribute__((always_inline)) f32v kv_lanes(int kv_type, const char *row, int64_t i) {
  f32v v;
  if (kv_type == YK_F32) {
    memcpy(&v, row + 4 * i, sizeof v);
    return v;
  }
  if (kv_type == YK_BF16) {
    u16v h;
    memcpy(&h, row + 2 * i, sizeof h);
    const u32v w = __builtin_convertvector(h, u32v) << 16;
    memcpy(&v, &w, sizeof v);
    return v;
  }
#if LANES == 16 || (LANES == 8 && defined(__F16C__))
  u16v h;
  if (kv_type == YK_F16) {
    memcpy(&h, row + 2 * i, sizeof h);
  } else { /* float8 e4m3, as yk_e4m3_to_floats_2m8 */
    u8v b;
    memcpy(&b, row + i, sizeof b);
    h = YK_E4M3_AS_F16_BITS(__builtin_convertvector(b, u16v));
  }
#if LANES == 16
  __m256i bits;
  memcpy(&bits, &h, sizeof bits);
  const __m512 f = _mm512_cvtph_ps(bits);
#else
  __m128i bits;
  memcpy(&bits, &h, sizeof bits);
  const __m256 f = _mm256_cvtph_ps(bits);
#endif
  memcpy(&v, &f, sizeof v);
  return v;
#else
  float floats[LANES];
  kv_row_floats(kv_type, row + i * (kv_type == YK_E4M3 ? 1 : 2), floats, LANES);
  return loadv(floats);
#endif
}

/* The same for one element, for the dims past the last whole vector. */
static inline float kv_element(int kv_type, const char *row, int64_t i) {
  float x;
  kv_row_floats(kv_type, row + i * (kv_type == YK_F32 ? 4 : kv_type == YK_E4M3 ? 1 : 2), &x, 1);
  return x;
}

/* A block of row_scores: R rows against LANES / R keys fill the LANES sums that key_sums folds at
 * once. A GQA group of four or more takes blocks of four rows where LANES allows (4 keys each),
 * smaller groups blocks of two or one, so that few rows of zeros are multiplied. */
#define BLOCK_ROWS (LANES / 4)

/* s[r * n + c] = q_r . k_c for rows r0 .. r0 + R - 1 (d floats apart; past rows_end they read
 * zeros and are not stored) against keys c0 .. (those past n read zeros): the sums over the dims
 * lane by lane, each key's LANES elements converted once for the block's R rows, folded by
 * key_sums, then the dims past the last whole vector added in order. A score's sum does not depend
 * on its block. */
static inline __attribute__((always_inline)) void score_block(int kv_type, int R, float *s, int64_t n, const float *q,
                                                              int64_t r0, int64_t rows_end, const char *const *krows,
                                                              int64_t c0, int64_t d) {
  const int K = LANES / R;
  const float *qr[LANES];
  const char *kr[LANES];
  for (int r = 0; r < R; r++) qr[r] = r0 + r < rows_end ? q + (r0 + r) * d : zero_row;
  for (int k = 0; k < K; k++) kr[k] = c0 + k < n ? krows[c0 + k] : (const char *)zero_row;
  f32v acc[LANES];
  for (int i = 0; i < LANES; i++) acc[i] = (f32v){0};
  int64_t x = 0;
  for (; x + LANES <= d; x += LANES) {
    f32v kv[LANES];
    for (int k = 0; k < K; k++) kv[k] = kv_lanes(kv_type, kr[k], x);
    for (int r = 0; r < R; r++) {
      const f32v qx = loadv(qr[r] + x);
      for (int k = 0; k < K; k++) acc[key_slot[r * K + k]] += qx * kv[k];
    }
  }
  f32v sums = key_sums(acc);
  for (int r = 0; x < d && r < R; r++)
    for (int k = 0; k < K; k++) {
      float tail = 0;
      for (int64_t i = x; i < d; i++) tail += qr[r][i] * kv_element(kv_type, kr[k], i);
      sums[r * K + k] += tail;
    }
  for (int r = 0; r < R && r0 + r < rows_end; r++)
    for (int k = 0; k < K && c0 + k < n; k++) s[(r0 + r) * n + c0 + k] = sums[r * K + k];
}

/* s[r * n + c] = q_r . k_c for the rows of q against the n keys at krows[c]. */
static inline __attribute__((always_inline)) void row_scores_typed(int kv_type, float *s, int64_t n, const float *q,
                                                                   int64_t rows, const char *const *krows, int64_t d) {
  const int R = rows >= 4 && BLOCK_ROWS >= 4 ? 4 : rows >= 2 && BLOCK_ROWS >= 2 ? 2 : 1;
  for (int64_t r0 = 0; r0 < rows; r0 += R)
    for (int64_t c0 = 0; c0 < n; c0 += LANES / R)
      if (R == 4)
        score_block(kv_type, 4, s, n, q, r0, rows, krows, c0, d);
      else if (R == 2)
        score_block(kv_type, 2, s, n, q, r0, rows, krows, c0, d);
      else
        score_block(kv_type, 1, s, n, q, r0, rows, krows, c0, d);
}

/* Vectors of a value block in row_values: as many as leave registers for the rows' weights. */
#if LANES == 16
#define VALUE_VECTORS 4
#else
#define VALUE_VECTORS 2
#endif

/* acc[r * d + col] += sum over c < n of p[r * n + c] v_c[col] for columns [col, col + V * LANES)
 * of R rows (4, 2 or 1) from acc, v_c at vrows[c]: the sums kept in registers over the keys, each in
 * the keys' order, as matrix_product's. */
static inline __attribute__((always_inline)) void value_block(int kv_type, float *acc, int64_t d, const float *p,
                                                              int64_t n, const char *const *vrows, int64_t col, int V,
                                                              int R) {
  f32v sum[4][VALUE_VECTORS];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) sum[r][v] = loadv(acc + r * d + col + v * LANES);
  for (int64_t c = 0; c < n; c++) {
    f32v x[VALUE_VECTORS];
    for (int v = 0; v < V; v++) x[v] = kv_lanes(kv_type, vrows[c], col + v * LANES);
    for (int r = 0; r < R; r++) {
      const float w = p[r * n + c];
      for (int v = 0; v < V; v++) sum[r][v] += w * x[v];
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < V; v++) memcpy(acc + r * d + col + v * LANES, &sum[r][v], sizeof sum[r][v]);
}

/* value_block for R rows of 4, 2 or 1, each its own copy (R sizes the registers). */
#define VALUE_BLOCK(R, ...)                                                                                            \
  ((R) == 4 ? value_block(__VA_ARGS__, 4) : (R) == 2 ? value_block(__VA_ARGS__, 2) : value_block(__VA_ARGS__, 1))

static inline __attribute__((always_inline)) void row_values_typed(int kv_type, float *acc, int64_t d, const float *p,
                                                                   int64_t n, int64_t rows, const char *const *vrows) {
  for (int64_t r0 = 0; r0 < rows;) { /* blocks of four rows, then of two, then one */
    const int R = rows - r0 >= 4 ? 4 : rows - r0 >= 2 ? 2 : 1;
    float *a = acc + r0 * d;
    const float *pr = p + r0 * n;
    int64_t col = 0;
    for (; col + VALUE_VECTORS * LANES <= d; col += VALUE_VECTORS * LANES)
      VALUE_BLOCK(R, kv_type, a, d, pr, n, vrows, col, VALUE_VECTORS);
    for (; col + LANES <= d; col += LANES) VALUE_BLOCK(R, kv_type, a, d, pr, n, vrows, col, 1);
    for (int rr = 0; rr < R; rr++)
      for (int64_t cc = col; cc < d; cc++) {
        float sum = a[rr * d + cc];
        for (int64_t c = 0; c < n; c++) sum += pr[rr * n + c] * kv_element(kv_type, vrows[c], cc);
        a[rr * d + cc] = sum;
      }
    r0 += R;
  }
}

/* Each specialised for the element type, so that the conversions are a few instructions inline. */
#define ON_KV_TYPE(call, kv_type, ...)                                                                                 \
  do {                                                                                                                 \
    switch (kv_type) {                                                                                                 \
    case YK_F32: call(YK_F32, __VA_ARGS__); break;                                                                     \
    case YK_F16: call(YK_F16, __VA_ARGS__); break;                                                                     \
    case YK_BF16: call(YK_BF16, __VA_ARGS__); break;                                                                   \
    default: call(YK_E4M3, __VA_ARGS__); break;                                                                        \
    }                                                                                                                  \
  } while (0)

/* The rows of keys [k0, k0 + n) of the tile's kv head, and the next tile's prefetched (as load_keys). */
static void kv_rows(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t k0, int64_t n,
                    const char **rows) {
  prefetch_keys(j, o, t, k0 + n, n);
  rows_from(o, j->kv_elem, t->b, t->g.k0 + k0, t->kvh, n, rows);
}

/* Scores of tiles of fewer rows than this take the keys' rows where they lie (row_scores_typed):
 * transposing the keys costs more than it saves there (decode of a GQA group
 * of four, four rows a tile: 0.7x against four rows a key at once; without GQA, one row: 0.6x). */
#define TRANSPOSED_KEYS_FROM_ROWS 8
/* The same for a decode's tiles, whose keys are read once for every row of the group: float16
 * GQA-8 1.23x and GQA-16 1.08x in place, GQA-32 0.87x. */
#define TRANSPOSED_DECODE_FROM_ROWS 32

/* The tiles of a call: rows_a_tile rows a query tile, the group's heads in as few chunks as fit,
 * and keys_a_tile keys a key tile; a decode's tasks are splits (decode_splits) times as many. With
 * fewer tasks than threads (a short batch-1 decode) a tile takes fewer heads, down to one: more
 * reads of each key, more threads reading. Only the heads change
 * with the thread count, never the tokens, the keys or the transposition, so each row's sums keep
 * one order and results do not depend on the thread count. */
static attn_job make_job(const yk_attention_shape *s, int64_t rows_a_tile, int64_t keys_a_tile, int threads,
                         int64_t splits) {
  attn_job j = {.s = s, .splits = splits};
  j.elem = (int64_t)yk_dtype_size((yk_dtype)s->dtype);
  j.kv_elem = s->kv_float8 ? 1 : j.elem;
  j.kv_type = s->kv_float8 ? YK_E4M3 : s->dtype;
  j.score_scale = s->kv_float8 ? s->scale * s->k_scale * 0x1p8f : s->scale; /* exact: powers of two */
  j.out_scale = s->kv_float8 ? s->v_scale * 0x1p8f : 1.f;
  j.group = s->q_heads / s->kv_heads;
  j.keys = keys_a_tile;
  j.whole_heads = min64(j.group, rows_a_tile);
  j.whole_chunks = (j.group + j.whole_heads - 1) / j.whole_heads;
  j.tokens = rows_a_tile / j.whole_heads;
  j.most_tokens = longest(s, 0);
  j.tiles = (j.most_tokens + j.tokens - 1) / j.tokens;
  j.transposed = min64(j.tokens, j.most_tokens) * j.whole_heads >=
                 (j.most_tokens == 1 ? TRANSPOSED_DECODE_FROM_ROWS : TRANSPOSED_KEYS_FROM_ROWS);
  j.heads = j.whole_heads;
  for (;;) {
    j.chunks = (j.group + j.heads - 1) / j.heads;
    if (j.heads == 1 || s->batch * s->kv_heads * j.chunks * j.tiles * splits >= threads) break;
    j.heads = (j.heads + 1) / 2;
  }
  j.kv_a_tile = 1, j.kv_tiles = s->kv_heads;
  return j;
}

/* One query token a sequence (decode), whole groups a tile: a tile takes the groups of as many kv
 * heads as its rows hold (fewer while a thread would go without a task), and its walk loads each key
 * tile of every one of them in turn. A token's heads lie side by side (2 KB at 8 heads of 128
 * float16s); a tile of one kv head read a 256-byte slice of each token's block, and its rows waited
 * on memory whatever was prefetched (145 ns a key row, 88 from L3: float16 GQA-4 on one thread of
 * the 2-core CI VM). Read a block at a time: float16 decode 1.09-1.40x on one thread and 1.25-1.30x
 * on two, float32 1.06-1.22x (bench/results/2026-12-05-cpu-session21.md). A row's sums do not
 * depend on its tile, so the results stay the same bytes. */
static void decode_tiles(attn_job *j, int64_t rows_a_tile, int threads) {
  const yk_attention_shape *s = j->s;
  if (j->most_tokens != 1 || j->heads != j->group || j->chunks != 1) return;
  int64_t kv = min64(s->kv_heads, rows_a_tile / j->group);
  while (kv > 1 && s->batch * ((s->kv_heads + kv - 1) / kv) * j->splits < threads) kv = (kv + 1) / 2;
  j->kv_a_tile = kv > 1 ? kv : 1;
  j->kv_tiles = (s->kv_heads + j->kv_a_tile - 1) / j->kv_a_tile;
}

static int64_t query_tasks(const attn_job *j) { return j->s->batch * j->kv_tiles * j->chunks * j->tiles; }

/* Rows [r0, r0 + count) of a tile against keys [k0, k0 + n), their scores ld apart: each row's
 * probabilities in place of its scores, 0 for the keys it does not see; its output (acc, head_dim
 * floats a row) rescaled to the new maximum, its running maximum m and sum l updated. */
static void softmax_rows(const attn_job *j, const query_tile *t, float *scores, int64_t ld, int64_t r0, int64_t count,
                         int64_t k0, int64_t n, float *m, float *l, float *acc) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < count; r++) {
    const int64_t row = r0 + r, seen = min64(n, keys_seen(j->s, &t->g, row_token(t, row)) - k0);
    float *score = scores + r * ld, top = m[row];
    /* scaled, and the maximum: by vectors, lane by lane as one by one (max ignores NaN either way) */
    int64_t c = 0;
    if (seen >= LANES) {
      f32v most = (f32v){0} + top;
      for (; c + LANES <= seen; c += LANES) {
        const f32v x = loadv(score + c) * j->score_scale;
        memcpy(score + c, &x, sizeof x);
        most = pick(x > most, x, most);
      }
      for (int i = 0; i < LANES; i++)
        if (most[i] > top) top = most[i];
    }
    for (; c < seen; c++) {
      score[c] *= j->score_scale;
      if (score[c] > top) top = score[c];
    }
    if (seen <= 0 || top == -INFINITY) {
      memset(score, 0, (size_t)n * sizeof *score);
      continue;
    }
    const float rescale = expf(m[row] - top); /* 0 for the first tile a row sees */
    if (rescale != 1.f) scale_row(acc + row * d, rescale, d);
    f32v sums = {0}; /* lane by lane, the lanes added once at the end (a sum a vector cost as much as its exp) */
    for (c = 0; c + LANES <= seen; c += LANES) {
      const f32v e = expv(loadv(score + c) - top);
      memcpy(score + c, &e, sizeof e);
      sums += e;
    }
    float sum = lane_sum(sums);
    for (; c < seen; c++) sum += score[c] = expf(score[c] - top);
    for (; c < n; c++) score[c] = 0;
    l[row] = l[row] * rescale + sum;
    m[row] = top;
  }
}

/* A tile's outputs and lse from its rows' sums; l is 0 only for a row that saw no key: out 0, lse
 * -inf. */
static void finish_rows(const attn_job *j, const query_tile *t, float *acc, const float *m, const float *l) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < t->rows; r++) {
    scale_row(acc + r * d, l[r] > 0 ? j->out_scale / l[r] : 0.f, d);
    if (j->lse.data) *lse_at(j, t, r) = l[r] > 0 ? m[r] + logf(l[r]) : -INFINITY;
  }
  store_tile(j, &j->out, t, acc);
}

#if defined(YK_CPU_BUILD_AVX512) && defined(__AMX_BF16__)
#include "cpu_fallback/attention_amx.h"
#endif

/* Keys [kb, ke) of a tile into its running state: acc (rows x head_dim, not yet divided by l), m, l. */
static void attend_keys(const attn_job *j, const query_tile *t, const float *q, int64_t kb, int64_t ke, float *acc,
                        float *m, float *l, float *kt, float *vt, float *key, float *scores) {
  const int64_t d = j->s->head_dim, bn = j->keys;
  const int64_t group_rows = t->rows / t->kv_count; /* a kv head's rows: all of them, or one token's group */
  for (int64_t k0 = kb; k0 < ke; k0 += bn) {
    const int64_t n = min64(bn, ke - k0);
    for (int64_t hk = 0; hk < t->kv_count; hk++) {
      query_tile h = *t; /* the kv head whose keys the loaders read */
      h.kvh = t->kvh + hk;
      const int64_t r0 = hk * group_rows;
      if (!j->transposed) { /* keys and values where they lie */
        const char *krows[MAX_TILE_ROWS], *vrows[MAX_TILE_ROWS];
        kv_rows(j, &j->k, &h, k0, n, krows);
        kv_rows(j, &j->v, &h, k0, n, vrows);
        ON_KV_TYPE(row_scores_typed, j->kv_type, scores, n, q + r0 * d, group_rows, krows, d);
        softmax_rows(j, t, scores, n, r0, group_rows, k0, n, m, l, acc);
        ON_KV_TYPE(row_values_typed, j->kv_type, acc + r0 * d, d, scores, n, group_rows, vrows); /* acc += P V */
        continue;
      }
      int64_t ldv;
      load_keys(j, &j->k, &h, k0, n, 1, kt, key);
      const float *values = value_rows(j, &j->v, &h, k0, n, vt, &ldv);
      matrix_product(scores, n, q + r0 * d, d, 1, kt, n, group_rows, n, d, 0); /* S */
      softmax_rows(j, t, scores, n, r0, group_rows, k0, n, m, l, acc);
      matrix_product(acc + r0 * d, d, scores, n, 1, values, ldv, group_rows, d, n, 1); /* acc += P V */
    }
  }
}

static void fresh_state(int64_t rows, int64_t d, float *acc, float *m, float *l) {
  memset(acc, 0, (size_t)(rows * d) * sizeof *acc);
  for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
}

/* The running state (acc, m, l) of rows over earlier keys and a partial one (pacc, pm, pl) over the
 * next stretch, into the running one: both rescaled to the larger maximum and added. A state of
 * no keys (m -inf) weighs 0 and is not read. */
static void fold_state(int64_t rows, int64_t d, float *acc, float *m, float *l, const float *pacc, const float *pm,
                       const float *pl) {
  for (int64_t r = 0; r < rows; r++) {
    const float top = pm[r] > m[r] ? pm[r] : m[r];
    if (top == -INFINITY) continue;
    const float a = m[r] == -INFINITY ? 0.f : expf(m[r] - top), b = pm[r] == -INFINITY ? 0.f : expf(pm[r] - top);
    float *x = acc + r * d;
    const float *y = pacc + r * d;
    if (b == 0.f)
      scale_row(x, a, d);
    else
      for (int64_t i = 0; i < d; i++) x[i] = x[i] * a + y[i] * b;
    l[r] = l[r] * a + pl[r] * b;
    m[r] = top;
  }
}

/* Decode splits a sequence's keys into stretches of this many, each attended from a fresh state
 * and folded in order (fold_state), whatever the thread count: where the tiles are fewer than the
 * threads (a batch-1 decode) each (tile, stretch) is a task of its own and a second pass folds, so
 * that every thread reads keys of its own, rather than more threads reading the same keys for
 * fewer heads each; elsewhere one task folds its stretches as it goes. Both give the same bytes. */
#define DECODE_SPLIT_KEYS 1024

static int64_t decode_splits(const yk_attention_shape *s) {
  if (longest(s, 0) != 1) return 1;
  const int64_t keys = longest(s, 1);
  return keys > DECODE_SPLIT_KEYS ? (keys + DECODE_SPLIT_KEYS - 1) / DECODE_SPLIT_KEYS : 1;
}

static float *partial_slot(const attn_job *j, int64_t tile_task, int64_t split) {
  return j->partials + (tile_task * j->splits + split) * j->slot_floats;
}

static void forward_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim;
  float q[TILE_FLOATS], acc[TILE_FLOATS], kt[TILE_FLOATS], vt[TILE_FLOATS], key[MAX_HEAD_DIM];
  float scores[MAX_TILE_ROWS * MAX_TILE_ROWS], m[MAX_TILE_ROWS], l[MAX_TILE_ROWS];
  float run[TILE_FLOATS], run_m[MAX_TILE_ROWS], run_l[MAX_TILE_ROWS]; /* a split decode's folded state */
  for (int64_t task = begin; task < end; task++) {
    const int64_t tile_task = j->partials ? task / j->splits : task;
    query_tile t;
    if (!query_task(j, tile_task, &t)) continue;
    const int64_t rows = t.rows, keys = keys_seen(s, &t.g, t.t0 + t.tokens - 1); /* the last token sees the most */
    load_tile(j, &j->q, &t, q);
    if (j->splits == 1) {
      fresh_state(rows, d, acc, m, l);
      attend_keys(j, &t, q, 0, keys, acc, m, l, kt, vt, key, scores);
      finish_rows(j, &t, acc, m, l);
      continue;
    }
    if (j->partials) { /* one stretch: its state to its slot, for fold_tiles */
      const int64_t split = task % j->splits, kb = split * DECODE_SPLIT_KEYS;
      if (kb >= keys) continue;
      float *slot = partial_slot(j, tile_task, split);
      fresh_state(rows, d, slot, slot + rows * d, slot + rows * (d + 1));
      attend_keys(j, &t, q, kb, min64(kb + DECODE_SPLIT_KEYS, keys), slot, slot + rows * d, slot + rows * (d + 1), kt,
                  vt, key, scores);
      continue;
    }
    fresh_state(rows, d, run, run_m, run_l);
    for (int64_t kb = 0; kb < keys; kb += DECODE_SPLIT_KEYS) {
      fresh_state(rows, d, acc, m, l);
      attend_keys(j, &t, q, kb, min64(kb + DECODE_SPLIT_KEYS, keys), acc, m, l, kt, vt, key, scores);
      fold_state(rows, d, run, run_m, run_l, acc, m, l);
    }
    finish_rows(j, &t, run, run_m, run_l);
  }
}

/* A split decode's second pass: each tile's stretches folded in order. */
static void fold_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const int64_t d = j->s->head_dim;
  float run[TILE_FLOATS], run_m[MAX_TILE_ROWS], run_l[MAX_TILE_ROWS];
  for (int64_t task = begin; task < end; task++) {
    query_tile t;
    if (!query_task(j, task, &t)) continue;
    const int64_t rows = t.rows, keys = keys_seen(j->s, &t.g, t.t0 + t.tokens - 1);
    fresh_state(rows, d, run, run_m, run_l);
    for (int64_t split = 0; split * DECODE_SPLIT_KEYS < keys; split++) {
      const float *slot = partial_slot(j, task, split);
      fold_state(rows, d, run, run_m, run_l, slot, slot + rows * d, slot + rows * (d + 1));
    }
    finish_rows(j, &t, run, run_m, run_l);
  }
}

void ISA_NAME(yk_cpu_attention_forward)(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand q,
                                        yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                                        yk_attn_operand lse) {
  if (shape->head_dim < 1 || shape->head_dim > MAX_HEAD_DIM || shape->kv_heads < 1) return;
  const int64_t rows = tile_rows(shape->head_dim, TILE_FLOATS);
  attn_job j = make_job(shape, rows, rows, pool->threads, decode_splits(shape));
  yk_range_fn tiles = forward_tiles;
#if defined(YK_CPU_BUILD_AVX512) && defined(__AMX_BF16__)
  if (amx_forward_fits(pool, &j)) { /* its own tile sizes; never a decode */
    j = make_job(shape, amx_rows(shape->head_dim), amx_keys(shape->head_dim), pool->threads, 1);
    tiles = forward_tiles_amx;
  }
#endif
  if (tiles == forward_tiles) decode_tiles(&j, rows, pool->threads);
  j.q = q, j.k = k, j.v = v, j.out = out, j.lse = lse;
  const int64_t tasks = query_tasks(&j);
  if (j.splits > 1 && tasks < pool->threads) { /* a task a stretch, if its states find room (else folded as they go) */
    j.slot_floats = rows * (shape->head_dim + 2);
    j.partials = malloc((size_t)(tasks * j.splits * j.slot_floats) * sizeof *j.partials);
  }
  if (!j.partials) {
    yk_parallel_for(pool, tasks, 1, tiles, &j);
    return;
  }
  yk_parallel_for(pool, tasks * j.splits, 1, forward_tiles, &j);
  yk_parallel_for(pool, tasks, 1, fold_tiles, &j);
  free(j.partials);
}

/* ---- backward ----
 * P = exp(scale S - lse) recomputed from the forward's lse with S = Q K^T; D_i = dout_i . out_i;
 * dS = P (dP - D) with dP = dO V^T; dq = scale dS K, dk = scale dS^T Q, dv = P^T dO. Pass one owns
 * query tiles (dq), pass two owns key tiles of a kv head (dk, dv) and walks the query tiles of
 * every q head of its group in a fixed order, so each output has one writer and a fixed order of
 * summation. Both compute S and dP as the forward computes S (keys and values transposed, every
 * tile: see make_job), so a row's sums do not depend on the tiles. Key tiles hold half the
 * forward's keys, as each pass keeps six tiles and two score blocks on the stack (whole ones:
 * 132 KiB, and 0-10% faster). */
#define KEY_TILE_FLOATS (TILE_FLOATS / 2)
#define MAX_KEY_TILE_ROWS (KEY_TILE_FLOATS / 64)

/* A query tile's D (from dout and out, out loaded a row at a time through scratch) and lse. */
static void tile_delta_lse(const attn_job *j, const query_tile *t, const float *dout, float *delta, float *lse,
                           float *scratch) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < t->rows; r++) {
    yk_load_floats(j->s->dtype, row_at(&j->out, j->elem, t->b, t->g.q0 + row_token(t, r), row_head(t, r)), scratch, d);
    delta[r] = dot(dout + r * d, scratch, d);
    lse[r] = *lse_at(j, t, r);
  }
}

/* From S in sp and dP in ds, a tile's rows against keys [k0, k0 + n): P in place of S and dS in
 * place of dP, both 0 where a row does not see the key or saw none in the forward (lse -inf, where
 * exp(-inf - -inf) would be NaN). */
static void probs_and_grads(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, float *sp, float *ds,
                            const float *lse, const float *delta) {
  const float scale = j->s->scale;
  for (int64_t r = 0; r < t->rows; r++) {
    float *p = sp + r * n, *g = ds + r * n;
    int64_t seen = lse[r] == -INFINITY ? 0 : min64(n, keys_seen(j->s, &t->g, row_token(t, r)) - k0), c = 0;
    for (; c + LANES <= seen; c += LANES) {
      const f32v pr = expv(loadv(p + c) * scale - lse[r]), dsr = pr * (loadv(g + c) - delta[r]);
      memcpy(p + c, &pr, sizeof pr);
      memcpy(g + c, &dsr, sizeof dsr);
    }
    for (; c < seen; c++) {
      p[c] = expf(p[c] * scale - lse[r]);
      g[c] = p[c] * (g[c] - delta[r]);
    }
    for (c = seen > 0 ? seen : 0; c < n; c++) p[c] = g[c] = 0;
  }
}

static void backward_dq_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->keys;
  float q[TILE_FLOATS], dout[TILE_FLOATS], dq[TILE_FLOATS];
  float kt[KEY_TILE_FLOATS], k_rows[KEY_TILE_FLOATS], vt[KEY_TILE_FLOATS], row[MAX_HEAD_DIM];
  float sp[MAX_TILE_ROWS * MAX_KEY_TILE_ROWS], ds[MAX_TILE_ROWS * MAX_KEY_TILE_ROWS];
  float lse[MAX_TILE_ROWS], delta[MAX_TILE_ROWS];
  for (int64_t task = begin; task < end; task++) {
    query_tile t;
    if (!query_task(j, task, &t)) continue;
    load_tile(j, &j->q, &t, q);
    load_tile(j, &j->dout, &t, dout);
    tile_delta_lse(j, &t, dout, delta, lse, row);
    memset(dq, 0, (size_t)(t.rows * d) * sizeof *dq);
    const int64_t keys = keys_seen(s, &t.g, t.t0 + t.tokens - 1);
    for (int64_t k0 = 0; k0 < keys; k0 += bn) {
      const int64_t n = min64(bn, keys - k0);
      load_keys(j, &j->k, &t, k0, n, 0, k_rows, NULL);
      transpose_rows(k_rows, n, d, kt);
      load_keys(j, &j->v, &t, k0, n, 1, vt, row);
      matrix_product(sp, n, q, d, 1, kt, n, t.rows, n, d, 0);    /* S */
      matrix_product(ds, n, dout, d, 1, vt, n, t.rows, n, d, 0); /* dP */
      probs_and_grads(j, &t, k0, n, sp, ds, lse, delta);
      matrix_product(dq, d, ds, n, 1, k_rows, d, t.rows, d, n, 1); /* dq += dS K */
    }
    scale_row(dq, s->scale, t.rows * d);
    store_tile(j, &j->dq, &t, dq);
  }
}

/* Tasks are (sequence, kv head, key tile); each walks every chunk of its group's heads, and the
 * query tiles from the first that sees its keys, in order. */
static void backward_dkdv_tiles(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->keys, key_tiles = (longest(s, 1) + bn - 1) / bn;
  float kt[KEY_TILE_FLOATS], vt[KEY_TILE_FLOATS], dk[KEY_TILE_FLOATS], dv[KEY_TILE_FLOATS];
  float q[TILE_FLOATS], dout[TILE_FLOATS], row[MAX_HEAD_DIM];
  float sp[MAX_TILE_ROWS * MAX_KEY_TILE_ROWS], ds[MAX_TILE_ROWS * MAX_KEY_TILE_ROWS];
  float lse[MAX_TILE_ROWS], delta[MAX_TILE_ROWS];
  for (int64_t task = begin; task < end; task++) {
    const int64_t j0 = task % key_tiles * bn, kvh = task / key_tiles % s->kv_heads, b = task / key_tiles / s->kv_heads;
    query_tile t;
    query_tile_of(j, b, kvh, 0, j->whole_heads, 0, &t); /* the sequence, for the keys */
    if (j0 >= t.g.len_k) continue;
    const int64_t n = min64(bn, t.g.len_k - j0);
    load_keys(j, &j->k, &t, j0, n, 1, kt, row);
    load_keys(j, &j->v, &t, j0, n, 1, vt, row);
    memset(dk, 0, (size_t)(n * d) * sizeof *dk);
    memset(dv, 0, (size_t)(n * d) * sizeof *dv);
    /* the first query that sees key j0: i + len_k - len_q >= j0 */
    const int64_t first = s->causal ? j0 - (t.g.len_k - t.g.len_q) : 0;
    for (int64_t c = 0; c < j->whole_chunks; c++)
      for (int64_t t0 = first > 0 ? first : 0; query_tile_of(j, b, kvh, c, j->whole_heads, t0, &t); t0 += j->tokens) {
        load_tile(j, &j->q, &t, q);
        load_tile(j, &j->dout, &t, dout);
        tile_delta_lse(j, &t, dout, delta, lse, row);
        matrix_product(sp, n, q, d, 1, kt, n, t.rows, n, d, 0);    /* S */
        matrix_product(ds, n, dout, d, 1, vt, n, t.rows, n, d, 0); /* dP */
        probs_and_grads(j, &t, j0, n, sp, ds, lse, delta);
        matrix_product(dv, d, sp, 1, n, dout, d, n, d, t.rows, 1); /* dv += P^T dO */
        matrix_product(dk, d, ds, 1, n, q, d, n, d, t.rows, 1);    /* dk += dS^T Q */
      }
    scale_row(dk, s->scale, n * d);
    for (int64_t c = 0; c < n; c++) {
      yk_store_floats(s->dtype, row_at(&j->dk, j->elem, b, t.g.k0 + j0 + c, kvh), dk + c * d, d);
      yk_store_floats(s->dtype, row_at(&j->dv, j->elem, b, t.g.k0 + j0 + c, kvh), dv + c * d, d);
    }
  }
}

void ISA_NAME(yk_cpu_attention_backward)(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand dout,
                                         yk_attn_operand q, yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                                         yk_attn_operand lse, yk_attn_operand dq, yk_attn_operand dk,
                                         yk_attn_operand dv) {
  if (shape->head_dim < 1 || shape->head_dim > MAX_HEAD_DIM || shape->kv_heads < 1) return;
  attn_job j = make_job(shape, tile_rows(shape->head_dim, TILE_FLOATS), tile_rows(shape->head_dim, KEY_TILE_FLOATS),
                        pool->threads, 1);
  j.transposed = 1; /* the backward's scores always take the keys transposed */
  j.q = q, j.k = k, j.v = v, j.out = out, j.lse = lse, j.dout = dout, j.dq = dq, j.dk = dk, j.dv = dv;
  yk_parallel_for(pool, query_tasks(&j), 1, backward_dq_tiles, &j);
  yk_parallel_for(pool, shape->batch * shape->kv_heads * ((longest(shape, 1) + j.keys - 1) / j.keys), 1,
                  backward_dkdv_tiles, &j);
}

#if !defined(YK_CPU_BUILD_AVX2) && !defined(YK_CPU_BUILD_AVX512) /* the rest once, in the plain build */

#ifdef YK_CPU_HAS_X86_BUILDS
#define ON_ISA(pool, call)                                                                                             \
  ((pool)->isa >= YK_CPU_AVX512 ? call##_avx512 : (pool)->isa == YK_CPU_AVX2 ? call##_avx2 : call##_plain)
#else
#define ON_ISA(pool, call) call##_plain
#endif

void yk_cpu_attention_forward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand q,
                              yk_attn_operand k, yk_attn_operand v, yk_attn_operand out, yk_attn_operand lse) {
  ON_ISA(pool, yk_cpu_attention_forward)(pool, shape, q, k, v, out, lse);
}

void yk_cpu_kv_row_floats(const yk_thread_pool *pool, int kv_type, const void *row, float *dst, int64_t n) {
  (void)pool; /* (where there are no x86-64 builds) */
  ON_ISA(pool, yk_cpu_kv_row_floats)(kv_type, row, dst, n);
}

void yk_cpu_attention_backward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand dout,
                               yk_attn_operand q, yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                               yk_attn_operand lse, yk_attn_operand dq, yk_attn_operand dk, yk_attn_operand dv) {
  ON_ISA(pool, yk_cpu_attention_backward)(pool, shape, dout, q, k, v, out, lse, dq, dk, dv);
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

#endif /* the plain build */
