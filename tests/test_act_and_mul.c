/* silu_and_mul, gelu_and_mul, gelu_tanh_and_mul: the CPU fallback against float64, the GPU against
 * the fallback, and bad input. */
#include <math.h>
#include <stdlib.h>

#include "cpu_fallback/act_and_mul.h"
#include "tests/support.h"

typedef struct {
  int64_t rows, d, pad;
} test_shape;

static const test_shape shapes[] = {{1, 1, 0},     {3, 7, 0},     {5, 128, 1},   {17, 4096, 0}, {4, 4099, 0},
                                    {2, 14336, 8}, {64, 1000, 0}, {1, 18944, 0}, {7, 3, 5},     {1, 65541, 0}};
#define SHAPE_COUNT (int)(sizeof shapes / sizeof shapes[0])

typedef yk_status (*act_fn)(yk_ctx *, const DLTensor *, DLTensor *, void *);
static const act_fn fns[3] = {yk_silu_and_mul, yk_gelu_and_mul, yk_gelu_tanh_and_mul};
static const char *const names[3] = {"silu", "gelu", "gelu_tanh"};

static void make(yh_tensor *x, yh_tensor *out, yk_ctx *ctx, int dtype, test_shape s, int on_device, yh_rng *rng) {
  const int64_t xd[2] = {s.rows, 2 * s.d}, xs[2] = {2 * s.d + s.pad, 1}, od[2] = {s.rows, s.d},
                os[2] = {s.d + s.pad, 1};
  cr_assert_eq(yh_tensor_init(x, ctx, dtype, 2, xd, xs, on_device), 0);
  cr_assert_eq(yh_tensor_init(out, ctx, dtype, 2, od, os, on_device), 0);
  yh_fill_uniform(x, rng, -6, 6); /* wide enough to reach both tails of each activation */
  yh_poison(out);
}

static double *doubles(yh_tensor *t) {
  double *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *d);
  cr_assert_not_null(d);
  yh_to_double(t, d);
  return d;
}

Test(act_and_mul, cpu_matches_float64_reference) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("act_and_mul.cpu");
  yh_rng rng = {seed};
  for (int a = 0; a < 3; a++)
    for (int t = 0; t < 3; t++)
      for (int i = 0; i < SHAPE_COUNT; i++) {
        const int dtype = ts_float_types[t];
        const test_shape s = shapes[i];
        yh_tensor x, out;
        make(&x, &out, ctx, dtype, s, 0, &rng);
        void *gaps = yh_snapshot(&out);
        double *xd = doubles(&x), *ref = malloc((size_t)(s.rows * s.d) * sizeof *ref);
        yk_reference_act_and_mul(a, s.rows, s.d, xd, ref);
        ts_round_to_dtype(dtype, ref, s.rows * s.d);
        cr_assert_eq(fns[a](ctx, &x.dl, &out.dl, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
        double *got = doubles(&out);
        double err = yh_rel_error(got, ref, s.rows * s.d);
        cr_assert(err < ts_reference_tolerance(dtype), "%s %s %lldx%lld+%lld: rel err %.3g (seed %llu)", names[a],
                  ts_type_name(dtype), (long long)s.rows, (long long)s.d, (long long)s.pad, err,
                  (unsigned long long)seed);
        cr_assert_eq(yh_gap_bytes_changed(&out, gaps), 0, "wrote between rows of out");
        free(gaps), free(xd), free(ref), free(got);
        yh_tensor_free(&x), yh_tensor_free(&out);
      }
  yk_ctx_destroy(ctx);
}

Test(act_and_mul, gpu_matches_cpu_fallback) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("act_and_mul.gpu");
  yh_rng rng = {seed};
  for (int a = 0; a < 3; a++)
    for (int t = 0; t < 3; t++)
      for (int i = 0; i < SHAPE_COUNT; i++) {
        const int dtype = ts_float_types[t];
        const test_shape s = shapes[i];
        yh_tensor hx, hout, dx, dout;
        make(&hx, &hout, cpu, dtype, s, 0, &rng);
        make(&dx, &dout, gpu, dtype, s, 1, &rng);
        yh_tensor_copy(&dx, &hx);
        void *gaps = yh_snapshot(&dout);
        cr_assert_eq(fns[a](cpu, &hx.dl, &hout.dl, NULL), YK_OK);
        cr_assert_eq(fns[a](gpu, &dx.dl, &dout.dl, NULL), YK_OK, "%s", yk_ctx_last_error(gpu));
        cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
        double *want = doubles(&hout), *got = doubles(&dout);
        double err = ts_gpu_error(got, want, s.rows * s.d);
        cr_assert(err < ts_gpu_tolerance(dtype), "%s %s %lldx%lld+%lld: rel err %.3g (seed %llu)", names[a],
                  ts_type_name(dtype), (long long)s.rows, (long long)s.d, (long long)s.pad, err,
                  (unsigned long long)seed);
        cr_assert_eq(yh_gap_bytes_changed(&dout, gaps), 0, "GPU wrote between rows of out");
        free(gaps), free(want), free(got);
        yh_tensor_free(&hx), yh_tensor_free(&hout), yh_tensor_free(&dx), yh_tensor_free(&dout);
      }
  yk_ctx_destroy(cpu);
  yk_ctx_destroy(gpu);
}

