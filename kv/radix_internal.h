/* The radix tree's insides, shared by kv/radix_tree.c (structure: walk, split, match, insert) and
 * kv/radix_evict.c (locks, the eviction heap, statistics, checks). */
#ifndef YK_KV_RADIX_INTERNAL_H
#define YK_KV_RADIX_INTERNAL_H

#include "kv/radix_tree.h"

#define RADIX_ROOT 0
#define RADIX_NONE (-1)

/* Nodes live in one array and name each other by index, so handles can carry a generation and a
 * stale one is caught instead of followed. */
typedef struct radix_node {
  int32_t *tokens;   /* len tokens, then len / page_size page ids: one allocation */
  int64_t len;       /* a multiple of page_size; 0 only for the root */
  int32_t *children; /* sorted by their first page (page_size tokens, compared in order) */
  int32_t child_count, child_capacity;
  int32_t parent;     /* RADIX_NONE for the root; the next free slot while free */
  int32_t heap_index; /* position in the eviction heap, RADIX_NONE when not there */
  int64_t lock_ref;   /* users of this node or of any node below it */
  uint64_t last_access;
  uint32_t generation; /* bumped when the slot is freed */
  int alive;
} radix_node;

struct yk_radix_tree {
  yk_ctx *ctx;
  int page_size;
  yk_radix_page_owner owner;
  radix_node *nodes;
  int32_t node_capacity, free_slot, free_count; /* free slots chain through parent */
  int32_t *heap;                                /* unlocked leaves, least recently used first; capacity node_capacity */
  int32_t heap_count;
  uint64_t clock;
  yk_radix_stats stats;
};

static inline int32_t *radix_pages(const radix_node *node) { return node->tokens + node->len; }

/* The eviction heap: radix_heap_refresh puts a node in, moves it or takes it out, as being an
 * unlocked leaf (and its access time) says; it never allocates. */
void radix_heap_refresh(yk_radix_tree *tree, int32_t node);

/* Frees a node's memory and its slot (its pages are the caller's business). */
void radix_node_free(yk_radix_tree *tree, int32_t node);

/* Index of node's child whose first page equals page, or RADIX_NONE; *position gets where such a
 * child is or would go. */
int32_t radix_find_child(const yk_radix_tree *tree, int32_t node, const int32_t *page, int32_t *position);

/* Compares two pages of page_size tokens in order: <0, 0, >0. */
int radix_compare_page(const int32_t *a, const int32_t *b, int page_size);

#endif
