/* The forward's products on AMX tiles for bfloat16 (included by attention.c in its AVX-512 build,
 * compiled with AMX-TILE and AMX-BF16; run where the CPU has both, yk_thread_pool.isa YK_CPU_AMX,
 * and the OS lets the process use them, yk_cpu_amx_ready).
 *
 * A tile register holds 16 rows of 64 bytes; TDPBF16PS adds A (16 rows x 32 bfloat16) times B (32 x
 * 16, stored as 16 rows of 16 pairs: "VNNI", a row holding two consecutive k's of each column) into
 * C (16 x 16 float32), each product exact and each sum rounded to float32, as the AVX-512 build's
 * multiply-adds are. S = Q K^T: A is Q's rows, B is K transposed as pairs of dims (K's rows read as
 * 32-bit words, then a 16 x 16 transpose of words). O += P V: A is P, which is float32, as two
 * bfloat16 parts (hi its rounding, lo the rounding of the rest: 16 bits of P, 2^-17 of it lost
 * where the AVX-512 build loses 2^-24); B is V's rows in pairs. Every tile is padded to whole
 * tiles with zeros: rows to 16, dims and keys to 32 (a zero key scores 0 and gets P 0), so one
 * configuration serves every tile and no product reads past its operands.
 *
 * A row's sums do not depend on its neighbours or on the tile's row count (each element of C sums
 * its own k's in order), so results stay the same bytes at every thread count. */
#include <immintrin.h>

#define AMX_ROWS 16 /* rows of a tile, keys of a score tile, columns of an output tile */
#define AMX_K 32    /* bfloat16 a row of A: dims of a score product, keys of P V's */

static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

/* Keys a key tile: 128 where a padded head_dim is 128 or less, else 64 (a multiple of 32 either
 * way, so keys pad no further). Larger tiles than the vector builds' (32 at head_dim 128): AMX makes
 * the products cheap, so what is left a key tile (O's rescale, its tiles' loads and stores, a row
 * maximum's exp) is spread over more keys. */
static int64_t amx_keys(int64_t head_dim) { return round_up(head_dim, AMX_K) <= 128 ? 128 : 64; }

/* A query tile of R rows pads to R' = R rounded up to 16 and its dims to D' = head_dim rounded up to
 * 32. A thread's buffers, carved from one array on its stack: Q (R' x D' bfloat16), K as pairs of
 * dims (D' / 2 x keys words), V as pairs of keys (keys / 2 x head_dim words), scores (R' x keys
 * floats, P's bfloat16 parts written over them), O (R' x head_dim floats), and 16 rows of D'
 * bfloat16 for float8 rows on their way (carved whatever the cache's type, so that a float8 cache
 * and a bfloat16 one of the same shape take the same path). The largest call (head dim 112: 48 x
 * 128, 64 x 128, 64 x 112, 48 x 128, 48 x 112, 16 x 128) takes 121 KiB. */
#define AMX_ARENA_BYTES (124 * 1024)
#define AMX_MAX_DIM 256

typedef struct amx_buffers {
  uint16_t *q;
  uint32_t *k, *v;
  float *scores, *acc;
  uint16_t *stage;
} amx_buffers;

/* Carves the buffers for tiles of rp padded rows from arena (NULL in it: sizes only); returns the
 * bytes taken, each buffer 64-byte aligned. */
static size_t amx_carve(int64_t rp, int64_t head_dim, unsigned char *arena, amx_buffers *b) {
  const int64_t dp = round_up(head_dim, AMX_K), keys = amx_keys(head_dim);
  const size_t sizes[6] = {(size_t)(rp * dp) * 2,   (size_t)(dp / 2 * keys) * 4, (size_t)(keys / 2 * head_dim) * 4,
                           (size_t)(rp * keys) * 4, (size_t)(rp * head_dim) * 4, (size_t)(AMX_ROWS * dp) * 2};
  void *at[6];
  size_t used = 0;
  for (int i = 0; i < 6; i++) {
    at[i] = arena ? arena + used : NULL;
    used += (sizes[i] + 63) / 64 * 64;
  }
  if (b) *b = (amx_buffers){at[0], at[1], at[2], at[3], at[4], at[5]};
  return used;
}

