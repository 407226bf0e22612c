/* rms_norm and fused_add_rms_norm: the CPU fallback against float64, the GPU against the fallback,
 * and every kind of bad input. */
#include <math.h>
#include <stdlib.h>

#include "cpu_fallback/rms_norm.h"
#include "tests/support.h"

typedef struct {
  int64_t rows, hidden, pad; /* pad: extra elements between rows (a strided view) */
} test_shape;

/* Odd lengths (vec 1 and 2 paths), tails past the threads' last full pass, strided rows, model sizes. */
static const test_shape shapes[] = {{1, 1, 0},     {3, 7, 0},    {5, 128, 0},   {17, 4096, 0},
                                    {4, 4097, 0},  {2, 8195, 5}, {64, 5120, 8}, {9, 3584, 0},
                                    {3, 40000, 0}, {130, 96, 4}, {2, 12, 3},    {1, 65536, 0}};
#define SHAPE_COUNT (int)(sizeof shapes / sizeof shapes[0])

typedef struct {
  yh_tensor x, residual, weight, out;
} case_tensors;

static void make_case(case_tensors *c, yk_ctx *ctx, int dtype, test_shape s, int on_device, yh_rng *rng) {
  const int64_t dims[2] = {s.rows, s.hidden}, strides[2] = {s.hidden + s.pad, 1};
  cr_assert_eq(yh_tensor_init(&c->x, ctx, dtype, 2, dims, strides, on_device), 0);
  cr_assert_eq(yh_tensor_init(&c->residual, ctx, dtype, 2, dims, strides, on_device), 0);
  cr_assert_eq(yh_tensor_init(&c->weight, ctx, dtype, 1, &s.hidden, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&c->out, ctx, dtype, 2, dims, NULL, on_device), 0);
  yh_fill_uniform(&c->x, rng, -2, 2);
  yh_fill_uniform(&c->residual, rng, -2, 2);
  yh_fill_uniform(&c->weight, rng, -1.5, 1.5);
  yh_poison(&c->out);
}

static void free_case(case_tensors *c) {
  yh_tensor_free(&c->x);
  yh_tensor_free(&c->residual);
  yh_tensor_free(&c->weight);
  yh_tensor_free(&c->out);
}

static double *doubles(yh_tensor *t) {
  double *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *d);
  cr_assert_not_null(d);
  yh_to_double(t, d);
  return d;
}

Test(rms_norm, cpu_matches_float64_reference) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("rms_norm.cpu");
  yh_rng rng = {seed};
  for (int t = 0; t < 3; t++)
    for (int i = 0; i < SHAPE_COUNT; i++)
      for (int fused = 0; fused <= 1; fused++) {
        const int dtype = ts_float_types[t];
        const test_shape s = shapes[i];
        case_tensors c;
        make_case(&c, ctx, dtype, s, 0, &rng);
        double *x = doubles(&c.x), *res = doubles(&c.residual), *w = doubles(&c.weight);
        double *ref = malloc((size_t)(s.rows * s.hidden) * sizeof *ref);
        yk_reference_rms_norm(dtype, s.rows, s.hidden, x, fused ? res : NULL, w, 1e-6, ref);
        ts_round_to_dtype(dtype, ref, s.rows * s.hidden);
        void *x_before = yh_snapshot(&c.x), *res_before = yh_snapshot(&c.residual);
        yk_status st = fused ? yk_fused_add_rms_norm(ctx, &c.x.dl, &c.residual.dl, &c.weight.dl, 1e-6f, NULL)
                             : yk_rms_norm(ctx, &c.x.dl, &c.weight.dl, 1e-6f, &c.out.dl, NULL);
        cr_assert_eq(st, YK_OK, "%s", yk_ctx_last_error(ctx));
        double *got = doubles(fused ? &c.x : &c.out);
        double err = yh_rel_error(got, ref, s.rows * s.hidden);
        cr_assert(err < ts_reference_tolerance(dtype), "%s %lldx%lld+%lld fused=%d: rel err %.3g (seed %llu)",
                  ts_type_name(dtype), (long long)s.rows, (long long)s.hidden, (long long)s.pad, fused, err,
                  (unsigned long long)seed);
        if (fused) {
          double *got_res = doubles(&c.residual);
          double res_err = yh_rel_error(got_res, res, s.rows * s.hidden);
          cr_assert(res_err == 0, "residual differs from round(x + residual): %.3g (seed %llu)", res_err,
                    (unsigned long long)seed);
          free(got_res);
          cr_assert_eq(yh_gap_bytes_changed(&c.residual, res_before), 0, "wrote between residual rows");
        } else {
          cr_assert_eq(yh_bytes_changed(&c.x, x_before), 0, "rms_norm wrote into x");
        }
        cr_assert_eq(yh_gap_bytes_changed(&c.x, x_before), 0, "wrote between rows of x");
        free(x_before), free(res_before), free(got), free(x), free(res), free(w), free(ref);
        free_case(&c);
      }
  yk_ctx_destroy(ctx);
}

