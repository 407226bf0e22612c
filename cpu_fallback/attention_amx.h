/* The forward's products on AMX tiles for bfloat16 (included by attention.c in its AVX-512 build,
 * compiled with AMX-TILE and AMX-BF16; run where the CPU has both, yk_thread_pool.isa YK_CPU_AMX,
 * and the OS lets the process use them, yk_cpu_amx_ready).
 *
 * A tile register holds 16 rows of 64 bytes; TDPBF16PS adds A (16 rows x 32 bfloat16) times B (32 x
 * 16, stored as 16 rows of 16 pairs: "VNNI", a row holding two consecutive k's of each column) into
 * C (16 x 16 float32), each product exact and each sum rounded to float32, as the AVX-512 build's
 * multiply-adds are.
 *
 * The scores come out transposed, S^T = K Q^T: A is K's rows as they are (copied into a 16-row
 * stage, zero-padded), B is Q transposed as pairs of dims (Q's rows read as 32-bit words, a 16 x 16
 * transpose of words, once a query tile). So the softmax works down the keys with a query row in
 * each lane (maximum, exponentials and sums lane by lane, no sums across lanes), and K is never
 * transposed: a key tile's transpose cost as much as its products and softmax together. P^T then
 * goes back by 16 x 16 transposes into P's rows for O += P V: A is P, float32, as two bfloat16 parts
 * (hi its rounding, lo the rounding of the rest: 16 bits of P, 2^-17 of it lost where the AVX-512
 * build loses 2^-24); B is V's rows in pairs. Tiles are padded with zeros: rows to 16, dims to 32,
 * keys to 16 (scores) and 32 (P V), a zero key scoring 0 and getting P 0, so one configuration
 * serves every tile and no product reads past its operands.
 *
 * A row's sums do not depend on its neighbours or on the tile's row count (each element of C sums
 * its own k's in order; the softmax keeps a row in one lane), so results stay the same bytes at
 * every thread count. */
#include <immintrin.h>

#define AMX_ROWS 16 /* rows of a tile, keys of a score tile, columns of an output tile */
#define AMX_K 32    /* bfloat16 a row of A: dims of a score product, keys of P V's */
#define AMX_MAX_DIM 256
#define AMX_MAX_ROWS 64 /* a query tile's rows (amx_rows) */

static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

/* A query tile's rows: 64 where a padded head_dim is 128 or less, else 32; a key tile's keys: 128
 * where it is 64 or less, else 64 (multiples of 32 either way, so keys pad no further). Both larger
 * than the vector builds' (32 and 32 at head_dim 128): AMX makes the products cheap, and what is
 * left is reading K and V (from L2 or further, once a query tile: more rows share each read) and a
 * key tile's fixed costs (O's rescale, its tiles' loads and stores: more keys share them). */
static int64_t amx_rows(int64_t head_dim) { return round_up(head_dim, AMX_K) <= 128 ? 64 : 32; }
static int64_t amx_keys(int64_t head_dim) { return round_up(head_dim, AMX_K) <= 64 ? 128 : 64; }

/* A query tile of R rows pads to R' = R rounded up to 16 and its dims to D' = head_dim rounded up to
 * 32. A thread's buffers, carved from one array on its stack: Q^T as pairs of dims (D' / 2 x R'
 * words), 16 keys' rows (16 x D' bfloat16; float8 values' rows on their way too), S^T and then P^T
 * (keys x R' floats), P's bfloat16 parts (R' rows of 2 x keys), V as pairs of keys (keys / 2 x
 * head_dim words) and O (R' x head_dim floats). The largest (head dim 64: 32 x 64, 16 x 64, 128 x
 * 64, 64 x 256, 64 x 64, 64 x 64) take 106 KiB. */
#define AMX_ARENA_BYTES (108 * 1024)

typedef struct amx_buffers {
  uint32_t *qt, *v;
  uint16_t *ks, *p;
  float *st, *acc;
} amx_buffers;

/* Carves the buffers for tiles of rp padded rows from arena (NULL in it: sizes only); returns the
 * bytes taken, each buffer 64-byte aligned. */
