#include "cpu_fallback/append_kv.h"

#include <string.h>

#include "cpu_fallback/half.h"

static int refuse(yk_append_kv_problem *p, yk_append_kv_fault fault, int64_t t, int64_t value, int64_t detail) {
  if (p) *p = (yk_append_kv_problem){fault, t, value, detail};
  return -1;
}

/* 1 with the block and offset token t goes to; 0 when the index skips it; -1 when the index is
 * bad (the problem filled). */
static int destination(const yk_append_kv_where *w, int64_t t, int64_t *block, int64_t *offset,
                       yk_append_kv_problem *p) {
  if (!w->csr) {
    const int64_t slot = w->slots_64 ? ((const int64_t *)w->slots)[t] : ((const int32_t *)w->slots)[t];
    if (slot < 0) return 0;
    if (slot >= w->num_blocks * w->page_size) return refuse(p, YK_APPEND_KV_SLOT, t, slot, 0);
    *block = slot / w->page_size;
    *offset = slot % w->page_size;
    return 1;
  }
  const int64_t b = w->batch_indices[t], pos = w->positions[t];
  if (pos < 0) return 0;
  if (b < 0 || b >= w->batch) return refuse(p, YK_APPEND_KV_SEQUENCE, t, b, 0);
  const int64_t first = w->kv_indptr[b], end = w->kv_indptr[b + 1];
  if (first < 0 || end < first || end > w->num_indices) return refuse(p, YK_APPEND_KV_INDPTR, t, b, b);
  const int64_t entry = first + pos / w->page_size;
  if (entry >= end) return refuse(p, YK_APPEND_KV_PAGE, t, pos, b);
  const int64_t id = w->kv_indices[entry];
  if (id < 0 || id >= w->num_blocks) return refuse(p, YK_APPEND_KV_BLOCK, t, id, entry);
  *block = id;
  *offset = pos % w->page_size;
  return 1;
}

static int64_t rope_position(const yk_append_kv_args *a, int64_t t) {
  return a->rope_positions_64 ? ((const int64_t *)a->rope_positions)[t] : ((const int32_t *)a->rope_positions)[t];
}

static void copy_heads(const yk_append_kv_args *a, char *to, int64_t to_head_stride, const char *from,
                       int64_t from_head_stride) {
  const size_t es = (size_t)a->elem_bytes, row = (size_t)a->head_dim * es;
  for (int64_t h = 0; h < a->kv_heads; h++)
    memcpy(to + (size_t)(h * to_head_stride) * es, from + (size_t)(h * from_head_stride) * es, row);
}

/* Rows times inv_scale into float8; each of k's rows rotated first (rope non-NULL), through a copy
 * in k's dtype, so the cache gets the bits yk_rope then a plain append would. */
static void quantize_heads(const yk_append_kv_args *a, yk_thread_pool *pool, char *to, int64_t to_head_stride,
                           const char *from, int64_t from_head_stride, float inv_scale, const yk_rope_args *rope) {
  const size_t es = (size_t)a->elem_bytes, row = (size_t)a->head_dim * es;
  float f[YK_CPU_CHUNK];
  _Alignas(16) char rotated[YK_APPEND_KV_MAX_HEAD_DIM * sizeof(float)];
  for (int64_t h = 0; h < a->kv_heads; h++) {
    const char *src = from + (size_t)(h * from_head_stride) * es;
    if (rope) {
      memcpy(rotated, src, row);
      yk_rope_args r = *rope;
      r.k = rotated, r.kv_heads = 1;
      yk_cpu_rope(pool, &r);
      src = rotated;
    }
    for (int64_t c = 0; c < a->head_dim; c += YK_CPU_CHUNK) {
      const int64_t n = a->head_dim - c < YK_CPU_CHUNK ? a->head_dim - c : YK_CPU_CHUNK;
      yk_load_floats(a->dtype, src + (size_t)c * es, f, n);
      for (int64_t i = 0; i < n; i++) f[i] *= inv_scale;
      yk_store_floats(YK_E4M3, to + h * to_head_stride + c, f, n);
    }
  }
}

typedef struct {
  const yk_append_kv_args *args;
  yk_thread_pool *pool;
} job;

static void tokens(void *p, int64_t begin, int64_t end) {
  const yk_append_kv_args *a = ((const job *)p)->args;
  yk_thread_pool *pool = ((const job *)p)->pool;
  const size_t es = (size_t)a->elem_bytes, ces = a->float8 ? 1 : es; /* k's and the caches' */
  for (int64_t t = begin; t < end; t++) {
    int64_t block, offset;
    if (destination(&a->where, t, &block, &offset, NULL) != 1) continue;
    char *kc = a->k_cache + (size_t)(block * a->k_cache_block_stride + offset * a->k_cache_offset_stride) * ces;
    char *vc = a->v_cache + (size_t)(block * a->v_cache_block_stride + offset * a->v_cache_offset_stride) * ces;
    const char *k = a->k + (size_t)(t * a->k_token_stride) * es, *v = a->v + (size_t)(t * a->v_token_stride) * es;
    /* The rope op rotates one token, serially (never back into the pool): in the cache, or a
     * copy of each head on its way to float8. */
    yk_rope_args r = a->rope;
    if (a->rope_positions) r.positions = a->rope_positions + t * (a->rope_positions_64 ? 8 : 4);
    if (a->float8) {
      quantize_heads(a, pool, kc, a->k_cache_head_stride, k, a->k_head_stride, a->k_inv_scale,
                     a->rope_positions ? &r : NULL);
      quantize_heads(a, pool, vc, a->v_cache_head_stride, v, a->v_head_stride, a->v_inv_scale, NULL);
      continue;
    }
    copy_heads(a, kc, a->k_cache_head_stride, k, a->k_head_stride);
    copy_heads(a, vc, a->v_cache_head_stride, v, a->v_head_stride);
    if (!a->rope_positions) continue;
    r.k = kc;
    yk_cpu_rope(pool, &r);
  }
}

int yk_cpu_append_kv(yk_thread_pool *pool, const yk_append_kv_args *a, yk_append_kv_problem *problem) {
  for (int64_t t = 0; t < a->tokens; t++) {
    int64_t block, offset;
    const int placed = destination(&a->where, t, &block, &offset, problem);
    if (placed < 0) return 1;
    if (placed && a->rope_positions) {
      const int64_t pos = rope_position(a, t);
      if (pos < 0 || pos >= a->rope.max_position) return refuse(problem, YK_APPEND_KV_ROPE_POSITION, t, pos, 0), 1;
    }
  }
  const int64_t per_token = 2 * a->kv_heads * a->head_dim, grain = 32768 / (per_token > 0 ? per_token : 1);
  job j = {a, pool};
  yk_parallel_for(pool, a->tokens, grain > 0 ? grain : 1, tokens, &j);
  return 0;
}
