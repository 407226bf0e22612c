/* What every test shares: contexts, tolerances, seeds, temporary directories. */
#ifndef YK_TESTS_SUPPORT_H
#define YK_TESTS_SUPPORT_H

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "bench/harness.h"

/* A CPU context with a memory-only cache (ops need no compiler there). */
yk_ctx *ts_cpu_ctx(void);
/* A CUDA context with a private on-disk cache, or NULL when there is no device. */
yk_ctx *ts_gpu_ctx(void);
const char *ts_no_gpu_reason(void);
/* ts_gpu_ctx whose spec override sets fields of one op, as a tuning sweep does: config is
 * "field=value,..." of op (ts_gpu_ctx_forcing("attention_prefill_sm90", "pipeline=2,warpgroups=2")
 * runs that loop wherever the Hopper prefill runs; elsewhere nothing changes). NULL without a device. */
yk_ctx *ts_gpu_ctx_forcing(const char *op, const char *config);

enum { EVERY_DTYPE = -1 }; /* a shared check's dtype argument where no test splits them */
/* Whether a shared check given only_dtype (a dtype or EVERY_DTYPE) runs dtype. */
static inline int ts_runs_dtype(int only_dtype, int dtype) { return only_dtype == EVERY_DTYPE || dtype == only_dtype; }

/* The GPU kernels' dtypes (float16, bfloat16) as the parameters of a GPU test run once a dtype:
 * Criterion's workers run the shards side by side, and their specs (NVRTC's minutes on one core)
 * are none of the other's. ParameterizedTest(int *dtype, suite, name) takes them. */
static inline struct criterion_test_params ts_gpu_dtype_params(void) {
  static int dtypes[] = {YK_F16, YK_BF16};
  return cr_make_param_array(int, dtypes, 2);
}

/* GPU tests call this first: with no device the test is reported as skipped, not passed. */
#define TS_REQUIRE_GPU(ctx)                                                                                            \
  do {                                                                                                                 \
    if (!(ctx)) cr_skip_test("%s", ts_no_gpu_reason());                                                                \
  } while (0)

/* A fresh empty directory under YK_TEST_TMP (or /tmp); the path is static storage per call site. */
void ts_temp_dir(char *out, size_t size, const char *label);

/* The seed for a test: YK_TEST_SEED if set, else a hash of the name. Print it in every message. */
uint64_t ts_seed(const char *name);

/* Relative-error bounds. Fallback against float64: rounding of the output type dominates. GPU
 * against the CPU fallback: the bounds. */
double ts_reference_tolerance(int dtype);
double ts_gpu_tolerance(int dtype);

/* GPU against CPU: ||got - want|| / max(||want||, 1e-3 sqrt(n)). The floor keeps a one-element
 * tensor whose value is an f16 subnormal from failing on one ulp of rounding; every tensor of
 * the tests has norm far above it. NaN or infinity in got gives INFINITY. */
double ts_gpu_error(const double *got, const double *want, int64_t n);

/* n random multiples of 1/64 in (-2, 2), malloc'd (the caller frees them): every dtype holds them
 * exactly, so one float64 reference serves f32, f16 and bf16 alike. */
double *ts_sixty_fourths(yh_rng *rng, int64_t n);

/* Rounds a float64 reference to what the output dtype can hold, so that tiny values (f16
 * subnormals) measure the op's error rather than the dtype's. */
void ts_round_to_dtype(int dtype, double *values, int64_t n);

extern const int ts_float_types[3];
const char *ts_type_name(int type);

/* Kernels in ctx's memory whose spec, as yk_spec_format writes it, contains both texts: which
 * kernel a call took ("attention_decode:", "queries=1"). */
int ts_kernels_like(yk_ctx *ctx, const char *text, const char *also);

/* Asserts a failed call: its status, and a message for this thread containing `needle`. */
void ts_assert_rejected(yk_ctx *ctx, yk_status got, yk_status want, const char *needle);

#endif
