/* Attention's forward on the CPU (the prefill's and the decode's fallback): query tiles against
 * key tiles with an online softmax, each key and value converted as the products load it where a
 * tile has few rows, a split decode's stretches folded in order. attention_tiles.h says how a call
 * is cut into tiles, attention_vectors.h what the products are made of.
 *
 * No pass takes more than about 110 KiB of a thread's stack whatever head_dim is (on AMX tiles:
 * its buffers, 106 KiB at most; the backward's passes about 100, attention_backward.c).
 * Nothing is allocated but a split decode's partial states (see DECODE_SPLIT_KEYS), and where they
 * find no room the same stretches are folded as they go, so a call that cannot report an error
 * cannot fail half-way either. */
#include "cpu_fallback/attention.h"

#include "cpu_fallback/attention_tiles.h"

void ISA_NAME(yk_cpu_kv_row_floats)(int kv_type, const void *row, float *dst, int64_t n) {
  kv_row_floats(kv_type, row, dst, n);
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

#if !defined(YK_CPU_BUILD_AVX2) && !defined(YK_CPU_BUILD_AVX512) /* the dispatch once, in the plain build */

void yk_cpu_attention_forward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand q,
                              yk_attn_operand k, yk_attn_operand v, yk_attn_operand out, yk_attn_operand lse) {
  ON_ISA(pool, yk_cpu_attention_forward)(pool, shape, q, k, v, out, lse);
}

void yk_cpu_kv_row_floats(const yk_thread_pool *pool, int kv_type, const void *row, float *dst, int64_t n) {
  (void)pool; /* (where there are no x86-64 builds) */
  ON_ISA(pool, yk_cpu_kv_row_floats)(kv_type, row, dst, n);
}

#endif /* the plain build */
