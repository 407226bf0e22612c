#include "cpu_fallback/act_and_mul.h"

#include <math.h>

#include "cpu_fallback/half.h"

static void rows(void *p, int64_t begin, int64_t end) {
  const yk_act_and_mul_args *a = p;
  const int64_t es = (int64_t)yk_dtype_size((yk_dtype)a->dtype);
  float g[YK_CPU_CHUNK], u[YK_CPU_CHUNK];
  for (int64_t r = begin; r < end; r++) {
    const char *gate = a->x + r * a->x_stride * es, *up = gate + a->d * es;
    char *out = a->out + r * a->out_stride * es;
    for (int64_t c = 0; c < a->d; c += YK_CPU_CHUNK) {
      int64_t n = a->d - c < YK_CPU_CHUNK ? a->d - c : YK_CPU_CHUNK;
      yk_load_floats(a->dtype, gate + c * es, g, n);
      yk_load_floats(a->dtype, up + c * es, u, n);
      if (a->activation == YK_ACT_SILU) {
        for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.f + expf(-g[i])) * u[i];
      } else if (a->activation == YK_ACT_GELU) { /* the template's cancellation-free forms */
        for (int64_t i = 0; i < n; i++) g[i] = 0.5f * g[i] * erfcf(g[i] * -0.70710678118654752f) * u[i];
      } else {
        for (int64_t i = 0; i < n; i++) {
          float inner = 0.79788456080286536f * (g[i] + 0.044715f * g[i] * g[i] * g[i]);
          g[i] = g[i] / (1.f + expf(-2.f * inner)) * u[i];
        }
      }
      yk_store_floats(a->dtype, out + c * es, g, n);
    }
  }
}

void yk_cpu_act_and_mul(yk_thread_pool *pool, const yk_act_and_mul_args *args) {
  int64_t grain = 32768 / (args->d > 0 ? args->d : 1);
  yk_parallel_for(pool, args->rows, grain > 0 ? grain : 1, rows, (void *)args);
}

void yk_reference_act_and_mul(int activation, int64_t rows, int64_t d, const double *x, double *out) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < d; i++) {
      const double g = x[r * 2 * d + i], u = x[r * 2 * d + d + i];
      double a;
      if (activation == YK_ACT_SILU)
        a = g / (1.0 + exp(-g));
      else if (activation == YK_ACT_GELU)
        a = 0.5 * g * erfc(-g / sqrt(2.0));
      else
        a = g / (1.0 + exp(-2.0 * sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
      out[r * d + i] = a * u;
    }
}
