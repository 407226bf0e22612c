#include "cpu_fallback/rms_norm.h"

#include <math.h>

#include "cpu_fallback/half.h"

/* Two passes a row through a chunk buffer; the second reads what the first wrote (the rounded
 * residual sum when fused), so the result matches the GPU's one-pass kernel. Sums in double: the
 * fallback is also the reference the GPU tests compare against. */
static void rows(void *p, int64_t begin, int64_t end) {
  const yk_rms_norm_args *a = p;
  const int64_t es = (int64_t)yk_dtype_size((yk_dtype)a->dtype);
  float v[YK_CPU_CHUNK], w[YK_CPU_CHUNK];
  for (int64_t r = begin; r < end; r++) {
    const char *x = a->x + r * a->x_stride * es;
    char *res = a->residual ? a->residual + r * a->residual_stride * es : NULL;
    char *out = a->out + r * a->out_stride * es;
    double sum_sq = 0;
    for (int64_t c = 0; c < a->hidden; c += YK_CPU_CHUNK) {
      int64_t n = a->hidden - c < YK_CPU_CHUNK ? a->hidden - c : YK_CPU_CHUNK;
      yk_load_floats(a->dtype, x + c * es, v, n);
      if (res) {
        yk_load_floats(a->dtype, res + c * es, w, n);
        for (int64_t i = 0; i < n; i++) v[i] = v[i] + w[i];
        yk_store_floats(a->dtype, res + c * es, v, n);
        yk_load_floats(a->dtype, res + c * es, v, n); /* the rounded sum, as the norm sees it */
      }
      for (int64_t i = 0; i < n; i++) sum_sq += (double)v[i] * v[i];
    }
    const float scale = (float)(1.0 / sqrt(sum_sq / (double)a->hidden + (double)a->eps));
    const char *src = res ? res : x;
    for (int64_t c = 0; c < a->hidden; c += YK_CPU_CHUNK) {
      int64_t n = a->hidden - c < YK_CPU_CHUNK ? a->hidden - c : YK_CPU_CHUNK;
      yk_load_floats(a->dtype, src + c * es, v, n);
      yk_load_floats(a->dtype, a->weight + c * es, w, n);
      for (int64_t i = 0; i < n; i++) v[i] = v[i] * scale * w[i];
      yk_store_floats(a->dtype, out + c * es, v, n);
    }
  }
}

void yk_cpu_rms_norm(yk_thread_pool *pool, const yk_rms_norm_args *args) {
  int64_t grain = 32768 / (args->hidden > 0 ? args->hidden : 1);
  yk_parallel_for(pool, args->rows, grain > 0 ? grain : 1, rows, (void *)args);
}

void yk_reference_rms_norm(int dtype, int64_t rows, int64_t hidden, const double *x, double *residual,
                           const double *weight, double eps, double *out) {
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * hidden;
    double *rr = residual ? residual + r * hidden : NULL, sum_sq = 0;
    for (int64_t i = 0; i < hidden; i++) {
      double v = xr[i];
      if (rr) v = rr[i] = yk_round_to(dtype, (float)(v + rr[i]));
      sum_sq += v * v;
    }
    const double scale = 1.0 / sqrt(sum_sq / (double)hidden + eps);
    for (int64_t i = 0; i < hidden; i++) out[r * hidden + i] = (rr ? rr[i] : xr[i]) * scale * weight[i];
  }
}