/* Where the AMX products take the forward: bfloat16 queries, keys and values of bfloat16 or float8
 * (whose values times 2^-8 are bfloat16s exactly: a float8 cache computes as a bfloat16 one holding
 * its values), head_dim a multiple of 16 up to 256, keys transposed (tiles of 8 rows or more) and
 * more than one query token (a decode's tiles, whose kv heads a tile holds change with the thread
 * count, keep the vector build's products, and its memory bound). Decided for the call, never per
 * tile. */
static int amx_forward_fits(const yk_thread_pool *pool, const attn_job *j) {
  const int64_t d = j->s->head_dim;
  if (pool->isa != YK_CPU_AMX || j->s->dtype != YK_BF16 || (j->kv_type != YK_BF16 && j->kv_type != YK_E4M3) || d % 16 ||
      d > AMX_MAX_DIM || !j->transposed || j->most_tokens < 2 ||
      amx_carve(round_up(j->tokens * j->whole_heads, AMX_ROWS), d, NULL, NULL) > AMX_ARENA_BYTES)
    return 0;
  return yk_cpu_amx_ready(); /* last: the OS is asked only by a call that would use the tiles */
}

/* Palette 1, all eight tiles 16 rows of 64 bytes. */
static void amx_configure(void) {
  struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } config = {.palette = 1};
  for (int i = 0; i < 8; i++) config.colsb[i] = 64, config.rows[i] = AMX_ROWS;
  _tile_loadconfig(&config);
}

/* A float's bfloat16 rounded to nearest even (P is finite: no NaN to keep). */
static inline __m512i bf16_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
}

/* Each of rows rows of P (keys floats, n of them set) rewritten in place as its bfloat16 parts: hi
 * in the row's first 2 x keys bytes, lo in the next, zeros past n (the same keys bytes a row, so A
 * tiles read hi and lo keys * 4 bytes apart). hi goes behind the floats being read; lo waits in
 * a row of its own until the row is read. */
static void amx_split_probs(float *p, int64_t keys, int64_t rows, int64_t n) {
  uint16_t lo[128];
  for (int64_t r = 0; r < rows; r++) {
    float *row = p + r * keys;
    uint16_t *hi = (uint16_t *)(void *)row;
    int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
      const __m512 x = _mm512_loadu_ps(row + c);
      const __m512i xh = bf16_bits(x);
      const __m512 rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(xh, 16))); /* exact */
      _mm256_storeu_si256((__m256i *)(void *)(hi + c), _mm512_cvtepi32_epi16(xh));
      _mm256_storeu_si256((__m256i *)(void *)(lo + c), _mm512_cvtepi32_epi16(bf16_bits(rest)));
    }
    for (; c < n; c++) {
      const float x = row[c];
      const __m512i xh = bf16_bits(_mm512_set1_ps(x));
      const float rest = x - _mm512_cvtss_f32(_mm512_castsi512_ps(_mm512_slli_epi32(xh, 16)));
      hi[c] = (uint16_t)_mm512_cvtsi512_si32(xh);
      lo[c] = (uint16_t)_mm512_cvtsi512_si32(bf16_bits(_mm512_set1_ps(rest)));
    }
    memset(hi + n, 0, (size_t)(keys - n) * sizeof *hi);
    memset(lo + n, 0, (size_t)(keys - n) * sizeof *lo);
    memcpy(hi + keys, lo, (size_t)keys * sizeof *lo);
  }
}

/* Row `key` of the tile's kv head in o as bfloat16: where it is, or a float8 row's values times 2^-8
 * (bfloat16s exactly: the top halves of their floats) written into stage. */
static const uint16_t *amx_row(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t key,
                               uint16_t *stage) {
  const char *row = row_at(o, j->kv_elem, t->b, t->g.k0 + key, t->kvh);
  if (j->kv_type == YK_BF16) return (const uint16_t *)(const void *)row;
  float values[AMX_MAX_DIM];
  const int64_t d = j->s->head_dim;
  ISA_NAME(yk_cpu_kv_row_floats)(j->kv_type, row, values, d);
  for (int64_t i = 0; i < d; i += 16)
    _mm256_storeu_si256((__m256i *)(void *)(stage + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(values + i)), 16)));
  return stage;
}

