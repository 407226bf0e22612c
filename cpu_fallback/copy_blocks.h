/* Whole-block copies on the CPU (yk_copy_blocks, include/yk/kv.h). */
#ifndef YK_CPU_COPY_BLOCKS_H
#define YK_CPU_COPY_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#include "cpu_fallback/parallel.h"

typedef struct yk_copy_blocks_args {
  char *const *bases; /* block 0 of each cache */
  int caches;
  int64_t block_stride_bytes;
  size_t block_bytes;
  const int32_t *pairs; /* (source, destination) block ids, checked */
  int64_t pair_count;
} yk_copy_blocks_args;

/* memcpy of every pair in every cache; the pairs must not overlap (they run in parallel). */
void yk_cpu_copy_blocks(yk_thread_pool *pool, const yk_copy_blocks_args *args);

#endif
