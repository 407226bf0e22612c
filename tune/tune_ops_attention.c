/* The attention ops of a sweep at a model's heads: the causal prefill (flash_attention_forward)
 * over sequence lengths, its backward (flash_attention_backward) likewise, and decode over
 * batch x context. The prefill counts 4 B H S^2 D / 2 flops (causal), the backward 2.5 times that,
 * decode the bytes of K and V read, as yk bench does. */
#include <stdio.h>

#include "runtime/error.h"
#include "tune/tune_case.h"

/* Decode checks at most this many keys a head against the CPU (a few GFLOP), from the first
 * sequences of the batch: the rest are the same kernel on other rows. */
#define DECODE_CHECK_KEYS 131072

enum { Q, K, V, OUT }; /* the buffers every attention case begins with */

static yk_status half_types_only(yk_tune_case *c) {
  return c->dtype == YK_F32 ? yk_error(c->ctx, YK_ERR_UNSUPPORTED, "tune: %s takes f16 or bf16", c->op->name) : YK_OK;
}

/* q, k, v random in [-1, 1] and out (an output, or the backward's derived input) into b. */
static void add_qkv_out(yk_tune_case *c, int q_ndim, const int64_t *q, const int64_t *kv, yk_tune_role out_role,
                        yk_tune_buffer **b) {
  b[Q] = yk_tune_case_add(c, c->dtype, YK_TUNE_IN, q_ndim, q, -1, 1);
  b[K] = yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1);
  b[V] = yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1);
  b[OUT] = yk_tune_case_add(c, c->dtype, out_role, q_ndim, q, 0, 0);
}

/* A causal batch of sequences: the shape's text, its size, and 4 B H S^2 D / 2 flops a forward. */
static double define_causal(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  c->size = s.batch * s.length;
  snprintf(c->shape, sizeof c->shape, "B%lld S%lld q%d kv%d d%d causal", (long long)s.batch, (long long)s.length,
           m->q_heads, m->kv_heads, m->head_dim);
  return 4.0 * (double)s.batch * m->q_heads * (double)s.length * (double)s.length * m->head_dim / 2;
}

static yk_status define_prefill(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  yk_status st = half_types_only(c);
  if (st) return st;
  const int64_t q[4] = {s.batch, s.length, m->q_heads, m->head_dim},
                kv[4] = {s.batch, s.length, m->kv_heads, m->head_dim};
  yk_tune_buffer *b[4];
  add_qkv_out(c, 4, q, kv, YK_TUNE_OUT, b);
  /* the CPU takes the first queries of the first sequence: with the causal mask they see only the
   * keys before them, so that leading part of q, k and v is a whole problem of its own */
  if (s.batch * s.length > YK_TUNE_CHECK_SEQ)
    for (int i = 0; i < 4; i++) {
      b[i]->check_shape[0] = 1;
      b[i]->check_shape[1] = s.length < YK_TUNE_CHECK_SEQ ? s.length : YK_TUNE_CHECK_SEQ;
    }
  c->flops = define_causal(c, m, s);
  return YK_OK;
}

/* The causal forward on t's q, k, v into out (and lse, where given). */
static yk_status causal_forward(yk_tune_case *c, DLTensor *const *t, DLTensor *lse, void *stream) {
  yk_attention_params p = {0};
  p.causal = 1;
  return yk_flash_attention_forward(c->ctx, t[Q], t[K], t[V], &p, t[OUT], lse, stream);
}

static yk_status invoke_prefill(yk_tune_case *c, DLTensor *const *t, void *stream) {
  return causal_forward(c, t, NULL, stream);
}

/* The backward's buffers after q, k, v and out (the forward's, as lse). */
enum { LSE = OUT + 1, DOUT, DQ, DK, DV, WORKSPACE };

/* Causal like the prefill: a decoder trains with the mask, and it halves the work the defaults
 * were chosen at. Out and lse are the forward's, computed on the GPU at setup (prepare): random
 * ones would overflow exp(s - lse). */