static size_t amx_carve(int64_t rp, int64_t head_dim, unsigned char *arena, amx_buffers *b) {
  const int64_t dp = round_up(head_dim, AMX_K), keys = amx_keys(head_dim);
  const size_t sizes[6] = {(size_t)(dp / 2 * rp) * 4,   (size_t)(AMX_ROWS * dp) * 2,       (size_t)(keys * rp) * 4,
                           (size_t)(rp * 2 * keys) * 2, (size_t)(keys / 2 * head_dim) * 4, (size_t)(rp * head_dim) * 4};
  void *at[6];
  size_t used = 0;
  for (int i = 0; i < 6; i++) {
    at[i] = arena ? arena + used : NULL;
    used += (sizes[i] + 63) / 64 * 64;
  }
  if (b) *b = (amx_buffers){.qt = at[0], .ks = at[1], .st = at[2], .p = at[3], .v = at[4], .acc = at[5]};
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
      amx_carve(amx_rows(d), d, NULL, NULL) > AMX_ARENA_BYTES)
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

/* Floats' bfloat16s rounded to nearest even, in the low halves (P is finite: no NaN to keep). */
static inline __m512i bf16_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
}

/* Row `key` of the tile's kv head in o as bfloat16: where it is, or a float8 row's values times 2^-8
 * (bfloat16s exactly) written into stage. */
static const uint16_t *amx_row(const attn_job *j, const yk_attn_operand *o, const query_tile *t, int64_t key,
                               uint16_t *stage) {
  const char *row = row_at(o, j->kv_elem, t->b, t->g.k0 + key, t->kvh);
  if (j->kv_type == YK_BF16) return (const uint16_t *)(const void *)row;
  float values[AMX_MAX_DIM];
  ISA_NAME(yk_cpu_kv_row_floats)(j->kv_type, row, values, j->s->head_dim);
  yk_store_floats(YK_BF16, stage, values, j->s->head_dim); /* exact: rounding changes no bit */
  return stage;
}

/* The query tile's rows as B of the score products: word w (dims 2w, 2w + 1) of row r at
 * qt[w * rp + r], dp / 2 words, zeros past the rows and past head_dim. */
static void amx_load_queries(const attn_job *j, const query_tile *t, int64_t rp, int64_t dp, uint32_t *qt) {
  static const float zeros[AMX_MAX_DIM / 2];
  const int64_t words = j->s->head_dim / 2;
  for (int64_t r0 = 0; r0 < rp; r0 += LANES) {
    const float *from[LANES]; /* rows of words, read as floats: the transpose moves bits only */
    for (int r = 0; r < LANES; r++)
      from[r] = r0 + r < t->rows ? (const float *)(const void *)row_at(&j->q, 2, t->b, t->g.q0 + row_token(t, r0 + r),
                                                                       row_head(t, r0 + r))
                                 : zeros;
    int64_t w = 0;
    for (; w + LANES <= words; w += LANES) transpose_lanes(from, w, (float *)(void *)(qt + w * rp + r0), rp);
    for (; w < words; w++)
      for (int r = 0; r < LANES; r++) memcpy(qt + w * rp + r0 + r, from[r] + w, sizeof *qt);
  }
  memset(qt + words * rp, 0, (size_t)((dp / 2 - words) * rp) * sizeof *qt);
}

/* Keys [k0, k0 + 16) of the tile's kv head into ks (16 rows of dp), zeros past the n keys of the
 * key tile that k0 is part of (from key k_end) and past head_dim. */
static void amx_stage_keys(const attn_job *j, const query_tile *t, int64_t k0, int64_t k_end, int64_t dp,
                           uint16_t *ks) {
  const int64_t d = j->s->head_dim;
  for (int64_t r = 0; r < AMX_ROWS; r++) {
    uint16_t *row = ks + r * dp;
    if (k0 + r < k_end) {
      const uint16_t *key = amx_row(j, &j->k, t, k0 + r, row);
      if (key != row) memcpy(row, key, (size_t)d * sizeof *row);
      memset(row + d, 0, (size_t)(dp - d) * sizeof *row);
    } else {
      memset(row, 0, (size_t)dp * sizeof *row);
    }
  }
}

