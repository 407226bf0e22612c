/* Prefix sharing over the paged KV cache (SGLang's RadixAttention, in C): a radix tree over token
 * ids whose nodes own runs of KV pages, so that requests beginning with the same tokens (a system
 * prompt, a few-shot header, a conversation so far) share the blocks that hold them instead of
 * computing and storing them again.
 *
 * Two levels:
 *  - yk_prefix_cache: the tree joined to a yk_kv_cache (include/yk/kv.h). A request starts from
 *    the longest cached prefix of its tokens, whose blocks its new sequence shares by reference;
 *    it appends only the rest; when it finishes, its full pages join the tree. Allocating through
 *    the prefix cache evicts cached blocks no request uses, least recently used first, when the
 *    free blocks do not suffice.
 *  - yk_radix_tree: the tree alone over page ids someone else owns, reference counted through a
 *    yk_radix_page_owner: for engines with their own block manager.
 *
 * Pages. With page_size > 1 only whole pages are shared: matches and inserts are cut to a multiple
 * of page_size, and a node splits only on a page boundary. A page, once cached, is never written
 * again: a sequence appending into a shared block gets a private copy (copy-on-write).
 *
 * Errors: every fallible call returns a yk_status and leaves its message on the yk_ctx the tree or
 * cache was made with (yk_ctx_last_error(ctx) from the same thread; yk_ctx_last_error(NULL) for a
 * tree made with a NULL ctx, or when the handle passed is NULL). A call that fails has changed
 * nothing the caller can see.
 *
 * Not thread-safe: the scheduler that owns a tree or a prefix cache serialises calls on it (and,
 * for a prefix cache, on its yk_kv_cache).
 *
 * The clock: access times are a logical clock that ticks once per match and insert, so eviction
 * order is deterministic. */
#ifndef YK_RADIX_H
#define YK_RADIX_H

#include <stdint.h>

#include "yk/context.h"
#include "yk/kv.h"

