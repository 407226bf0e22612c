/* Eviction on demand: an allocation through the prefix cache that the free blocks cannot cover
 * first evicts cached blocks no request has locked, least recently used first.
 *
 * Evicting a cached block frees it only when nothing else holds it: a fork or a sequence that
 * ran past its request may still share it. So before evicting anything the exact yield of
 * evicting everything evictable is counted, and a request it cannot cover fails with the cache
 * untouched, rather than emptying the tree for nothing. */
#include "kv/prefix_cache.h"
#include "runtime/error.h"

/* Evicting the page would free its block: the tree's is the only reference and no pending copy
 * reads or writes it. */
static int only_tree_holds(void *user, int32_t page) {
  const yk_block_allocator *a = user;
  return a->refs[page] == 1 && a->holds[page] == 0;
}

static yk_status make_free(yk_prefix_cache *pc, const char *op, int64_t want) {
  yk_kv_cache *c = pc->cache;
  const int64_t missing = want - c->device.free_count;
  if (missing <= 0) return YK_OK;
  yk_radix_stats t;
  yk_radix_get_stats(pc->tree, &t);
  /* Counting stops once it finds enough, so the usual case (cached pages only the tree holds)
   * costs what it evicts rather than the whole tree. */
  const int64_t yield = t.evictable_pages < missing
                            ? t.evictable_pages
                            : yk_radix_count_pages(pc->tree, 1, only_tree_holds, &c->device, missing);
  if (yield < missing)
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY,
                    "%s: %lld free blocks needed, %lld are free, and evicting every unlocked cached block would free "
                    "at most %lld more",
                    op, (long long)want, (long long)c->device.free_count, (long long)yield);
  while (c->device.free_count < want) {
    int64_t evicted;
    yk_radix_evict(pc->tree, want - c->device.free_count, &evicted);
    pc->evicted_blocks += evicted;
    if (!evicted)
      return yk_error(c->ctx, YK_ERR_INTERNAL, "%s: eviction stopped %lld blocks short of what it counted", op,
                      (long long)(want - c->device.free_count));
  }
  return YK_OK;
}

yk_status yk_prefix_cache_reserve(yk_prefix_cache *pc, int64_t free_blocks) {
  const char *op = "yk_prefix_cache_reserve";
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "%s: pc is NULL", op);
  if (free_blocks < 0 || free_blocks > pc->cache->device.count)
    return yk_error(pc->cache->ctx, YK_ERR_INVALID_ARGUMENT, "%s: free_blocks %lld is not in 0..%lld", op,
                    (long long)free_blocks, (long long)pc->cache->device.count);
  return make_free(pc, op, free_blocks);
}

yk_status yk_prefix_cache_append(yk_prefix_cache *pc, int64_t seq, int64_t n, int64_t *slots) {
  const char *op = "yk_prefix_cache_append";
  if (!pc) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "%s: pc is NULL", op);
  yk_kv_cache *c = pc->cache;
  int64_t need;
  yk_status st = yk_kv_seq_blocks_needed(c, seq, n, &need); /* checks seq and n */
  if (st != YK_OK) return st;
  /* The append's own host memory first, so that it cannot fail once blocks were evicted for it.
   * Eviction only lowers what it needs: a last block the tree let go is no longer shared. */
  yk_kv_seq *s;
  yk_kv_seq_lookup(c, op, seq, &s);
  if (yk_kv_grow_ids(&s->blocks, &s->block_capacity, s->block_count + need) ||
      yk_kv_grow_ids(&c->copies, &c->copy_capacity, 2 * (c->copy_count + 1)))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for the block table", op);
  if ((st = make_free(pc, op, need)) != YK_OK) return st;
  return yk_kv_seq_append(c, seq, n, slots);
}
