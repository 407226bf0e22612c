/* Swapping between device blocks and host (pinned) blocks: raw batched block copies, and whole
 * sequences moved out and back in with their tables following. */
#include "kv/kv_cache.h"
#include "runtime/error.h"

/* Ids in range on both sides and no destination twice (two copies racing into one block). */
static yk_status check_pairs(yk_kv_cache *c, const char *op, const int32_t *src, const yk_block_allocator *from,
                             const int32_t *dst, yk_block_allocator *to, int64_t n) {
  if (n < 0) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: n %lld is negative", op, (long long)n);
  if (n > 0 && (!src || !dst)) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: block ids are NULL", op);
  if (n > 0 && !c->config.host_blocks)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: the cache has no host blocks", op);
  yk_status st = YK_OK;
  int64_t i = 0;
  for (; i < n && st == YK_OK; i++) {
    if (src[i] < 0 || src[i] >= from->count)
      st = yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: source block %d (entry %lld) is not in 0..%lld", op, src[i],
                    (long long)i, (long long)from->count - 1);
    else if (dst[i] < 0 || dst[i] >= to->count)
      st = yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: destination block %d (entry %lld) is not in 0..%lld", op,
                    dst[i], (long long)i, (long long)to->count - 1);
    else if (to->marks[dst[i]])
      st = yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: destination block %d appears twice", op, dst[i]);
    else
      to->marks[dst[i]] = 1;
  }
  for (int64_t j = 0; j < i; j++)
    if (dst[j] >= 0 && dst[j] < to->count) to->marks[dst[j]] = 0;
  return st;
}

/* The recorded copy-on-write copies go first on the same stream, so that what is swapped holds
 * them; then the transfers and the event. */
static yk_status transfer(yk_kv_cache *c, const char *op, yk_kv_block_set to, yk_kv_block_set from, const int32_t *src,
                          const int32_t *dst, int64_t n, void *stream) {
  yk_status st = yk_kv_cache_copy_blocks(c, stream);
  if (st == YK_OK) st = yk_kv_copy_blocks_between(c, op, to, from, src, dst, 1, n, stream);
  if (st == YK_OK) st = yk_kv_record_event(c, op, stream);
  return st;
}

yk_status yk_kv_cache_swap_blocks_to_cpu(yk_kv_cache *c, const int32_t *device_src, const int32_t *host_dst, int64_t n,
                                         void *stream) {
  const char *op = "yk_kv_cache_swap_blocks_to_cpu";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  yk_status st = check_pairs(c, op, device_src, &c->device, host_dst, &c->host, n);
  if (st == YK_OK) st = transfer(c, op, yk_kv_host_set(c), yk_kv_device_set(c), device_src, host_dst, n, stream);
  return st;
}

yk_status yk_kv_cache_swap_blocks_from_cpu(yk_kv_cache *c, const int32_t *host_src, const int32_t *device_dst,
                                           int64_t n, void *stream) {
  const char *op = "yk_kv_cache_swap_blocks_from_cpu";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  yk_status st = check_pairs(c, op, host_src, &c->host, device_dst, &c->device, n);
  if (st == YK_OK) st = transfer(c, op, yk_kv_device_set(c), yk_kv_host_set(c), host_src, device_dst, n, stream);
  return st;
}

/* Moves s's blocks from one set to the other: new blocks there, the transfers, then the table
 * switches and the old blocks are released. On failure the new blocks go back and s is as it was. */
static yk_status move_sequence(yk_kv_cache *c, const char *op, int64_t id, int to_host, void *stream) {
  yk_kv_seq *s;
  yk_status st = yk_kv_seq_lookup(c, op, id, &s);
  if (st != YK_OK) return st;
  if (s->swapped_out == to_host)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: sequence %lld is already %s", op, (long long)id,
                    to_host ? "swapped out" : "on the device");
  yk_block_allocator *to = to_host ? &c->host : &c->device, *from = to_host ? &c->device : &c->host;
  const int64_t n = s->block_count;
  if (to_host && n > 0 && !c->config.host_blocks)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: the cache has no host blocks", op);
  if (n > to->free_count)
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: sequence %lld needs %lld free %s blocks, %lld are free", op,
                    (long long)id, (long long)n, to_host ? "host" : "device", (long long)to->free_count);
  if (yk_kv_grow_ids(&c->scratch, &c->scratch_capacity, n))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  yk_block_take(to, n, c->scratch);
  const yk_kv_block_set device = yk_kv_device_set(c), host = yk_kv_host_set(c);
  st = transfer(c, op, to_host ? host : device, to_host ? device : host, s->blocks, c->scratch, n, stream);
  if (st != YK_OK) {
    for (int64_t i = 0; i < n; i++) yk_block_unref(to, c->scratch[i]);
    return st;
  }
  for (int64_t i = 0; i < n; i++) {
    yk_block_unref(from, s->blocks[i]);
    s->blocks[i] = c->scratch[i];
  }
  s->swapped_out = to_host;
  return YK_OK;
}

yk_status yk_kv_seq_swap_out(yk_kv_cache *c, int64_t seq, void *stream) {
  return c ? move_sequence(c, "yk_kv_seq_swap_out", seq, 1, stream) : YK_ERR_INVALID_ARGUMENT;
}

yk_status yk_kv_seq_swap_in(yk_kv_cache *c, int64_t seq, void *stream) {
  return c ? move_sequence(c, "yk_kv_seq_swap_in", seq, 0, stream) : YK_ERR_INVALID_ARGUMENT;
}
