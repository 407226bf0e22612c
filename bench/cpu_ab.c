/* Two or more builds of libyk timed against each other on the CPU's decode, in one process:
 *   yk_cpu_ab [--threads N] [--batch B] [--keys S] [--heads Q/KV] [--dim D] [--float32]
 *             [--page P] [--rounds R] [--calls C] LIB.so LIB.so ...
 * Each library is dlopen'ed on its own (RTLD_LOCAL) with a CPU context of N threads; every round
 * times C calls of each in turn over the same inputs (float16, or float32; dense [B, S, KV, D]
 * keys and values, or a page table of P-token pages in a shuffled order), and the table gives each
 * library's fastest and median round and the median against the first library's. Alternating in
 * one process is what makes the ratios hold: on the 2-vCPU CI VM whole runs of one binary moved
 * by 10-30% with its neighbours' load, rounds minutes apart by as much. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "yk/yk.h"

typedef void (*options_init_fn)(yk_ctx_options *);
typedef yk_status (*ctx_create_fn)(const yk_ctx_options *, yk_ctx **);
typedef const char *(*last_error_fn)(const yk_ctx *);
typedef yk_status (*decode_fn)(yk_ctx *, const DLTensor *, const DLTensor *, const DLTensor *,
                               const yk_attention_params *, DLTensor *, DLTensor *, void *);
typedef yk_status (*paged_decode_fn)(yk_ctx *, const DLTensor *, const yk_paged_kv *, const yk_attention_params *,
                                     DLTensor *, DLTensor *, void *);

#define MAX_LIBS 8

typedef struct build {
  const char *path;
  yk_ctx *ctx;
  decode_fn decode;
  paged_decode_fn paged_decode;
  last_error_fn last_error;
  double *seconds; /* a round's time a call, rounds of them */
} build;

