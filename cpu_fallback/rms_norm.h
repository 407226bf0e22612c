/* RMSNorm and fused add + RMSNorm on the CPU (see include/yk/ops.h for the maths). */
#ifndef YK_CPU_RMS_NORM_H
#define YK_CPU_RMS_NORM_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"

typedef struct yk_rms_norm_args {
  int dtype;
  int64_t rows, hidden;
  const char *x;
  int64_t x_stride; /* elements between rows */
  char *residual;   /* NULL: plain rms_norm */
  int64_t residual_stride;
  const char *weight;
  char *out;
  int64_t out_stride;
  float eps;
} yk_rms_norm_args;

void yk_cpu_rms_norm(yk_thread_pool *pool, const yk_rms_norm_args *args);

/* The float64 reference the tests, the demo and the benchmarks check against: compact arrays.
 * With residual (in/out), residual = round_dtype(x + residual) first and the norm reads it. */
void yk_reference_rms_norm(int dtype, int64_t rows, int64_t hidden, const double *x, double *residual,
                           const double *weight, double eps, double *out);

#endif
