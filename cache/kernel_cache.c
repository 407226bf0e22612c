#include "cache/kernel_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen/generate.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"

int yk_kernel_cache_init(yk_kernel_cache *cache) {
  memset(&cache->stats, 0, sizeof cache->stats);
  for (int i = 0; i < YK_KERNEL_BUCKETS; i++) atomic_init(&cache->buckets[i], NULL);
  if (pthread_mutex_init(&cache->lock, NULL)) return 1;
  if (pthread_cond_init(&cache->changed, NULL)) {
    pthread_mutex_destroy(&cache->lock);
    return 1;
  }
  return 0;
}

void yk_kernel_cache_destroy(yk_kernel_cache *cache, yk_ctx *ctx) {
  for (int i = 0; i < YK_KERNEL_BUCKETS; i++) {
    yk_kernel *k = atomic_load(&cache->buckets[i]), *next;
    for (; k; k = next) {
      next = k->next;
      if (k->module) yk_module_unload(ctx, k);
      yk_binary_free(&k->binary);
      free(k->failure_message);
      free(k);
    }
    atomic_store(&cache->buckets[i], NULL);
  }
  pthread_cond_destroy(&cache->changed);
  pthread_mutex_destroy(&cache->lock);
}

/* Called with the lock held. */
static yk_kernel *find_or_insert(yk_kernel_cache *cache, const yk_kernel_key *key, uint64_t hash) {
  yk_kernel *k = yk_kernel_find(cache, key, hash);
  if (k || !(k = calloc(1, sizeof *k))) return k;
  k->hash = hash;
  k->key = *key;
  atomic_init(&k->state, YK_KERNEL_EMPTY);
  cache->stats.kernels++;
  _Atomic(yk_kernel *) *bucket = &cache->buckets[hash & (YK_KERNEL_BUCKETS - 1)];
  k->next = atomic_load_explicit(bucket, memory_order_relaxed);
  atomic_store_explicit(bucket, k, memory_order_release);
  return k;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* EMPTY -> COMPILED: the disk cache, else NVRTC (then written to disk). */
static yk_status build_binary(yk_ctx *ctx, yk_kernel *k, int *compiled) {
  yk_spec spec = k->key.spec;
  char why[YK_MESSAGE_MAX], text[512];
  if (yk_spec_check(&spec, why, sizeof why)) {
    yk_spec_format(&spec, text, sizeof text);
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "unsupported spec %s: %s", text, why);
  }
  yk_spec_format(&spec, text, sizeof text);
  if (!ctx->has_nvrtc)
    return yk_error(ctx, YK_ERR_COMPILE, "cannot build %s for %s: %s", text, k->key.target, ctx->nvrtc_note);
  char *source;
  size_t length;
  if (yk_generate_source(&spec, &source, &length, why, sizeof why))
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "%s", why);
  uint8_t key[16];
  yk_content_key(source, length, k->key.target, &ctx->nvrtc, key);

  yk_status status = YK_OK;
  double t0 = now_ms();
  if (yk_disk_cache_load(ctx, &ctx->cache.disk, key, &k->binary) == 0) {
    k->compiled_here = 0;
  } else {
    t0 = now_ms();
    char file[96];
    snprintf(file, sizeof file, "%s.cu", spec.op->name);
    if (yk_compile(&ctx->nvrtc, source, file, k->key.target, text, spec.op->name, &k->binary, why, sizeof why)) {
      status = yk_error(ctx, YK_ERR_COMPILE, "compiling %s for %s: %s", text, k->key.target, why);
    } else {
      memcpy(k->binary.key, key, sizeof key);
      k->compiled_here = 1;
      if (compiled) *compiled = 1;
      yk_disk_cache_store(ctx, &ctx->cache.disk, &k->binary);
    }
  }
  free(source);
  if (status == YK_OK) {
    pthread_mutex_lock(&ctx->cache.lock);
    yk_ctx_stats *s = &ctx->cache.stats;
    if (k->compiled_here)
      s->compiled++, s->compile_ms += now_ms() - t0;
    else
      s->disk_hits++, s->disk_ms += now_ms() - t0;
    pthread_mutex_unlock(&ctx->cache.lock);
  }
  return status;
}

static yk_status load_module(yk_ctx *ctx, yk_kernel *k) {
  double t0 = now_ms();
  yk_status status = yk_module_load(ctx, k);
  if (status == YK_OK) {
    pthread_mutex_lock(&ctx->cache.lock);
    ctx->cache.stats.loads++;
    ctx->cache.stats.load_ms += now_ms() - t0;
    pthread_mutex_unlock(&ctx->cache.lock);
  }
  return status;
}

yk_status yk_ctx_get_stats(yk_ctx *ctx, yk_ctx_stats *out) {
  if (!ctx || !out)
    return ctx ? yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_ctx_get_stats: out is NULL") : YK_ERR_INVALID_ARGUMENT;
  pthread_mutex_lock(&ctx->cache.lock);
  *out = ctx->cache.stats;
  pthread_mutex_unlock(&ctx->cache.lock);
  return YK_OK;
}

yk_status yk_kernel_obtain(yk_ctx *ctx, const yk_kernel_key *key, uint64_t hash, int want, yk_kernel **out,
                           int *compiled) {
  yk_kernel_cache *cache = &ctx->cache;
  if (compiled) *compiled = 0;
  pthread_mutex_lock(&cache->lock);
  yk_kernel *k = find_or_insert(cache, key, hash);
  if (!k) {
    pthread_mutex_unlock(&cache->lock);
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "out of memory adding a kernel to the cache");
  }
  for (;;) {
    int state = atomic_load_explicit(&k->state, memory_order_relaxed);
    if (state >= want) break;
    if (state == YK_KERNEL_BUSY) {
      /* Another thread is on it: wait, and take its failure as ours if it fails. */
      unsigned failures = k->failures;
      while (atomic_load_explicit(&k->state, memory_order_relaxed) == YK_KERNEL_BUSY)
        pthread_cond_wait(&cache->changed, &cache->lock);
      if (k->failures != failures) {
        yk_status st = k->failure_status;
        yk_error(ctx, st, "%s", k->failure_message ? k->failure_message : "kernel build failed in another thread");
        pthread_mutex_unlock(&cache->lock);
        return st;
      }
      continue;
    }
    atomic_store_explicit(&k->state, YK_KERNEL_BUSY, memory_order_relaxed);
    pthread_mutex_unlock(&cache->lock);

    yk_status st = state == YK_KERNEL_EMPTY ? build_binary(ctx, k, compiled) : load_module(ctx, k);
    int next = st != YK_OK ? state : state == YK_KERNEL_EMPTY ? YK_KERNEL_COMPILED : YK_KERNEL_LOADED;

    pthread_mutex_lock(&cache->lock);
    if (st != YK_OK) {
      free(k->failure_message);
      k->failure_message = strdup(yk_ctx_last_error(ctx));
      k->failure_status = st;
      k->failures++;
    }
    atomic_store_explicit(&k->state, next, memory_order_release);
    pthread_cond_broadcast(&cache->changed);
    if (st != YK_OK) {
      pthread_mutex_unlock(&cache->lock);
      return st;
    }
  }
  pthread_mutex_unlock(&cache->lock);
  *out = k;
  return YK_OK;
}
