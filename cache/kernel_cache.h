/* The in-memory kernel cache: a table from (spec, target) to the compiled binary and, on a GPU
 * context, the loaded CUfunction.
 *
 * The hot path (yk_kernel_find + a state check) takes no lock and allocates nothing: buckets are
 * lock-free lists that only grow, entries live as long as the context, and an entry's state is
 * published with release/acquire. Everything slow (disk, NVRTC, module load) runs in
 * yk_kernel_obtain under a per-entry claim, so when several threads ask for the same missing
 * kernel one does the work and the others wait for it. */
#ifndef YK_CACHE_KERNEL_CACHE_H
#define YK_CACHE_KERNEL_CACHE_H

#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "cache/disk_cache.h"
#include "gen/spec.h"
#include "runtime/compile.h"

#define YK_KERNEL_BUCKETS 1024 /* power of two */
#define YK_TARGET_MAX 16

typedef struct yk_kernel_key {
  yk_spec spec;
  char target[YK_TARGET_MAX]; /* "sm_90", NUL-padded */
} yk_kernel_key;
_Static_assert(sizeof(yk_kernel_key) == 88, "yk_kernel_key must have no padding");
_Static_assert(sizeof(yk_kernel_key) % 8 == 0, "yk_kernel_key_hash reads it a word at a time");

enum yk_kernel_state {
  YK_KERNEL_EMPTY = 0,    /* nothing yet, or the last attempt failed */
  YK_KERNEL_BUSY = 1,     /* one thread is compiling or loading it */
  YK_KERNEL_COMPILED = 2, /* binary present */
  YK_KERNEL_LOADED = 3    /* binary present and function loaded on the context's device */
};

typedef struct yk_kernel {
  struct yk_kernel *next; /* bucket chain; set before the entry is published, never changed */
  uint64_t hash;
  yk_kernel_key key;
  atomic_int state;
  /* from COMPILED on: */
  yk_binary binary;
  int compiled_here; /* NVRTC ran for this entry in this process (not a disk hit) */
  /* from LOADED on: */
  unsigned block_threads, dynamic_smem_bytes;
  CUmodule module;
  CUfunction function;
  /* the last failure, for threads that waited on the attempt */
  unsigned failures;
  yk_status failure_status;
  char *failure_message;
} yk_kernel;

typedef struct yk_kernel_cache {
  _Atomic(yk_kernel *) buckets[YK_KERNEL_BUCKETS];
  pthread_mutex_t lock; /* inserts, state changes of claimed entries, stats */
  pthread_cond_t changed;
  yk_ctx_stats stats;
  yk_disk_cache disk;
} yk_kernel_cache;

int yk_kernel_cache_init(yk_kernel_cache *cache);
/* Unloads modules (the caller makes the CUDA context current) and frees every entry. */
void yk_kernel_cache_destroy(yk_kernel_cache *cache, yk_ctx *ctx);

/* FNV-1a over the key's 88 bytes as 11 words (a target is at most 15 characters and NUL-padded),
 * then MurmurHash3's finaliser so that differences in high bits reach the bucket index: a few
 * nanoseconds. */
static inline uint64_t yk_kernel_key_hash(const yk_kernel_key *key) {
  enum { WORDS = sizeof(yk_kernel_key) / 8 }; /* every byte: the spec's and the target's */
  uint64_t h = 0xcbf29ce484222325ull, w[WORDS];
  memcpy(w, key, sizeof w);
  for (int i = 0; i < WORDS; i++) h = (h ^ w[i]) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}

/* Equal keys, word by word: inline, where memcmp would be a call into another page of code. */
static inline int yk_kernel_key_equal(const yk_kernel_key *a, const yk_kernel_key *b) {
  enum { WORDS = sizeof(yk_kernel_key) / 8 };
  uint64_t wa[WORDS], wb[WORDS], diff = 0;
  memcpy(wa, a, sizeof wa);
  memcpy(wb, b, sizeof wb);
  for (int i = 0; i < WORDS; i++) diff |= wa[i] ^ wb[i];
  return diff == 0;
}

static inline yk_kernel *yk_kernel_find(yk_kernel_cache *cache, const yk_kernel_key *key, uint64_t hash) {
  yk_kernel *k = atomic_load_explicit(&cache->buckets[hash & (YK_KERNEL_BUCKETS - 1)], memory_order_acquire);
  for (; k; k = k->next)
    if (k->hash == hash && yk_kernel_key_equal(&k->key, key)) return k;
  return NULL;
}

/* The slow path: brings the entry for key to at least `want` (COMPILED or LOADED) through memory,
 * disk and NVRTC, and the module loader for LOADED. *compiled (may be NULL) is set to 1 when NVRTC
 * ran for this call. The spec must be complete; it is checked here, before anything is compiled. */
yk_status yk_kernel_obtain(yk_ctx *ctx, const yk_kernel_key *key, uint64_t hash, int want, yk_kernel **out,
                           int *compiled);

#endif
