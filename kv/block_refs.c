/* References on device blocks held outside any block table: the prefix cache's, one for each
 * cached page. They are the same counts the tables keep, so copy-on-write and the free list need
 * no new case; what this file adds is the checking a holder other than a table needs, since its
 * ids come from outside the cache's own bookkeeping. */
#include "kv/kv_cache.h"
#include "runtime/error.h"

/* Whether block can gain a reference: in range, in use, and below the count's limit. */
static yk_status check_shareable(yk_kv_cache *c, const char *op, int32_t block) {
  const yk_block_allocator *a = &c->device;
  if (block < 0 || block >= a->count)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: block %d is not in 0..%lld", op, block,
                    (long long)a->count - 1);
  if (a->refs[block] == 0)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: block %d is free: nothing in it to share", op, block);
  if (a->refs[block] == INT32_MAX)
    return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: block %d has 2^31 - 1 references", op, block);
  return YK_OK;
}

yk_status yk_kv_check_shareable(yk_kv_cache *c, const char *op, const int32_t *blocks, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    yk_status st = check_shareable(c, op, blocks[i]);
    if (st != YK_OK) return st;
  }
  return YK_OK;
}

yk_status yk_kv_blocks_retain(yk_kv_cache *c, const char *op, const int32_t *blocks, int64_t n) {
  yk_status st = yk_kv_check_shareable(c, op, blocks, n);
  if (st != YK_OK) return st;
  for (int64_t i = 0; i < n; i++) yk_block_ref(&c->device, blocks[i]);
  return YK_OK;
}

int64_t yk_kv_blocks_release(yk_kv_cache *c, const int32_t *blocks, int64_t n) {
  int64_t skipped = 0;
  for (int64_t i = 0; i < n; i++) {
    const int32_t b = blocks[i];
    if (b < 0 || b >= c->device.count || c->device.refs[b] == 0) {
      skipped++;
      continue;
    }
    yk_block_unref(&c->device, b);
  }
  return skipped;
}
