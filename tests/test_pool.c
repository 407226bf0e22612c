/* yk_pool: carving, alignment, best fit, coalescing, statistics, a full pool, bad input, a
 * randomized run against a model, threads, and a pool of device memory. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "tests/support.h"

static yk_pool *cpu_pool(yk_ctx *ctx, size_t bytes) {
  yk_pool_options o;
  yk_pool_options_init(&o);
  o.bytes = bytes;
  yk_pool *pool = NULL;
  cr_assert_eq(yk_pool_create(ctx, &o, &pool), YK_OK, "%s", yk_ctx_last_error(ctx));
  return pool;
}

static yk_pool_stats stats_of(yk_pool *pool) {
  yk_pool_stats s;
  cr_assert_eq(yk_pool_get_stats(pool, &s), YK_OK);
  return s;
}

static void *alloc_ok(yk_ctx *ctx, yk_pool *pool, size_t bytes) {
  void *p = NULL;
  cr_assert_eq(yk_pool_alloc(pool, bytes, &p), YK_OK, "alloc %zu: %s", bytes, yk_ctx_last_error(ctx));
  return p;
}

Test(pool, carves_aligned_extents_and_counts_them) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool *pool = cpu_pool(ctx, 4096 + 100); /* rounded down to 256 */
  yk_pool_stats s = stats_of(pool);
  cr_assert_eq(s.total_bytes, 4096);
  cr_assert_eq(s.free_bytes, 4096);
  cr_assert_eq(s.used_bytes, 0);
  cr_assert_eq(s.largest_free_bytes, 4096);
  cr_assert_eq(s.fragmentation, 0.0);
  cr_assert_eq(s.on_device, 0);

  char *a = alloc_ok(ctx, pool, 1), *b = alloc_ok(ctx, pool, 257), *c = alloc_ok(ctx, pool, 1024);
  cr_assert_eq((uintptr_t)a % 256, 0);
  cr_assert_eq(b - a, 256, "a 1-byte allocation takes 256 bytes");
  cr_assert_eq(c - b, 512, "257 bytes round to 512");
  memset(a, 1, 256), memset(b, 2, 512), memset(c, 3, 1024); /* the memory is real host memory */
  s = stats_of(pool);
  cr_assert_eq(s.used_bytes, 1792);
  cr_assert_eq(s.free_bytes, 4096 - 1792);
  cr_assert_eq(s.high_water_bytes, 1792);
  cr_assert_eq(s.allocations, 3);
  cr_assert_eq(s.alloc_calls, 3);

  cr_assert_eq(yk_pool_free(pool, b), YK_OK);
  s = stats_of(pool);
  cr_assert_eq(s.used_bytes, 1280);
  cr_assert_eq(s.high_water_bytes, 1792, "the high-water mark stays");
  cr_assert_eq(s.allocations, 2);
  /* free: b's 512 and the 2304 tail; largest 2304 of 2816 */
  cr_assert_eq(s.largest_free_bytes, 2304);
  cr_assert_float_eq(s.fragmentation, 1.0 - 2304.0 / 2816.0, 1e-12);

  cr_assert_eq(yk_pool_free(pool, a), YK_OK); /* merges with b's hole: 768 at offset 0 */
  cr_assert_eq(stats_of(pool).largest_free_bytes, 2304);
  cr_assert_eq(yk_pool_free(pool, c), YK_OK); /* merges everything */
  s = stats_of(pool);
  cr_assert_eq(s.largest_free_bytes, 4096);
  cr_assert_eq(s.fragmentation, 0.0);
  cr_assert_eq(s.allocations, 0);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

Test(pool, best_fit_takes_the_smallest_hole_lowest_first) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool *pool = cpu_pool(ctx, 8 * 256);
  char *p[8];
  for (int i = 0; i < 8; i++) p[i] = alloc_ok(ctx, pool, 256);
  /* holes: [1] (256), [3..4] (512), [6] (256) */
  yk_pool_free(pool, p[1]), yk_pool_free(pool, p[3]), yk_pool_free(pool, p[4]), yk_pool_free(pool, p[6]);
  cr_assert_eq(alloc_ok(ctx, pool, 512), p[3], "512 bytes fit only the double hole");
  cr_assert_eq(alloc_ok(ctx, pool, 100), p[1], "the lowest of two equal holes");
  cr_assert_eq(alloc_ok(ctx, pool, 200), p[6]);
  void *none = (void *)0x1;
  ts_assert_rejected(ctx, yk_pool_alloc(pool, 1, &none), YK_ERR_OUT_OF_MEMORY, "no free extent of 256 bytes");
  cr_assert_eq(none, (void *)0x1, "a refused allocation leaves ptr alone");
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

