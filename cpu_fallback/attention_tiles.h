/* The CPU attention's tiles: how a call is cut into query tiles and key tiles (attn_job,
 * query_tile, make_job) and how their rows move between the operands and floats on the stack.
 * Included by attention.c (the forward and decode) and attention_backward.c.
 *
 * Tiles live on the stack: a query tile buffer holds TILE_FLOATS floats, so a tile has
 * TILE_FLOATS / head_dim rows (64 at head_dim 64, 32 at 128, 4 at 1024), and the rows are the q
 * heads of a kv head's group over a run of tokens, so the group shares each key and value loaded
 * (decode: the groups of several kv heads, one token's, each key tile read for each in turn).
 *
 * Its functions (and attention_sequence.h's) are `static`, not `static inline`: with `inline` GCC
 * inlined more of them and the AVX2 and AVX-512 builds' instructions changed; as `static` they are
 * the ones the forward and backward made as one file. So a file that includes this header uses
 * every function in it (-Wunused-function names any it does not). */
#ifndef YK_CPU_ATTENTION_TILES_H
#define YK_CPU_ATTENTION_TILES_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/attention.h"
#include "cpu_fallback/attention_sequence.h"
#include "cpu_fallback/attention_vectors.h"
#include "cpu_fallback/half.h"

/* The tile kernels are built three times on x86-64: attention.c and attention_backward.c for every
 * CPU (names ending _plain), and again by attention_avx2.c and attention_avx512.c, which include
 * them with YK_CPU_BUILD_AVX2 or YK_CPU_BUILD_AVX512 defined (names ending _avx2: 2.1-2.6x the
 * plain build at prefill and backward, float16 decode 2x; _avx512: 1.3-1.5x _avx2 at prefill and
 * backward). The AVX-512 build also holds the bfloat16 forward on AMX tiles (attention_amx.h:
 * 2.6-4.5x at prefill), which it runs where the pool says YK_CPU_AMX. The pool says which build a
 * call runs (yk_thread_pool.isa). */
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

/* Keys [0, n) that query i of the sequence sees: bottom-right causal, or all of them. */
static int64_t keys_seen(const yk_attention_shape *s, const seq_span *g, int64_t i) {
  if (!s->causal) return g->len_k;
  const int64_t n = i + g->len_k - g->len_q + 1;
  return n < 0 ? 0 : n > g->len_k ? g->len_k : n;
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
static inline void load_kv_row(const attn_job *j, const char *row, float *dst) {
  kv_row_floats(j->kv_type, row, dst, j->s->head_dim);
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

static int64_t query_tasks(const attn_job *j) { return j->s->batch * j->kv_tiles * j->chunks * j->tiles; }

/* The build of the tile kernels the pool runs (the plain build's entry points dispatch). */
#ifdef YK_CPU_HAS_X86_BUILDS
#define ON_ISA(pool, call)                                                                                             \
  ((pool)->isa >= YK_CPU_AVX512 ? call##_avx512 : (pool)->isa == YK_CPU_AVX2 ? call##_avx2 : call##_plain)
#else
#define ON_ISA(pool, call) call##_plain
#endif

#endif