/* st[c * rp + r] = k_c . q_r for the keys [k0, k0 + n) of the tile (np = n padded to 16; rows of
 * keys past n score 0) and its rp padded rows. Up to four 32-dim steps (head dims to 128) a block
 * of 16 keys stays in tiles 4-7 across the row blocks; wider rows reload it. */
static void amx_scores(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, int64_t rp, int64_t dp,
                       const uint32_t *qt, uint16_t *ks, float *st) {
  const int64_t steps = dp / AMX_K, ldk = dp * 2, ldq = rp * 4;
  for (int64_t c = 0; c < n; c += AMX_ROWS) {
    amx_stage_keys(j, t, k0 + c, k0 + n, dp, ks);
    if (steps <= 4) {
      _tile_loadd(4, ks, ldk);
      if (steps > 1) _tile_loadd(5, ks + AMX_K, ldk);
      if (steps > 2) _tile_loadd(6, ks + 2 * AMX_K, ldk);
      if (steps > 3) _tile_loadd(7, ks + 3 * AMX_K, ldk);
    }
    for (int64_t r = 0; r < rp; r += AMX_ROWS) {
      const uint32_t *q = qt + r;
      _tile_zero(0);
      if (steps <= 4) {
        _tile_loadd(1, q, ldq);
        _tile_dpbf16ps(0, 4, 1);
        if (steps > 1) {
          _tile_loadd(2, q + 16 * rp, ldq);
          _tile_dpbf16ps(0, 5, 2);
        }
        if (steps > 2) {
          _tile_loadd(1, q + 32 * rp, ldq);
          _tile_dpbf16ps(0, 6, 1);
        }
        if (steps > 3) {
          _tile_loadd(2, q + 48 * rp, ldq);
          _tile_dpbf16ps(0, 7, 2);
        }
      } else {
        for (int64_t k = 0; k < steps; k++) {
          _tile_loadd(1, ks + k * AMX_K, ldk);
          _tile_loadd(2, q + k * 16 * rp, ldq);
          _tile_dpbf16ps(0, 1, 2);
        }
      }
      _tile_stored(0, st + c * rp + r, ldq);
    }
  }
}

/* The online softmax down S^T's keys [0, n) (of key tile k0), 16 rows at a time, a row in a lane:
 * each row's running maximum m and sum l, its output (acc, head_dim floats a row) rescaled to the
 * new maximum, and P^T in place of S^T: 0 for the keys a row does not see, and for every key of a
 * row that has seen none yet (its m stays -inf, as the vector builds' softmax_rows leaves it).
 * Where the maximum ignores NaN, so does this; a NaN score still reaches its row's sum. */
static void amx_softmax(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, int64_t rp, float *st, float *m,
                        float *l, float *acc) {
  const int64_t d = j->s->head_dim, np = round_up(n, AMX_ROWS);
  const f32v scale = (f32v){0} + j->score_scale;
  for (int64_t r0 = 0; r0 < rp; r0 += LANES) {
    i32v seen; /* keys each row sees in this tile; 0 for padding rows */
    for (int r = 0; r < LANES; r++)
      seen[r] = r0 + r < t->rows ? (int32_t)min64(n, keys_seen(j->s, &t->g, row_token(t, r0 + r)) - k0) : 0;
    const f32v old = loadv(m + r0);
    f32v most = old;
    for (int64_t c = 0; c < n; c++) {
      const f32v x = loadv(st + c * rp + r0) * scale;
      most = pick(((int32_t)c < seen) & (x > most), x, most);
    }
    const i32v alive = most > -INFINITY; /* rows that have seen a key */
    const f32v rescale = pick(alive, expv(old - most), (f32v){0} + 1.f);
    f32v sums = {0};
    for (int64_t c = 0; c < np; c++) {
      const f32v e = pick(((int32_t)c < seen) & alive, expv(loadv(st + c * rp + r0) * scale - most), (f32v){0});
      memcpy(st + c * rp + r0, &e, sizeof e);
      sums += e;
    }
    for (int r = 0; r < LANES && r0 + r < t->rows; r++)
      if (rescale[r] != 1.f) scale_row(acc + (r0 + r) * d, rescale[r], d);
    const f32v sum = loadv(l + r0) * rescale + sums;
    memcpy(l + r0, &sum, sizeof sum);
    memcpy(m + r0, &most, sizeof most);
  }
}

