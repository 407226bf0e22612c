#include "kv/block_allocator.h"

#include <stdlib.h>
#include <string.h>

int yk_block_allocator_init(yk_block_allocator *a, int64_t count) {
  memset(a, 0, sizeof *a);
  const size_t n = (size_t)(count ? count : 1);
  a->refs = calloc(n, sizeof *a->refs);
  a->holds = calloc(n, sizeof *a->holds);
  a->free_ids = malloc(n * sizeof *a->free_ids);
  a->marks = calloc(n, 1);
  if (!a->refs || !a->holds || !a->free_ids || !a->marks) {
    yk_block_allocator_destroy(a);
    return 1;
  }
  a->count = count;
  /* Lowest ids on top: a fresh cache hands out consecutive blocks, whose copies and swaps
   * coalesce into single transfers. */
  for (int64_t i = 0; i < count; i++) a->free_ids[i] = (int32_t)(count - 1 - i);
  a->free_count = count;
  return 0;
}

void yk_block_allocator_destroy(yk_block_allocator *a) {
  free(a->refs);
  free(a->holds);
  free(a->free_ids);
  free(a->marks);
  memset(a, 0, sizeof *a);
}

void yk_block_take(yk_block_allocator *a, int64_t n, int32_t *out) {
  for (int64_t i = 0; i < n; i++) {
    const int32_t id = a->free_ids[--a->free_count];
    a->refs[id] = 1;
    out[i] = id;
  }
}

static void release_if_unused(yk_block_allocator *a, int32_t id) {
  if (a->refs[id] == 0 && a->holds[id] == 0) a->free_ids[a->free_count++] = id;
}

void yk_block_unref(yk_block_allocator *a, int32_t id) {
  a->refs[id]--;
  release_if_unused(a, id);
}

void yk_block_release_hold(yk_block_allocator *a, int32_t id) {
  a->holds[id]--;
  release_if_unused(a, id);
}