typedef struct problem {
  int64_t batch, keys, q_heads, kv_heads, dim, page;
  int bits;
  DLTensor q, k, v, out, k_cache, v_cache, table, lens;
  yk_paged_kv paged;
} problem;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static uint64_t next_random(uint64_t *state) { /* splitmix64 */
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* count values uniform in (-1, 1): float32, or float16 bits (exponents 2^-4 .. 2^-1 and a sign). */
static void *random_values(int64_t count, int bits, uint64_t *state) {
  void *data = malloc((size_t)count * (size_t)(bits / 8));
  if (!data) return NULL;
  for (int64_t i = 0; i < count; i++) {
    const uint64_t r = next_random(state);
    if (bits == 32)
      ((float *)data)[i] = (float)((double)(r >> 11) * 0x1p-52 - 1.0);
    else
      ((uint16_t *)data)[i] = (uint16_t)(0x2c00u + (r & 0x0fffu)) | (uint16_t)((r >> 16) & 0x8000u);
  }
  return data;
}

static DLTensor tensor(void *data, int ndim, int64_t *shape, uint8_t code, uint8_t bits) {
  DLTensor t = {.data = data, .device = {kDLCPU, 0}, .ndim = ndim, .dtype = {code, bits, 1}, .shape = shape};
  return t;
}

static int make_problem(problem *p, int64_t *q_shape, int64_t *kv_shape, int64_t *cache_shape, int64_t *table_shape,
                        int64_t *lens_shape) {
  uint64_t state = 1;
  const int64_t tokens = p->batch * p->keys, kv_values = tokens * p->kv_heads * p->dim;
  q_shape[0] = p->batch, q_shape[1] = p->q_heads, q_shape[2] = p->dim;
  kv_shape[0] = p->batch, kv_shape[1] = p->keys, kv_shape[2] = p->kv_heads, kv_shape[3] = p->dim;
  void *q = random_values(p->batch * p->q_heads * p->dim, p->bits, &state),
       *out = malloc((size_t)(p->bits / 8) * (size_t)(p->batch * p->q_heads * p->dim));
  void *k = random_values(kv_values, p->bits, &state), *v = random_values(kv_values, p->bits, &state);
  if (!q || !out || !k || !v) return 0;
  p->q = tensor(q, 3, q_shape, kDLFloat, (uint8_t)p->bits);
  p->out = tensor(out, 3, q_shape, kDLFloat, (uint8_t)p->bits);
  p->k = tensor(k, 4, kv_shape, kDLFloat, (uint8_t)p->bits);
  p->v = tensor(v, 4, kv_shape, kDLFloat, (uint8_t)p->bits);
  if (!p->page) return 1;
  /* the same keys as pages, the blocks shuffled: block i of the cache is some sequence's page */
  const int64_t pages_a_seq = p->keys / p->page, blocks = p->batch * pages_a_seq;
  int32_t *table = malloc(sizeof *table * (size_t)blocks), *lens = malloc(sizeof *lens * (size_t)p->batch);
  if (!table || !lens) return 0;
  for (int64_t i = 0; i < blocks; i++) table[i] = (int32_t)i;
  for (int64_t i = blocks - 1; i > 0; i--) {
    const int64_t j = (int64_t)(next_random(&state) % (uint64_t)(i + 1));
    const int32_t x = table[i];
    table[i] = table[j], table[j] = x;
  }
  for (int64_t b = 0; b < p->batch; b++) lens[b] = (int32_t)p->keys;
  cache_shape[0] = blocks, cache_shape[1] = p->page, cache_shape[2] = p->kv_heads, cache_shape[3] = p->dim;
  table_shape[0] = p->batch, table_shape[1] = pages_a_seq;
  lens_shape[0] = p->batch;
  p->k_cache = tensor(k, 4, cache_shape, kDLFloat, (uint8_t)p->bits);
  p->v_cache = tensor(v, 4, cache_shape, kDLFloat, (uint8_t)p->bits);
  p->table = tensor(table, 2, table_shape, kDLInt, 32);
  p->lens = tensor(lens, 1, lens_shape, kDLInt, 32);
  p->paged = (yk_paged_kv){.k_cache = &p->k_cache,
                           .v_cache = &p->v_cache,
                           .block_tables = &p->table,
                           .context_lens = &p->lens,
                           .max_context_len = (int)p->keys};
  return 1;
}

static int open_build(build *b, int threads) {
  void *lib = dlopen(b->path, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "yk_cpu_ab: %s\n", dlerror());
    return 0;
  }
  options_init_fn options_init = (options_init_fn)dlsym(lib, "yk_ctx_options_init");
  ctx_create_fn ctx_create = (ctx_create_fn)dlsym(lib, "yk_ctx_create");
  b->decode = (decode_fn)dlsym(lib, "yk_attention_decode");
  b->paged_decode = (paged_decode_fn)dlsym(lib, "yk_paged_attention_decode");
  b->last_error = (last_error_fn)dlsym(lib, "yk_ctx_last_error");
  if (!options_init || !ctx_create || !b->decode || !b->paged_decode || !b->last_error) {
    fprintf(stderr, "yk_cpu_ab: %s lacks the decode API\n", b->path);
    return 0;
  }
  yk_ctx_options o;
  options_init(&o);
  o.device = YK_DEVICE_CPU, o.cpu_threads = threads, o.cache_memory_only = 1;
  if (ctx_create(&o, &b->ctx)) {
    fprintf(stderr, "yk_cpu_ab: %s: no CPU context\n", b->path);
    return 0;
  }
  return 1;
}

static int call(const build *b, problem *p) {
  const yk_attention_params params = {0};
  const yk_status st = p->page ? b->paged_decode(b->ctx, &p->q, &p->paged, &params, &p->out, NULL, NULL)
                               : b->decode(b->ctx, &p->q, &p->k, &p->v, &params, &p->out, NULL, NULL);
  if (st) fprintf(stderr, "yk_cpu_ab: %s: %s\n", b->path, b->last_error(b->ctx));
  return st == YK_OK;
}

