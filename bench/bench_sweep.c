/* yk bench --sweep: every op at its large benchmark shape over a grid of threads (and items for
 * act_and_mul), through the ops themselves with the context's spec override. What the tuner
 * (issue 6) will automate; here it chooses the defaults. */
#include <string.h>

#include "bench/bench.h"
#include "runtime/context.h"
#include "tune/tune_key.h"

void bench_sweep_one(bench_timer *t, bench_results *r, const char *shape, const char *kernel, const char *config,
                     bench_fn fn, void *arg, double work, const char *unit) {
  yk_ctx *ctx = t->ctx;
  yk_tune_pin pin;
  char why[256];
  if (kernel && yk_tune_pin_parse(&pin, kernel, config, why, sizeof why)) {
    fprintf(stderr, "  %s %s: %s\n", kernel, config, why);
    return;
  }
  if (kernel) ctx->spec_override = yk_tune_pin_apply, ctx->spec_override_user = &pin;
  const double ms = bench_median_ms(t, fn, arg);
  ctx->spec_override = NULL, ctx->spec_override_user = NULL;
  char name[160];
  snprintf(name, sizeof name, "sweep.%s %s", shape, config);
  for (char *p = name; *p; p++) /* the rows' names as before: fields apart by spaces */
    if (*p == ',') *p = ' ';
  if (ms <= 0) {
    fprintf(stderr, "  %-70s invalid: %.80s\n", name, yk_ctx_last_error(ctx));
    return;
  }
  const int bandwidth = !strcmp(unit, "GB/s");
  const double value = bandwidth ? work / ms / 1e6 : work / ms / 1e9;
  bench_add(r, name, ms, bandwidth ? value : 0, value, unit);
  fprintf(stderr, "  %-70s %9.4f ms %7.0f %s\n", name, ms, value, unit);
}

int bench_sweep(bench_timer *t, bench_results *r) {
  static const struct {
    const char *name, *kernel; /* the row, and the op whose launches the sweep pins */
    bench_op op;
    int64_t tokens, width;
    int sweep_items;
  } cases[] = {
      {"rmsnorm T16384 H4096", "rms_norm", RMS_NORM, 16384, 4096, 0},
      {"rmsnorm T2048 H8192", "rms_norm", RMS_NORM, 2048, 8192, 0},
      {"fused_add_rmsnorm T16384 H4096", "rms_norm", FUSED_ADD_RMS_NORM, 16384, 4096, 0},
      {"silu_and_mul T4096 I14336", "act_and_mul", SILU_AND_MUL, 4096, 14336, 1},
      {"rope T16384 q32 k8 d128", "rope", ROPE, 16384, 128, 0},
  };
  static const int threads[] = {64, 128, 256, 512, 1024}, items[] = {1, 2, 4, 8};
  yh_rng rng = {11};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bench_case c;
    double bytes = bench_case_setup(&c, t->ctx, cases[i].op, cases[i].tokens, cases[i].width, &rng);
    for (int ti = 0; bytes > 0 && ti < 5; ti++)
      for (int ii = 0; ii < (cases[i].sweep_items ? 4 : 1); ii++) {
        char config[64];
        if (cases[i].sweep_items)
          snprintf(config, sizeof config, "threads=%d,items=%d", threads[ti], items[ii]);
        else
          snprintf(config, sizeof config, "threads=%d", threads[ti]);
        bench_sweep_one(t, r, cases[i].name, cases[i].kernel, config, bench_case_call, &c, bytes, "GB/s");
      }
    bench_case_free(&c);
  }
  return bench_attention_sweep(t, r);
}
