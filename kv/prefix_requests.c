/* A request's life in the prefix cache: start (match, share the matched blocks, lock the path),
 * insert (cache its full pages while it runs), finish (cache, unlock, free its sequence).
 *
 * Two requests that share a prefix and run at once (both started before either cached it) each
 * compute blocks for it. When the second caches its pages, the tree already holds the first's:
 * as SGLang's cache_unfinished_req does, its table entries for those pages switch to the tree's
 * blocks (the KV of one token prefix is the same whoever computed it) and its own copies are
 * released. Each copy is dropped by one reference, the table's, so a fork that shares it keeps
 * it, and a pending copy-on-write copy keeps it from reuse by its hold (kv/block_allocator.h).
 *
 * start checks and allocates everything before it changes anything: the match is read first
 * without touching the tree, the sequence made over its blocks, and only then is the path
 * matched for real (a split may allocate) and locked; should that match fail, freeing the new
 * sequence puts every reference back. */
#include <stdlib.h>

#include "kv/prefix_cache.h"
#include "runtime/error.h"

static int grow_requests(yk_prefix_cache *pc, int64_t need) {
  if (need <= pc->request_capacity) return 0;
  int64_t grown = pc->request_capacity ? 2 * pc->request_capacity : 16;
  if (grown < need) grown = need;
  yk_prefix_request *p = realloc(pc->requests, (size_t)grown * sizeof *p);
  if (!p) return 1;
  for (int64_t i = pc->request_capacity; i < grown; i++) p[i] = (yk_prefix_request){0};
  pc->requests = p;
  pc->request_capacity = grown;
  return 0;
}

/* Ends the request in slot: its path is unlocked (a locked node's handle is always valid). */
static void drop_request(yk_prefix_cache *pc, int64_t slot) {
  yk_radix_unlock(pc->tree, pc->requests[slot].node);
  pc->requests[slot] = (yk_prefix_request){0};
  pc->live_requests--;
}

yk_status yk_prefix_cache_start(yk_prefix_cache *pc, const int32_t *tokens, int64_t n, int64_t *seq,
                                int64_t *cached_tokens) {
  const char *op = "yk_prefix_cache_start";
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "%s: pc is NULL", op);
  yk_kv_cache *c = pc->cache;
  if (!seq) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: seq is NULL", op);
  if (n < 0) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: n is %lld", op, (long long)n);
  const int64_t page = c->config.page_size;
  /* The new sequence's slot is a free one or the next: room for it before anything changes. */
  if (yk_kv_grow_ids(&pc->pages, &pc->page_capacity, n / page + 1) || grow_requests(pc, c->seq_count + 1))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  int64_t matched, id;
  yk_status st = yk_radix_peek_prefix(pc->tree, tokens, n, pc->pages, &matched);
  if (st == YK_OK) st = yk_kv_seq_add_shared(c, pc->pages, matched / page, matched, &id);
  if (st != YK_OK) return st;
  yk_radix_match m;
  if ((st = yk_radix_match_prefix(pc->tree, tokens, matched, NULL, 0, &m)) != YK_OK) {
    yk_kv_seq_free(c, id);
    return st;
  }
  yk_radix_lock(pc->tree, m.node);
  yk_kv_seq *s;
  yk_kv_seq_lookup(c, op, id, &s);
  const int64_t slot = yk_prefix_slot(pc, s);
  /* A request whose sequence was freed with yk_kv_seq_free instead of finished left its lock
   * here; its slot coming back is the first sign of it, and the last chance to let go. */
  if (pc->requests[slot].seq) drop_request(pc, slot);
  pc->requests[slot] = (yk_prefix_request){id, m.node, matched};
  pc->live_requests++;
  pc->requested_tokens += n;
  pc->hit_tokens += matched;
  *seq = id;
  if (cached_tokens) *cached_tokens = matched;
  return YK_OK;
}

/* Points s's table entries for pages[0..count) (the tree's blocks for its first pages) at the
 * tree's blocks where they hold s's own copy, releasing the copy; returns how many it switched.
 * Each tree block was checked to take one more reference. Only whole pages before the tokens
 * cached are switched, never s's partly filled last block, so appending is unaffected: no slot
 * it hands out later lies in a switched block. A block appears at one page position in every
 * table and in the tree (sharing never moves it), so a tree block is not in s's table already. */
