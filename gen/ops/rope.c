/* rope: rotary position embedding of q and k in place: spec, launch shape, warm matrix, public call.
 * Template: templates/rope.cu. CPU: cpu_fallback/rope.c. Tests: tests/test_rope.c. */
#include <stdio.h>

#include "cpu_fallback/rope.h"
#include "gen/spec.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

enum { HEAD_DIM, ROT_DIM, STYLE, VEC, THREADS, CACHE_TYPE, POS_TYPE };
enum { NEOX = 0, GPTJ = 1 };
#define MAX_HEAD_DIM 512 /* the CPU path rotates a head through a 512-float stack buffer */
static const char *const styles[] = {"neox", "gptj"};
static const char *const cache_types[] = {"f32", "f16", "bf16"}; /* yk_dtype order */
static const char *const pos_types[] = {"int32", "int64"};

/* Elements whose vector loads must be aligned: a chunk of q/k, and of the cos/sin rows. */
static int chunk_span(const yk_spec *s) { return s->v[STYLE] == NEOX ? s->v[ROT_DIM] / 2 : s->v[ROT_DIM]; }

static void complete(yk_spec *s) {
  if (s->v[ROT_DIM] == YK_UNSET) s->v[ROT_DIM] = s->v[HEAD_DIM];
  if (s->v[STYLE] == YK_UNSET) s->v[STYLE] = NEOX;
  if (s->v[CACHE_TYPE] == YK_UNSET) s->v[CACHE_TYPE] = s->dtype;
  if (s->v[POS_TYPE] == YK_UNSET) s->v[POS_TYPE] = 1;
  if (s->v[THREADS] == YK_UNSET) s->v[THREADS] = 128;
  if (s->v[VEC] == YK_UNSET && s->v[ROT_DIM] > 0) s->v[VEC] = yk_default_vec((yk_dtype)s->dtype, chunk_span(s));
}

static int valid(const yk_spec *s, char *why, size_t n) {
  const int vec = s->v[VEC];
  if (s->v[HEAD_DIM] % 2 || s->v[ROT_DIM] % 2)
    return snprintf(why, n, "head_dim %d and rot_dim %d must be even", s->v[HEAD_DIM], s->v[ROT_DIM]), 1;
  if (s->v[ROT_DIM] > s->v[HEAD_DIM])
    return snprintf(why, n, "rot_dim %d exceeds head_dim %d", s->v[ROT_DIM], s->v[HEAD_DIM]), 1;
  if (s->v[STYLE] == GPTJ && vec < 2) return snprintf(why, n, "gptj needs vec >= 2 (whole pairs)"), 1;
  if (chunk_span(s) % vec)
    return snprintf(why, n, "vec %d does not divide the %s span %d", vec, styles[s->v[STYLE]], chunk_span(s)), 1;
  const int held = (s->v[STYLE] == NEOX ? 6 : 2) * vec; /* both halves, cos, sin, results */
  if (!yk_fits_registers(held, s->v[THREADS]))
    return snprintf(why, n, "vec %d holds %d floats a thread, more than fit in registers at %d threads", vec, held,
                    s->v[THREADS]),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

static const char *const includes[] = {"rope_rotate.cuh", NULL}; /* the rotation rope and append_kv share */

const yk_op_def yk_op_rope = {
    .name = "rope",
    .summary = "rotary position embedding of q and k in place, NeoX or GPT-J style, from vLLM's cos_sin_cache",
    .includes = includes,
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 7,
    .fields =
        {
            {"head_dim", "elements a head", 2, MAX_HEAD_DIM, 0, 0, NULL},
            {"rot_dim", "rotated elements a head (even, <= head_dim)", 2, MAX_HEAD_DIM, 0, 1, NULL},
            {"style", "pairing: neox rotates halves, gptj interleaved pairs", 0, 1, 0, 1, styles},
            {"vec", "elements per vector access (16 bytes at most)", 1, 8, 1, 1, NULL},
            {"threads", "threads a block; one block a token", 32, 1024, 0, 1, NULL},
            {"cache_type", "dtype of cos_sin_cache", 0, 2, 0, 1, cache_types},
            {"pos_type", "dtype of positions", 0, 1, 0, 1, pos_types},
        },
    .complete = complete,
    .valid = valid,
    .warm_specs = warm_specs,
};

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  for (int d = 0; d < YK_DTYPE_COUNT; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++) {
      yk_spec s;
      yk_spec_init(&s, &yk_op_rope, (yk_dtype)d);
      s.v[HEAD_DIM] = req->models[m]->head_dim;
      complete(&s);
      emit(user, &s);
    }
  }
}

/* The cos and sin tables of a call: rotary_dim / 2 values a position, rows row_stride apart. */
typedef struct {
  yk_view view; /* of the cos table, for dtype, placement and rows */
  char *cos, *sin;
  int64_t rot_dim, max_position, row_stride;
} rope_tables;

