/* The merge of two partial attentions by their log-sum-exp on the CPU, row by row. */
#include "cpu_fallback/merge_attention_states.h"

#include <math.h>
#include <string.h>

#include "cpu_fallback/half.h"

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
      const int64_t n = d - c < YK_CPU_CHUNK ? d - c : YK_CPU_CHUNK;
      memset(x, 0, (size_t)n * sizeof *x);
      if (wa != 0.f) {
        yk_load_floats(a->dtype, ra + c * es, y, n);
        for (int64_t i = 0; i < n; i++) x[i] = wa * y[i];
      }
      if (wb != 0.f) {
        yk_load_floats(a->dtype, rb + c * es, y, n);
        for (int64_t i = 0; i < n; i++) x[i] += wb * y[i];
      }
      for (int64_t i = 0; i < n; i++) x[i] *= inv;
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