/* Keys [k0, k0 + n) of the tile's kv head as B of the score products: word w (dims 2w, 2w + 1) of
 * key c at kb[w * np + c], np = n padded to 16 keys, dp / 2 words (dp: head_dim padded to 32);
 * zeros for keys past n and dims past head_dim. stage: 16 rows of dp for float8 keys. */
static void amx_load_keys(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, int64_t np, int64_t dp,
                          uint32_t *kb, uint16_t *stage) {
  static const float zeros[AMX_MAX_DIM / 2];
  const int64_t words = j->s->head_dim / 2;
  prefetch_keys(j, &j->k, t, k0 + n, n);
  for (int64_t c0 = 0; c0 < np; c0 += LANES) {
    const float *from[LANES]; /* rows of words, read as floats: the transpose moves bits only */
    for (int r = 0; r < LANES; r++)
      from[r] = c0 + r < n ? (const float *)(const void *)amx_row(j, &j->k, t, k0 + c0 + r, stage + r * dp) : zeros;
    int64_t w = 0;
    for (; w + LANES <= words; w += LANES) transpose_lanes(from, w, (float *)(void *)(kb + w * np + c0), np);
    for (; w < words; w++)
      for (int r = 0; r < LANES; r++) memcpy(kb + w * np + c0 + r, from[r] + w, sizeof *kb);
  }
  memset(kb + words * np, 0, (size_t)((dp / 2 - words) * np) * sizeof *kb);
}

/* Values [k0, k0 + n) as B of P V: the pair of keys 2p, 2p + 1 in row p, dim i of the lower key in
 * the low half of word vb[p * head_dim + i]; kp / 2 rows, zeros past n. stage: two rows of
 * head_dim for float8 values. */
