/* rms_norm and fused_add_rms_norm: spec, launch shape, warm matrix, and the public calls.
 * Template: templates/rms_norm.cu. CPU: cpu_fallback/rms_norm.c. Tests: tests/test_rms_norm.c. */
#include <math.h>
#include <stdio.h>

#include "cpu_fallback/rms_norm.h"
#include "gen/spec.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

enum { HIDDEN, VEC, THREADS, FUSED_ADD, ROW_IN_REGS };

/* Floats a thread holds when the row stays in registers. */
static int row_floats(int hidden, int vec, int threads) { return (hidden / vec + threads - 1) / threads * vec; }

static void complete(yk_spec *s) {
  const int hidden = s->v[HIDDEN];
  if (s->v[FUSED_ADD] == YK_UNSET) s->v[FUSED_ADD] = 0;
  if (hidden <= 0) return;
  if (s->v[VEC] == YK_UNSET) s->v[VEC] = yk_default_vec((yk_dtype)s->dtype, hidden);
  const int vec = s->v[VEC];
  if (vec <= 0) return;
  const int nvec = hidden / vec;
  int threads = s->v[THREADS];
  if (threads == YK_UNSET) {
    /* Two row vectors a thread, plain or fused: at hidden 4096 bf16, 256 threads. On the H100 that
     * was the best of 64..1024 plain (2838 GB/s), and fused 1% behind 512 threads (2893 against
     * 2920, yk bench --sweep); on the H200 it is 1.03x 512 threads fused at 4096 and 16384 tokens
     * (yk tune, results/2026-12-04-h200-tune-all.md). */
    threads = ((nvec + 1) / 2 + 31) / 32 * 32;
    threads = threads < 32 ? 32 : threads > 1024 ? 1024 : threads;
  }
  if (s->v[ROW_IN_REGS] == YK_UNSET) {
    /* keep the row in registers if some block size lets it fit, else read it twice */
    int t = threads;
    while (t < 1024 && s->v[THREADS] == YK_UNSET && !yk_fits_registers(row_floats(hidden, vec, t), t)) t += 32;
    s->v[ROW_IN_REGS] = yk_fits_registers(row_floats(hidden, vec, t), t);
    threads = s->v[ROW_IN_REGS] ? t : s->v[THREADS] == YK_UNSET ? 1024 : threads;
  }
  s->v[THREADS] = threads;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  const int hidden = s->v[HIDDEN], vec = s->v[VEC], threads = s->v[THREADS];
  if (hidden % vec) return snprintf(why, n, "hidden %d is not a multiple of vec %d", hidden, vec), 1;
  if (s->v[ROW_IN_REGS] && !yk_fits_registers(row_floats(hidden, vec, threads), threads))
    return snprintf(why, n,
                    "a row of %d needs %d floats a thread at %d threads, more than fit in registers "
                    "(%d); use more threads or row_in_regs=0",
                    hidden, row_floats(hidden, vec, threads), threads,
                    yk_register_budget(threads) - YK_REGISTER_OVERHEAD),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_rms_norm = {
    .name = "rms_norm",
    .summary = "RMSNorm over rows, optionally fused with a residual add (fused_add_rms_norm)",
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 5,
    .fields =
        {
            {"hidden", "row length in elements", 1, 1 << 24, 0, 0, NULL},
            {"vec", "elements per vector access (16 bytes at most)", 1, 8, 1, 1, NULL},
            {"threads", "threads a block; one block a row", 32, 1024, 0, 1, NULL},
            {"fused_add", "1: residual += x first, x receives the output", 0, 1, 0, 1, NULL},
            {"row_in_regs", "1: the row stays in registers (one read); 0: it is read twice", 0, 1, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .warm_specs = warm_specs,
};

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  for (int d = 0; d < YK_DTYPE_COUNT; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++)
      for (int fused = 0; fused <= 1; fused++) {
        yk_spec s;
        yk_spec_init(&s, &yk_op_rms_norm, (yk_dtype)d);
        s.v[HIDDEN] = req->models[m]->hidden;
        s.v[FUSED_ADD] = fused;
        complete(&s);
        emit(user, &s);
      }
  }
}

static yk_status run(yk_ctx *ctx, const char *op, const DLTensor *x, DLTensor *residual, const DLTensor *weight,
                     float eps, const DLTensor *out, void *stream) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_view xv, wv, ov, rv;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "x", x, YK_ACCEPT_FLOAT, 1, YK_VIEW_MAX_DIMS, &xv)) ||
      (st = yk_view_of(ctx, op, "weight", weight, YK_ACCEPT_FLOAT, 1, 1, &wv)) ||
      (st = yk_view_of(ctx, op, "out", out, YK_ACCEPT_FLOAT, 1, YK_VIEW_MAX_DIMS, &ov)) ||
      (residual && (st = yk_view_of(ctx, op, "residual", residual, YK_ACCEPT_FLOAT, 1, YK_VIEW_MAX_DIMS, &rv))) ||
      (st = yk_view_same_type(ctx, op, "x", &xv, "weight", &wv)) ||
      (st = yk_view_same_type(ctx, op, "x", &xv, "out", &ov)) ||
      (st = yk_view_same_shape(ctx, op, "x", &xv, "out", &ov)) ||
      (residual && ((st = yk_view_same_type(ctx, op, "x", &xv, "residual", &rv)) ||
                    (st = yk_view_same_shape(ctx, op, "x", &xv, "residual", &rv)))))
    return st;
  const int64_t hidden = xv.shape[xv.ndim - 1];
  if (wv.shape[0] != hidden)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: weight has %lld elements, rows of x have %lld", op,
                    (long long)wv.shape[0], (long long)hidden);
  if (!(eps >= 0.f) || isinf(eps)) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: eps must be finite and >= 0", op);
  if (hidden == 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: rows of x are empty", op);
  int64_t rows, xs, os, rs = 0, unused;
  if ((st = yk_view_rows(ctx, op, "x", &xv, 0, &rows, &xs)) ||
      (st = yk_view_rows(ctx, op, "out", &ov, 1, &unused, &os)) ||
      (residual && (st = yk_view_rows(ctx, op, "residual", &rv, 1, &unused, &rs))))
    return st;
  const yk_view *all[] = {&xv, &wv, &ov, &rv};
  int on_device;
  if ((st = yk_views_placement(ctx, op, all, residual ? 4 : 3, &on_device))) return st;
  if (rows == 0) return YK_OK;

  if (!on_device) {
    yk_rms_norm_args a = {xv.type, rows, hidden, xv.data, xs, residual ? rv.data : NULL, rs, wv.data, ov.data, os, eps};
    yk_cpu_rms_norm(&ctx->pool, &a);
    return YK_OK;
  }
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_rms_norm, (yk_dtype)xv.type);
  spec.v[HIDDEN] = (int32_t)hidden;
  spec.v[FUSED_ADD] = residual != NULL;
  const uint64_t es = (uint64_t)xv.elem_bytes;
  uint64_t bits = (uint64_t)(uintptr_t)xv.data | (uint64_t)(uintptr_t)wv.data | (uint64_t)(uintptr_t)ov.data |
                  (uint64_t)hidden * es | (uint64_t)xs * es | (uint64_t)os * es;
  if (residual) bits |= (uint64_t)(uintptr_t)rv.data | (uint64_t)rs * es;
  spec.v[VEC] = yk_vec_width(bits, xv.elem_bytes);
  yk_spec_finish(ctx, &spec, rows);
  yk_kernel *k;
  if ((st = yk_kernel_get(ctx, &spec, &k))) return st;
  void *xp = xv.data, *rp = residual ? rv.data : NULL, *wp = wv.data, *op_ = ov.data;
  long long xstride = xs, rstride = rs, ostride = os;
  void *args[] = {&xp, &rp, &wp, &op_, &xstride, &rstride, &ostride, &eps};
  return yk_launch(ctx, k, (unsigned)rows, 1, 1, stream, args);
}

yk_status yk_rms_norm(yk_ctx *ctx, const DLTensor *x, const DLTensor *weight, float eps, DLTensor *out, void *stream) {
  return run(ctx, "rms_norm", x, NULL, weight, eps, out, stream);
}

yk_status yk_fused_add_rms_norm(yk_ctx *ctx, DLTensor *x, DLTensor *residual, const DLTensor *weight, float eps,
                                void *stream) {
  if (ctx && !residual) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "fused_add_rms_norm: residual is NULL");
  return run(ctx, "fused_add_rms_norm", x, residual, weight, eps, x, stream);
}
