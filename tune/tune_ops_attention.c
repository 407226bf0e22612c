/* The attention ops of a sweep at a model's heads: the causal prefill (flash_attention_forward)
 * over sequence lengths, and decode over batch x context. Prefill counts 4 B H S^2 D / 2 flops
 * (causal), decode the bytes of K and V read, as yk bench does. */
#include <stdio.h>

#include "runtime/error.h"
#include "tune/tune_case.h"

/* Decode checks at most this many keys a head against the CPU (a few GFLOP), from the first
 * sequences of the batch: the rest are the same kernel on other rows. */
#define DECODE_CHECK_KEYS 131072

static yk_status half_types_only(yk_tune_case *c) {
  return c->dtype == YK_F32 ? yk_error(c->ctx, YK_ERR_UNSUPPORTED, "tune: %s takes f16 or bf16", c->op->name) : YK_OK;
}

static yk_status define_prefill(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  yk_status st = half_types_only(c);
  if (st) return st;
  const int64_t q[4] = {s.batch, s.length, m->q_heads, m->head_dim},
                kv[4] = {s.batch, s.length, m->kv_heads, m->head_dim};
  yk_tune_buffer *b[4] = {
      yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, q, -1, 1), yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1),
      yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1), yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 4, q, 0, 0)};
  /* the CPU takes the first queries of the first sequence: with the causal mask they see only the
   * keys before them, so that leading part of q, k and v is a whole problem of its own */
  if (s.batch * s.length > YK_TUNE_CHECK_SEQ)
    for (int i = 0; i < 4; i++) {
      b[i]->check_shape[0] = 1;
      b[i]->check_shape[1] = s.length < YK_TUNE_CHECK_SEQ ? s.length : YK_TUNE_CHECK_SEQ;
    }
  c->size = s.batch * s.length;
  c->flops = 4.0 * (double)s.batch * m->q_heads * (double)s.length * (double)s.length * m->head_dim / 2;
  snprintf(c->shape, sizeof c->shape, "B%lld S%lld q%d kv%d d%d causal", (long long)s.batch, (long long)s.length,
           m->q_heads, m->kv_heads, m->head_dim);
  return YK_OK;
}

static yk_status invoke_prefill(yk_tune_case *c, DLTensor *const *t, void *stream) {
  yk_attention_params p = {0};
  p.causal = 1;
  return yk_flash_attention_forward(c->ctx, t[0], t[1], t[2], &p, t[3], NULL, stream);
}

static yk_status define_decode(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  yk_status st = half_types_only(c);
  if (st) return st;
  const int64_t q[3] = {s.batch, m->q_heads, m->head_dim}, kv[4] = {s.batch, s.length, m->kv_heads, m->head_dim};
  yk_tune_buffer *b[4] = {
      yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 3, q, -1, 1), yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1),
      yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 4, kv, -1, 1), yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 3, q, 0, 0)};
  int64_t checked = DECODE_CHECK_KEYS / (s.length > 0 ? s.length : 1);
  checked = checked < 1 ? 1 : checked > s.batch ? s.batch : checked;
  for (int i = 0; i < 4; i++) b[i]->check_shape[0] = checked;
  /* the engine's workspace for the split-KV partials: allocating it on the stream would be timed */
  const int64_t floats =
      (int64_t)yk_attention_decode_workspace_floats(c->ctx, s.batch, m->q_heads, m->kv_heads, m->head_dim, s.length, 0);
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
  return yk_attention_decode(c->ctx, t[0], t[1], t[2], &p, t[3], NULL, stream);
}

const yk_tune_op yk_tune_op_attention_prefill = {"attention_prefill", "512,1024,2048,4096,8192,16384", define_prefill,
                                                 invoke_prefill};
const yk_tune_op yk_tune_op_attention_decode = {"attention_decode", "1x1024,1x4096,1x16384,1x32768,32x1024,32x4096",
                                                define_decode, invoke_decode};
