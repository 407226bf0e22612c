/* The KV cache's insides, shared by its files: kv_cache.c (creation, memory, layer tensors),
 * sequences.c (tables: add, append, fork, free), block_copy.c (copies, copy-on-write flush,
 * event), swap.c (device <-> host), page_tables.c (the dense and CSR exports), block_refs.c
 * (references held outside tables). */
#ifndef YK_KV_KV_CACHE_H
#define YK_KV_KV_CACHE_H

#include <stdint.h>

#include "kv/block_allocator.h"
#include "runtime/memory.h"
#include "yk/kv.h"

typedef struct yk_kv_seq {
  int32_t *blocks; /* device block ids, or host ones while swapped out; kept when the slot is reused */
  int64_t block_count, block_capacity;
  int64_t tokens;
  uint32_t generation; /* the id's upper half: bumped on free, so a freed id never matches again */
  int live, swapped_out;
  int32_t next_free; /* free slot chain */
} yk_kv_seq;

struct yk_kv_cache {
  yk_ctx *ctx;
  yk_kv_cache_config config; /* num_blocks filled in */
  int elem_bytes;
  size_t page_bytes;  /* one layer's K (or V) for one block */
  size_t block_bytes; /* 2 * layers * page_bytes */
  char *device_base;  /* device address on a CUDA context */
  char *host_base;
  yk_block_allocator device, host;

  yk_kv_seq *seqs;
  int32_t seq_count, seq_capacity, free_seq; /* free_seq: -1 when no slot is free */
  int64_t live_seqs;

  int32_t *copies;                   /* pending copy-on-write copies of device blocks: (source, destination) pairs */
  int64_t copy_count, copy_capacity; /* pairs; capacity in int32 entries */

  int32_t *scratch; /* block ids a swap takes before it commits */
  int64_t scratch_capacity;

  int64_t device_shape[4], host_shape[4], strides[4]; /* what the layer DLTensors point at */
  void *event;                                        /* CUevent on a CUDA context */
  int event_recorded;
};

/* The live sequence an id names, or YK_ERR_NOT_FOUND with a message naming op. */
yk_status yk_kv_seq_lookup(yk_kv_cache *cache, const char *op, int64_t id, yk_kv_seq **out);

/* Grows an int32 array to hold at least need entries (doubling), keeping its contents. 0 on
 * success; on failure the array is as it was. */
int yk_kv_grow_ids(int32_t **ids, int64_t *capacity, int64_t need);

/* Where a set of blocks lives. */
typedef struct yk_kv_block_set {
  yk_memory_kind kind;
  char *base;
} yk_kv_block_set;

/* Copies whole blocks src[i * step] -> dst[i * step] for i < n from one set to another, one
 * transfer per run of ids consecutive on both sides. */
yk_status yk_kv_copy_blocks_between(yk_kv_cache *cache, const char *op, yk_kv_block_set to, yk_kv_block_set from,
                                    const int32_t *src, const int32_t *dst, int64_t step, int64_t n, void *stream);

static inline yk_kv_block_set yk_kv_device_set(const yk_kv_cache *c) {
  return (yk_kv_block_set){YK_MEMORY_DEVICE, c->device_base};
}
static inline yk_kv_block_set yk_kv_host_set(const yk_kv_cache *c) {
  return (yk_kv_block_set){YK_MEMORY_PINNED_HOST, c->host_base};
}

/* Records the cache's event on stream after a batch of transfers (nothing on a CPU context). */
yk_status yk_kv_record_event(yk_kv_cache *cache, const char *op, void *stream);

/* ---- references held outside block tables: the prefix cache's (kv/prefix_*.c) ----
 * A device block's refs count the tables holding it plus these, so copy-on-write protects a
 * cached block as it protects one shared with a fork, and the block is free only when no table,
 * no pending copy and no holder here keeps it. */

/* YK_OK when each of device blocks[0..n) may gain a reference (what yk_kv_blocks_retain checks). */
yk_status yk_kv_check_shareable(yk_kv_cache *cache, const char *op, const int32_t *blocks, int64_t n);

/* One more reference on each of device blocks[0..n), all or none: each must be in use (a free
 * block has nothing in it to share) and below 2^31 - 1 references. */
yk_status yk_kv_blocks_retain(yk_kv_cache *cache, const char *op, const int32_t *blocks, int64_t n);

/* Drops one reference on each of device blocks[0..n). Ids out of range or without a reference
 * are skipped, not counted down past zero; the return is how many (0 unless the caller is wrong). */
int64_t yk_kv_blocks_release(yk_kv_cache *cache, const int32_t *blocks, int64_t n);

/* A new sequence of `tokens` tokens whose table is device blocks[0..n_blocks), shared by
 * reference (each gains one), as a fork shares its parent's: n_blocks must be the blocks that many
 * tokens fill (tokens may end inside the last; appending there copies it first). Each block must
 * be in use, none twice. */
yk_status yk_kv_seq_add_shared(yk_kv_cache *cache, const int32_t *blocks, int64_t n_blocks, int64_t tokens,
                               int64_t *seq);

#endif