/* P^T (keys x rp floats, np = n padded to 16 of them set) into P's rows as bfloat16 hi and lo parts
 * for A tiles: row r's hi at p[r * 2 * keys], its lo keys after, zeros from np to kp = n padded to
 * 32; each 16 x 16 block transposed through a buffer on the stack. */
static void amx_split_probs(const float *st, int64_t n, int64_t keys, int64_t rp, uint16_t *p) {
  const int64_t np = round_up(n, AMX_ROWS), kp = round_up(n, AMX_K);
  _Alignas(64) float block[LANES * LANES];
  for (int64_t c = 0; c < np; c += LANES)
    for (int64_t r0 = 0; r0 < rp; r0 += LANES) {
      const float *from[LANES];
      for (int i = 0; i < LANES; i++) from[i] = st + (c + i) * rp + r0;
      transpose_lanes(from, 0, block, LANES);
      for (int r = 0; r < LANES; r++) {
        const __m512 x = _mm512_load_ps(block + r * LANES);
        const __m512i hi = bf16_bits(x);
        const __m512 rest = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(hi, 16))); /* exact */
        uint16_t *row = p + (r0 + r) * 2 * keys + c;
        _mm256_storeu_si256((__m256i *)(void *)row, _mm512_cvtepi32_epi16(hi));
        _mm256_storeu_si256((__m256i *)(void *)(row + keys), _mm512_cvtepi32_epi16(bf16_bits(rest)));
      }
    }
  for (int64_t r = 0; r < rp && np < kp; r++) /* hi's and lo's keys from np to kp */
    for (int64_t part = 0; part < 2; part++)
      memset(p + r * 2 * keys + part * keys + np, 0, (size_t)(kp - np) * sizeof *p);
}

/* Values [k0, k0 + n) as B of P V: the pair of keys 2i, 2i + 1 in row i, dim c of the lower key in
 * the low half of word vb[i * head_dim + c]; kp / 2 rows (kp: n padded to 32), zeros past n.
 * stage: two rows of head_dim for float8 values. */
