/* The ops a sweep knows, and the token-wise ones: each one's tensors at a model's widths and a
 * number of tokens, and its public call. The attention ops are in tune/tune_ops_attention.c.
 * Bytes count each input read once and each output written once, as yk bench does. */
#include <stdio.h>
#include <string.h>

#include "cpu_fallback/act_and_mul.h"
#include "tune/tune_case.h"

#define TOKEN_SHAPES "1,16,128,1024,4096,16384" /* decode batches to prefill chunks */
#define ROPE_MAX_POSITION 4096
#define EPS 1e-6f

extern const yk_tune_op yk_tune_op_attention_prefill, yk_tune_op_attention_backward, yk_tune_op_attention_decode;

static double element_bytes(const yk_tune_case *c) { return c->dtype == YK_F32 ? 4 : 2; }

/* Token ops take a batch of sequences as its tokens. */
static int64_t tokens_of(yk_tune_shape s) { return s.batch * s.length; }

static yk_status define_norm(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s, int fused) {
  const int64_t t = tokens_of(s), rows[2] = {t, m->hidden}, width = m->hidden;
  yk_tune_case_add(c, c->dtype, fused ? YK_TUNE_INOUT : YK_TUNE_IN, 2, rows, -2, 2);
  if (fused) yk_tune_case_add(c, c->dtype, YK_TUNE_INOUT, 2, rows, -2, 2);
  yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 1, &width, 0.5, 1.5);
  if (!fused) yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 2, rows, 0, 0);
  c->size = t;
  c->bytes = (fused ? 4.0 : 2.0) * (double)t * (double)m->hidden * element_bytes(c);
  snprintf(c->shape, sizeof c->shape, "T%lld H%d", (long long)t, m->hidden);
  return YK_OK;
}

static yk_status define_rms_norm(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  return define_norm(c, m, s, 0);
}
static yk_status invoke_rms_norm(yk_tune_case *c, DLTensor *const *t, void *stream) {
  return yk_rms_norm(c->ctx, t[0], t[1], EPS, t[2], stream);
}
static yk_status define_fused_add_rms_norm(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  return define_norm(c, m, s, 1);
}
static yk_status invoke_fused_add_rms_norm(yk_tune_case *c, DLTensor *const *t, void *stream) {
  return yk_fused_add_rms_norm(c->ctx, t[0], t[1], t[2], EPS, stream);
}

static yk_status define_rope(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  const int64_t t = tokens_of(s), q[3] = {t, m->q_heads, m->head_dim}, k[3] = {t, m->kv_heads, m->head_dim};
  const int64_t table[2] = {ROPE_MAX_POSITION, m->head_dim};
  yk_tune_case_add(c, c->dtype, YK_TUNE_INOUT, 3, q, -2, 2);
  yk_tune_case_add(c, c->dtype, YK_TUNE_INOUT, 3, k, -2, 2);
  yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 2, table, -1, 1);
  yk_tune_case_add(c, YK_I64, YK_TUNE_IN, 1, &t, 0, ROPE_MAX_POSITION);
  c->size = t;
  c->bytes = 2.0 * (double)t * (m->q_heads + m->kv_heads) * m->head_dim * element_bytes(c);
  snprintf(c->shape, sizeof c->shape, "T%lld q%d kv%d d%d", (long long)t, m->q_heads, m->kv_heads, m->head_dim);
  return YK_OK;
}
static yk_status invoke_rope(yk_tune_case *c, DLTensor *const *t, void *stream) {
  return yk_rope(c->ctx, t[0], t[1], t[2], t[3], YK_ROPE_NEOX, stream);
}

static yk_status define_act_and_mul(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape s) {
  const int64_t t = tokens_of(s), in[2] = {t, 2 * (int64_t)m->intermediate}, out[2] = {t, m->intermediate};
  c->activation = !strcmp(m->activation, "gelu")        ? YK_ACT_GELU
                  : !strcmp(m->activation, "gelu_tanh") ? YK_ACT_GELU_TANH
                                                        : YK_ACT_SILU;
  yk_tune_case_add(c, c->dtype, YK_TUNE_IN, 2, in, -4, 4);
  yk_tune_case_add(c, c->dtype, YK_TUNE_OUT, 2, out, 0, 0);
  c->size = t;
  c->bytes = 3.0 * (double)t * (double)m->intermediate * element_bytes(c);
  snprintf(c->shape, sizeof c->shape, "T%lld I%d %s", (long long)t, m->intermediate, m->activation);
  return YK_OK;
}
static yk_status invoke_act_and_mul(yk_tune_case *c, DLTensor *const *t, void *stream) {
  if (c->activation == YK_ACT_GELU) return yk_gelu_and_mul(c->ctx, t[0], t[1], stream);
  if (c->activation == YK_ACT_GELU_TANH) return yk_gelu_tanh_and_mul(c->ctx, t[0], t[1], stream);
  return yk_silu_and_mul(c->ctx, t[0], t[1], stream);
}

static const yk_tune_op rms_norm = {"rms_norm", TOKEN_SHAPES, define_rms_norm, invoke_rms_norm};
static const yk_tune_op fused_add_rms_norm = {"fused_add_rms_norm", TOKEN_SHAPES, define_fused_add_rms_norm,
                                              invoke_fused_add_rms_norm};
static const yk_tune_op rope = {"rope", TOKEN_SHAPES, define_rope, invoke_rope};
static const yk_tune_op act_and_mul = {"act_and_mul", TOKEN_SHAPES, define_act_and_mul, invoke_act_and_mul};

static const yk_tune_op *const ops[] = {
    &rms_norm,
    &fused_add_rms_norm,
    &rope,
    &act_and_mul,
    &yk_tune_op_attention_prefill,
    &yk_tune_op_attention_backward,
    &yk_tune_op_attention_decode,
};

int yk_tune_op_count(void) { return (int)(sizeof ops / sizeof ops[0]); }

const yk_tune_op *yk_tune_op_get(int index) { return index >= 0 && index < yk_tune_op_count() ? ops[index] : NULL; }

const yk_tune_op *yk_tune_op_find(const char *name) {
  /* the public calls' names for the gated activation, too */
  if (name && strstr(name, "_and_mul")) name = "act_and_mul";
  for (int i = 0; name && i < yk_tune_op_count(); i++)
    if (!strcmp(ops[i]->name, name)) return ops[i];
  return NULL;
}
