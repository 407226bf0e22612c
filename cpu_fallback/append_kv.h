/* Writing new tokens' K and V into a paged cache on the CPU (yk_append_kv, include/yk/kv.h). */
#ifndef YK_CPU_APPEND_KV_H
#define YK_CPU_APPEND_KV_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"
#include "cpu_fallback/rope.h"

/* Where the tokens go: vLLM's slots, or FlashInfer's (sequence, position) over a CSR page table.
 * Every array is contiguous; the CSR arrays are int32. */
typedef struct yk_append_kv_where {
  int csr;           /* 0: slots; 1: the CSR form */
  const void *slots; /* [tokens] */
  int slots_64;      /* int64 slots, else int32 */
  const int32_t *batch_indices, *positions, *kv_indptr, *kv_indices;
  int64_t batch;       /* sequences: kv_indptr has batch + 1 entries */
  int64_t num_indices; /* entries of kv_indices */
  int64_t page_size, num_blocks;
} yk_append_kv_where;

/* The longest head (the GPU spec's bound too): float8 writes rotate a head through a stack copy. */
#define YK_APPEND_KV_MAX_HEAD_DIM 4096

typedef struct yk_append_kv_args {
  int dtype, elem_bytes; /* of k and v */
  /* 1: the caches are float8 e4m3, each value stored times its inverse scale (the rotation, if any,
   * rounded to k's dtype first); 0: the caches are k's dtype, copied */
  int float8;
  float k_inv_scale, v_inv_scale;
  int64_t tokens, kv_heads, head_dim;
  const char *k, *v; /* strides in elements */
  int64_t k_token_stride, k_head_stride, v_token_stride, v_head_stride;
  char *k_cache, *v_cache;
  int64_t k_cache_block_stride, k_cache_offset_stride, k_cache_head_stride; /* offset: token in its page */
  int64_t v_cache_block_stride, v_cache_offset_stride, v_cache_head_stride;
  yk_append_kv_where where;
  /* RoPE of k, or rope_positions NULL: the rope op's arguments for one token, whose k and
   * positions are set per token (the cache's slot and the token's position). */
  const char *rope_positions;
  int rope_positions_64;
  yk_rope_args rope;
} yk_append_kv_args;

typedef enum yk_append_kv_fault {
  YK_APPEND_KV_SLOT = 1,      /* slot past the cache's slots */
  YK_APPEND_KV_SEQUENCE,      /* batch index not a sequence of kv_indptr */
  YK_APPEND_KV_INDPTR,        /* kv_indptr[b], kv_indptr[b + 1] not a range of kv_indices */
  YK_APPEND_KV_PAGE,          /* position past the sequence's blocks */
  YK_APPEND_KV_BLOCK,         /* kv_indices entry not a block of the cache */
  YK_APPEND_KV_ROPE_POSITION, /* rope position outside [0, max_position) */
} yk_append_kv_fault;

/* The first token the index or the rope positions refuse. */
typedef struct yk_append_kv_problem {
  yk_append_kv_fault fault;
  int64_t token;
  int64_t value;  /* the slot, batch index, position, block id or rope position refused */
  int64_t detail; /* the sequence (INDPTR, PAGE) or the kv_indices entry (BLOCK) */
} yk_append_kv_problem;

/* Checks every token's destination first: returns 1 with *problem filled and nothing written, or
 * 0 after writing every token the index places (negative slots and positions skip theirs). */
int yk_cpu_append_kv(yk_thread_pool *pool, const yk_append_kv_args *args, yk_append_kv_problem *problem);

#endif
