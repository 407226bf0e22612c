#include "tune/tune_timer.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"

#define FLUSH_BYTES (256u << 20) /* over the 50 MB L2 of an H100 with room to spare, as do_bench */
#define WARMUP_CALLS 3
#define PROBE_REPS 5 /* timed to size the budget's repetitions */
#define REPS_MIN 10

yk_status yk_tune_timer_init(yk_tune_timer *t, yk_ctx *ctx, double budget_ms) {
  memset(t, 0, sizeof *t);
  t->ctx = ctx;
  t->budget_ms = budget_ms > 0 ? budget_ms : 100;
  t->flush_words = FLUSH_BYTES / 4;
  if (ctx->device != YK_DEVICE_CUDA) return yk_error(ctx, YK_ERR_NO_DEVICE, "tuning: no CUDA device");
  yk_status st = yk_cuda_make_current(ctx);
  CUresult r = st == YK_OK ? ctx->cu.cuMemAlloc(&t->flush, FLUSH_BYTES) : CUDA_SUCCESS;
  for (int i = 0; st == YK_OK && r == CUDA_SUCCESS && i < YK_TUNE_REPS_MAX; i++)
    if ((r = ctx->cu.cuEventCreate(&t->start[i], 0)) == CUDA_SUCCESS) r = ctx->cu.cuEventCreate(&t->end[i], 0);
  if (st == YK_OK && r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tuning: setting up the timer");
  if (st != YK_OK) yk_tune_timer_free(t);
  return st;
}

void yk_tune_timer_free(yk_tune_timer *t) {
  if (!t->ctx || t->ctx->device != YK_DEVICE_CUDA || yk_cuda_make_current(t->ctx) != YK_OK) return;
  for (int i = 0; i < YK_TUNE_REPS_MAX; i++) {
    if (t->start[i]) t->ctx->cu.cuEventDestroy(t->start[i]);
    if (t->end[i]) t->ctx->cu.cuEventDestroy(t->end[i]);
  }
  if (t->flush) t->ctx->cu.cuMemFree(t->flush);
  memset(t, 0, sizeof *t);
}

static int ascending(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* reps calls, each after a flush, between events; their times sorted into ms. */
static yk_status timed(yk_tune_timer *t, yk_tune_call_fn fn, void *arg, int first_rep, int reps, double *ms) {
  const yk_cuda_api *cu = &t->ctx->cu;
  yk_status st = YK_OK;
  CUresult r = CUDA_SUCCESS;
  for (int i = 0; i < reps && st == YK_OK && r == CUDA_SUCCESS; i++) {
    if ((r = cu->cuMemsetD32Async(t->flush, (unsigned)i, t->flush_words, NULL)) != CUDA_SUCCESS ||
        (r = cu->cuEventRecord(t->start[i], NULL)) != CUDA_SUCCESS)
      break;
    if ((st = fn(arg, first_rep + i)) == YK_OK) r = cu->cuEventRecord(t->end[i], NULL);
  }
  /* synchronise even after a failure, so that no call is left in flight behind the caller */
  const CUresult sync = cu->cuCtxSynchronize();
  if (st != YK_OK) return st;
  if (r == CUDA_SUCCESS) r = sync;
  for (int i = 0; i < reps && r == CUDA_SUCCESS; i++) {
    float elapsed;
    r = cu->cuEventElapsedTime(&elapsed, t->start[i], t->end[i]);
    ms[i] = elapsed;
  }
  if (r != CUDA_SUCCESS) return yk_cuda_error(t->ctx, r, "tuning: timing a configuration");
  qsort(ms, (size_t)reps, sizeof *ms, ascending);
  return YK_OK;
}

yk_status yk_tune_time(yk_tune_timer *t, yk_tune_call_fn fn, void *arg, double *median_ms) {
  double ms[YK_TUNE_REPS_MAX];
  *median_ms = 0;
  yk_status st = yk_cuda_make_current(t->ctx);
  for (int i = 0; st == YK_OK && i < WARMUP_CALLS; i++) st = fn(arg, i);
  if (st != YK_OK || (st = timed(t, fn, arg, WARMUP_CALLS, PROBE_REPS, ms))) return st;
  const double each = ms[PROBE_REPS / 2];
  int reps = each > 0 ? (int)(t->budget_ms / each) : YK_TUNE_REPS_MAX;
  reps = reps < REPS_MIN ? REPS_MIN : reps > YK_TUNE_REPS_MAX ? YK_TUNE_REPS_MAX : reps;
  if ((st = timed(t, fn, arg, WARMUP_CALLS + PROBE_REPS, reps, ms))) return st;
  *median_ms = reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
  return YK_OK;
}