Test(rms_norm, cpu_in_place_and_batched_leading_dims) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {ts_seed("rms_norm.inplace")};
  const int64_t dims[3] = {3, 5, 64};
  yh_tensor x, w;
  cr_assert_eq(yh_tensor_init(&x, ctx, YK_BF16, 3, dims, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&w, ctx, YK_BF16, 1, &dims[2], NULL, 0), 0);
  yh_fill_uniform(&x, &rng, -3, 3);
  yh_fill_uniform(&w, &rng, 0.5, 1.5);
  double *xd = doubles(&x), *wd = doubles(&w), *ref = malloc(15 * 64 * sizeof *ref);
  yk_reference_rms_norm(YK_BF16, 15, 64, xd, NULL, wd, 1e-5, ref);
  cr_assert_eq(yk_rms_norm(ctx, &x.dl, &w.dl, 1e-5f, &x.dl, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  double *got = doubles(&x);
  cr_assert_lt(yh_rel_error(got, ref, 15 * 64), ts_reference_tolerance(YK_BF16));
  free(xd), free(wd), free(ref), free(got);
  yh_tensor_free(&x), yh_tensor_free(&w);
  yk_ctx_destroy(ctx);
}

/* One shape on the GPU against the CPU fallback on identical inputs, the output poisoned before
 * the launch; checks the output, the residual, and that nothing between rows was written. */
static void gpu_matches_cpu(yk_ctx *gpu, yk_ctx *cpu, int dtype, test_shape s, int fused, yh_rng *rng, uint64_t seed) {
  case_tensors h, d;
  make_case(&h, cpu, dtype, s, 0, rng);
  make_case(&d, gpu, dtype, s, 1, rng);
  yh_tensor_copy(&d.x, &h.x), yh_tensor_copy(&d.residual, &h.residual), yh_tensor_copy(&d.weight, &h.weight);
  void *gaps = yh_snapshot(&d.x);
  yk_status st;
  if (fused) {
    cr_assert_eq(yk_fused_add_rms_norm(cpu, &h.x.dl, &h.residual.dl, &h.weight.dl, 1e-6f, NULL), YK_OK);
    st = yk_fused_add_rms_norm(gpu, &d.x.dl, &d.residual.dl, &d.weight.dl, 1e-6f, NULL);
  } else {
    cr_assert_eq(yk_rms_norm(cpu, &h.x.dl, &h.weight.dl, 1e-6f, &h.out.dl, NULL), YK_OK);
    st = yk_rms_norm(gpu, &d.x.dl, &d.weight.dl, 1e-6f, &d.out.dl, NULL);
  }
  cr_assert_eq(st, YK_OK, "%s", yk_ctx_last_error(gpu));
  cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
  double *want = doubles(fused ? &h.x : &h.out), *got = doubles(fused ? &d.x : &d.out);
  double err = ts_gpu_error(got, want, s.rows * s.hidden);
  cr_assert(err < ts_gpu_tolerance(dtype), "%s %lldx%lld+%lld fused=%d: rel err %.3g (seed %llu)", ts_type_name(dtype),
            (long long)s.rows, (long long)s.hidden, (long long)s.pad, fused, err, (unsigned long long)seed);
  if (fused) {
    double *want_r = doubles(&h.residual), *got_r = doubles(&d.residual);
    cr_assert(yh_rel_error(got_r, want_r, s.rows * s.hidden) == 0, "residual differs (seed %llu)",
              (unsigned long long)seed);
    free(want_r), free(got_r);
  }
  cr_assert_eq(yh_gap_bytes_changed(&d.x, gaps), 0, "GPU wrote between rows");
  free(gaps), free(want), free(got);
  free_case(&h), free_case(&d);
}

Test(rms_norm, gpu_matches_cpu_fallback) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("rms_norm.gpu");
  yh_rng rng = {seed};
  for (int t = 0; t < 3; t++)
    for (int i = 0; i < SHAPE_COUNT; i++)
      for (int fused = 0; fused <= 1; fused++)
        gpu_matches_cpu(gpu, cpu, ts_float_types[t], shapes[i], fused, &rng, seed);
  yk_ctx_destroy(cpu);
  yk_ctx_destroy(gpu);
}

/* Rows too long to stay in registers take the two-pass variant. */
Test(rms_norm, gpu_long_rows_read_twice) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("rms_norm.long");
  yh_rng rng = {seed};
  const test_shape s = {2, 131080, 8};
  for (int t = 0; t < 3; t++)
    for (int fused = 0; fused <= 1; fused++) gpu_matches_cpu(gpu, cpu, ts_float_types[t], s, fused, &rng, seed);
  yk_ctx_destroy(cpu);
  yk_ctx_destroy(gpu);
}

