#include "cpu_fallback/append_kv.h"

#include <string.h>

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

typedef struct {
  const yk_append_kv_args *args;
  yk_thread_pool *pool;
} job;

static void tokens(void *p, int64_t begin, int64_t end) {
  const yk_append_kv_args *a = ((const job *)p)->args;
  const size_t es = (size_t)a->elem_bytes;
  for (int64_t t = begin; t < end; t++) {
    int64_t block, offset;
    if (destination(&a->where, t, &block, &offset, NULL) != 1) continue;
    char *kc = a->k_cache + (size_t)(block * a->k_cache_block_stride + offset * a->k_cache_offset_stride) * es;
    char *vc = a->v_cache + (size_t)(block * a->v_cache_block_stride + offset * a->v_cache_offset_stride) * es;
    copy_heads(a, kc, a->k_cache_head_stride, a->k + (size_t)(t * a->k_token_stride) * es, a->k_head_stride);
    copy_heads(a, vc, a->v_cache_head_stride, a->v + (size_t)(t * a->v_token_stride) * es, a->v_head_stride);
    if (!a->rope_positions) continue;
    /* The rope op itself rotates the copy in the cache: one token, k at its slot, so the bits are
     * those yk_rope would give k. One token runs serially, never back into the pool. */
    yk_rope_args r = a->rope;
    r.k = kc;
    r.positions = a->rope_positions + t * (a->rope_positions_64 ? 8 : 4);
    yk_cpu_rope(((const job *)p)->pool, &r);
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
