/* The free list and reference counts of one set of KV blocks (the device blocks, or the host swap
 * blocks). A block is free exactly when nothing references it (a sequence's table, the prefix
 * cache) and no pending copy holds it. Callers check free_count before taking, so taking never
 * fails. */
#ifndef YK_KV_BLOCK_ALLOCATOR_H
#define YK_KV_BLOCK_ALLOCATOR_H

#include <stdint.h>

typedef struct yk_block_allocator {
  int64_t count;
  int32_t *refs;     /* block tables and the prefix cache holding the block */
  int32_t *holds;    /* pending copies reading or writing it (they keep it from reuse) */
  int32_t *free_ids; /* a stack; the top is handed out next */
  int64_t free_count;
  uint8_t *marks; /* scratch for duplicate checks, all 0 between calls */
} yk_block_allocator;

/* 0 on success, 1 when host memory runs out. Every block starts free, handed out in id order. */
int yk_block_allocator_init(yk_block_allocator *a, int64_t count);
void yk_block_allocator_destroy(yk_block_allocator *a);

/* n <= free_count: the blocks go to out, each with one reference. */
void yk_block_take(yk_block_allocator *a, int64_t n, int32_t *out);

static inline void yk_block_ref(yk_block_allocator *a, int32_t id) { a->refs[id]++; }

/* Drops a reference; the block is free again when nothing else holds it. */
void yk_block_unref(yk_block_allocator *a, int32_t id);

static inline void yk_block_hold(yk_block_allocator *a, int32_t id) { a->holds[id]++; }
void yk_block_release_hold(yk_block_allocator *a, int32_t id);

#endif
