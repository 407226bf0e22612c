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

const yk_op_def yk_op_rope = {
    .name = "rope",
    .summary = "rotary position embedding of q and k in place, NeoX or GPT-J style, from vLLM's cos_sin_cache",
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

yk_status yk_rope(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos_sin_cache, const DLTensor *positions,
                  yk_rope_style style, void *stream) {
  static const char op[] = "rope";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_view qv, kv = {0}, cv, pv;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "q", q, YK_ACCEPT_FLOAT, 3, 3, &qv)) ||
      (k && (st = yk_view_of(ctx, op, "k", k, YK_ACCEPT_FLOAT, 3, 3, &kv))) ||
      (st = yk_view_of(ctx, op, "cos_sin_cache", cos_sin_cache, YK_ACCEPT_FLOAT, 2, 2, &cv)) ||
      (st = yk_view_of(ctx, op, "positions", positions, YK_ACCEPT_INDEX, 1, 1, &pv)) ||
      (k && (st = yk_view_same_type(ctx, op, "q", &qv, "k", &kv))))
    return st;
  if (style != YK_ROPE_NEOX && style != YK_ROPE_GPTJ)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: style %d is neither YK_ROPE_NEOX nor YK_ROPE_GPTJ", op,
                    (int)style);
  const int64_t tokens = qv.shape[0], head_dim = qv.shape[2], rot_dim = cv.shape[1], max_position = cv.shape[0];
  if (k && (kv.shape[0] != tokens || kv.shape[2] != head_dim))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: k is [%lld, %lld, %lld]; tokens and head_dim must match q's [%lld, %lld, %lld]", op,
                    (long long)kv.shape[0], (long long)kv.shape[1], (long long)kv.shape[2], (long long)tokens,
                    (long long)qv.shape[1], (long long)head_dim);
  if (pv.shape[0] != tokens)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: positions has %lld entries for %lld tokens", op,
                    (long long)pv.shape[0], (long long)tokens);
  if (cv.type != qv.type && cv.type != YK_F32)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos_sin_cache must be float32 or q's dtype %s, not %s", op,
                    yk_view_type_name(qv.type), yk_view_type_name(cv.type));
  if (rot_dim < 2 || rot_dim % 2 || rot_dim > head_dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: cos_sin_cache rows hold %lld values; the rotary dim must be even, "
                    "at least 2 and at most head_dim %lld",
                    op, (long long)rot_dim, (long long)head_dim);
  if (head_dim > MAX_HEAD_DIM)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: head_dim %lld is above %d", op, (long long)head_dim, MAX_HEAD_DIM);
  if (qv.shape[1] + kv.shape[1] > (1 << 20)) return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^20 heads", op);
  const yk_view *all[] = {&qv, &cv, &pv, &kv};
  int on_device;
  if ((st = yk_views_placement(ctx, op, all, k ? 4 : 3, &on_device))) return st;
  if (tokens == 0 || max_position == 0) {
    if (tokens && max_position == 0)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos_sin_cache has no positions", op);
    return YK_OK;
  }

  if (!on_device) {
    yk_rope_args a = {qv.type,          cv.type,      style == YK_ROPE_NEOX,
                      tokens,           qv.shape[1],  k ? kv.shape[1] : 0,
                      head_dim,         rot_dim,      qv.data,
                      qv.stride[0],     qv.stride[1], k ? kv.data : NULL,
                      kv.stride[0],     kv.stride[1], cv.data,
                      cv.stride[0],     max_position, pv.data,
                      pv.type == YK_I64};
    int64_t bad = yk_cpu_rope(&ctx->pool, &a);
    if (bad >= 0) {
      long long pos = pv.type == YK_I64 ? ((const long long *)pv.data)[bad] : ((const int *)pv.data)[bad];
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
  spec.v[CACHE_TYPE] = cv.type;
  spec.v[POS_TYPE] = pv.type == YK_I64;
  /* q and k vectors: addresses, strides and the span a chunk tiles; cos/sin vectors (VEC or VEC/2 elements of the cache
   * type): the cache address, its row stride and the offset of the sin half. */
  const uint64_t es = (uint64_t)qv.elem_bytes, cs = (uint64_t)cv.elem_bytes;
  uint64_t qk_bits = (uint64_t)(uintptr_t)qv.data | (uint64_t)qv.stride[0] * es | (uint64_t)qv.stride[1] * es |
                     (uint64_t)chunk_span(&spec) * es;
  if (k) qk_bits |= (uint64_t)(uintptr_t)kv.data | (uint64_t)kv.stride[0] * es | (uint64_t)kv.stride[1] * es;
  int vec = yk_vec_width(qk_bits, qv.elem_bytes);
  uint64_t cache_bits = (uint64_t)(uintptr_t)cv.data | (uint64_t)cv.stride[0] * cs | (uint64_t)(rot_dim / 2) * cs;
  int cache_vec = yk_vec_width(cache_bits, cv.elem_bytes) * (style == YK_ROPE_GPTJ ? 2 : 1);
  if (yk_vec_width(cache_bits, 1) < 16 && cache_vec < vec) vec = cache_vec;
  spec.v[VEC] = vec;
  yk_spec_finish(ctx, &spec);
  if (spec.v[STYLE] == GPTJ && spec.v[VEC] < 2)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: gptj style needs q, k and cos_sin_cache aligned to whole pairs", op);
  yk_kernel *kern;
  if ((st = yk_kernel_get(ctx, &spec, &kern))) return st;
  void *qp = qv.data, *kp = k ? kv.data : NULL, *cp = cv.data, *pp = pv.data;
  int q_heads = (int)qv.shape[1], kv_heads = k ? (int)kv.shape[1] : 0;
  long long qts = qv.stride[0], qhs = qv.stride[1], kts = kv.stride[0], khs = kv.stride[1], crs = cv.stride[0],
            maxp = max_position;
  void *args[] = {&qp, &kp, &cp, &pp, &q_heads, &kv_heads, &qts, &qhs, &kts, &khs, &crs, &maxp};
  return yk_launch(ctx, kern, (unsigned)tokens, 1, stream, args);
}