#ifdef __cplusplus
extern "C" {
#endif

#define YK_RADIX_MAX_PAGE_SIZE 128

/* ---- the prefix cache: the tree on a yk_kv_cache ----
 *
 * A request's life, on the scheduler's thread:
 *     yk_prefix_cache_start(pc, tokens, n, &seq, &cached)   tokens[0..cached) are in KV already
 *     yk_prefix_cache_append(pc, seq, n - cached, slots)    blocks for the rest only
 *     yk_kv_cache_copy_blocks, then prefill tokens[cached..n) into slots
 *     yk_prefix_cache_append(pc, seq, 1, &slot)             each decode step
 *     yk_prefix_cache_finish(pc, seq, tokens, length)       cache its pages, free the sequence
 * seq is an ordinary sequence of the yk_kv_cache in between: page tables, fork and swapping take
 * it as they take any other (a swapped-out request keeps its path locked). Free it with
 * yk_prefix_cache_finish, not yk_kv_seq_free: the prefix cache holds its matched path locked
 * until then (a request freed with yk_kv_seq_free keeps it locked until its sequence's slot is
 * reused). Forks of it are freed either way; yk_prefix_cache_finish caches their pages too.
 *
 * References. A block's reference count in the cache counts the sequences holding it and the
 * prefix cache (one reference for each cached page); a block is free when neither holds it and no
 * pending copy-on-write copy does. While a request runs, the path it matched is locked: those
 * blocks are never evicted under it. */

typedef struct yk_prefix_cache yk_prefix_cache;

/* A prefix cache on cache, with the cache's page size. Nothing is cached at first. Destroy it
 * before the cache. */
YK_API yk_status yk_prefix_cache_create(yk_kv_cache *cache, yk_prefix_cache **out);

/* Releases every cached block (those no sequence holds become free) and frees the prefix cache.
 * Sequences of requests not finished stay in the yk_kv_cache with their blocks; free them with
 * yk_kv_seq_free. NULL is ignored. */
YK_API void yk_prefix_cache_destroy(yk_prefix_cache *pc);

/* A new request: matches the longest cached prefix of tokens[0..n) (whole pages), makes a new
 * sequence whose first blocks are the matched blocks, shared by reference, and locks the matched
 * path. *seq gets the sequence (holding *cached_tokens tokens, a multiple of the page size, which
 * need no prefill); cached_tokens may be NULL. Takes no free block. An engine that needs the
 * logits of the prompt's last token passes n - 1, so that token is always computed (SGLang
 * matches at most all but the last). */
YK_API yk_status yk_prefix_cache_start(yk_prefix_cache *pc, const int32_t *tokens, int64_t n, int64_t *seq,
                                       int64_t *cached_tokens);

/* yk_kv_seq_append (slots and copy-on-write as there), evicting first when the free blocks do not
 * suffice: unlocked cached blocks, least recently used first, until they do. YK_ERR_OUT_OF_MEMORY,
 * with nothing evicted, when evicting every unlocked cached block would not free enough. */
YK_API yk_status yk_prefix_cache_append(yk_prefix_cache *pc, int64_t seq, int64_t n, int64_t *slots);

/* Makes at least free_blocks device blocks free, evicting as yk_prefix_cache_append does (for a
 * scheduler admitting a batch); YK_ERR_OUT_OF_MEMORY with nothing evicted when it cannot. */
YK_API yk_status yk_prefix_cache_reserve(yk_prefix_cache *pc, int64_t free_blocks);

/* Caches the blocks of seq holding tokens[0..n) (whole pages; n at most the sequence's tokens,
 * which the caller says are these, their KV written) and keeps the request running, its lock
 * moved to the end of what is cached: a long prefill's pages become shareable before it finishes
 * (SGLang's cache_unfinished_req).
 * Duplicates. Where the tree already held some of these pages in other blocks (another request
 * with the same prefix cached them first, both having run at once), seq's table entries for them
 * switch to the tree's blocks, as SGLang does, and seq's own copies are released: each loses the
 * table's reference, so it becomes free unless a fork still holds it (it stays that fork's) or a
 * pending copy-on-write copy reads or writes it (it becomes free after yk_kv_cache_copy_blocks).
 * Only whole pages up to n switch, never the partly filled last block, so the slots later appends
 * hand out are unaffected; slots an earlier append handed out inside a switched page must not be
 * written any more (their tokens' KV is the tree's block's). yk_prefix_cache_stats counts the
 * switches in duplicate_blocks.
 * Works on any sequence on the device, a fork of a request too (its table switches the same way;
 * a fork holds no lock, its references keep the blocks it uses). A swapped-out sequence holds
 * host blocks, which neither the tree nor a switch can take: with n of a page or more the call
 * fails (YK_ERR_INVALID_ARGUMENT) and changes nothing; swap it in first (its table then has new
 * device blocks, and an insert switches even its matched prefix back to the tree's). */
YK_API yk_status yk_prefix_cache_insert(yk_prefix_cache *pc, int64_t seq, const int32_t *tokens, int64_t n);

/* yk_prefix_cache_insert, then the request's lock is released and seq freed: the tree keeps its
 * references on cached blocks, seq's other blocks become free (its copies of pages the tree held
 * already are counted in duplicate_blocks). n = 0 (tokens may be NULL) caches nothing, for a
 * request dropped before its prefill; it also frees a swapped-out sequence, which can cache
 * nothing (its blocks are host blocks). */
YK_API yk_status yk_prefix_cache_finish(yk_prefix_cache *pc, int64_t seq, const int32_t *tokens, int64_t n);

/* The scheduling helper (SGLang's longest-prefix-match policy): order[0..count) gets the indices
 * of the waiting requests (tokens[i], lengths[i]) sorted by cached prefix length, longest first,
 * ties in their given order. matched (NULL: not written) gets each request's cached length, by
 * request index. Reads the tree only. */
YK_API yk_status yk_prefix_cache_order_by_prefix(const yk_prefix_cache *pc, const int32_t *const *tokens,
                                                 const int64_t *lengths, int64_t count, int64_t *order,
                                                 int64_t *matched);

typedef struct yk_prefix_cache_stats {
  int64_t cached_tokens;             /* cached_blocks * page_size */
  int64_t cached_blocks;             /* blocks the tree holds: evictable_blocks + locked_blocks */
  int64_t evictable_blocks;          /* not on a running request's path */
  int64_t locked_blocks;             /* on some running request's path */
  int64_t nodes;                     /* the tree's nodes, the root not counted */
  int64_t free_blocks, total_blocks; /* the yk_kv_cache's device blocks */
  int64_t requests;                  /* started and not finished */
  int64_t requested_tokens;          /* since creation: tokens passed to yk_prefix_cache_start */
  int64_t hit_tokens;                /* of them, found cached (no prefill needed) */
  int64_t evicted_blocks;            /* since creation: cached blocks evicted */
  /* Since creation: table entries of sequences inserted or finished that held their own copy of a
   * page the tree already cached in another block (a request that ran at the same time as the one
   * that cached it): each switched to the tree's block, its copy's reference released. A copy a
   * fork shares counts once per table that drops it, and becomes free with the last. */
  int64_t duplicate_blocks;
} yk_prefix_cache_stats;

YK_API yk_status yk_prefix_cache_get_stats(const yk_prefix_cache *pc, yk_prefix_cache_stats *out);

/* ---- the radix tree alone ---- */

typedef struct yk_radix_tree yk_radix_tree;

/* The page owner: reference counts on page ids, kept by whoever owns the pages. The tree retains
 * a page when it starts to hold it and releases it when it lets it go (eviction, destroy), so
 * while a page is cached the tree holds exactly one reference to it. The tree never takes or
 * drops the caller's own references: a request keeps its pages by its own reference (or by lock,
 * which keeps the tree's), and drops them itself when it ends. The callbacks run inside tree
 * calls and must not call back into the same tree. */
typedef struct yk_radix_page_owner {
  /* The tree now holds one reference to each of pages[0..count). A status other than YK_OK
   * refuses: the insert that asked fails with that status and holds none of them. When the
   * refusal leaves a message on the tree's ctx (the prefix cache's owner does; so does a yk_
   * call on that ctx failing inside the callback), the insert passes it on unchanged; else it
   * says the owner refused. */
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
YK_API yk_status yk_radix_create(yk_ctx *ctx, int page_size, const yk_radix_page_owner *owner, yk_radix_tree **out);

/* Releases every cached page through the owner, locked or not, and frees the tree. NULL is
 * ignored. */
YK_API void yk_radix_destroy(yk_radix_tree *tree);

typedef struct yk_radix_match {
  int64_t matched_tokens; /* a multiple of page_size */
  yk_radix_node node;     /* the node where the match ends (the root when nothing matched) */
} yk_radix_match;

/* The longest cached prefix of tokens[0..n), cut to whole pages. pages (NULL: not written)
 * receives the page ids covering it, matched_tokens / page_size of them; pages_capacity must be
 * at least n / page_size. Splits the node where the match ends inside it, and marks the matched
 * path as used now. Allocates only for that split. */
YK_API yk_status yk_radix_match_prefix(yk_radix_tree *tree, const int32_t *tokens, int64_t n, int32_t *pages,
                                       int64_t pages_capacity, yk_radix_match *out);

/* The length yk_radix_match_prefix would return, with nothing changed (no split, no access time):
 * for schedulers looking at waiting requests. */
YK_API yk_status yk_radix_prefix_length(const yk_radix_tree *tree, const int32_t *tokens, int64_t n,
                                        int64_t *matched_tokens);

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
YK_API yk_status yk_radix_insert(yk_radix_tree *tree, const int32_t *tokens, int64_t n, const int32_t *pages,
                                 int32_t *duplicates, yk_radix_insert_result *out);

/* Counts a user of the path from the root to node: nodes on it are not evicted until unlocked as
 * often as locked. Locking the root does nothing. */
YK_API yk_status yk_radix_lock(yk_radix_tree *tree, yk_radix_node node);
/* Fails (YK_ERR_INVALID_ARGUMENT) on a node not locked or a stale handle. */
YK_API yk_status yk_radix_unlock(yk_radix_tree *tree, yk_radix_node node);

/* Evicts unlocked leaves, least recently used first (a parent left an unlocked leaf joins them),
 * releasing their pages through the owner, until at least num_pages are freed or nothing is
 * evictable. Whole nodes go, so it may free more than asked. *freed_pages (may be NULL) gets the
 * count. */
YK_API yk_status yk_radix_evict(yk_radix_tree *tree, int64_t num_pages, int64_t *freed_pages);

typedef struct yk_radix_stats {
  int64_t cached_tokens;   /* cached_pages * page_size */
  int64_t cached_pages;    /* evictable_pages + locked_pages */
  int64_t evictable_pages; /* in unlocked nodes: what evicting everything would free */
  int64_t locked_pages;    /* in nodes some request holds */
  int64_t nodes;           /* the root not counted */
} yk_radix_stats;

YK_API yk_status yk_radix_get_stats(const yk_radix_tree *tree, yk_radix_stats *out);

/* The scheduling helper over a bare tree; yk_prefix_cache_order_by_prefix says what it does. */
YK_API yk_status yk_radix_order_by_prefix(const yk_radix_tree *tree, const int32_t *const *tokens,
                                          const int64_t *lengths, int64_t count, int64_t *order, int64_t *matched);

#ifdef __cplusplus
}
#endif
#endif
