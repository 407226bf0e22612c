/* Warm-up: compile the default spec matrix into the cache with NVRTC alone (yk/jit.h). */
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

#define MAX_TARGETS 16

typedef struct {
  yk_kernel_key *keys;
  int count, capacity;
  int failed_alloc;
} key_list;

typedef struct {
  key_list *list;
  const char (*targets)[16];
  int target_count;
} emit_state;

static void add_key(key_list *l, const yk_kernel_key *key) {
  for (int i = 0; i < l->count; i++)
    if (memcmp(&l->keys[i], key, sizeof *key) == 0) return;
  if (l->count == l->capacity) {
    int capacity = l->capacity ? 2 * l->capacity : 64;
    yk_kernel_key *grown = realloc(l->keys, (size_t)capacity * sizeof *grown);
    if (!grown) {
      l->failed_alloc = 1;
      return;
    }
    l->keys = grown;
    l->capacity = capacity;
  }
  l->keys[l->count++] = *key;
}

static void emit(void *user, const yk_spec *spec) {
  emit_state *e = user;
  for (int t = 0; t < e->target_count; t++) {
    yk_kernel_key key;
    memset(&key, 0, sizeof key);
    key.spec = *spec;
    if (spec->op->arch_specific_sm) { /* only for its generation, as sm_XYa */
      if (strncmp(e->targets[t], "sm_", 3) || atoi(e->targets[t] + 3) != spec->op->arch_specific_sm) continue;
      snprintf(key.target, sizeof key.target, "sm_%da", spec->op->arch_specific_sm);
    } else {
      memcpy(key.target, e->targets[t], sizeof key.target);
    }
    add_key(e->list, &key);
  }
}

/* Splits a comma-separated list into buf, returning the items. */
static int split(const char *text, char *buf, size_t size, char **items, int max) {
  snprintf(buf, size, "%s", text);
  int n = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < max; t = strtok_r(NULL, ",", &save))
    if (t[0]) items[n++] = t;
  return n;
}

typedef struct {
  yk_ctx *ctx;
  const yk_warm_options *options;
  const key_list *list;
  atomic_int next;
  pthread_mutex_t lock; /* progress counts and the callback */
  int done, compiled, cached, failed;
  yk_status first_status;
  char *first_message;
} warm_job;

