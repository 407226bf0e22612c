/* Rotary position embedding on the CPU, in place (see include/yk/ops.h). */
#ifndef YK_CPU_ROPE_H
#define YK_CPU_ROPE_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"

typedef struct yk_rope_args {
  int dtype;       /* of q and k */
  int cache_dtype; /* of the cos and sin tables */
  int neox;        /* 1: rotate halves; 0: interleaved (GPT-J) */
  int64_t tokens, seq, q_heads, kv_heads, head_dim, rotary_dim; /* token t is (t / seq, t % seq) */
  char *q;
  int64_t q_batch_stride, q_seq_stride, q_head_stride;
  char *k; /* NULL when kv_heads == 0 */
  int64_t k_batch_stride, k_seq_stride, k_head_stride;
  const char *cos, *sin; /* tables of rotary_dim / 2 values a position, rows table_row_stride apart */
  int64_t table_row_stride, max_position;
  const char *positions;
  int64_t positions_batch_stride, positions_seq_stride;
  int positions_64; /* int64 positions, else int32 */
} yk_rope_args;

/* Returns the index (b * seq + s) of the first token whose position is outside [0, max_position)
 * without writing anything, or -1 after rotating every token. */
int64_t yk_cpu_rope(yk_thread_pool *pool, const yk_rope_args *args);

/* float64 reference over compact arrays, in place: q [tokens, q_heads, head_dim], k likewise
 * (NULL when kv_heads == 0), cache [max_position, rotary_dim]; positions must be in range. */
void yk_reference_rope(int neox, int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                       int64_t rotary_dim, double *q, double *k, const double *cache, const int64_t *positions);

#endif