static int64_t share_tree_blocks(yk_prefix_cache *pc, yk_kv_seq *s, const int32_t *pages, int64_t count) {
  yk_block_allocator *device = &pc->cache->device;
  int64_t switched = 0;
  for (int64_t i = 0; i < count; i++) {
    if (s->blocks[i] == pages[i]) continue;
    yk_block_ref(device, pages[i]);
    yk_block_unref(device, s->blocks[i]);
    s->blocks[i] = pages[i];
    switched++;
  }
  return switched;
}

/* The checks insert and finish share, then the tree takes seq's blocks for tokens[0..n) and seq's
 * table takes the tree's blocks where the tree had the tokens already (share_tree_blocks). *slot
 * gets seq's slot when it runs a request of this prefix cache, else -1. Everything that can fail
 * comes before the tree changes, so a failure changes nothing. */
static yk_status cache_pages(yk_prefix_cache *pc, const char *op, int64_t seq, const int32_t *tokens, int64_t n,
                             int64_t *slot) {
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "%s: pc is NULL", op);
  yk_kv_cache *c = pc->cache;
  yk_kv_seq *s;
  yk_status st = yk_kv_seq_lookup(c, op, seq, &s);
  if (st != YK_OK) return st;
  if (n < 0 || n > s->tokens)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: n is %lld; sequence %lld holds %lld tokens", op, (long long)n,
                    (long long)seq, (long long)s->tokens);
  if (n > 0 && !tokens) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: tokens is NULL", op);
  const int64_t i = yk_prefix_slot(pc, s);
  *slot = i < pc->request_capacity && pc->requests[i].seq == seq ? i : -1;
  const int64_t page = c->config.page_size;
  if (n < page) return YK_OK; /* not a whole page: nothing to cache */
  if (s->swapped_out)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: sequence %lld is swapped out: swap it in to cache its blocks, or finish it with n = 0", op,
                    (long long)seq);
  if (yk_kv_grow_ids(&pc->pages, &pc->page_capacity, n / page))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  /* The tree's blocks for the part it holds already: the insert keeps exactly these. */
  int64_t held;
  if ((st = yk_radix_peek_prefix(pc->tree, tokens, n, pc->pages, &held)) != YK_OK) return st;
  for (int64_t k = 0; k < held / page; k++)
    if (pc->pages[k] != s->blocks[k] && (st = yk_kv_check_shareable(c, op, &pc->pages[k], 1)) != YK_OK) return st;
  if ((st = yk_radix_insert(pc->tree, tokens, n, s->blocks, NULL, NULL)) != YK_OK) return st;
  pc->duplicate_blocks += share_tree_blocks(pc, s, pc->pages, held / page);
  return YK_OK;
}

yk_status yk_prefix_cache_insert(yk_prefix_cache *pc, int64_t seq, const int32_t *tokens, int64_t n) {
  int64_t slot;
  yk_status st = cache_pages(pc, "yk_prefix_cache_insert", seq, tokens, n, &slot);
  if (st != YK_OK || slot < 0) return st;
  const int64_t cached = n - n % pc->cache->config.page_size;
  if (cached <= pc->requests[slot].locked_tokens) return YK_OK;
  /* The lock follows the request down to the end of what is cached. The path ends on a node
   * boundary now (the insert split there if it had to), so this match has nothing to split and
   * cannot fail; were it to, the old lock would still cover what start matched. */
  yk_prefix_request *r = &pc->requests[slot];
  yk_radix_match m;
  if (yk_radix_match_prefix(pc->tree, tokens, cached, NULL, 0, &m) != YK_OK) return YK_OK;
  yk_radix_lock(pc->tree, m.node);
  yk_radix_unlock(pc->tree, r->node);
  r->node = m.node;
  r->locked_tokens = cached;
  return YK_OK;
}

yk_status yk_prefix_cache_finish(yk_prefix_cache *pc, int64_t seq, const int32_t *tokens, int64_t n) {
  int64_t slot;
  yk_status st = cache_pages(pc, "yk_prefix_cache_finish", seq, tokens, n, &slot);
  if (st != YK_OK) return st;
  if (slot >= 0) drop_request(pc, slot);
  return yk_kv_seq_free(pc->cache, seq);
}