/* Token t of q, k or positions is (t / seq, t % seq) with these strides; [tokens, ...] tensors
 * are a batch of one sequence. */
typedef struct {
  int64_t batch, seq;
} token_axes;

static void token_strides(const yk_view *v, int token_dims, int64_t *batch_stride, int64_t *seq_stride) {
  *batch_stride = token_dims == 2 ? v->stride[0] : 0;
  *seq_stride = v->stride[token_dims - 1];
}

static yk_status run(yk_ctx *ctx, const char *op, DLTensor *q, DLTensor *k, const rope_tables *tab,
                     const yk_view *sin_view, const DLTensor *positions, yk_rope_style style, void *stream) {
  yk_view qv, kv = {0}, pv;
  const yk_view *cv = &tab->view;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "q", q, YK_ACCEPT_FLOAT, 3, 4, &qv))) return st;
  const int token_dims = qv.ndim - 2; /* [tokens] or [batch, seq] */
  if ((k && (st = yk_view_of(ctx, op, "k", k, YK_ACCEPT_FLOAT, qv.ndim, qv.ndim, &kv))) ||
      (st = yk_view_of(ctx, op, "positions", positions, YK_ACCEPT_INDEX, token_dims, token_dims, &pv)) ||
      (k && (st = yk_view_same_type(ctx, op, "q", &qv, "k", &kv))))
    return st;
  if (style != YK_ROPE_NEOX && style != YK_ROPE_GPTJ)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: style %d is neither YK_ROPE_NEOX nor YK_ROPE_GPTJ", op, (int)style);
  const token_axes ax = {token_dims == 2 ? qv.shape[0] : 1, qv.shape[token_dims - 1]};
  const int64_t tokens = ax.batch * ax.seq, head_dim = qv.shape[qv.ndim - 1], q_heads = qv.shape[qv.ndim - 2];
  const int64_t kv_heads = k ? kv.shape[kv.ndim - 2] : 0, rot_dim = tab->rot_dim, max_position = tab->max_position;
  for (int d = 0; d < token_dims; d++) {
    if (k && kv.shape[d] != qv.shape[d])
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k has %lld tokens on dimension %d, q has %lld", op,
                      (long long)kv.shape[d], d, (long long)qv.shape[d]);
    if (pv.shape[d] != qv.shape[d])
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: positions has %lld entries on dimension %d for %lld tokens",
                      op, (long long)pv.shape[d], d, (long long)qv.shape[d]);
  }
  if (k && kv.shape[kv.ndim - 1] != head_dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k has head_dim %lld; it must match q's %lld", op,
                    (long long)kv.shape[kv.ndim - 1], (long long)head_dim);
  if (cv->type != qv.type && cv->type != YK_F32)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the cos and sin tables must be float32 or q's dtype %s, not %s",
                    op, yk_view_type_name(qv.type), yk_view_type_name(cv->type));
  if (rot_dim < 2 || rot_dim % 2 || rot_dim > head_dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: the rotary dim %lld must be even, at least 2 and at most head_dim %lld", op,
                    (long long)rot_dim, (long long)head_dim);
  if (head_dim > MAX_HEAD_DIM)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: head_dim %lld is above %d", op, (long long)head_dim, MAX_HEAD_DIM);
  if (q_heads + kv_heads > (1 << 20) || tokens > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^20 heads or 2^31 - 1 tokens", op);
  const yk_view *all[] = {&qv, cv, &pv, sin_view, &kv};
  int on_device;
  if ((st = yk_views_placement(ctx, op, all, k ? 5 : 4, &on_device))) return st;
  if (tokens == 0) return YK_OK;
  if (max_position == 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the cos and sin tables have no rows", op);
  int64_t q_b, q_s, k_b = 0, k_s = 0, p_b, p_s;
  token_strides(&qv, token_dims, &q_b, &q_s);
  if (k) token_strides(&kv, token_dims, &k_b, &k_s);
  token_strides(&pv, token_dims, &p_b, &p_s);
  const int64_t q_h = qv.stride[qv.ndim - 2], k_h = k ? kv.stride[kv.ndim - 2] : 0;

  if (!on_device) {
    yk_rope_args a = {qv.type,     cv->type, style == YK_ROPE_NEOX, tokens, ax.seq, q_heads, kv_heads, head_dim,
                      rot_dim,     qv.data,  q_b,                   q_s,    q_h,    k ? kv.data : NULL, k_b, k_s,
                      k_h,         tab->cos, tab->sin,              tab->row_stride, max_position, pv.data, p_b,
                      p_s,         pv.type == YK_I64};
    int64_t bad = yk_cpu_rope(&ctx->pool, &a);
    if (bad >= 0) {
      const int64_t at = bad / ax.seq * p_b + bad % ax.seq * p_s;
      long long pos = pv.type == YK_I64 ? ((const long long *)pv.data)[at] : ((const int *)pv.data)[at];
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: positions[%lld] = %lld is outside [0, %lld)", op,
                      (long long)bad, pos, (long long)max_position);
    }
    return YK_OK;
  }
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_rope, (yk_dtype)qv.type);
  spec.v[HEAD_DIM] = (int32_t)head_dim;
  spec.v[ROT_DIM] = (int32_t)rot_dim;
  spec.v[STYLE] = style == YK_ROPE_NEOX ? NEOX : GPTJ;
  spec.v[CACHE_TYPE] = cv->type;
  spec.v[POS_TYPE] = pv.type == YK_I64;
  /* q and k vectors: addresses, strides and the span a chunk tiles; cos/sin vectors (VEC or VEC/2
   * elements of the table type): the tables' addresses and row stride. */
  const uint64_t es = (uint64_t)qv.elem_bytes, cs = (uint64_t)cv->elem_bytes;
  uint64_t qk_bits = (uint64_t)(uintptr_t)qv.data | (uint64_t)(q_b | q_s | q_h) * es | (uint64_t)chunk_span(&spec) * es;
  if (k) qk_bits |= (uint64_t)(uintptr_t)kv.data | (uint64_t)(k_b | k_s | k_h) * es;
  int vec = yk_vec_width(qk_bits, qv.elem_bytes);
  const uint64_t table_bits =
      (uint64_t)(uintptr_t)tab->cos | (uint64_t)(uintptr_t)tab->sin | (uint64_t)tab->row_stride * cs;
  int table_vec = yk_vec_width(table_bits, cv->elem_bytes) * (style == YK_ROPE_GPTJ ? 2 : 1);
  if (yk_vec_width(table_bits, 1) < 16 && table_vec < vec) vec = table_vec;
  spec.v[VEC] = vec;
  yk_spec_finish(ctx, &spec, tokens);
  if (spec.v[STYLE] == GPTJ && spec.v[VEC] < 2)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: gptj style needs q, k and the tables aligned to whole pairs", op);
  yk_kernel *kern;
  if ((st = yk_kernel_get(ctx, &spec, &kern))) return st;
  void *qp = qv.data, *kp = k ? kv.data : NULL, *cp = tab->cos, *sp = tab->sin, *pp = pv.data;
  int qh = (int)q_heads, kh = (int)kv_heads, seq = (int)ax.seq;
  long long ls[8] = {q_b, q_s, q_h, k_b, k_s, k_h, p_b, p_s};
  long long trs = tab->row_stride, maxp = max_position;
  void *args[] = {&qp, &kp, &cp, &sp, &pp, &qh, &kh, &seq, &ls[0], &ls[1], &ls[2], &ls[3], &ls[4], &ls[5], &ls[6],
                  &ls[7], &trs, &maxp};
  return yk_launch(ctx, kern, (unsigned)tokens, 1, 1, stream, args);
}