static yk_status define_backward(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  yk_status st = half_types_only(c);
  if (st) return st;
  const int64_t q[4] = {s.batch, s.length, m->q_heads, m->head_dim},
                kv[4] = {s.batch, s.length, m->kv_heads, m->head_dim}, lse[3] = {s.batch, m->q_heads, s.length};
  yk_tune_buffer *b[DV + 1];
  add_qkv_out(c, 4, q, kv, YK_TUNE_DERIVED, b);
  b[LSE] = yk_tune_case_add(c, YK_F32, YK_TUNE_DERIVED, 3, lse, 0, 0);
  b[DOUT] = yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, q, -1, 1);
  b[DQ] = yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 4, q, 0, 0);
  b[DK] = yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 4, kv, 0, 0);
  b[DV] = yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 4, kv, 0, 0);
  /* The sequences of a batch are problems of their own, so the CPU may take the first ones whole;
   * the first queries of a sequence are not one for the backward (unlike the prefill): dk and dv of
   * a key sum over every query row after it. Longer sequences are checked on a separate case of
   * YK_TUNE_CHECK_SEQ tokens, which builds the same spec keys (no field of them depends on the
   * length), so it runs the configuration the sweep applies. */
  if (s.batch * s.length > YK_TUNE_CHECK_SEQ && s.length <= YK_TUNE_CHECK_SEQ)
    for (int i = 0; i <= DV; i++) b[i]->check_shape[0] = YK_TUNE_CHECK_SEQ / s.length;
  else if (s.batch * s.length > YK_TUNE_CHECK_SEQ)
    c->check_at = (yk_tune_shape){1, YK_TUNE_CHECK_SEQ};
  /* the engine's workspace (the rows' stats and the float32 dq): allocating it on the stream would
   * be timed */
  const int64_t floats =
      (int64_t)yk_flash_attention_backward_workspace_floats(m->q_heads, s.batch * s.length, s.batch, m->head_dim, 0);
  yk_tune_case_add(c, YK_F32, YK_TUNE_SCRATCH, 1, &floats, 0, 0);
  c->flops = 2.5 * define_causal(c, m, s); /* dq, dk, dv and the recomputed scores: 5 products for 2 */
  return YK_OK;
}

static yk_status prepare_backward(yk_tune_case *c, DLTensor *const *t, void *stream) {
  return causal_forward(c, t, t[LSE], stream);
}

static yk_status invoke_backward(yk_tune_case *c, DLTensor *const *t, void *stream) {
  yk_attention_params p = {0};
  p.causal = 1;
  p.workspace = t[WORKSPACE]->data ? t[WORKSPACE] : NULL; /* none on the host */
  return yk_flash_attention_backward(c->ctx, t[DOUT], t[Q], t[K], t[V], t[OUT], t[LSE], &p, t[DQ], t[DK], t[DV],
                                     stream);
}

static yk_status define_decode(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  yk_status st = half_types_only(c);
  if (st) return st;
  const int64_t q[3] = {s.batch, m->q_heads, m->head_dim}, kv[4] = {s.batch, s.length, m->kv_heads, m->head_dim};
  yk_tune_buffer *b[4];
  add_qkv_out(c, 3, q, kv, YK_TUNE_OUT, b);
  int64_t checked = DECODE_CHECK_KEYS / (s.length > 0 ? s.length : 1);
  checked = checked < 1 ? 1 : checked > s.batch ? s.batch : checked;
  for (int i = 0; i < 4; i++) b[i]->check_shape[0] = checked;
  /* the engine's workspace for the split-KV partials: allocating it on the stream would be timed */
  const int64_t floats = (int64_t)yk_attention_decode_workspace_floats(c->ctx, s.batch, m->q_heads, m->kv_heads,
                                                                       m->head_dim, s.length, 0, 0);
  yk_tune_case_add(c, YK_F32, YK_TUNE_SCRATCH, 1, &floats, 0, 0);
  c->size = s.batch * s.length;
  c->bytes = 2.0 * (double)s.batch * (double)s.length * m->kv_heads * m->head_dim * 2;
  snprintf(c->shape, sizeof c->shape, "B%lld L%lld q%d kv%d d%d", (long long)s.batch, (long long)s.length, m->q_heads,
           m->kv_heads, m->head_dim);
  return YK_OK;
}

static yk_status invoke_decode(yk_tune_case *c, DLTensor *const *t, void *stream) {
  yk_attention_params p = {0};
  p.workspace = t[4]->data ? t[4] : NULL; /* none on the host, nor without splits */
  return yk_attention_decode(c->ctx, t[Q], t[K], t[V], &p, t[OUT], NULL, stream);
}

const yk_tune_op yk_tune_op_attention_prefill = {
    .name = "attention_prefill",
    .default_shapes = "512,1024,2048,4096,8192,16384",
    .define = define_prefill,
    .invoke = invoke_prefill,
};
const yk_tune_op yk_tune_op_attention_backward = {
    .name = "attention_backward",
    .default_shapes = "1024,4096,16384",
    .define = define_backward,
    .invoke = invoke_backward,
    .prepare = prepare_backward,
};
const yk_tune_op yk_tune_op_attention_decode = {
    .name = "attention_decode",
    .default_shapes = "1x1024,1x4096,1x16384,1x32768,32x1024,32x4096",
    .define = define_decode,
    .invoke = invoke_decode,
};
