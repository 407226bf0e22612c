/* The sweep's compiles: every configuration of a shape through the kernel cache on several
 * threads (NVRTC is the slow part of a cold sweep), failures recorded and left out of timing. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/kernel_cache.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/target.h"
#include "tune/tune_sweep.h"

#define THREADS_MAX 64

typedef struct {
  yk_status status;
  int compiled;
  char message[256];
} outcome;

typedef struct {
  yk_ctx *ctx;
  const char *arch;
  const yk_tune_config *configs;
  outcome *outcomes;
  int count;
  atomic_int next;
} compile_job;

static void *compile_worker(void *p) {
  compile_job *job = p;
  for (int i; (i = atomic_fetch_add(&job->next, 1)) < job->count;) {
    const yk_tune_config *cfg = &job->configs[i];
    outcome *o = &job->outcomes[i];
    if (cfg->failed || cfg->reused) continue;
    yk_kernel_key key;
    memset(&key, 0, sizeof key);
    key.spec = cfg->spec;
    yk_kernel *k;
    o->status = yk_target_for_op(job->ctx, cfg->spec.op, job->arch, key.target);
    if (o->status == YK_OK)
      o->status = yk_kernel_obtain(job->ctx, &key, yk_kernel_key_hash(&key), YK_KERNEL_COMPILED, &k, &o->compiled);
    if (o->status != YK_OK) snprintf(o->message, sizeof o->message, "%s", yk_ctx_last_error(job->ctx));
  }
  return NULL;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

yk_status yk_tune_compile(yk_ctx *ctx, const char *arch, int jobs, yk_tune_db *db, const yk_tune_record *shape,
                          yk_tune_config *configs, int count, yk_tune_summary *s) {
  const double t0 = now_s();
  compile_job job = {ctx, arch, configs, calloc((size_t)(count ? count : 1), sizeof(outcome)), count};
  if (!job.outcomes) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tune: out of memory");
  atomic_init(&job.next, 0);
  if (jobs <= 0) jobs = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (jobs > count) jobs = count;
  if (jobs > THREADS_MAX) jobs = THREADS_MAX;
  pthread_t threads[THREADS_MAX];
  int started = 0;
  while (started + 1 < jobs && pthread_create(&threads[started], NULL, compile_worker, &job) == 0) started++;
  compile_worker(&job);
  for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);

  yk_status st = YK_OK;
  for (int i = 0; i < count && st == YK_OK; i++) {
    const outcome *o = &job.outcomes[i];
    if (configs[i].failed || configs[i].reused) continue;
    if (o->status == YK_OK) {
      s->compiled += o->compiled, s->cached += !o->compiled;
      continue;
    }
    configs[i].failed = 1;
    s->compile_failed++;
    yk_tune_record r = *shape;
    snprintf(r.config, sizeof r.config, "%s", configs[i].text);
    r.is_default = configs[i].is_default;
    r.status = YK_TUNE_COMPILE_FAILED;
    snprintf(r.note, sizeof r.note, "%s", o->message);
    st = yk_tune_db_put(ctx, db, &r);
  }
  free(job.outcomes);
  s->compile_seconds += now_s() - t0;
  return st;
}
