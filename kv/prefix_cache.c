/* yk_prefix_cache: the radix tree on a yk_kv_cache. Creation with the cache as the tree's page
 * owner, statistics, the scheduling helper, and the check of the joined state. A request's calls
 * are kv/prefix_requests.c; eviction on demand kv/prefix_evict.c. */
#include "kv/prefix_cache.h"

#include <stdlib.h>

#include "kv/radix_internal.h"

#include "runtime/error.h"

static yk_status retain_pages(void *user, const int32_t *pages, int64_t count) {
  yk_prefix_cache *pc = user;
  return yk_kv_blocks_retain(pc->cache, "yk_prefix_cache (the tree retaining blocks)", pages, count);
}

static void release_pages(void *user, const int32_t *pages, int64_t count) {
  yk_prefix_cache *pc = user;
  pc->bad_releases += yk_kv_blocks_release(pc->cache, pages, count);
}

yk_status yk_prefix_cache_create(yk_kv_cache *cache, yk_prefix_cache **out) {
  if (!cache) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_create: cache is NULL");
  if (!out) return yk_error(cache->ctx, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_create: out is NULL");
  *out = NULL;
  yk_prefix_cache *pc = calloc(1, sizeof *pc);
  if (!pc) return yk_error(cache->ctx, YK_ERR_OUT_OF_MEMORY, "yk_prefix_cache_create: out of host memory");
  pc->cache = cache;
  const yk_radix_page_owner owner = {retain_pages, release_pages, pc};
  yk_status st = yk_radix_create(cache->ctx, cache->config.page_size, &owner, &pc->tree);
  if (st != YK_OK) {
    free(pc);
    return st;
  }
  *out = pc;
  return YK_OK;
}

void yk_prefix_cache_destroy(yk_prefix_cache *pc) {
  if (!pc) return;
  yk_radix_destroy(pc->tree);
  free(pc->requests);
  free(pc->pages);
  free(pc);
}

yk_status yk_prefix_cache_get_stats(const yk_prefix_cache *pc, yk_prefix_cache_stats *out) {
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_get_stats: pc is NULL");
  if (!out) return yk_error(pc->cache->ctx, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_get_stats: out is NULL");
  yk_radix_stats t;
  yk_radix_get_stats(pc->tree, &t);
  *out = (yk_prefix_cache_stats){
      .cached_tokens = t.cached_tokens,
      .cached_blocks = t.cached_pages,
      .evictable_blocks = t.evictable_pages,
      .locked_blocks = t.locked_pages,
      .nodes = t.nodes,
      .free_blocks = pc->cache->device.free_count,
      .total_blocks = pc->cache->device.count,
      .requests = pc->live_requests,
      .requested_tokens = pc->requested_tokens,
      .hit_tokens = pc->hit_tokens,
      .evicted_blocks = pc->evicted_blocks,
      .duplicate_blocks = pc->duplicate_blocks,
  };
  return YK_OK;
}

yk_status yk_prefix_cache_order_by_prefix(const yk_prefix_cache *pc, const int32_t *const *tokens,
                                          const int64_t *lengths, int64_t count, int64_t *order, int64_t *matched) {
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_order_by_prefix: pc is NULL");
  return yk_radix_order_by_prefix(pc->tree, tokens, lengths, count, order, matched);
}

/* ---- yk_prefix_cache_validate ---- */

typedef struct tally {
  const yk_kv_cache *cache;
  int32_t *refs;  /* the references each block should have */
  int64_t strays; /* tree pages that are no device block */
} tally;

static int count_tree_page(void *user, int32_t page) {
  tally *t = user;
  if (page < 0 || page >= t->cache->device.count) return (int)++t->strays;
  t->refs[page]++;
  return 1;
}

#define FAIL(...) return yk_error(c->ctx, YK_ERR_INTERNAL, "prefix cache validate: " __VA_ARGS__)

static yk_status check_references(const yk_prefix_cache *pc, int32_t *refs) {
  const yk_kv_cache *c = pc->cache;
  for (int32_t i = 0; i < c->seq_count; i++) {
    const yk_kv_seq *s = &c->seqs[i];
    if (s->live && !s->swapped_out)
      for (int64_t b = 0; b < s->block_count; b++) refs[s->blocks[b]]++;
  }
  tally t = {c, refs, 0};
  yk_radix_count_pages(pc->tree, 0, count_tree_page, &t, INT64_MAX);
  if (t.strays) FAIL("the tree holds %lld pages that are no device block", (long long)t.strays);
  for (int64_t b = 0; b < c->device.count; b++)
    if (c->device.refs[b] != refs[b])
      FAIL("block %lld has %d references; tables and the tree hold it %d times", (long long)b, c->device.refs[b],
           refs[b]);
  return YK_OK;
}

static yk_status check_requests(const yk_prefix_cache *pc) {
  yk_kv_cache *c = pc->cache;
  int64_t running = 0;
  for (int64_t slot = 0; slot < pc->request_capacity; slot++) {
    const yk_prefix_request *r = &pc->requests[slot];
    if (!r->seq) continue;
    running++;
    yk_kv_seq *s;
    if (yk_kv_seq_lookup(c, "prefix cache validate", r->seq, &s) != YK_OK || yk_prefix_slot(pc, s) != slot)
      FAIL("request %lld (slot %lld) was freed without yk_prefix_cache_finish", (long long)r->seq, (long long)slot);
    const yk_radix_tree *tree = pc->tree;
    const radix_node *n = r->node.index < (uint32_t)tree->node_capacity ? &tree->nodes[r->node.index] : NULL;
    if (!n || !n->alive || n->generation != r->node.generation || n->lock_ref <= 0)
      FAIL("request %lld: its path's end (node %u) is not locked", (long long)r->seq, r->node.index);
  }
  if (running != pc->live_requests)
    FAIL("%lld requests counted, %lld found", (long long)pc->live_requests, (long long)running);
  /* every lock is a request's, and each locks the root once */
  if (pc->tree->nodes[RADIX_ROOT].lock_ref != running)
    FAIL("the root is locked %lld times for %lld requests", (long long)pc->tree->nodes[RADIX_ROOT].lock_ref,
         (long long)running);
  return YK_OK;
}

yk_status yk_prefix_cache_validate(const yk_prefix_cache *pc) {
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "yk_prefix_cache_validate: pc is NULL");
  const yk_kv_cache *c = pc->cache;
  yk_status st = yk_radix_validate(pc->tree);
  if (st != YK_OK) return st;
  if (pc->bad_releases) FAIL("the tree released %lld blocks it held no reference to", (long long)pc->bad_releases);
  int32_t *refs = calloc((size_t)c->device.count, sizeof *refs);
  if (!refs) return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "prefix cache validate: out of host memory");
  st = check_references(pc, refs);
  free(refs);
  return st == YK_OK ? check_requests(pc) : st;
}
