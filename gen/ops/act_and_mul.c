/* silu_and_mul, gelu_and_mul, gelu_tanh_and_mul: spec, launch shape, warm matrix, public calls.
 * Template: templates/act_and_mul.cu. CPU: cpu_fallback/act_and_mul.c. Tests: tests/test_act_and_mul.c. */
#include <stdio.h>
#include <string.h>

#include "cpu_fallback/act_and_mul.h"
#include "gen/spec.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

enum { D, VEC, THREADS, ITEMS, ACT };
static const char *const activations[] = {"silu", "gelu", "gelu_tanh"};

static void complete(yk_spec *s) {
  if (s->v[D] > 0 && s->v[VEC] == YK_UNSET) s->v[VEC] = yk_default_vec((yk_dtype)s->dtype, s->v[D]);
  /* One gate/up pair a thread, 256 threads: 2913 GB/s at 4096 x 14336 bf16 on an H100, where 2 pairs
   * gave 2879 and 4 pairs 2389 (yk bench --sweep, bench/results/). */
  if (s->v[THREADS] == YK_UNSET) s->v[THREADS] = 256;
  if (s->v[ITEMS] == YK_UNSET) s->v[ITEMS] = 1;
  if (s->v[ACT] == YK_UNSET) s->v[ACT] = 0;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (s->v[D] % s->v[VEC]) return snprintf(why, n, "d %d is not a multiple of vec %d", s->v[D], s->v[VEC]), 1;
  const int held = 2 * s->v[ITEMS] * s->v[VEC]; /* gate and up vectors in flight */
  if (!yk_fits_registers(held, s->v[THREADS]))
    return snprintf(why, n, "items %d x vec %d holds %d floats a thread, more than fit in registers at %d threads",
                    s->v[ITEMS], s->v[VEC], held, s->v[THREADS]),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_act_and_mul = {
    .name = "act_and_mul",
    .summary = "gated activation act(x[:, :d]) * x[:, d:]: silu_and_mul, gelu_and_mul, gelu_tanh_and_mul",
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 5,
    .fields =
        {
            {"d", "output row length (input rows are 2*d)", 1, 1 << 24, 0, 0, NULL},
            {"vec", "elements per vector access (16 bytes at most)", 1, 8, 1, 1, NULL},
            {"threads", "threads a block", 32, 1024, 0, 1, NULL},
            {"items", "vectors a thread handles", 1, 16, 0, 1, NULL},
            {"act", "activation", 0, 2, 0, 1, activations},
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
      yk_spec_init(&s, &yk_op_act_and_mul, (yk_dtype)d);
      s.v[D] = req->models[m]->intermediate;
      for (int a = 0; a < 3; a++)
        if (strcmp(activations[a], req->models[m]->activation) == 0) s.v[ACT] = a;
      complete(&s);
      emit(user, &s);
    }
  }
}

static yk_status run(yk_ctx *ctx, const char *op, int activation, const DLTensor *x, DLTensor *out, void *stream) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_view xv, ov;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "x", x, YK_ACCEPT_FLOAT, 1, YK_VIEW_MAX_DIMS, &xv)) ||
      (st = yk_view_of(ctx, op, "out", out, YK_ACCEPT_FLOAT, 1, YK_VIEW_MAX_DIMS, &ov)) ||
      (st = yk_view_same_type(ctx, op, "x", &xv, "out", &ov)))
    return st;
  const int64_t two_d = xv.shape[xv.ndim - 1], d = two_d / 2;
  if (two_d == 0 || two_d % 2)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: rows of x must have an even, nonzero length, not %lld", op,
                    (long long)two_d);
  int same = ov.ndim == xv.ndim && ov.shape[ov.ndim - 1] == d;
  for (int i = 0; same && i < xv.ndim - 1; i++) same = ov.shape[i] == xv.shape[i];
  if (!same)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: out must have x's shape with the last dimension halved (%lld)",
                    op, (long long)d);
  int64_t rows, xs, os, unused;
  if ((st = yk_view_rows(ctx, op, "x", &xv, 0, &rows, &xs)) ||
      (st = yk_view_rows(ctx, op, "out", &ov, 1, &unused, &os)))
    return st;
  const yk_view *all[] = {&xv, &ov};
  int on_device;
  if ((st = yk_views_placement(ctx, op, all, 2, &on_device))) return st;
  if (rows == 0) return YK_OK;

  if (!on_device) {
    yk_act_and_mul_args a = {xv.type, activation, rows, d, xv.data, xs, ov.data, os};
    yk_cpu_act_and_mul(&ctx->pool, &a);
    return YK_OK;
  }
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_act_and_mul, (yk_dtype)xv.type);
  spec.v[D] = (int32_t)d;
  spec.v[ACT] = activation;
  const uint64_t es = (uint64_t)xv.elem_bytes;
  spec.v[VEC] = yk_vec_width((uint64_t)(uintptr_t)xv.data | (uint64_t)(uintptr_t)ov.data | (uint64_t)d * es |
                                 (uint64_t)xs * es | (uint64_t)os * es,
                             xv.elem_bytes);
  yk_spec_finish(ctx, &spec, rows);
  yk_kernel *k;
  if ((st = yk_kernel_get(ctx, &spec, &k))) return st;
  const uint64_t vectors = (uint64_t)rows * (uint64_t)(d / spec.v[VEC]);
  const uint64_t per_block = (uint64_t)spec.v[THREADS] * (uint64_t)spec.v[ITEMS];
  const uint64_t blocks = (vectors + per_block - 1) / per_block;
  if (blocks > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: %llu vectors need more than 2^31 - 1 blocks", op,
                    (unsigned long long)vectors);
  void *xp = xv.data, *op_ = ov.data;
  unsigned long long count = vectors;
  long long xstride = xs, ostride = os;
  void *args[] = {&xp, &op_, &count, &xstride, &ostride};
  return yk_launch(ctx, k, (unsigned)blocks, 1, 1, stream, args);
}

yk_status yk_silu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream) {
  return run(ctx, "silu_and_mul", YK_ACT_SILU, x, out, stream);
}
yk_status yk_gelu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream) {
  return run(ctx, "gelu_and_mul", YK_ACT_GELU, x, out, stream);
}
yk_status yk_gelu_tanh_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream) {
  return run(ctx, "gelu_tanh_and_mul", YK_ACT_GELU_TANH, x, out, stream);
}