static void bad_inputs(yk_ctx *ctx, int on_device) {
  yh_rng rng = {2};
  const int64_t xd[2] = {3, 16}, od[2] = {3, 8}, odd[2] = {3, 15}, wrong[2] = {3, 9};
  yh_tensor x, out, x_odd, out_wrong, x_f32;
  cr_assert_eq(yh_tensor_init(&x, ctx, YK_F16, 2, xd, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&out, ctx, YK_F16, 2, od, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&x_odd, ctx, YK_F16, 2, odd, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&out_wrong, ctx, YK_F16, 2, wrong, NULL, on_device), 0);
  cr_assert_eq(yh_tensor_init(&x_f32, ctx, YK_F32, 2, xd, NULL, on_device), 0);
  yh_fill_uniform(&x, &rng, -1, 1), yh_fill_uniform(&out, &rng, -1, 1);
  void *before = yh_snapshot(&out);
  cr_assert_eq(yk_silu_and_mul(NULL, &x.dl, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT);
  ts_assert_rejected(ctx, yk_silu_and_mul(ctx, NULL, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                     "silu_and_mul: x is NULL");
  ts_assert_rejected(ctx, yk_gelu_and_mul(ctx, &x.dl, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
                     "gelu_and_mul: out is NULL");
  ts_assert_rejected(ctx, yk_silu_and_mul(ctx, &x_odd.dl, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "even");
  ts_assert_rejected(ctx, yk_silu_and_mul(ctx, &x.dl, &out_wrong.dl, NULL), YK_ERR_INVALID_ARGUMENT, "halved");
  ts_assert_rejected(ctx, yk_gelu_tanh_and_mul(ctx, &x_f32.dl, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT,
                     "out is float16 but x is float32");
  DLTensor t = x.dl;
  t.dtype.lanes = 2;
  ts_assert_rejected(ctx, yk_silu_and_mul(ctx, &t, &out.dl, NULL), YK_ERR_INVALID_ARGUMENT, "float16x");
  int64_t overlap[2] = {4, 1};
  t = out.dl, t.strides = overlap;
  ts_assert_rejected(ctx, yk_silu_and_mul(ctx, &x.dl, &t, NULL), YK_ERR_INVALID_ARGUMENT, "rows overlap");
  cr_assert_eq(yh_bytes_changed(&out, before), 0, "a rejected call wrote to out");
  free(before);
  yh_tensor_free(&x), yh_tensor_free(&out), yh_tensor_free(&x_odd), yh_tensor_free(&out_wrong), yh_tensor_free(&x_f32);
}

Test(act_and_mul, bad_input_cpu) {
  yk_ctx *ctx = ts_cpu_ctx();
  bad_inputs(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(act_and_mul, bad_input_gpu) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  bad_inputs(ctx, 1);
  yk_ctx_destroy(ctx);
}