static void amx_load_values(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, int64_t kp, uint32_t *vb,
                            uint16_t *stage) {
  const int64_t d = j->s->head_dim;
  prefetch_keys(j, &j->v, t, k0 + n, n);
  for (int64_t p = 0; p < kp / 2; p++) {
    uint32_t *row = vb + p * d;
    if (2 * p >= n) {
      memset(row, 0, (size_t)d * sizeof *row);
      continue;
    }
    const uint16_t *even = amx_row(j, &j->v, t, k0 + 2 * p, stage);
    const uint16_t *odd = 2 * p + 1 < n ? amx_row(j, &j->v, t, k0 + 2 * p + 1, stage + d) : NULL;
    for (int64_t i = 0; i < d; i += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(even + i)));
      const __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(odd + i)))
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(row + i, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

/* scores[r * keys + c] = q_r . k_c for the rp padded rows of q (dp bfloat16s a row). Up to four
 * 32-dim steps (head dims to 128) a row block's Q stays in tiles 4-7 across its key blocks; wider
 * rows reload it. */
static void amx_scores(const uint16_t *q, int64_t rp, int64_t dp, const uint32_t *kb, int64_t keys, float *scores) {
  const int64_t steps = dp / AMX_K, ldq = dp * 2, ldk = keys * 4;
  for (int64_t r = 0; r < rp; r += AMX_ROWS) {
    const uint16_t *qr = q + r * dp;
    if (steps <= 4) {
      _tile_loadd(4, qr, ldq);
      if (steps > 1) {
        _tile_loadd(5, qr + AMX_K, ldq);
      }
      if (steps > 2) {
        _tile_loadd(6, qr + 2 * AMX_K, ldq);
      }
      if (steps > 3) {
        _tile_loadd(7, qr + 3 * AMX_K, ldq);
      }
    }
    for (int64_t c = 0; c < keys; c += AMX_ROWS) {
      const uint32_t *kc = kb + c;
      _tile_zero(0);
      if (steps <= 4) {
        _tile_loadd(1, kc, ldk);
        _tile_dpbf16ps(0, 4, 1);
        if (steps > 1) {
          _tile_loadd(2, kc + 16 * keys, ldk);
          _tile_dpbf16ps(0, 5, 2);
        }
        if (steps > 2) {
          _tile_loadd(1, kc + 32 * keys, ldk);
          _tile_dpbf16ps(0, 6, 1);
        }
        if (steps > 3) {
          _tile_loadd(2, kc + 48 * keys, ldk);
          _tile_dpbf16ps(0, 7, 2);
        }
      } else {
        for (int64_t k = 0; k < steps; k++) {
          _tile_loadd(1, qr + k * AMX_K, ldq);
          _tile_loadd(2, kc + k * 16 * keys, ldk);
          _tile_dpbf16ps(0, 1, 2);
        }
      }
      _tile_stored(0, scores + r * keys + c, ldk);
    }
  }
}

/* acc (rp rows of d floats) += (hi + lo) V, P's parts as amx_split_probs left them: four 16-column
 * blocks of a row block at a time in tiles 0-3, each 32-key step adding hi's products, then lo's. */
static void amx_add_pv(float *acc, int64_t rp, int64_t d, const float *p, int64_t keys, const uint32_t *vb) {
  const int64_t lda = keys * 4, ldo = d * 4;
  for (int64_t r = 0; r < rp; r += AMX_ROWS) {
    const char *hi = (const char *)(p + r * keys), *lo = hi + keys * 2;
    for (int64_t i = 0; i < d; i += 4 * AMX_ROWS) {
      const int64_t blocks = min64(4, (d - i) / AMX_ROWS);
      float *o = acc + r * d + i;
      _tile_loadd(0, o, ldo);
      if (blocks > 1) {
        _tile_loadd(1, o + 16, ldo);
      }
      if (blocks > 2) {
        _tile_loadd(2, o + 32, ldo);
      }
      if (blocks > 3) {
        _tile_loadd(3, o + 48, ldo);
      }
      for (int64_t k = 0; k < keys; k += AMX_K) {
        const uint32_t *v = vb + k / 2 * d + i;
        _tile_loadd(4, hi + k * 2, lda);
        _tile_loadd(5, lo + k * 2, lda);
        _tile_loadd(6, v, ldo);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(0, 5, 6);
        if (blocks > 1) {
          _tile_loadd(7, v + 16, ldo);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(1, 5, 7);
        }
        if (blocks > 2) {
          _tile_loadd(6, v + 32, ldo);
          _tile_dpbf16ps(2, 4, 6);
          _tile_dpbf16ps(2, 5, 6);
        }
        if (blocks > 3) {
          _tile_loadd(7, v + 48, ldo);
          _tile_dpbf16ps(3, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, o, ldo);
      if (blocks > 1) _tile_stored(1, o + 16, ldo);
      if (blocks > 2) _tile_stored(2, o + 32, ldo);
      if (blocks > 3) _tile_stored(3, o + 48, ldo);
    }
  }
}

static void forward_tiles_amx(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->keys, dp = round_up(d, AMX_K);
  _Alignas(64) unsigned char arena[AMX_ARENA_BYTES];
  float m[MAX_TILE_ROWS], l[MAX_TILE_ROWS];
  amx_buffers b;
  amx_carve(round_up(j->tokens * j->whole_heads, AMX_ROWS), d, arena, &b);
  amx_configure();
  for (int64_t task = begin; task < end; task++) {
    query_tile t;
    if (!query_task(j, task, &t)) continue;
    const int64_t rows = t.rows, rp = round_up(rows, AMX_ROWS);
    for (int64_t r = 0; r < rp; r++) { /* Q's rows as bfloat16, zeros past head_dim and past the rows */
      uint16_t *row = b.q + r * dp;
      memset(row, 0, (size_t)dp * sizeof *row);
      if (r < rows) memcpy(row, row_at(&j->q, 2, t.b, t.g.q0 + row_token(&t, r), row_head(&t, r)), (size_t)d * 2);
    }
    memset(b.acc, 0, (size_t)(rp * d) * sizeof *b.acc);
    for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0;
    const int64_t keys = keys_seen(s, &t.g, t.t0 + t.tokens - 1); /* the last token sees the most */
    for (int64_t k0 = 0; k0 < keys; k0 += bn) {
      const int64_t n = min64(bn, keys - k0);
      amx_load_keys(j, &t, k0, n, bn, dp, b.k, b.stage);
      amx_load_values(j, &t, k0, n, bn, b.v, b.stage);
      amx_scores(b.q, rp, dp, b.k, bn, b.scores);
      softmax_rows(j, &t, b.scores, bn, 0, rows, k0, n, m, l, b.acc);
      amx_split_probs(b.scores, bn, rows, n);
      amx_add_pv(b.acc, rp, d, b.scores, bn, b.v);
    }
    finish_rows(j, &t, b.acc, m, l);
  }
  _tile_release();
}