yk_status yk_rope(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos_sin_cache, const DLTensor *positions,
                  yk_rope_style style, void *stream) {
  static const char op[] = "rope";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  rope_tables t;
  yk_status st = yk_view_of(ctx, op, "cos_sin_cache", cos_sin_cache, YK_ACCEPT_FLOAT, 2, 2, &t.view);
  if (st) return st;
  t.rot_dim = t.view.shape[1];
  if (t.rot_dim % 2)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos_sin_cache rows hold %lld values; the rotary dim must be even",
                    op, (long long)t.rot_dim);
  t.max_position = t.view.shape[0];
  t.row_stride = t.view.stride[0];
  t.cos = t.view.data;
  t.sin = t.view.data + t.rot_dim / 2 * t.view.elem_bytes;
  return run(ctx, op, q, k, &t, &t.view, positions, style, stream);
}

yk_status yk_rope_cos_sin(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos, const DLTensor *sin,
                          const DLTensor *positions, int rotary_dim, yk_rope_style style, void *stream) {
  static const char op[] = "rope_cos_sin";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  rope_tables t;
  yk_view sv;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "cos", cos, YK_ACCEPT_FLOAT, 2, 2, &t.view)) ||
      (st = yk_view_of(ctx, op, "sin", sin, YK_ACCEPT_FLOAT, 2, 2, &sv)) ||
      (st = yk_view_same_type(ctx, op, "cos", &t.view, "sin", &sv)) ||
      (st = yk_view_same_shape(ctx, op, "cos", &t.view, "sin", &sv)))
    return st;
  if (sv.stride[0] != t.view.stride[0] && t.view.shape[0] > 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos and sin must have the same row stride", op);
  if (rotary_dim < 2 || rotary_dim % 2 || rotary_dim / 2 > t.view.shape[1])
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: rotary_dim %d must be even, at least 2, and its half fit the %lld values of a table row", op,
                    rotary_dim, (long long)t.view.shape[1]);
  t.rot_dim = rotary_dim;
  t.max_position = t.view.shape[0];
  t.row_stride = t.view.stride[0];
  t.cos = t.view.data;
  t.sin = sv.data;
  return run(ctx, op, q, k, &t, &sv, positions, style, stream);
}
