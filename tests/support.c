#include "tests/support.h"

#include "cpu_fallback/half.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "tune/tune_key.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char no_gpu_reason[1024] = "";

yk_ctx *ts_cpu_ctx(void) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_memory_only = 1;
  yk_ctx *ctx = NULL;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "CPU context: %s", yk_ctx_last_error(NULL));
  return ctx;
}

yk_ctx *ts_gpu_ctx(void) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "gpu-cache");
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CUDA;
  o.cache_dir = dir;
  yk_ctx *ctx = NULL;
  if (yk_ctx_create(&o, &ctx) != YK_OK) {
    snprintf(no_gpu_reason, sizeof no_gpu_reason, "%s", yk_ctx_last_error(NULL));
    return NULL;
  }
  return ctx;
}

const char *ts_no_gpu_reason(void) { return no_gpu_reason; }

/* The pins of forcing contexts: a few contexts a test, never freed before exit. */
static yk_tune_pin pins[16];
static int pin_count;

yk_ctx *ts_gpu_ctx_forcing(const char *op, const char *config) {
  cr_assert_lt(pin_count, 16, "more forcing contexts than slots");
  yk_tune_pin *pin = &pins[pin_count++];
  char why[256];
  cr_assert_eq(yk_tune_pin_parse(pin, op, config, why, sizeof why), 0, "%s %s: %s", op, config, why);
  yk_ctx *ctx = ts_gpu_ctx();
  if (ctx) ctx->spec_override = yk_tune_pin_apply, ctx->spec_override_user = pin;
  return ctx;
}

void ts_temp_dir(char *out, size_t size, const char *label) {
  const char *root = getenv("YK_TEST_TMP");
  char base[400];
  snprintf(base, sizeof base, "%s", root && root[0] ? root : "/tmp/yk-test");
  mkdir(base, 0755);
  snprintf(out, size, "%s/%s-XXXXXX", base, label);
  cr_assert_not_null(mkdtemp(out), "mkdtemp %s", out);
}

uint64_t ts_seed(const char *name) {
  const char *env = getenv("YK_TEST_SEED");
  if (env && env[0]) return strtoull(env, NULL, 0);
  uint64_t h = 1469598103934665603ull;
  for (; *name; name++) h = (h ^ (unsigned char)*name) * 1099511628211ull;
  return h;
}

double ts_reference_tolerance(int dtype) { return dtype == YK_F32 ? 1e-5 : dtype == YK_F16 ? 2e-3 : 1e-2; }
double ts_gpu_tolerance(int dtype) { return dtype == YK_F32 ? 1e-5 : 1e-2; }

double *ts_sixty_fourths(yh_rng *rng, int64_t n) {
  double *x = malloc((size_t)(n ? n : 1) * sizeof *x);
  cr_assert_not_null(x);
  for (int64_t i = 0; i < n; i++) x[i] = (double)((int64_t)(yh_next(rng) % 255) - 127) / 64;
  return x;
}

double ts_gpu_error(const double *got, const double *want, int64_t n) {
  return yh_error(got, want, n, 1e-3 * sqrt((double)n));
}

void ts_round_to_dtype(int dtype, double *values, int64_t n) {
  for (int64_t i = 0; i < n; i++) values[i] = yk_round_to(dtype, (float)values[i]);
}

const int ts_float_types[3] = {YK_F32, YK_F16, YK_BF16};

const char *ts_type_name(int type) { return yk_view_type_name(type); }

void ts_assert_rejected(yk_ctx *ctx, yk_status got, yk_status want, const char *needle) {
  const char *message = yk_ctx_last_error(ctx);
  cr_assert_eq(got, want, "expected %s, got %s: %s", yk_status_name(want), yk_status_name(got), message);
  cr_assert(strstr(message, needle) != NULL, "message '%s' lacks '%s'", message, needle);
}

int ts_kernels_like(yk_ctx *ctx, const char *text, const char *also) {
  int count = 0;
  char spec[512];
  for (int i = 0; i < YK_KERNEL_BUCKETS; i++)
    for (yk_kernel *k = atomic_load(&ctx->cache.buckets[i]); k; k = k->next) {
      yk_spec_format(&k->key.spec, spec, sizeof spec);
      count += strstr(spec, text) && strstr(spec, also);
    }
  return count;
}
