/* The ops at the shapes the peers are timed at (../shared/anchors/peers.py and
 * bench/peers_extra.py), in bf16. Bytes count each input read once and each output written once,
 * as the peers' figures do (the rms_norm weight and the rope cache are not counted). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"

yk_status bench_case_call(void *p) {
  bench_case *c = p;
  switch (c->op) {
  case RMS_NORM: return yk_rms_norm(c->ctx, &c->a.dl, &c->b.dl, 1e-6f, &c->c.dl, NULL);
  case FUSED_ADD_RMS_NORM: return yk_fused_add_rms_norm(c->ctx, &c->a.dl, &c->b.dl, &c->c.dl, 1e-6f, NULL);
  case SILU_AND_MUL: return yk_silu_and_mul(c->ctx, &c->a.dl, &c->b.dl, NULL);
  default: return yk_rope(c->ctx, &c->a.dl, &c->b.dl, &c->c.dl, &c->d.dl, YK_ROPE_NEOX, NULL);
  }
}

static int alloc(bench_case *c, yh_tensor *t, int type, int ndim, const int64_t *shape, yh_rng *rng, double lo,
                 double hi) {
  if (yh_tensor_init(t, c->ctx, type, ndim, shape, NULL, 1)) return 1;
  if (type == YK_I64)
    yh_fill_integers(t, rng, (int64_t)lo, (int64_t)hi);
  else
    yh_fill_uniform(t, rng, lo, hi);
  return 0;
}

double bench_case_setup(bench_case *c, yk_ctx *ctx, bench_op op, int64_t tokens, int64_t width, yh_rng *rng) {
  memset(c, 0, sizeof *c);
  c->ctx = ctx;
  c->op = op;
  const int64_t rows[2] = {tokens, width};
  switch (op) {
  case RMS_NORM:
    if (alloc(c, &c->a, YK_BF16, 2, rows, rng, -2, 2) || alloc(c, &c->b, YK_BF16, 1, &width, rng, 0.5, 1.5) ||
        alloc(c, &c->c, YK_BF16, 2, rows, rng, -1, 1))
      return 0;
    return 2.0 * (double)(tokens * width) * 2;
  case FUSED_ADD_RMS_NORM:
    if (alloc(c, &c->a, YK_BF16, 2, rows, rng, -2, 2) || alloc(c, &c->b, YK_BF16, 2, rows, rng, -2, 2) ||
        alloc(c, &c->c, YK_BF16, 1, &width, rng, 0.5, 1.5))
      return 0;
    return 4.0 * (double)(tokens * width) * 2;
  case SILU_AND_MUL: {
    const int64_t in[2] = {tokens, 2 * width};
    if (alloc(c, &c->a, YK_BF16, 2, in, rng, -4, 4) || alloc(c, &c->b, YK_BF16, 2, rows, rng, -1, 1)) return 0;
    return 3.0 * (double)(tokens * width) * 2;
  }
  default: { /* width: head_dim; Llama 3 8B heads */
    const int64_t q[3] = {tokens, 32, width}, k[3] = {tokens, 8, width}, cache[2] = {32768, width};
    if (alloc(c, &c->a, YK_BF16, 3, q, rng, -2, 2) || alloc(c, &c->b, YK_BF16, 3, k, rng, -2, 2) ||
        alloc(c, &c->c, YK_BF16, 2, cache, rng, -1, 1) || alloc(c, &c->d, YK_I64, 1, &tokens, rng, 0, 32768))
      return 0;
    return 2.0 * (double)(tokens * 40 * width) * 2;
  }
  }
}

void bench_case_free(bench_case *c) {
  yh_tensor_free(&c->a), yh_tensor_free(&c->b), yh_tensor_free(&c->c), yh_tensor_free(&c->d);
}

int bench_ops(bench_timer *t, bench_results *r, int quick) {
  static const struct {
    const char *name;
    bench_op op;
    int64_t tokens, width;
  } cases[] = {
      {"rmsnorm T16384 H4096", RMS_NORM, 16384, 4096},
      {"rmsnorm T2048 H8192", RMS_NORM, 2048, 8192},
      {"rmsnorm T64 H4096", RMS_NORM, 64, 4096},
      {"fused_add_rmsnorm T16384 H4096", FUSED_ADD_RMS_NORM, 16384, 4096},
      {"fused_add_rmsnorm T64 H4096", FUSED_ADD_RMS_NORM, 64, 4096},
      {"silu_and_mul T4096 I14336", SILU_AND_MUL, 4096, 14336},
      {"silu_and_mul T64 I14336", SILU_AND_MUL, 64, 14336},
      {"rope T16384 q32 k8 d128", ROPE, 16384, 128},
      {"rope T64 q32 k8 d128", ROPE, 64, 128},
  };
  yh_rng rng = {7};
  int failures = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (quick && cases[i].tokens > 4096) continue;
    bench_case c;
    double bytes = bench_case_setup(&c, t->ctx, cases[i].op, cases[i].tokens, cases[i].width, &rng);
    double ms = bytes > 0 ? bench_median_ms(t, bench_case_call, &c) : -1;
    if (ms <= 0) {
      fprintf(stderr, "bench %s failed: %s\n", cases[i].name, yk_ctx_last_error(t->ctx));
      failures++;
    } else {
      double gbps = bytes / ms / 1e6;
      bench_add(r, cases[i].name, ms, gbps, gbps, "GB/s");
      fprintf(stderr, "  %-34s %9.4f ms %8.0f GB/s\n", cases[i].name, ms, gbps);
    }
    /* decode-sized: what the launch path costs when calls follow each other, as in an engine's step */
    const double us = ms > 0 && cases[i].tokens <= 64 ? bench_back_to_back_us(t, bench_case_call, &c) : -1;
    if (us > 0) {
      char name[96];
      snprintf(name, sizeof name, "%s back-to-back", cases[i].name);
      bench_add(r, name, us * 1e-3, 0, us, "us");
      fprintf(stderr, "  %-34s %9.2f us a call\n", name, us);
    }
    bench_case_free(&c);
  }
  return failures;
}