static void amx_load_values(const attn_job *j, const query_tile *t, int64_t k0, int64_t n, uint32_t *vb,
                            uint16_t *stage) {
  const int64_t d = j->s->head_dim, kp = round_up(n, AMX_K);
  prefetch_keys(j, &j->v, t, k0 + n, n);
  for (int64_t i = 0; i < kp / 2; i++) {
    uint32_t *row = vb + i * d;
    if (2 * i >= n) {
      memset(row, 0, (size_t)d * sizeof *row);
      continue;
    }
    const uint16_t *even = amx_row(j, &j->v, t, k0 + 2 * i, stage);
    const uint16_t *odd = 2 * i + 1 < n ? amx_row(j, &j->v, t, k0 + 2 * i + 1, stage + d) : NULL;
    for (int64_t c = 0; c < d; c += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(even + c)));
      const __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)(odd + c)))
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(row + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

/* Up to four 16-column blocks of O's rows [r, r + 16) from i, in tiles 0-3 (tile numbers are part
 * of the instructions, so the blocks are spelled out). */
#define AMX_O_TILES(op, o, ld, blocks)                                                                                 \
  do {                                                                                                                 \
    op(0, (o), (ld));                                                                                                  \
    if ((blocks) > 1) op(1, (o) + 16, (ld));                                                                           \
    if ((blocks) > 2) op(2, (o) + 32, (ld));                                                                           \
    if ((blocks) > 3) op(3, (o) + 48, (ld));                                                                           \
  } while (0)

/* O's 16-column block in tile `o` += hi V + lo V for one 32-key step, V's block loaded into tile `vt`
 * from v (hi and lo in tiles 4 and 5). */
#define AMX_PV_BLOCK(o, vt, v, ld)                                                                                     \
  do {                                                                                                                 \
    _tile_loadd(vt, (v), (ld));                                                                                        \
    _tile_dpbf16ps(o, 4, vt);                                                                                          \
    _tile_dpbf16ps(o, 5, vt);                                                                                          \
  } while (0)

/* acc (rp rows of d floats) += (hi + lo) V over the kp keys P's parts hold (rows 2 x keys apart):
 * four 16-column blocks of a row block at a time in tiles 0-3, each 32-key step adding hi's
 * products, then lo's. */
static void amx_add_pv(float *acc, int64_t rp, int64_t d, const uint16_t *p, int64_t keys, int64_t kp,
                       const uint32_t *vb) {
  const int64_t lda = keys * 4, ldo = d * 4;
  for (int64_t r = 0; r < rp; r += AMX_ROWS) {
    const uint16_t *hi = p + r * 2 * keys, *lo = hi + keys;
    for (int64_t i = 0; i < d; i += 4 * AMX_ROWS) {
      const int64_t blocks = min64(4, (d - i) / AMX_ROWS);
      float *o = acc + r * d + i;
      AMX_O_TILES(_tile_loadd, o, ldo, blocks);
      for (int64_t k = 0; k < kp; k += AMX_K) {
        const uint32_t *v = vb + k / 2 * d + i;
        _tile_loadd(4, hi + k, lda);
        _tile_loadd(5, lo + k, lda);
        AMX_PV_BLOCK(0, 6, v, ldo); /* V's blocks alternate between tiles 6 and 7 */
        if (blocks > 1) AMX_PV_BLOCK(1, 7, v + 16, ldo);
        if (blocks > 2) AMX_PV_BLOCK(2, 6, v + 32, ldo);
        if (blocks > 3) AMX_PV_BLOCK(3, 7, v + 48, ldo);
      }
      AMX_O_TILES(_tile_stored, o, ldo, blocks);
    }
  }
}

static void forward_tiles_amx(void *p, int64_t begin, int64_t end) {
  const attn_job *j = p;
  const yk_attention_shape *s = j->s;
  const int64_t d = s->head_dim, bn = j->keys, dp = round_up(d, AMX_K);
  _Alignas(64) unsigned char arena[AMX_ARENA_BYTES];
  _Alignas(64) float m[AMX_MAX_ROWS], l[AMX_MAX_ROWS];
  amx_buffers b;
  amx_carve(amx_rows(d), d, arena, &b);
  amx_configure();
  for (int64_t task = begin; task < end; task++) {
    query_tile t;
    if (!query_task(j, task, &t)) continue;
    const int64_t rp = round_up(t.rows, AMX_ROWS);
    amx_load_queries(j, &t, rp, dp, b.qt);
    memset(b.acc, 0, (size_t)(rp * d) * sizeof *b.acc);
    for (int64_t r = 0; r < rp; r++) m[r] = -INFINITY, l[r] = 0;
    const int64_t keys = keys_seen(s, &t.g, t.t0 + t.tokens - 1); /* the last token sees the most */
    for (int64_t k0 = 0; k0 < keys; k0 += bn) {
      const int64_t n = min64(bn, keys - k0);
      prefetch_keys(j, &j->k, &t, k0 + n, n);
      amx_scores(j, &t, k0, n, rp, dp, b.qt, b.ks, b.st);
      amx_softmax(j, &t, k0, n, rp, b.st, m, l, b.acc);
      amx_split_probs(b.st, n, bn, rp, b.p);
      amx_load_values(j, &t, k0, n, b.v, b.ks);
      amx_add_pv(b.acc, rp, d, b.p, bn, round_up(n, AMX_K), b.v);
    }
    finish_rows(j, &t, b.acc, m, l);
  }
  _tile_release();
}
