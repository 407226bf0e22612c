/* Sequences and their block tables: add, add over shared blocks, append (with copy-on-write of a
 * shared last block), fork, free. Each call checks and allocates everything it needs before it
 * changes anything. */
#include <stdlib.h>

#include "kv/kv_cache.h"
#include "runtime/error.h"

#define ID_SLOT(id) ((int64_t)((uint64_t)(id)&0xffffffffu))
#define ID_GENERATION(id) ((uint32_t)((uint64_t)(id) >> 32))

static int64_t make_id(const yk_kv_seq *s, int32_t slot) { return (int64_t)((uint64_t)s->generation << 32) | slot; }

int yk_kv_grow_ids(int32_t **ids, int64_t *capacity, int64_t need) {
  if (need <= *capacity) return 0;
  int64_t grown = *capacity ? *capacity * 2 : 4;
  if (grown < need) grown = need;
  int32_t *p = realloc(*ids, (size_t)grown * sizeof *p);
  if (!p) return 1;
  *ids = p;
  *capacity = grown;
  return 0;
}

yk_status yk_kv_seq_lookup(yk_kv_cache *c, const char *op, int64_t id, yk_kv_seq **out) {
  const int64_t slot = ID_SLOT(id);
  if (id > 0 && slot < c->seq_count) {
    yk_kv_seq *s = &c->seqs[slot];
    if (s->live && s->generation == ID_GENERATION(id)) {
      *out = s;
      return YK_OK;
    }
    if (ID_GENERATION(id) != 0 && ID_GENERATION(id) < s->generation)
      return yk_error(c->ctx, YK_ERR_NOT_FOUND, "%s: sequence %lld was freed", op, (long long)id);
  }
  return yk_error(c->ctx, YK_ERR_NOT_FOUND, "%s: %lld is not a sequence of this cache", op, (long long)id);
}

static yk_status on_device(yk_kv_cache *c, const char *op, int64_t id, yk_kv_seq **out) {
  yk_status st = yk_kv_seq_lookup(c, op, id, out);
  if (st == YK_OK && (*out)->swapped_out)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: sequence %lld is swapped out; swap it in first", op,
                    (long long)id);
  return st;
}

/* A free slot, growing the slot array if none is; -1 when host memory runs out. The slot stays
 * free until commit_slot, so a failure after this changes nothing. */
static int32_t reserve_slot(yk_kv_cache *c) {
  if (c->free_seq >= 0) return c->free_seq;
  if (c->seq_count == INT32_MAX) return -1;
  if (c->seq_count == c->seq_capacity) {
    const int32_t grown = c->seq_capacity ? (c->seq_capacity > INT32_MAX / 2 ? INT32_MAX : c->seq_capacity * 2) : 16;
    yk_kv_seq *p = realloc(c->seqs, (size_t)grown * sizeof *p);
    if (!p) return -1;
    c->seqs = p;
    c->seq_capacity = grown;
  }
  c->seqs[c->seq_count] = (yk_kv_seq){.generation = 1, .next_free = -1};
  c->free_seq = c->seq_count++;
  return c->free_seq;
}

static int64_t commit_slot(yk_kv_cache *c, int32_t slot) {
  yk_kv_seq *s = &c->seqs[slot];
  c->free_seq = s->next_free;
  s->live = 1;
  s->swapped_out = 0;
  s->tokens = 0;
  s->block_count = 0;
  c->live_seqs++;
  return make_id(s, slot);
}

yk_status yk_kv_seq_add(yk_kv_cache *c, int64_t *seq) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!seq) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "yk_kv_seq_add: seq is NULL");
  const int32_t slot = reserve_slot(c);
  if (slot < 0) return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "yk_kv_seq_add: out of host memory for sequences");
  *seq = commit_slot(c, slot);
  return YK_OK;
}

/* What appending n tokens to s takes: new blocks at the end, and whether the last block must be
 * copied first because a fork shares it and the new tokens land in it. */
