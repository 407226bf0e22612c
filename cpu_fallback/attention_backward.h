/* Attention's backward on the CPU (see include/yk/ops.h for the maths and the layouts). */
#ifndef YK_CPU_ATTENTION_BACKWARD_H
#define YK_CPU_ATTENTION_BACKWARD_H

#include "cpu_fallback/attention.h"

/* dq, dk, dv from dout, q, k, v, the forward's out and lse. Deterministic (no races, a fixed
 * order of summation). dk and dv sum over the q heads that share a kv head. */
void yk_cpu_attention_backward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand dout,
                               yk_attn_operand q, yk_attn_operand k, yk_attn_operand v, yk_attn_operand out,
                               yk_attn_operand lse, yk_attn_operand dq, yk_attn_operand dk, yk_attn_operand dv);

#endif