/* ---- bad input: a status, a message naming the problem, and nothing written ---- */

static void bad_inputs(yk_ctx *ctx, int on_device) {
  yh_rng rng = {1};
  const int64_t dims[2] = {4, 64}, wlen = 64, wrong = 63;
  yh_tensor x, w, out, w_bad, xi;
  cr_assert_eq(yh_tensor_init(&x, ctx, YK_BF16, 2, dims, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&w, ctx, YK_BF16, 1, &wlen, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&out, ctx, YK_BF16, 2, dims, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&w_bad, ctx, YK_BF16, 1, &wrong, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&xi, ctx, YK_I32, 2, dims, NULL, on_device), 0);
  yh_fill_uniform(&x, &rng, -1, 1), yh_fill_uniform(&w, &rng, -1, 1), yh_fill_uniform(&out, &rng, -1, 1);
  void *out_before = yh_snapshot(&out), *x_before = yh_snapshot(&x);

  cr_assert_eq(yk_rms_norm(NULL, &x.dl, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT);
  ts_assert_rejected(ctx, yk_rms_norm(ctx, NULL, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "x is NULL");
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, 1e-6f, NULL, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &xi.dl, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                     "expected dtype float32, float16 or bfloat16, got int32");
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w_bad.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                     "weight has 63 elements");
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, NAN, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "eps");
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, -1.f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "eps");

  DLTensor t = out.dl; /* wrong dtype on out */
  t.dtype.code = kDLFloat;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, 1e-6f, &t, NULL), YK_ERR_INVALID_ARGUMENT,
                     "out is float16 but x is bfloat16");
  int64_t shape[2] = {4, 32}; /* wrong shape on out */
  t = out.dl, t.shape = shape;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, 1e-6f, &t, NULL), YK_ERR_INVALID_ARGUMENT,
                     "out has shape [4, 32]");
  int64_t strided[2] = {64, 2}; /* last dimension not contiguous */
  t = x.dl, t.strides = strided, shape[1] = 32, t.shape = shape;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "contiguous");
  int64_t overlap[2] = {0, 1}; /* output rows on top of each other */
  t = out.dl, t.strides = overlap;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &x.dl, &w.dl, 1e-6f, &t, NULL), YK_ERR_INVALID_ARGUMENT, "rows overlap");
  int64_t dims3[3] = {2, 2, 64}, not_walkable[3] = {64, 128, 1}; /* leading dims not one stride */
  t = x.dl, t.ndim = 3, t.shape = dims3, t.strides = not_walkable;
  DLTensor o3 = out.dl;
  o3.ndim = 3, o3.shape = dims3, o3.strides = NULL;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &o3, NULL), YK_ERR_INVALID_ARGUMENT, "one row stride");
  t = x.dl, t.data = NULL;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "data is NULL");
  t = x.dl, t.device.device_type = kDLOpenCL;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_UNSUPPORTED, "device type 4");
  t = x.dl, t.device.device_type = on_device ? kDLCPU : kDLCUDA;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                     "mix host and device memory");
  if (on_device) { /* a tensor on another device than the context's */
    t = x.dl, t.device.device_id = 7;
    ts_assert_rejected(ctx, yk_rms_norm(ctx, &t, &w.dl, 1e-6f, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                       "on CUDA device 7");
  } else { /* device memory handed to a context without a GPU */
    DLTensor dx = x.dl, dw = w.dl, dout = out.dl;
    dx.device.device_type = dw.device.device_type = dout.device.device_type = kDLCUDA;
    ts_assert_rejected(ctx, yk_rms_norm(ctx, &dx, &dw, 1e-6f, &dout, NULL), YK_ERR_NO_DEVICE, "no CUDA device");
  }
  ts_assert_rejected(ctx, yk_fused_add_rms_norm(ctx, &x.dl, NULL, &w.dl, 1e-6f, NULL), YK_ERR_INVALID_ARGUMENT,
                     "residual is NULL");
  ts_assert_rejected(ctx, yk_fused_add_rms_norm(ctx, &x.dl, &xi.dl, &w.dl, 1e-6f, NULL), YK_ERR_INVALID_ARGUMENT,
                     "residual: expected dtype");

  cr_assert_eq(yh_bytes_changed(&out, out_before), 0, "a rejected call wrote to out");
  cr_assert_eq(yh_bytes_changed(&x, x_before), 0, "a rejected call wrote to x");
  free(out_before), free(x_before);
  yh_tensor_free(&x), yh_tensor_free(&w), yh_tensor_free(&out), yh_tensor_free(&w_bad), yh_tensor_free(&xi);
}

Test(rms_norm, bad_input_cpu) {
  yk_ctx *ctx = ts_cpu_ctx();
  bad_inputs(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(rms_norm, bad_input_gpu) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  bad_inputs(ctx, 1);
  yk_ctx_destroy(ctx);
}
