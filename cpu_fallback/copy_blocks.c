#include "cpu_fallback/copy_blocks.h"

#include <string.h>

/* Item i is pair i / caches in cache i % caches. */
static void items(void *p, int64_t begin, int64_t end) {
  const yk_copy_blocks_args *a = p;
  for (int64_t i = begin; i < end; i++) {
    char *base = a->bases[i % a->caches];
    const int32_t *pair = a->pairs + 2 * (i / a->caches);
    memcpy(base + pair[1] * a->block_stride_bytes, base + pair[0] * a->block_stride_bytes, a->block_bytes);
  }
}

void yk_cpu_copy_blocks(yk_thread_pool *pool, const yk_copy_blocks_args *args) {
  /* Threads pay off from about a megabyte a chunk; small blocks go many to a chunk. */
  const int64_t grain = (int64_t)((1u << 20) / (args->block_bytes ? args->block_bytes : 1)) + 1;
  yk_parallel_for(pool, args->pair_count * args->caches, grain, items, (void *)args);
}