Test(pool, full_pool_refuses_and_changes_nothing) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool *pool = cpu_pool(ctx, 1 << 16);
  void *a = alloc_ok(ctx, pool, 40000);
  (void)a;
  yk_pool_stats before = stats_of(pool);
  void *p = NULL;
  ts_assert_rejected(ctx, yk_pool_alloc(pool, 30000, &p), YK_ERR_OUT_OF_MEMORY, "bytes free");
  cr_assert_null(p);
  yk_pool_stats after = stats_of(pool);
  cr_assert_eq(after.failed_allocs, before.failed_allocs + 1);
  cr_assert(after.used_bytes == before.used_bytes && after.free_bytes == before.free_bytes &&
                after.largest_free_bytes == before.largest_free_bytes && after.allocations == before.allocations &&
                after.alloc_calls == before.alloc_calls && after.high_water_bytes == before.high_water_bytes,
            "a refused allocation changed the pool");
  cr_assert_not_null(alloc_ok(ctx, pool, (1 << 16) - 40192), "the rest is still there, exactly");
  cr_assert_eq(stats_of(pool).free_bytes, 0);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

Test(pool, bad_input_is_refused) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool *pool = NULL;
  ts_assert_rejected(ctx, yk_pool_create(ctx, NULL, &pool), YK_ERR_INVALID_ARGUMENT, "needs options.bytes");
  cr_assert_null(pool);
  yk_pool_options o;
  yk_pool_options_init(&o);
  o.bytes = 100;
  ts_assert_rejected(ctx, yk_pool_create(ctx, &o, &pool), YK_ERR_INVALID_ARGUMENT, "less than 256");
  cr_assert_eq(yk_pool_create(NULL, &o, &pool), YK_ERR_INVALID_ARGUMENT);
  pool = cpu_pool(ctx, 4096);
  void *p = NULL;
  ts_assert_rejected(ctx, yk_pool_alloc(pool, 0, &p), YK_ERR_INVALID_ARGUMENT, "cannot allocate 0 bytes");
  ts_assert_rejected(ctx, yk_pool_alloc(pool, 16, NULL), YK_ERR_INVALID_ARGUMENT, "ptr is NULL");
  char *a = alloc_ok(ctx, pool, 512);
  ts_assert_rejected(ctx, yk_pool_free(pool, a + 256), YK_ERR_INVALID_ARGUMENT, "not an allocation of this pool");
  int local;
  ts_assert_rejected(ctx, yk_pool_free(pool, &local), YK_ERR_INVALID_ARGUMENT, "not an allocation of this pool");
  cr_assert_eq(yk_pool_free(pool, a), YK_OK);
  ts_assert_rejected(ctx, yk_pool_free(pool, a), YK_ERR_INVALID_ARGUMENT, "not an allocation of this pool");
  cr_assert_eq(yk_pool_free(pool, NULL), YK_OK);
  cr_assert_eq(yk_pool_alloc(NULL, 16, &p), YK_ERR_INVALID_ARGUMENT);
  ts_assert_rejected(ctx, yk_pool_get_stats(pool, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  yk_pool_destroy(pool);
  yk_pool_destroy(NULL);
  yk_ctx_destroy(ctx);
}

/* Thousands of random allocations and frees against a list of what is live: no two overlap, the
 * counts agree, and freeing everything leaves one free extent. */
Test(pool, randomized_against_a_model) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("pool.randomized");
  yh_rng rng = {seed};
  const size_t total = 1 << 20;
  yk_pool *pool = cpu_pool(ctx, total);
  enum { MAX_LIVE = 300 };
  char *live[MAX_LIVE];
  size_t sizes[MAX_LIVE];
  int count = 0;
  size_t used = 0;
  char *base = NULL;
  for (int step = 0; step < 20000; step++) {
    const int do_alloc = count == 0 || (count < MAX_LIVE && yh_next(&rng) % 100 < 55);
    if (do_alloc) {
      const size_t bytes = 1 + yh_next(&rng) % 12000, rounded = (bytes + 255) / 256 * 256;
      void *p = NULL;
      yk_status st = yk_pool_alloc(pool, bytes, &p);
      if (st == YK_OK) {
        char *q = p;
        if (!base || q < base) base = q;
        for (int i = 0; i < count; i++)
          cr_assert(q + rounded <= live[i] || live[i] + sizes[i] <= q, "step %d: overlap (seed %llu)", step,
                    (unsigned long long)seed);
        live[count] = q, sizes[count++] = rounded, used += rounded;
        memset(q, step & 0xff, rounded);
      } else {
        cr_assert_eq(st, YK_ERR_OUT_OF_MEMORY, "step %d: %s", step, yk_ctx_last_error(ctx));
        cr_assert_lt(stats_of(pool).largest_free_bytes, rounded, "step %d: refused though a hole fits", step);
      }
    } else {
      const int i = (int)(yh_next(&rng) % (uint64_t)count);
      cr_assert_eq(yk_pool_free(pool, live[i]), YK_OK, "step %d: %s", step, yk_ctx_last_error(ctx));
      used -= sizes[i];
      live[i] = live[count - 1], sizes[i] = sizes[--count];
    }
    const yk_pool_stats s = stats_of(pool);
    cr_assert_eq(s.used_bytes, used, "step %d (seed %llu)", step, (unsigned long long)seed);
    cr_assert_eq(s.used_bytes + s.free_bytes, total);
    cr_assert_eq(s.allocations, (uint64_t)count);
    cr_assert_leq(s.largest_free_bytes, s.free_bytes);
  }
  while (count) yk_pool_free(pool, live[--count]);
  const yk_pool_stats s = stats_of(pool);
  cr_assert_eq(s.largest_free_bytes, total, "everything merged back (seed %llu)", (unsigned long long)seed);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

typedef struct {
  yk_pool *pool;
  int id, failures;
} worker_arg;

static void *worker(void *p) {
  worker_arg *w = p;
  yh_rng rng = {(uint64_t)w->id + 1};
  for (int i = 0; i < 3000; i++) {
    const size_t bytes = 256 * (1 + yh_next(&rng) % 8);
    unsigned char *q = NULL;
    if (yk_pool_alloc(w->pool, bytes, (void **)&q) != YK_OK) continue; /* full for a moment: fine */
    memset(q, w->id, bytes);
    for (size_t j = 0; j < bytes; j++) w->failures += q[j] != (unsigned char)w->id;
    w->failures += yk_pool_free(w->pool, q) != YK_OK;
  }
  return NULL;
}

Test(pool, threads_share_a_pool) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_pool *pool = cpu_pool(ctx, 1 << 18);
  pthread_t threads[4];
  worker_arg args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (worker_arg){pool, i + 1, 0};
    cr_assert_eq(pthread_create(&threads[i], NULL, worker, &args[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    cr_assert_eq(args[i].failures, 0, "thread %d saw another's bytes or a failed free", i);
  }
  const yk_pool_stats s = stats_of(pool);
  cr_assert_eq(s.used_bytes, 0);
  cr_assert_eq(s.largest_free_bytes, (size_t)1 << 18);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}

Test(pool, gpu_pool_takes_a_share_of_free_memory) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  yk_pool_options o;
  yk_pool_options_init(&o);
  o.free_fraction = 0.05;
  yk_pool *pool = NULL;
  cr_assert_eq(yk_pool_create(ctx, &o, &pool), YK_OK, "%s", yk_ctx_last_error(ctx));
  yk_pool_stats s = stats_of(pool);
  cr_assert_eq(s.on_device, 1);
  cr_assert_gt(s.total_bytes, (size_t)1 << 20);
  cr_assert_eq(s.total_bytes % 256, 0);
  void *a = alloc_ok(ctx, pool, 1 << 20), *b = alloc_ok(ctx, pool, 1 << 20);
  cr_assert_eq((uintptr_t)a % 256, 0);
  cr_assert_eq(ctx->cu.cuMemsetD8((CUdeviceptr)(uintptr_t)b, 0x5a, 1 << 20), CUDA_SUCCESS, "b is device memory");
  unsigned char back[64];
  cr_assert_eq(ctx->cu.cuMemcpyDtoH(back, (CUdeviceptr)(uintptr_t)b + 1000, sizeof back), CUDA_SUCCESS);
  for (size_t i = 0; i < sizeof back; i++) cr_assert_eq(back[i], 0x5a);
  cr_assert_eq(yk_pool_free(pool, a), YK_OK);
  cr_assert_eq(yk_pool_free(pool, b), YK_OK);
  cr_assert_eq(stats_of(pool).used_bytes, 0);
  yk_pool_destroy(pool);
  yk_ctx_destroy(ctx);
}
