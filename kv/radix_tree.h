/* A radix tree over token ids for prefix sharing over a paged KV cache (SGLang's RadixCache, in C).
 *
 * Each node holds a run of tokens and the KV pages that hold them; a request whose tokens begin
 * with a cached run reuses those pages instead of computing them again. With page_size > 1 only
 * whole pages are shared: matches and inserts are cut to a multiple of page_size, and a node
 * splits only on a page boundary.
 *
 * Pages belong to a page owner (the KV cache manager) reached through yk_radix_page_owner: the
 * tree retains a page when it starts to hold it and releases it when it lets it go (eviction,
 * destroy), so while a page is cached the tree holds exactly one reference to it. The tree never
 * takes or drops the caller's own references: a request keeps its pages by its own reference
 * (or by lock, which keeps the tree's), and drops them itself when it ends.
 *
 * Errors: every fallible call returns a yk_status and leaves its message on the yk_ctx given to
 * yk_radix_create (read with yk_ctx_last_error(ctx) from the same thread), or, where the tree was
 * made with a NULL ctx or the call's tree is NULL, on yk_ctx_last_error(NULL). A call that fails
 * has changed nothing the caller can see.
 *
 * Not thread-safe: the scheduler that owns a tree serialises calls on it. The callbacks run
 * inside tree calls and must not call back into the same tree.
 *
 * The clock: access times are a logical clock that ticks once per yk_radix_match_prefix and
 * yk_radix_insert, so eviction order is deterministic. */
#ifndef YK_KV_RADIX_TREE_H
#define YK_KV_RADIX_TREE_H

#include <stdint.h>

#include "yk/context.h"

#define YK_RADIX_MAX_PAGE_SIZE 128

typedef struct yk_radix_tree yk_radix_tree;

/* The page owner: reference counts on page ids, kept by whoever owns the pages. */
typedef struct yk_radix_page_owner {
  /* The tree now holds one reference to each of pages[0..count). A status other than YK_OK
   * refuses: the insert that asked fails with that status and holds none of them. */
  yk_status (*retain)(void *user, const int32_t *pages, int64_t count);
  /* The tree drops its reference to each of pages[0..count) (eviction, destroy). */
  void (*release)(void *user, const int32_t *pages, int64_t count);
  void *user;
} yk_radix_page_owner;

/* A handle to a node, for lock and unlock. A handle stays valid while its node is locked; once
 * unlocked, the node may be evicted and the handle then fails with YK_ERR_INVALID_ARGUMENT
 * (a generation count catches reuse of the slot), never a crash. Splits keep it valid: the
 * handle goes on naming the same run of the path's end. */
typedef struct yk_radix_node {
  uint32_t index, generation;
} yk_radix_node;

/* page_size: 1 to YK_RADIX_MAX_PAGE_SIZE tokens per page. owner: both callbacks required; it is
 * copied. ctx may be NULL (messages then go to yk_ctx_last_error(NULL)). */
yk_status yk_radix_create(yk_ctx *ctx, int page_size, const yk_radix_page_owner *owner, yk_radix_tree **out);

/* Releases every cached page through the owner, locked or not, and frees the tree. NULL is
 * ignored. */
void yk_radix_destroy(yk_radix_tree *tree);

typedef struct yk_radix_match {
  int64_t matched_tokens; /* a multiple of page_size */
  yk_radix_node node;     /* the node where the match ends (the root when nothing matched) */
} yk_radix_match;

/* The longest cached prefix of tokens[0..n), cut to whole pages. pages (NULL: not written)
 * receives the page ids covering it, matched_tokens / page_size of them; pages_capacity must be
 * at least n / page_size. Splits the node where the match ends inside it, and marks the matched
 * path as used now. Allocates only for that split. */
yk_status yk_radix_match_prefix(yk_radix_tree *tree, const int32_t *tokens, int64_t n, int32_t *pages,
                                int64_t pages_capacity, yk_radix_match *out);

/* The length yk_radix_match_prefix would return, with nothing changed (no split, no access time):
 * for schedulers looking at waiting requests. */
yk_status yk_radix_prefix_length(const yk_radix_tree *tree, const int32_t *tokens, int64_t n, int64_t *matched_tokens);

typedef struct yk_radix_insert_result {
  int64_t cached_tokens;   /* the leading tokens already cached; the tree kept its own pages */
  int64_t inserted_tokens; /* tokens newly cached; the tree retained their pages */
  int64_t duplicate_count; /* the caller's pages in the cached part that differ from the tree's */
} yk_radix_insert_result;

/* After a prefill: caches tokens[0..n) (cut to whole pages) held by pages[0..n / page_size).
 * The part already cached keeps the tree's pages; the caller's pages there are not retained, and
 * those that differ from the tree's (the caller computed them again) are written, in order, to
 * duplicates (NULL: not written; else room for n / page_size entries): they are the caller's to
 * release, as the tree never holds them. The new part's pages are retained through the owner in
 * one call. Page ids must be >= 0. Splits at most one node and adds at most one. out may be NULL. */
yk_status yk_radix_insert(yk_radix_tree *tree, const int32_t *tokens, int64_t n, const int32_t *pages,
                          int32_t *duplicates, yk_radix_insert_result *out);

/* Counts a user of the path from the root to node: nodes on it are not evicted until unlocked as
 * often as locked. Locking the root does nothing. */
yk_status yk_radix_lock(yk_radix_tree *tree, yk_radix_node node);
/* Fails (YK_ERR_INVALID_ARGUMENT) on a node not locked or a stale handle. */
yk_status yk_radix_unlock(yk_radix_tree *tree, yk_radix_node node);

/* Evicts unlocked leaves, least recently used first (a parent left an unlocked leaf joins them),
 * releasing their pages through the owner, until at least num_pages are freed or nothing is
 * evictable. Whole nodes go, so it may free more than asked. *freed_pages (may be NULL) gets the
 * count. */
yk_status yk_radix_evict(yk_radix_tree *tree, int64_t num_pages, int64_t *freed_pages);

typedef struct yk_radix_stats {
  int64_t cached_tokens;   /* cached_pages * page_size */
  int64_t cached_pages;    /* evictable_pages + locked_pages */
  int64_t evictable_pages; /* in unlocked nodes: what evicting everything would free */
  int64_t locked_pages;    /* in nodes some request holds */
  int64_t nodes;           /* the root not counted */
} yk_radix_stats;

yk_status yk_radix_get_stats(const yk_radix_tree *tree, yk_radix_stats *out);

/* The scheduling helper (SGLang's longest-prefix-match policy): order[0..count) gets the indices
 * of the waiting requests (tokens[i], lengths[i]) sorted by cached prefix length, longest first,
 * ties in their given order. matched (NULL: not written) gets each request's length, by request
 * index. Reads the tree only. */
yk_status yk_radix_order_by_prefix(const yk_radix_tree *tree, const int32_t *const *tokens, const int64_t *lengths,
                                   int64_t count, int64_t *order, int64_t *matched);

/* Checks every invariant (child order, page alignment, lock counts, the eviction heap, the
 * statistics) in O(nodes); YK_ERR_INTERNAL with what is wrong. For tests. */
yk_status yk_radix_validate(const yk_radix_tree *tree);

#endif