static int usage(void) {
  fprintf(stderr, "usage: yk_cpu_ab [--threads N] [--batch B] [--keys S] [--heads Q/KV] [--dim D] [--float32] "
                  "[--page P] [--rounds R] [--calls C] LIB.so LIB.so ...\n");
  return 2;
}

int main(int argc, char **argv) {
  problem p = {.batch = 1, .keys = 4096, .q_heads = 32, .kv_heads = 8, .dim = 128, .bits = 16};
  int threads = 0, rounds = 15, calls = 2, count = 0;
  build builds[MAX_LIBS] = {{0}};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--float32")) {
      p.bits = 32;
    } else if (a[0] == '-' && a[1] == '-' && !value) {
      return usage();
    } else if (!strcmp(a, "--threads")) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(a, "--batch")) {
      p.batch = atoll(argv[++i]);
    } else if (!strcmp(a, "--keys")) {
      p.keys = atoll(argv[++i]);
    } else if (!strcmp(a, "--heads")) {
      if (sscanf(argv[++i], "%lld/%lld", (long long *)&p.q_heads, (long long *)&p.kv_heads) != 2) return usage();
    } else if (!strcmp(a, "--dim")) {
      p.dim = atoll(argv[++i]);
    } else if (!strcmp(a, "--page")) {
      p.page = atoll(argv[++i]);
    } else if (!strcmp(a, "--rounds")) {
      rounds = atoi(argv[++i]);
    } else if (!strcmp(a, "--calls")) {
      calls = atoi(argv[++i]);
    } else if (a[0] == '-' || count == MAX_LIBS) {
      return usage();
    } else {
      builds[count++].path = a;
    }
  }
  if (count == 0 || rounds < 1 || calls < 1 || p.batch < 1 || p.keys < 1 || p.kv_heads < 1 || p.dim < 1 ||
      p.q_heads % p.kv_heads || (p.page && p.keys % p.page))
    return usage();
  int64_t q_shape[3], kv_shape[4], cache_shape[4], table_shape[2], lens_shape[1];
  if (!make_problem(&p, q_shape, kv_shape, cache_shape, table_shape, lens_shape)) {
    fprintf(stderr, "yk_cpu_ab: out of memory\n");
    return 1;
  }
  for (int l = 0; l < count; l++) {
    builds[l].seconds = calloc((size_t)rounds, sizeof(double));
    if (!builds[l].seconds || !open_build(&builds[l], threads) || !call(&builds[l], &p)) return 1;
  }
  for (int r = 0; r < rounds; r++)
    for (int l = 0; l < count; l++) {
      const double t0 = now();
      for (int c = 0; c < calls; c++)
        if (!call(&builds[l], &p)) return 1;
      builds[l].seconds[r] = (now() - t0) / calls;
    }
  const double bytes = 2.0 * (double)(p.batch * p.keys * p.kv_heads * p.dim) * (p.bits / 8);
  double first = 0;
  printf("%s decode, float%d, batch %lld x %lld keys, %lld/%lld heads, dim %lld, %d threads (0: all), %d rounds of %d "
         "calls\n",
         p.page ? "paged" : "dense", p.bits, (long long)p.batch, (long long)p.keys, (long long)p.q_heads,
         (long long)p.kv_heads, (long long)p.dim, threads, rounds, calls);
  for (int l = 0; l < count; l++) {
    qsort(builds[l].seconds, (size_t)rounds, sizeof(double), by_value);
    const double fastest = builds[l].seconds[0], median = builds[l].seconds[rounds / 2];
    if (l == 0) first = median;
    printf("  %-40s fastest %9.1f us  median %9.1f us  %7.1f GB/s  %.2fx\n", builds[l].path, fastest * 1e6,
           median * 1e6, bytes / median / 1e9, first / median);
  }
  return 0;
}
