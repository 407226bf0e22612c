/* The arithmetic of a memory pool, apart from the memory: which byte ranges [offset, offset + size)
 * of a region are carved out and which are free. Extents sit in address order so a freed extent
 * merges with free neighbours; allocated ones are found by offset through a hash table. Nothing
 * here touches the region itself, which may be device memory the host cannot read. Not
 * thread-safe: the pool holds a mutex around it. */
#ifndef YK_RUNTIME_EXTENT_LIST_H
#define YK_RUNTIME_EXTENT_LIST_H

#include <stdint.h>

typedef struct yk_extent {
  uint64_t offset, size;
  int32_t prev, next;           /* neighbours in address order, -1 at the ends; next chains spare nodes */
  int32_t free_prev, free_next; /* the free extents, unordered, when is_free */
  int is_free;
} yk_extent;

typedef struct yk_extent_list {
  uint64_t total;
  yk_extent *nodes;
  int32_t node_count, node_capacity;
  int32_t spare;     /* recycled nodes, chained through next */
  int32_t free_head; /* -1 when nothing is free */
  int32_t *slots;    /* open addressing, offset -> node of an allocated extent; -1 empty */
  uint32_t slot_mask;
  uint32_t slots_used;
  uint64_t used_bytes, high_water_bytes, live;
} yk_extent_list;

enum { YK_EXTENT_OK = 0, YK_EXTENT_NO_ROOM = 1, YK_EXTENT_NO_HOST_MEMORY = 2, YK_EXTENT_NOT_ALLOCATED = 3 };

/* One free extent covering [0, total). Returns YK_EXTENT_OK or YK_EXTENT_NO_HOST_MEMORY. */
int yk_extent_list_init(yk_extent_list *list, uint64_t total);
void yk_extent_list_destroy(yk_extent_list *list);

/* Takes size bytes from the smallest free extent that holds them (lowest offset among equals).
 * size must be > 0; the caller rounds it to its alignment. On any failure nothing changes. */
int yk_extent_alloc(yk_extent_list *list, uint64_t size, uint64_t *offset);

/* Returns the extent that starts at offset, merging it with free neighbours. */
int yk_extent_free(yk_extent_list *list, uint64_t offset);

uint64_t yk_extent_largest_free(const yk_extent_list *list);

#endif
