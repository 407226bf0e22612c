/* Timing one configuration on the GPU, as triton.testing.do_bench does (and yk bench): warm-up,
 * then repetitions filling a time budget, each after a 256 MB memset that flushes L2, CUDA events
 * around each call, the median. The call is told its repetition, so it can rotate through copies
 * of its inputs: a small shape then never finds its inputs in a cache the flush missed. */
#ifndef YK_TUNE_TIMER_H
#define YK_TUNE_TIMER_H

#include <cuda.h>

#include "yk/context.h"

#define YK_TUNE_REPS_MAX 200 /* a median of 200 moves by less than the noise between runs */

typedef struct yk_tune_timer {
  yk_ctx *ctx;
  double budget_ms; /* of timed calls a configuration gets */
  CUdeviceptr flush;
  size_t flush_words;
  CUevent start[YK_TUNE_REPS_MAX], end[YK_TUNE_REPS_MAX];
} yk_tune_timer;

typedef yk_status (*yk_tune_call_fn)(void *arg, int rep);

yk_status yk_tune_timer_init(yk_tune_timer *t, yk_ctx *ctx, double budget_ms);
void yk_tune_timer_free(yk_tune_timer *t);

/* The median of fn's times in milliseconds. A failed call or a failed synchronisation is the
 * status, with the message on the context. */
yk_status yk_tune_time(yk_tune_timer *t, yk_tune_call_fn fn, void *arg, double *median_ms);

#endif
