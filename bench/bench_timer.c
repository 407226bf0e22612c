#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "runtime/context.h"
#include "runtime/module.h"

#define MAX_REPS 2000

int bench_timer_init(bench_timer *t, yk_ctx *ctx) {
  memset(t, 0, sizeof *t);
  t->ctx = ctx;
  t->flush_words = 256000000 / 4;
  t->capacity = MAX_REPS;
  t->start = calloc(MAX_REPS, sizeof *t->start);
  t->end = calloc(MAX_REPS, sizeof *t->end);
  if (!t->start || !t->end || yk_cuda_make_current(ctx) != YK_OK ||
      ctx->cu.cuMemAlloc(&t->flush, t->flush_words * 4) != CUDA_SUCCESS)
    return 1;
  for (int i = 0; i < MAX_REPS; i++)
    if (ctx->cu.cuEventCreate(&t->start[i], 0) != CUDA_SUCCESS || ctx->cu.cuEventCreate(&t->end[i], 0) != CUDA_SUCCESS)
      return 1;
  return 0;
}

void bench_timer_free(bench_timer *t) {
  for (int i = 0; i < t->capacity && t->start && t->end; i++) {
    if (t->start[i]) t->ctx->cu.cuEventDestroy(t->start[i]);
    if (t->end[i]) t->ctx->cu.cuEventDestroy(t->end[i]);
  }
  if (t->flush) t->ctx->cu.cuMemFree(t->flush);
  free(t->start), free(t->end);
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* reps timed repetitions, each after an L2 flush; fills times (ms). */
static int timed(bench_timer *t, bench_fn fn, void *arg, int reps, double *times) {
  const yk_cuda_api *cu = &t->ctx->cu;
  for (int i = 0; i < reps; i++) {
    if (cu->cuMemsetD32Async(t->flush, (unsigned)i, t->flush_words, NULL) != CUDA_SUCCESS) return 1;
    cu->cuEventRecord(t->start[i], NULL);
    if (fn(arg) != YK_OK) return 1;
    cu->cuEventRecord(t->end[i], NULL);
  }
  if (cu->cuCtxSynchronize() != CUDA_SUCCESS) return 1;
  for (int i = 0; i < reps; i++) {
    float ms;
    cu->cuEventElapsedTime(&ms, t->start[i], t->end[i]);
    times[i] = ms;
  }
  return 0;
}

double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, compare);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double bench_median_ms(bench_timer *t, bench_fn fn, void *arg) {
  double times[MAX_REPS];
  if (yk_cuda_make_current(t->ctx) != YK_OK || timed(t, fn, arg, 5, times)) return -1; /* warm-up */
  qsort(times, 5, sizeof *times, compare);
  int reps = times[2] > 0 ? (int)(100.0 / times[2]) : MAX_REPS;
  reps = reps < 10 ? 10 : reps > t->capacity ? t->capacity : reps;
  if (timed(t, fn, arg, reps, times)) return -1;
  return bench_median(times, reps);
}

/* Batches of 200 calls enqueued back to back, no flush, events at each end: the stream's time a
 * call, whichever of the host's submit and the GPU's run is the slower. 200 stay inside the launch
 * queue (about 1024 entries); the device is drained between batches. */
double bench_back_to_back_us(bench_timer *t, bench_fn fn, void *arg) {
  enum { BATCHES = 21, PER_BATCH = 200 };
  const yk_cuda_api *cu = &t->ctx->cu;
  double times[BATCHES];
  if (yk_cuda_make_current(t->ctx) != YK_OK || fn(arg) != YK_OK) return -1; /* warm-up */
  for (int b = 0; b < BATCHES; b++) {
    if (cu->cuCtxSynchronize() != CUDA_SUCCESS) return -1;
    cu->cuEventRecord(t->start[b], NULL);
    for (int i = 0; i < PER_BATCH; i++)
      if (fn(arg) != YK_OK) return -1;
    cu->cuEventRecord(t->end[b], NULL);
  }
  if (cu->cuCtxSynchronize() != CUDA_SUCCESS) return -1;
  for (int b = 0; b < BATCHES; b++) {
    float ms;
    cu->cuEventElapsedTime(&ms, t->start[b], t->end[b]);
    times[b] = ms * 1e3 / PER_BATCH;
  }
  return bench_median(times, BATCHES);
}

void bench_add(bench_results *r, const char *name, double ms, double gbps, double value, const char *unit) {
  if (r->count == (int)(sizeof r->rows / sizeof r->rows[0])) {
    fprintf(stderr, "bench: the results table is full; %s is not kept\n", name);
    return;
  }
  bench_row *row = &r->rows[r->count++];
  snprintf(row->name, sizeof row->name, "%s", name);
  row->ms = ms, row->gbps = gbps, row->value = value, row->unit = unit;
}
