/* What the attention ops share: the checks of q, k, v, the ragged-batch offsets and the layouts,
 * and the translation of checked tensors into the operands the CPU fallback and kernels take. */
#ifndef YK_GEN_ATTENTION_H
#define YK_GEN_ATTENTION_H

#include "cpu_fallback/attention.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

#define YK_ATTENTION_MAX_HEAD_DIM_GPU 256

typedef struct yk_attention_problem {
  yk_attention_shape shape; /* cu_seqlens here are host pointers, set on the CPU path only */
  int on_device;
  int decode;                 /* one query a sequence: q [batch, q_heads, head_dim] */
  int ragged_q, ragged_k;     /* cu_seqlens given */
  const int32_t *cu_q, *cu_k; /* as the kernels read them (device, pinned or managed memory) */
  int64_t total_q, total_k;   /* tokens on the token axes */
  int64_t max_seqlen_q, max_seqlen_k;
  yk_view q, k, v;
} yk_attention_problem;

/* Checks q, k, v and params (decode: the one-token layout) and fills the problem. */
yk_status yk_attention_check(yk_ctx *ctx, const char *op, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                             const yk_attention_params *params, int decode, yk_attention_problem *pr);

/* A tensor with the shape and dtype of `like` (out, dout, dq like q; dk, dv like k), in the same
 * memory. */
yk_status yk_attention_check_like(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t,
                                  const char *like_name, const yk_view *like, const yk_attention_problem *pr,
                                  yk_view *out);

/* lse: float32 [batch, q_heads, seq_q] (dense), [q_heads, total_q] (ragged), [batch, q_heads]
 * (decode). NULL is allowed when optional. */
yk_status yk_attention_check_lse(yk_ctx *ctx, const char *op, const DLTensor *lse, int optional,
                                 const yk_attention_problem *pr, yk_view *out);

/* The kernels copy rows in 16-byte pieces: every row of these tensors must start on a 16-byte
 * boundary (base address and strides). */
yk_status yk_attention_check_aligned(yk_ctx *ctx, const char *op, const yk_view *const *views, const char *const *names,
                                     int count);

/* The combine of split-KV decode (gen/ops/merge_attention_states.c): float32 partials
 * [splits][batch * heads][head_dim] and their lse [splits][batch * heads] into out
 * [batch, heads, head_dim] (strides o_b, o_h, dtype) and lse (strides l_b, l_h; NULL: not wanted). */
yk_status yk_merge_partials(yk_ctx *ctx, int dtype, int64_t batch, int64_t heads, int64_t head_dim, int splits,
                            const float *part_o, const float *part_lse, void *out, int64_t o_b, int64_t o_h, float *lse,
                            int64_t l_b, int64_t l_h, void *stream);

/* The Hopper prefill's spec before completion, and the query rows its blocks own
 * (gen/ops/attention_prefill_sm90.c). */
/* Outputs (views with data NULL are skipped) must not overlap themselves, one another, or an input
 * the call reads. */
yk_status yk_attention_check_outputs(yk_ctx *ctx, const char *op, const yk_view *const *outs,
                                     const char *const *out_names, int out_count, const yk_view *const *ins,
                                     const char *const *in_names, int in_count);

/* The warm matrix of an attention op (head_dim its field 0): f16 and bf16, each model's head dim
 * that accepts() allows (NULL: all), and the four combinations of the 0/1 fields flag_a and flag_b. */
void yk_attention_warm(const yk_warm_request *req, const yk_op_def *op, int flag_a, int flag_b,
                       int (*accepts)(int head_dim), yk_spec_emit_fn emit, void *user);

void yk_attention_prefill_sm90_spec(yk_spec *s, int dtype, int head_dim, int causal, int ragged);
int yk_attention_prefill_sm90_rows(const yk_spec *s);

/* Operands for the layouts above. */
yk_attn_operand yk_attention_rows(const yk_view *v, const yk_attention_problem *pr, int is_k);
yk_attn_operand yk_attention_lse_rows(const yk_view *lse, const yk_attention_problem *pr);

#endif
