/* merge_attention_states: the exact merge of partial attentions by their log-sum-exp; also the
 * combine step of split-KV decode. Template: templates/merge_attention_states.cu.
 * CPU: cpu_fallback/merge_attention_states.c. Tests: tests/test_merge_attention_states.c. */
#include <stdio.h>

#include "cpu_fallback/merge_attention_states.h"
#include "gen/attention.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

enum { HEAD_DIM, IN_TYPE, STATES, VEC, THREADS, SEQS };
static const char *const types[] = {"f32", "f16", "bf16"}; /* yk_dtype order */

static void complete(yk_spec *s) {
  if (s->v[IN_TYPE] == YK_UNSET) s->v[IN_TYPE] = s->dtype;
  if (s->v[STATES] == YK_UNSET) s->v[STATES] = 2;
  if (s->v[VEC] == YK_UNSET && s->v[HEAD_DIM] > 0) {
    /* the narrower of the input and output types sets how many elements fit 16 bytes */
    const int in = yk_default_vec((yk_dtype)s->v[IN_TYPE], s->v[HEAD_DIM]);
    const int outv = yk_default_vec((yk_dtype)s->dtype, s->v[HEAD_DIM]);
    s->v[VEC] = in < outv ? in : outv;
  }
  if (s->v[THREADS] == YK_UNSET) s->v[THREADS] = 128;
  if (s->v[SEQS] == YK_UNSET) s->v[SEQS] = 0;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (s->v[STATES] != 0 && s->v[STATES] != 2)
    return snprintf(why, n, "states %d: 2 (two tensors) or 0 (float32 partials)", s->v[STATES]), 1;
  if (s->v[STATES] == 0 && s->v[IN_TYPE] != YK_F32) return snprintf(why, n, "partials (states=0) are f32"), 1;
  if (s->v[SEQS] && s->v[STATES] != 0) return snprintf(why, n, "seqs=1 places partials (states=0)"), 1;
  if (s->v[HEAD_DIM] % s->v[VEC]) return snprintf(why, n, "head_dim %d is not a multiple of vec", s->v[HEAD_DIM]), 1;
  if (s->v[VEC] * (int)yk_dtype_size((yk_dtype)s->v[IN_TYPE]) > 16)
    return snprintf(why, n, "vec %d of %s is wider than 16 bytes", s->v[VEC], types[s->v[IN_TYPE]]), 1;
  const int per_lane = (s->v[HEAD_DIM] + 32 * s->v[VEC] - 1) / (32 * s->v[VEC]) * s->v[VEC];
  if (!yk_fits_registers(per_lane, s->v[THREADS]))
    return snprintf(why, n, "head_dim %d holds %d floats a lane, more than fit in registers", s->v[HEAD_DIM], per_lane),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_merge_attention_states = {
    .name = "merge_attention_states",
    .summary = "exact merge of partial attentions by log-sum-exp (two states, or split-KV partials)",
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 6,
    .fields =
        {
            {"head_dim", "elements a head", 1, 1024, 0, 0, NULL},
            {"in_type", "dtype of the partial outputs", 0, 2, 0, 1, types},
            {"states", "2: two tensors; 0: float32 partials, their count at run time", 0, 2, 0, 1, NULL},
            {"vec", "elements per vector access", 1, 8, 1, 1, NULL},
            {"threads", "threads a block, a warp a row", 32, 1024, 0, 1, NULL},
            {"seqs", "1: partials of dense queries, placed by (sequence, token)", 0, 1, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .warm_specs = warm_specs,
};

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  for (int d = YK_F16; d <= YK_BF16; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++)
      for (int partials = 0; partials <= 2; partials++) { /* 2: of dense queries */
        yk_spec s;
        yk_spec_init(&s, &yk_op_merge_attention_states, (yk_dtype)d);
        s.v[HEAD_DIM] = req->models[m]->head_dim;
        if (partials) s.v[IN_TYPE] = YK_F32, s.v[STATES] = 0, s.v[SEQS] = partials == 2;
        complete(&s);
        emit(user, &s);
      }
  }
}

static yk_status partials_kernel(yk_ctx *ctx, int dtype, int64_t head_dim, int seqs, yk_spec *spec, yk_kernel **k) {
  yk_spec_init(spec, &yk_op_merge_attention_states, (yk_dtype)dtype);
  spec->v[HEAD_DIM] = (int32_t)head_dim;
  spec->v[IN_TYPE] = YK_F32;
  spec->v[STATES] = 0;
  spec->v[SEQS] = seqs;
  yk_spec_finish(ctx, spec, 0);
  return yk_kernel_get(ctx, spec, k);
}

yk_status yk_merge_partials_prepare(yk_ctx *ctx, int dtype, int64_t head_dim) {
  yk_spec spec;
  yk_kernel *k;
  return partials_kernel(ctx, dtype, head_dim, 0, &spec, &k);
}

yk_status yk_merge_partials(yk_ctx *ctx, int dtype, int64_t tokens, int64_t per, int64_t heads, int64_t head_dim,
                            int splits, const float *part_o, const float *part_lse, const yk_attn_operand *out,
                            const yk_attn_operand *lse, void *stream) {
  yk_spec spec;
  yk_kernel *k;
  /* one token a sequence (per 1) or all of them (a ragged axis): token t at t times one stride */
  const int seqs = per != 1 && per != tokens;
  yk_status st = partials_kernel(ctx, dtype, head_dim, seqs, &spec, &k);
  if (st) return st;
  const void *a = part_o, *b = NULL, *la = part_lse, *lb = NULL;
  void *o = out->data, *lo = lse->data;
  long long a_t = heads * head_dim, a_h = head_dim, zero = 0, la_t = heads, la_h = 1,
            ot = per == 1 ? out->batch_stride : out->seq_stride, oh = out->head_stride,
            lt = per == 1 ? lse->batch_stride : lse->seq_stride, lh = lse->head_stride, obb = out->batch_stride,
            lbb = lse->batch_stride;
  int t = (int)tokens, p = (int)per, h = (int)heads, states = splits;
  void *args[] = {&a, &a_t, &a_h, &b,  &zero, &zero, &la, &la_t, &la_h,   &lb,  &zero, &zero,
                  &o, &ot,  &oh,  &lo, &lt,   &lh,   &t,  &h,    &states, &obb, &lbb,  &p};
  const unsigned rows_per_block = (unsigned)spec.v[THREADS] / 32;
  const unsigned blocks = (unsigned)((tokens * heads + rows_per_block - 1) / rows_per_block);
  return yk_launch_early(ctx, k, blocks, 1, 1, stream, args);
}

yk_status yk_merge_attention_states(yk_ctx *ctx, const DLTensor *o_a, const DLTensor *lse_a, const DLTensor *o_b,
                                    const DLTensor *lse_b, DLTensor *out_o, DLTensor *out_lse, void *stream) {
  static const char op[] = "merge_attention_states";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_view a, b, o, la, lb, lo = {0};
  yk_status st;
  if ((st = yk_view_of(ctx, op, "o_a", o_a, YK_ACCEPT_FLOAT, 3, 3, &a)) ||
      (st = yk_view_of(ctx, op, "o_b", o_b, YK_ACCEPT_FLOAT, 3, 3, &b)) ||
      (st = yk_view_of(ctx, op, "out_o", out_o, YK_ACCEPT_FLOAT, 3, 3, &o)) ||
      (st = yk_view_same_type(ctx, op, "o_a", &a, "o_b", &b)) ||
      (st = yk_view_same_type(ctx, op, "o_a", &a, "out_o", &o)) ||
      (st = yk_view_same_shape(ctx, op, "o_a", &a, "o_b", &b)) ||
      (st = yk_view_same_shape(ctx, op, "o_a", &a, "out_o", &o)) ||
      (st = yk_view_of(ctx, op, "lse_a", lse_a, YK_ACCEPT_FLOAT | YK_ACCEPT_STRIDED, 2, 2, &la)) ||
      (st = yk_view_of(ctx, op, "lse_b", lse_b, YK_ACCEPT_FLOAT | YK_ACCEPT_STRIDED, 2, 2, &lb)) ||
      (out_lse && (st = yk_view_of(ctx, op, "out_lse", out_lse, YK_ACCEPT_FLOAT | YK_ACCEPT_STRIDED, 2, 2, &lo))))
    return st;
  const yk_view *lses[] = {&la, &lb, out_lse ? &lo : &la};
  static const char *const lse_names[] = {"lse_a", "lse_b", "out_lse"};
  for (int i = 0; i < 3; i++) {
    if (lses[i]->type != YK_F32)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s must be float32", op, lse_names[i]);
    if (lses[i]->shape[0] != a.shape[0] || lses[i]->shape[1] != a.shape[1])
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s must be [tokens, heads] = [%lld, %lld]", op, lse_names[i],
                      (long long)a.shape[0], (long long)a.shape[1]);
  }
  const yk_view *all[] = {&a, &b, &o, &la, &lb, &lo};
  int on_device;
  if ((st = yk_views_placement(ctx, op, all, out_lse ? 6 : 5, &on_device))) return st;
  const int64_t tokens = a.shape[0], heads = a.shape[1], dim = a.shape[2];
  if (tokens * heads == 0) return YK_OK;
  if (!on_device) {
    yk_merge_args m = {.dtype = a.type,
                       .tokens = tokens,
                       .heads = heads,
                       .head_dim = dim,
                       .o_a = a.data,
                       .o_b = b.data,
                       .out_o = o.data,
                       .o_a_token_stride = a.stride[0],
                       .o_a_head_stride = a.stride[1],
                       .o_b_token_stride = b.stride[0],
                       .o_b_head_stride = b.stride[1],
                       .out_token_stride = o.stride[0],
                       .out_head_stride = o.stride[1],
                       .lse_a = (const float *)(void *)la.data,
                       .lse_b = (const float *)(void *)lb.data,
                       .out_lse = out_lse ? (float *)(void *)lo.data : NULL,
                       .lse_a_token_stride = la.stride[0],
                       .lse_a_head_stride = la.stride[1],
                       .lse_b_token_stride = lb.stride[0],
                       .lse_b_head_stride = lb.stride[1],
                       .out_lse_token_stride = lo.stride[0],
                       .out_lse_head_stride = lo.stride[1]};
    yk_cpu_merge_attention_states(&ctx->pool, &m);
    return YK_OK;
  }
  if (tokens * heads > (int64_t)INT32_MAX * 4) return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^33 rows", op);
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_merge_attention_states, (yk_dtype)a.type);
  spec.v[HEAD_DIM] = (int32_t)dim;
  const uint64_t es = (uint64_t)a.elem_bytes;
  uint64_t bits = (uint64_t)(uintptr_t)a.data | (uint64_t)(uintptr_t)b.data | (uint64_t)(uintptr_t)o.data;
  for (int i = 0; i < 2; i++) bits |= (uint64_t)(a.stride[i] | b.stride[i] | o.stride[i]) * es;
  spec.v[VEC] = yk_vec_width(bits | (uint64_t)dim * es, a.elem_bytes);
  yk_spec_finish(ctx, &spec, 0);
  yk_kernel *k;
  if ((st = yk_kernel_get(ctx, &spec, &k))) return st;
  void *pa = a.data, *pb = b.data, *pla = la.data, *plb = lb.data, *po = o.data, *plo = out_lse ? lo.data : NULL;
  long long s[10] = {a.stride[0],  a.stride[1],  b.stride[0],  b.stride[1], la.stride[0],
                     la.stride[1], lb.stride[0], lb.stride[1], o.stride[0], o.stride[1]};
  long long lo_t = out_lse ? lo.stride[0] : 0, lo_h = out_lse ? lo.stride[1] : 0;
  long long zero = 0;
  int t = (int)tokens, h = (int)heads, states = 2;
  void *args[] = {&pa, &s[0], &s[1], &pb,  &s[2], &s[3], &pla, &s[4], &s[5],   &plb,  &s[6], &s[7],
                  &po, &s[8], &s[9], &plo, &lo_t, &lo_h, &t,   &h,    &states, &zero, &zero, &t};
  const uint64_t rows_per_block = (uint64_t)spec.v[THREADS] / 32;
  const unsigned blocks = (unsigned)(((uint64_t)tokens * heads + rows_per_block - 1) / rows_per_block);
  return yk_launch_early(ctx, k, blocks, 1, 1, stream, args);
}
