/* Attention's backward on the CPU. P = exp(scale S - lse) recomputed from the forward's lse with
 * S = Q K^T; D_i = dout_i . out_i; dS = P (dP - D) with dP = dO V^T; dq = scale dS K,
 * dk = scale dS^T Q, dv = P^T dO. Pass one owns query tiles (dq), pass two owns key tiles of a kv
 * head (dk, dv) and walks the query tiles of every q head of its group in a fixed order, so each
 * output has one writer and a fixed order of summation. Both compute S and dP as the forward
 * computes S (keys and values transposed, every tile: see make_job), so a row's sums do not depend
 * on the tiles. Key tiles hold half the forward's keys, as each pass keeps six tiles and two score
 * blocks on the stack (whole ones: 132 KiB, and 0-10% faster); the first pass takes about 100 KiB
 * of a thread's stack (three query tiles, three key tiles, two score blocks and one row). */
#include "cpu_fallback/attention_backward.h"

#include "cpu_fallback/attention_tiles.h"

#define KEY_TILE_FLOATS (TILE_FLOATS / 2)
#define MAX_KEY_TILE_ROWS (KEY_TILE_FLOATS / 64)

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

#if !defined(YK_CPU_BUILD_AVX2) && !defined(YK_CPU_BUILD_AVX512) /* the dispatch once, in the plain build */

void yk_cpu_attention_backward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand dout,
                               yk_attn_operand q, yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                               yk_attn_operand lse, yk_attn_operand dq, yk_attn_operand dk, yk_attn_operand dv) {
  ON_ISA(pool, yk_cpu_attention_backward)(pool, shape, dout, q, k, v, out, lse, dq, dk, dv);
}

#endif /* the plain build */