static int64_t plan_append(const yk_kv_cache *c, const yk_kv_seq *s, int64_t n, int *copy_on_write) {
  const int64_t page = c->config.page_size;
  const int64_t in_last = s->tokens % page;
  *copy_on_write = n > 0 && in_last != 0 && c->device.refs[s->blocks[s->block_count - 1]] > 1;
  return (s->tokens + n + page - 1) / page - s->block_count;
}

static yk_status check_count(yk_kv_cache *c, const char *op, const yk_kv_seq *s, int64_t n) {
  if (n < 0) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: n %lld is negative", op, (long long)n);
  if (n > INT32_MAX - s->tokens)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: %lld + %lld tokens is more than 2^31 - 1", op,
                    (long long)s->tokens, (long long)n);
  return YK_OK;
}

yk_status yk_kv_seq_blocks_needed(yk_kv_cache *c, int64_t seq, int64_t n, int64_t *blocks) {
  const char *op = "yk_kv_seq_blocks_needed";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!blocks) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: blocks is NULL", op);
  yk_kv_seq *s;
  yk_status st;
  if ((st = on_device(c, op, seq, &s)) || (st = check_count(c, op, s, n))) return st;
  int copy_on_write;
  *blocks = plan_append(c, s, n, &copy_on_write) + copy_on_write;
  return YK_OK;
}

yk_status yk_kv_seq_append(yk_kv_cache *c, int64_t seq, int64_t n, int64_t *slots) {
  const char *op = "yk_kv_seq_append";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  yk_kv_seq *s;
  yk_status st;
  if ((st = on_device(c, op, seq, &s)) || (st = check_count(c, op, s, n))) return st;
  int copy_on_write;
  const int64_t fresh = plan_append(c, s, n, &copy_on_write);
  if (fresh + copy_on_write > c->device.free_count)
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: %lld tokens need %lld free blocks, %lld are free", op,
                    (long long)n, (long long)(fresh + copy_on_write), (long long)c->device.free_count);
  if (yk_kv_grow_ids(&s->blocks, &s->block_capacity, s->block_count + fresh) ||
      (copy_on_write && yk_kv_grow_ids(&c->copies, &c->copy_capacity, 2 * (c->copy_count + 1))))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for the block table", op);

  if (copy_on_write) {
    int32_t *last = &s->blocks[s->block_count - 1], copy;
    yk_block_take(&c->device, 1, &copy);
    /* Both ends stay held until the copy is done: the source may lose its last sequence and the
     * destination be freed before yk_kv_cache_copy_blocks, and neither may be reused by then. */
    yk_block_hold(&c->device, *last);
    yk_block_hold(&c->device, copy);
    c->copies[2 * c->copy_count] = *last;
    c->copies[2 * c->copy_count++ + 1] = copy;
    yk_block_unref(&c->device, *last);
    *last = copy;
  }
  yk_block_take(&c->device, fresh, s->blocks + s->block_count);
  s->block_count += fresh;
  if (slots) {
    const int64_t page = c->config.page_size;
    for (int64_t i = 0, t = s->tokens; i < n; i++, t++) slots[i] = (int64_t)s->blocks[t / page] * page + t % page;
  }
  s->tokens += n;
  return YK_OK;
}

yk_status yk_kv_seq_fork(yk_kv_cache *c, int64_t parent, int64_t *child) {
  const char *op = "yk_kv_seq_fork";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!child) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: child is NULL", op);
  yk_kv_seq *p;
  yk_status st = on_device(c, op, parent, &p);
  if (st != YK_OK) return st;
  for (int64_t i = 0; i < p->block_count; i++)
    if (c->device.refs[p->blocks[i]] == INT32_MAX)
      return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: block %d is shared by 2^31 - 1 sequences", op, p->blocks[i]);
  const int64_t parent_slot = p - c->seqs; /* reserve_slot may move the array */
  const int32_t slot = reserve_slot(c);
  if (slot < 0) return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for sequences", op);
  yk_kv_seq *s = &c->seqs[slot];
  p = &c->seqs[parent_slot];
  if (yk_kv_grow_ids(&s->blocks, &s->block_capacity, p->block_count))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for the block table", op);
  *child = commit_slot(c, slot);
  for (int64_t i = 0; i < p->block_count; i++) {
    s->blocks[i] = p->blocks[i];
    yk_block_ref(&c->device, p->blocks[i]);
  }
  s->block_count = p->block_count;
  s->tokens = p->tokens;
  return YK_OK;
}

