/* The prefix cache's insides, shared by kv/prefix_cache.c (creation, the page owner, statistics,
 * checks), kv/prefix_requests.c (start, insert, finish) and kv/prefix_evict.c (eviction on
 * demand). The tree's page owner is the yk_kv_cache itself: the tree's references are block
 * reference counts there (kv/block_refs.c). */
#ifndef YK_KV_PREFIX_CACHE_H
#define YK_KV_PREFIX_CACHE_H

#include "kv/kv_cache.h"
#include "kv/radix_tree.h"
#include "yk/radix.h"

/* A running request, kept by its sequence's slot in the cache (a slot holds one live sequence at
 * a time), so finishing finds its lock without a search and starting allocates nothing once the
 * slots have grown. */
typedef struct yk_prefix_request {
  int64_t seq;           /* the request's sequence; 0: the slot runs no request */
  yk_radix_node node;    /* the end of its locked path */
  int64_t locked_tokens; /* the locked path's length */
} yk_prefix_request;

struct yk_prefix_cache {
  yk_kv_cache *cache;
  yk_radix_tree *tree;
  yk_prefix_request *requests; /* by sequence slot */
  int64_t request_capacity, live_requests;
  int32_t *pages; /* the matched blocks, between the tree and the new sequence */
  int64_t page_capacity;
  int64_t requested_tokens, hit_tokens, evicted_blocks;
  int64_t duplicate_blocks; /* table entries switched from a sequence's own copy to the tree's block */
  int64_t bad_releases;     /* releases of blocks the tree did not hold: a bug, reported by validate */
};

/* The slot of a live sequence (its index in cache->seqs). */
static inline int64_t yk_prefix_slot(const yk_prefix_cache *pc, const yk_kv_seq *s) { return s - pc->cache->seqs; }

/* Checks the tree, then that every device block's reference count equals the tables holding it
 * plus the tree's pages that are it, and that every running request's sequence is live and its
 * path locked; YK_ERR_INTERNAL with what is wrong. For tests. */
yk_status yk_prefix_cache_validate(const yk_prefix_cache *pc);

#endif
