/* Gated activations on the CPU: out = act(gate) * up, x = [gate | up] per row. */
#ifndef YK_CPU_ACT_AND_MUL_H
#define YK_CPU_ACT_AND_MUL_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"

enum yk_activation { YK_ACT_SILU = 0, YK_ACT_GELU = 1, YK_ACT_GELU_TANH = 2 };

typedef struct yk_act_and_mul_args {
  int dtype;
  int activation; /* enum yk_activation */
  int64_t rows, d;
  const char *x;
  int64_t x_stride;
  char *out;
  int64_t out_stride;
} yk_act_and_mul_args;

void yk_cpu_act_and_mul(yk_thread_pool *pool, const yk_act_and_mul_args *args);

/* float64 reference over compact arrays: x [rows, 2d], out [rows, d]. */
void yk_reference_act_and_mul(int activation, int64_t rows, int64_t d, const double *x, double *out);

#endif