/* No block twice in one table: a table holds each of its blocks once, and freeing drops one
 * reference per entry. */
static yk_status check_distinct(yk_kv_cache *c, const char *op, const int32_t *blocks, int64_t n) {
  uint8_t *marks = c->device.marks;
  int64_t i = 0;
  while (i < n && !marks[blocks[i]]) marks[blocks[i++]] = 1;
  for (int64_t j = 0; j < i; j++) marks[blocks[j]] = 0;
  return i == n ? YK_OK
                : yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: block %d appears twice", op, blocks[i]);
}

yk_status yk_kv_seq_add_shared(yk_kv_cache *c, const int32_t *blocks, int64_t n_blocks, int64_t tokens,
                               int64_t *seq) {
  const char *op = "yk_kv_seq_add_shared";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!seq || (n_blocks > 0 && !blocks))
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: seq or blocks is NULL", op);
  const int64_t page = c->config.page_size;
  if (tokens < 0 || tokens > INT32_MAX || n_blocks != (tokens + page - 1) / page)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: %lld tokens do not fill %lld blocks of %lld", op,
                    (long long)tokens, (long long)n_blocks, (long long)page);
  yk_status st = yk_kv_check_shareable(c, op, blocks, n_blocks);
  if (st == YK_OK) st = check_distinct(c, op, blocks, n_blocks);
  if (st != YK_OK) return st;
  const int32_t slot = reserve_slot(c);
  if (slot < 0) return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for sequences", op);
  yk_kv_seq *s = &c->seqs[slot];
  if (yk_kv_grow_ids(&s->blocks, &s->block_capacity, n_blocks))
    return yk_error(c->ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for the block table", op);
  *seq = commit_slot(c, slot);
  for (int64_t i = 0; i < n_blocks; i++) {
    s->blocks[i] = blocks[i];
    yk_block_ref(&c->device, blocks[i]);
  }
  s->block_count = n_blocks;
  s->tokens = tokens;
  return YK_OK;
}

yk_status yk_kv_seq_free(yk_kv_cache *c, int64_t seq) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  yk_kv_seq *s;
  yk_status st = yk_kv_seq_lookup(c, "yk_kv_seq_free", seq, &s);
  if (st != YK_OK) return st;
  yk_block_allocator *blocks = s->swapped_out ? &c->host : &c->device;
  for (int64_t i = 0; i < s->block_count; i++) yk_block_unref(blocks, s->blocks[i]);
  s->block_count = 0;
  s->tokens = 0;
  s->live = 0;
  s->generation = s->generation == UINT32_MAX >> 1 ? 1 : s->generation + 1;
  s->next_free = c->free_seq;
  c->free_seq = (int32_t)(s - c->seqs);
  c->live_seqs--;
  return YK_OK;
}

yk_status yk_kv_seq_get_info(yk_kv_cache *c, int64_t seq, yk_kv_seq_info *out) {
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  if (!out) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "yk_kv_seq_get_info: out is NULL");
  yk_kv_seq *s;
  yk_status st = yk_kv_seq_lookup(c, "yk_kv_seq_get_info", seq, &s);
  if (st != YK_OK) return st;
  *out = (yk_kv_seq_info){s->tokens, s->block_count, s->swapped_out, s->blocks};
  return YK_OK;
}
