#include "cpu_fallback/parallel.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef YK_CPU_HAS_X86_BUILDS
#include <cpuid.h>
#endif
#ifdef YK_CPU_HAS_AMX
#include <sys/syscall.h>
#endif

#ifdef YK_CPU_HAS_AMX
/* AMX-TILE and AMX-BF16 (CPUID leaf 7) and the OS saving tile state (XCR0 bits 17 and 18). */
static int cpu_has_amx(void) {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & 1u << 22) || !(edx & 1u << 24)) return 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return 0;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & (3u << 17)) == 3u << 17;
}
#endif

/* Linux lets a process use AMX's tile data only once it asks (arch_prctl ARCH_REQ_XCOMP_PERM for
 * XTILEDATA; without it the first tile instruction faults). The grant is for every thread and for
 * good, and enlarges every signal frame of the process (a sigaltstack too small for that fails the
 * request), so it is asked for at the first call that would use the tiles, not when a context is
 * made; a refusal keeps the vector products. */
int yk_cpu_amx_ready(void) {
#ifdef YK_CPU_HAS_AMX
  static atomic_int state; /* 0 not asked yet, 1 granted, -1 refused */
  int s = atomic_load_explicit(&state, memory_order_acquire);
  if (s == 0) {
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    s = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
    atomic_store_explicit(&state, s, memory_order_release);
  }
  return s > 0;
#else
  return 0;
#endif
}

/* The widest build this CPU runs (libgcc's AVX-512 check includes the OS saving its registers). */
static yk_cpu_isa cpu_isa(void) {
#ifdef YK_CPU_HAS_X86_BUILDS
  __builtin_cpu_init();        /* before constructors have run it: a library loaded early */
  unsigned eax, ebx, ecx, edx; /* F16C by CPUID: clang's __builtin_cpu_supports has no name for it */
  const int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)) return YK_CPU_PLAIN;
  if (!__builtin_cpu_supports("avx512f")) return YK_CPU_AVX2;
#ifdef YK_CPU_HAS_AMX
  if (cpu_has_amx()) return YK_CPU_AMX;
#endif
  return YK_CPU_AVX512;
#else
  return YK_CPU_PLAIN;
#endif
}

/* cpu_isa(), at most the build YK_CPU_ISA names (for comparisons and tests). */
static yk_cpu_isa chosen_isa(void) {
  const yk_cpu_isa best = cpu_isa();
  const char *isa = getenv("YK_CPU_ISA");
  if (!isa) return best;
  const yk_cpu_isa most = strcmp(isa, "plain") == 0    ? YK_CPU_PLAIN
                          : strcmp(isa, "avx2") == 0   ? YK_CPU_AVX2
                          : strcmp(isa, "avx512") == 0 ? YK_CPU_AVX512
                                                       : best;
  return most < best ? most : best;
}

int yk_thread_pool_init(yk_thread_pool *pool, int threads) {
  if (threads <= 0) {
    const char *env = getenv("YK_NUM_THREADS");
    threads = env ? atoi(env) : 0;
  }
  if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (threads <= 0) threads = 1;
  if (threads > 256) threads = 256;
  *pool = (yk_thread_pool){.threads = threads, .isa = chosen_isa()};
  if (pthread_mutex_init(&pool->run_lock, NULL)) return 1;
  if (pthread_mutex_init(&pool->lock, NULL)) goto fail_lock;
  if (pthread_cond_init(&pool->wake, NULL)) goto fail_wake;
  if (pthread_cond_init(&pool->done, NULL)) goto fail_done;
  return 0;
fail_done:
  pthread_cond_destroy(&pool->wake);
fail_wake:
  pthread_mutex_destroy(&pool->lock);
fail_lock:
  pthread_mutex_destroy(&pool->run_lock);
  return 1;
}

static void run_chunks(yk_thread_pool *pool) {
  for (;;) {
    int64_t begin = atomic_fetch_add(&pool->next, pool->chunk);
    if (begin >= pool->n) return;
    int64_t end = begin + pool->chunk < pool->n ? begin + pool->chunk : pool->n;
    pool->fn(pool->arg, begin, end);
  }
}

static void *worker_main(void *p) {
  yk_thread_pool *pool = p;
  uint64_t seen = 0;
  pthread_mutex_lock(&pool->lock);
  for (;;) {
    while (!pool->stop && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->lock);
    if (pool->stop) break;
    seen = pool->generation;
    pthread_mutex_unlock(&pool->lock);
    run_chunks(pool);
    pthread_mutex_lock(&pool->lock);
    if (--pool->pending == 0) pthread_cond_signal(&pool->done);
  }
  pthread_mutex_unlock(&pool->lock);
  return NULL;
}

/* Workers' stacks: the attention fallback keeps its tiles on the stack (about 100 KiB), more than
 * some C libraries give a thread by default (musl: 128 KiB, with the rest of the call chain). */
#define WORKER_STACK_BYTES ((size_t)1 << 20)

static void start_workers(yk_thread_pool *pool) {
  if (pool->workers || pool->threads <= 1) return;
  pool->workers = calloc((size_t)pool->threads - 1, sizeof *pool->workers);
  if (!pool->workers) return;
  pthread_attr_t attr;
  const int have_attr = pthread_attr_init(&attr) == 0;
  if (have_attr) pthread_attr_setstacksize(&attr, WORKER_STACK_BYTES); /* else the default */
  for (int i = 0; i < pool->threads - 1; i++) {
    if (pthread_create(&pool->workers[i], have_attr ? &attr : NULL, worker_main, pool)) break;
    pool->started++;
  }
  if (have_attr) pthread_attr_destroy(&attr);
}

void yk_parallel_for(yk_thread_pool *pool, int64_t n, int64_t grain, yk_range_fn fn, void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (pool->threads <= 1 || n < 2 * grain || pthread_mutex_trylock(&pool->run_lock)) {
    fn(arg, 0, n);
    return;
  }
  start_workers(pool);
  if (pool->started == 0) {
    pthread_mutex_unlock(&pool->run_lock);
    fn(arg, 0, n);
    return;
  }
  int64_t chunks = n / grain, most = 4 * (int64_t)(pool->started + 1);
  if (chunks > most) chunks = most;
  pthread_mutex_lock(&pool->lock);
  pool->fn = fn;
  pool->arg = arg;
  pool->n = n;
  pool->chunk = (n + chunks - 1) / chunks;
  atomic_store(&pool->next, 0);
  pool->pending = pool->started;
  pool->generation++;
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->lock);
  run_chunks(pool);
  pthread_mutex_lock(&pool->lock);
  while (pool->pending > 0) pthread_cond_wait(&pool->done, &pool->lock);
  pthread_mutex_unlock(&pool->lock);
  pthread_mutex_unlock(&pool->run_lock);
}

void yk_thread_pool_destroy(yk_thread_pool *pool) {
  pthread_mutex_lock(&pool->lock);
  pool->stop = 1;
  pthread_cond_broadcast(&pool->wake);
  pthread_mutex_unlock(&pool->lock);
  for (int i = 0; i < pool->started; i++) pthread_join(pool->workers[i], NULL);
  free(pool->workers);
  pthread_cond_destroy(&pool->done);
  pthread_cond_destroy(&pool->wake);
  pthread_mutex_destroy(&pool->lock);
  pthread_mutex_destroy(&pool->run_lock);
}