static void *warm_worker(void *p) {
  warm_job *job = p;
  for (;;) {
    int i = atomic_fetch_add(&job->next, 1);
    if (i >= job->list->count) return NULL;
    const yk_kernel_key *key = &job->list->keys[i];
    yk_kernel *k;
    int compiled = 0;
    yk_status st = yk_kernel_obtain(job->ctx, key, yk_kernel_key_hash(key), YK_KERNEL_COMPILED, &k, &compiled);
    char spec_text[512];
    yk_spec_format(&key->spec, spec_text, sizeof spec_text);
    pthread_mutex_lock(&job->lock);
    job->done++;
    if (st != YK_OK) {
      job->failed++;
      if (job->first_status == YK_OK) {
        job->first_status = st;
        job->first_message = strdup(yk_ctx_last_error(job->ctx));
      }
    } else if (compiled) {
      job->compiled++;
    } else {
      job->cached++;
    }
    if (job->options->progress) {
      yk_warm_progress progress = {job->done,
                                   job->list->count,
                                   job->compiled,
                                   job->cached,
                                   job->failed,
                                   spec_text,
                                   key->target,
                                   st,
                                   st == YK_OK ? "" : yk_ctx_last_error(job->ctx)};
      job->options->progress(job->options->user, &progress);
    }
    pthread_mutex_unlock(&job->lock);
  }
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

yk_status yk_warm(yk_ctx *ctx, const yk_warm_options *user_options, yk_warm_result *result) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  const double t0 = now_s();
  yk_warm_options options = {0};
  if (user_options) options = *user_options;
  if (result) memset(result, 0, sizeof *result);
  char buf[1024], *items[64];
  yk_status st;

  char targets[MAX_TARGETS][16];
  const char *archs = options.archs ? options.archs : ctx->device == YK_DEVICE_CUDA ? ctx->target : "sm_80,sm_90";
  int target_count = split(archs, buf, sizeof buf, items, MAX_TARGETS);
  if (target_count == 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "warm: no target architectures given");
  for (int i = 0; i < target_count; i++)
    if ((st = yk_target_parse(ctx, items[i], targets[i]))) return st;

  uint32_t dtypes = 0;
  int n = split(options.dtypes ? options.dtypes : "bf16,f16", buf, sizeof buf, items, 64);
  for (int i = 0; i < n; i++) {
    int d = yk_dtype_parse(items[i]);
    if (d < 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "warm: unknown dtype '%s' (f32, f16, bf16)", items[i]);
    dtypes |= 1u << d;
  }

  const yk_model_preset *models[64];
  int model_count = 0;
  if (options.models) {
    n = split(options.models, buf, sizeof buf, items, 64);
    for (int i = 0; i < n; i++) {
      int found = -1;
      for (int m = 0; m < yk_model_preset_count(); m++)
        if (strcmp(yk_model_preset_get(m)->name, items[i]) == 0) found = m;
      if (found < 0) return yk_error(ctx, YK_ERR_NOT_FOUND, "warm: no model preset named '%s'", items[i]);
      models[model_count++] = yk_model_preset_get(found);
    }
  } else {
    for (int m = 0; m < yk_model_preset_count(); m++) models[model_count++] = yk_model_preset_get(m);
  }

  int op_selected[64] = {0};
  if (options.ops) {
    n = split(options.ops, buf, sizeof buf, items, 64);
    for (int i = 0; i < n; i++) {
      int op = yk_registry_find(items[i]);
      if (op < 0) return yk_error(ctx, YK_ERR_NOT_FOUND, "warm: no op named '%s'", items[i]);
      op_selected[op] = 1;
    }
  } else {
    for (int op = 0; op < yk_registry_count() && op < 64; op++) op_selected[op] = 1;
  }

  key_list list = {0};
  emit_state e = {&list, (const char(*)[16])targets, target_count};
  yk_warm_request request = {dtypes, models, model_count};
  for (int op = 0; op < yk_registry_count() && op < 64; op++)
    if (op_selected[op]) yk_registry_op(op)->warm_specs(&request, emit, &e);
  if (list.failed_alloc) {
    free(list.keys);
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "warm: out of memory listing specs");
  }

  warm_job job = {.ctx = ctx, .options = &options, .list = &list};
  atomic_init(&job.next, 0);
  pthread_mutex_init(&job.lock, NULL);
  int jobs = options.jobs > 0 ? options.jobs : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (jobs < 1) jobs = 1;
  if (jobs > list.count) jobs = list.count > 0 ? list.count : 1;
  pthread_t threads[64];
  int started = 0;
  for (int i = 1; i < jobs && started < 64; i++)
    if (pthread_create(&threads[started], NULL, warm_worker, &job) == 0) started++;
  warm_worker(&job);
  for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
  pthread_mutex_destroy(&job.lock);

  if (result) *result = (yk_warm_result){list.count, job.compiled, job.cached, job.failed, now_s() - t0};
  free(list.keys);
  if (job.first_status != YK_OK) {
    st = yk_error(ctx, job.first_status, "warm: %d of %d failed; first: %s", job.failed, job.done,
                  job.first_message ? job.first_message : "(no message)");
    free(job.first_message);
    return st;
  }
  return YK_OK;
}

yk_status yk_spec_compile(yk_ctx *ctx, const char *text, const char *arch, int *compiled) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_kernel_key key;
  memset(&key, 0, sizeof key);
  char why[1024];
  if (yk_spec_parse(text, &key.spec, why, sizeof why))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "spec %s: %s", text ? text : "(null)", why);
  char target[16];
  yk_status st = yk_target_parse(ctx, arch, target);
  if (st || (st = yk_target_for_op(ctx, key.spec.op, target, key.target))) return st;
  yk_kernel *k;
  return yk_kernel_obtain(ctx, &key, yk_kernel_key_hash(&key), YK_KERNEL_COMPILED, &k, compiled);
}
