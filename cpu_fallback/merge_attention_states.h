/* The merge of two partial attentions on the CPU (see include/yk/ops.h). */
#ifndef YK_CPU_MERGE_ATTENTION_STATES_H
#define YK_CPU_MERGE_ATTENTION_STATES_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"

/* out_o, out_lse = merge(o_a, lse_a, o_b, lse_b) for [tokens, heads] rows of head_dim: with
 * m = max(lse_a, lse_b), w_a = exp(lse_a - m), w_b = exp(lse_b - m):
 * out_o = (w_a o_a + w_b o_b) / (w_a + w_b), out_lse = m + log(w_a + w_b); both -inf gives o = 0,
 * lse = -inf. o in dtype, lse float32; rows of o at o + elem * (t * token_stride + h * head_stride),
 * lse at lse + 4 * (t * lse_token_stride + h * lse_head_stride). Outputs may alias inputs. */
typedef struct yk_merge_args {
  int dtype;
  int64_t tokens, heads, head_dim;
  const char *o_a, *o_b;
  char *out_o;
  int64_t o_a_token_stride, o_a_head_stride, o_b_token_stride, o_b_head_stride, out_token_stride, out_head_stride;
  const float *lse_a, *lse_b;
  float *out_lse; /* NULL: not wanted */
  int64_t lse_a_token_stride, lse_a_head_stride, lse_b_token_stride, lse_b_head_stride, out_lse_token_stride,
      out_lse_head_stride;
} yk_merge_args;

void yk_cpu_merge_attention_states(yk_thread_pool *pool, const yk_merge_args *args);

#endif
