/* A small pool of worker threads for the CPU fallback: a parallel for over [0, n). */
#ifndef YK_CPU_PARALLEL_H
#define YK_CPU_PARALLEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef void (*yk_range_fn)(void *arg, int64_t begin, int64_t end);

/* The builds of the CPU attention's tile kernels (cpu_fallback/attention.c and
 * attention_backward.c), in the order each adds to the one before: for every CPU; x86-64 with
 * AVX2, FMA and F16C; with AVX-512F too; and the AVX-512 build taking its bfloat16 forward's
 * products to AMX tiles (cpu_fallback/attention_amx.h) where the CPU has AMX-TILE and AMX-BF16 and
 * the OS saves their state (yk_cpu_amx_ready: and lets the process use them). */
typedef enum yk_cpu_isa { YK_CPU_PLAIN, YK_CPU_AVX2, YK_CPU_AVX512, YK_CPU_AMX } yk_cpu_isa;

typedef struct yk_thread_pool {
  int threads;    /* including the caller's */
  yk_cpu_isa isa; /* the build the attention kernels run */
  int started;    /* workers running */
  pthread_t *workers;
  pthread_mutex_t run_lock; /* one parallel loop at a time; a second caller runs serially */
  pthread_mutex_t lock;
  pthread_cond_t wake, done;
  uint64_t generation;
  int stop, pending;
  yk_range_fn fn;
  void *arg;
  int64_t n, chunk;
  atomic_llong next;
} yk_thread_pool;

/* threads <= 0: YK_NUM_THREADS, else the online CPUs. Workers start at the first parallel loop.
 * isa: the widest build the library has and the CPU runs, at most YK_CPU_ISA's (plain, avx2,
 * avx512 or amx). */
int yk_thread_pool_init(yk_thread_pool *pool, int threads);
void yk_thread_pool_destroy(yk_thread_pool *pool);

/* Whether this process may use AMX tiles: asks Linux for them at the first call (once a process;
 * safe from any thread). 0 where the library has no AMX code. */
int yk_cpu_amx_ready(void);

/* Calls fn over disjoint ranges covering [0, n), in parallel when n is at least two grains, and
 * returns when all are done; the caller's thread runs ranges too. fn must not call back into the
 * pool. Workers have 1 MiB stacks. */
void yk_parallel_for(yk_thread_pool *pool, int64_t n, int64_t grain, yk_range_fn fn, void *arg);

#endif
