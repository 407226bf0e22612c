/* The paged KV cache: fixed-size blocks of K and V for every layer, the per-sequence block tables
 * an engine's scheduler edits every step, copy-on-write for forked sequences, swapping to pinned
 * host memory, and the page tables (vLLM's dense form and FlashInfer's CSR form) the paged
 * attention kernels read.
 *
 * Memory. A block holds page_size tokens of K and V for every layer, kv head and head dim, in one
 * contiguous run of block_bytes = 2 * layers * page_size * kv_heads * head_dim * elem_bytes:
 *     block b = [layer 0 K page][layer 0 V page][layer 1 K page][layer 1 V page] ...
 * so that a copy or a swap of a block is one transfer, whatever the number of layers. Within a
 * page the layout is NHD [page_size, kv_heads, head_dim] or HND [kv_heads, page_size, head_dim].
 * yk_kv_cache_layer describes one layer's K and V as DLTensors over all blocks:
 *     NHD: shape [num_blocks, page_size, kv_heads, head_dim]
 *     HND: shape [num_blocks, kv_heads, page_size, head_dim]
 * with a block stride of block_bytes / elem_bytes elements (not the compact page size): kernels
 * must use strides[0]. Token t of a sequence lives in block table[t / page_size] at offset
 * t % page_size; its slot id is block * page_size + offset.
 *
 * Sequences are named by ids the cache hands out (int64, never reused: a freed id stays invalid).
 *
 * Order within an engine step, on one stream:
 *     yk_kv_seq_append (host: slots, and copy-on-write recorded)
 *  -> yk_kv_cache_copy_blocks (the recorded copies)
 *  -> the append_kv kernel writing the new tokens into their slots
 *  -> yk_kv_cache_block_tables / yk_kv_cache_csr, uploaded -> paged attention.
 * Copies must come before the new tokens are written: a copy overwrites its whole destination
 * block.
 *
 * Thread safety: a cache is used by one thread at a time (the scheduler's); it takes no lock, and
 * yk_kv_seq_append allocates nothing once its tables have grown to their working size.
 *
 * Every fallible call returns a status; on failure the message is yk_ctx_last_error(ctx) and the
 * cache is as it was: nothing allocated, freed or recorded. Running out of blocks is
 * YK_ERR_OUT_OF_MEMORY; yk_kv_seq_blocks_needed lets a scheduler check first. */
#ifndef YK_KV_H
#define YK_KV_H

#include <dlpack/dlpack.h>
#include <stddef.h>
#include <stdint.h>

#include "yk/context.h"
#include "yk/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct yk_kv_cache yk_kv_cache;

typedef enum yk_kv_layout {
  YK_KV_NHD = 0, /* a page is [page_size, kv_heads, head_dim] (vLLM's flash layout, FlashInfer NHD) */
  YK_KV_HND = 1  /* a page is [kv_heads, page_size, head_dim] (FlashInfer HND) */
} yk_kv_layout;

#define YK_KV_PAGE_SIZE_MAX 128
#define YK_KV_PAGE_SIZE_DEFAULT 16

typedef struct yk_kv_cache_config {
  int layers, kv_heads, head_dim; /* each >= 1 */
  int page_size;                  /* tokens a block, 1..128; default 16 */
  DLDataType dtype;               /* float16, bfloat16 or float8_e4m3fn (DLPack code 10, 8 bits: see
                                     yk_kv_scales); default bfloat16 */
  yk_kv_layout layout;            /* default NHD */
  int64_t num_blocks;             /* device blocks; 0: as many as device_bytes holds */
  size_t device_bytes;            /* with num_blocks 0: the budget for device blocks */
  int64_t host_blocks;            /* swap blocks in pinned host memory; 0: none (no swapping) */
  yk_pool *pool;                  /* carve device blocks from this pool (same context); NULL: the cache
                                     makes its own allocation */
} yk_kv_cache_config;

/* Fills the defaults above; the caller sets layers, kv_heads, head_dim and a size. */
YK_API void yk_kv_cache_config_init(yk_kv_cache_config *config);

/* Allocates the device blocks (from config->pool or on their own) and the host blocks
 * (cuMemAllocHost on CUDA: pinned, so swaps are asynchronous; plain memory on a CPU context, where
 * "device" blocks are host memory too and copies are memcpy). Block contents start undefined.
 * Destroy the cache before its pool and its context. */
YK_API yk_status yk_kv_cache_create(yk_ctx *ctx, const yk_kv_cache_config *config, yk_kv_cache **out);

/* Frees every block, table and event. Waits for nothing: synchronise the streams that copy or
 * swap first. NULL is ignored. */
YK_API void yk_kv_cache_destroy(yk_kv_cache *cache);

typedef struct yk_kv_cache_info {
  int layers, kv_heads, head_dim, page_size;
  int elem_bytes;
  yk_kv_layout layout;
  size_t block_bytes; /* one block: K and V of every layer */
  int64_t num_blocks, free_blocks;
  int64_t host_blocks, free_host_blocks;
  int64_t sequences;      /* live sequence ids (on the device or swapped out) */
  int64_t pending_copies; /* copy-on-write copies recorded and not yet performed */
  int on_device;          /* blocks in CUDA memory (1) or host memory (0) */
} yk_kv_cache_info;

YK_API yk_status yk_kv_cache_get_info(yk_kv_cache *cache, yk_kv_cache_info *out);

/* One layer's K and V over every device block, for kernels and the CPU fallback (shapes above).
 * shape and strides point into the cache and live as long as it; byte_offset is 0. k or v may be
 * NULL. The tensors are kDLCUDA on a CUDA context, kDLCPU otherwise. */
YK_API yk_status yk_kv_cache_layer(yk_kv_cache *cache, int layer, DLTensor *k, DLTensor *v);

/* The same over the host (swap) blocks: kDLCUDAHost on a CUDA context (pinned), kDLCPU otherwise. */
YK_API yk_status yk_kv_cache_host_layer(yk_kv_cache *cache, int layer, DLTensor *k, DLTensor *v);

/* ---- sequences ---- */

/* A new empty sequence (no blocks). */
YK_API yk_status yk_kv_seq_add(yk_kv_cache *cache, int64_t *seq);

/* Makes room for n more tokens (n >= 0) at the end of seq, which must be on the device (not
 * swapped out): fills the last block first, then takes new blocks. slots (n entries, may be NULL)
 * receives the slot id of each new token, block * page_size + offset, for the append_kv kernel.
 * When the last block is shared with a fork and not full, the sequence gets a private copy of it
 * (copy-on-write): a fresh block replaces it in the table and the copy is recorded for
 * yk_kv_cache_copy_blocks. YK_ERR_OUT_OF_MEMORY when the free blocks do not suffice. */
YK_API yk_status yk_kv_seq_append(yk_kv_cache *cache, int64_t seq, int64_t n, int64_t *slots);

/* Device blocks yk_kv_seq_append(cache, seq, n, ...) would take now (copy-on-write included). */
YK_API yk_status yk_kv_seq_blocks_needed(yk_kv_cache *cache, int64_t seq, int64_t n, int64_t *blocks);

/* A new sequence holding the same tokens as parent, sharing every block by reference (parallel
 * sampling, beam search). The parent must be on the device. */
YK_API yk_status yk_kv_seq_fork(yk_kv_cache *cache, int64_t parent, int64_t *child);

/* Releases the sequence's blocks (device or host, wherever it is); a block returns to the free
 * list when no sequence, no pending copy and no prefix cache (include/yk/radix.h) holds it. The
 * id becomes invalid. */
YK_API yk_status yk_kv_seq_free(yk_kv_cache *cache, int64_t seq);

typedef struct yk_kv_seq_info {
  int64_t tokens;
  int64_t blocks;
  int swapped_out;      /* 1: its blocks are host blocks (yk_kv_seq_swap_out) */
  const int32_t *table; /* its block ids (device or host ones), valid until the next call that
                            changes this cache */
} yk_kv_seq_info;

YK_API yk_status yk_kv_seq_get_info(yk_kv_cache *cache, int64_t seq, yk_kv_seq_info *out);

/* ---- copy-on-write copies ---- */

/* Performs every recorded copy-on-write copy, whole blocks (K and V of every layer), and clears
 * the list. CUDA: yk_copy_blocks kernels (one launch for up to a few hundred copies), asynchronous
 * on stream (a CUstream; NULL: the legacy default stream), then the cache's event is recorded on
 * it. CPU: memcpy, complete on return. Call it before writing the new tokens (see the order above). */
YK_API yk_status yk_kv_cache_copy_blocks(yk_kv_cache *cache, void *stream);

/* ---- swapping between device blocks and host blocks ----
 *
 * Transfers are asynchronous on stream (CUDA; NULL: the legacy default stream) and followed by
 * the cache's event; recorded copy-on-write copies are performed first on the same stream, so a
 * swapped block holds them. Blocks released by a swap may be handed out by the next call: order
 * the streams that write into them after the swap (the same stream, or a wait on the event). */

/* Copies device block src[i] to host block dst[i] for i < n, in as few transfers as runs of
 * consecutive ids allow. Raw copies for engines that map blocks themselves: ids are checked
 * against the block counts, destinations must be distinct; no block is allocated or freed. */
YK_API yk_status yk_kv_cache_swap_blocks_to_cpu(yk_kv_cache *cache, const int32_t *device_src, const int32_t *host_dst,
                                                int64_t n, void *stream);
/* Copies host block src[i] to device block dst[i]; as above. */
YK_API yk_status yk_kv_cache_swap_blocks_from_cpu(yk_kv_cache *cache, const int32_t *host_src,
                                                  const int32_t *device_dst, int64_t n, void *stream);

/* Moves a whole sequence to host blocks: new host blocks, the copies, then its table holds the
 * host ids and its device blocks are released (blocks shared with forks stay with them). The id
 * stays valid; append, fork and the page tables refuse it until yk_kv_seq_swap_in.
 * YK_ERR_OUT_OF_MEMORY when the free host blocks do not suffice. */
YK_API yk_status yk_kv_seq_swap_out(yk_kv_cache *cache, int64_t seq, void *stream);

/* Moves a swapped-out sequence back into free device blocks (generally not the ones it had); its
 * table follows and its host blocks are released. */
YK_API yk_status yk_kv_seq_swap_in(yk_kv_cache *cache, int64_t seq, void *stream);

/* The event recorded after the cache's last copy or swap (a CUevent), for cuStreamWaitEvent or
 * cuEventSynchronize; NULL on a CPU context, where copies complete before the call returns. */
YK_API void *yk_kv_cache_event(yk_kv_cache *cache);

/* Waits until the cache's last copy or swap has completed (cuEventSynchronize); YK_OK at once on
 * a CPU context. */
YK_API yk_status yk_kv_cache_sync(yk_kv_cache *cache);

/* ---- page tables, int32, into caller-provided host arrays (the engine uploads them) ----
 *
 * Every listed sequence must be on the device. A sequence may be listed more than once. */

/* Sizes for the two forms below: the most blocks any listed sequence has (max_blocks of the dense
 * table) and the total (length of kv_indices). Either pointer may be NULL. */
YK_API yk_status yk_kv_cache_table_sizes(yk_kv_cache *cache, const int64_t *seqs, int64_t num_seqs, int64_t *max_blocks,
                                         int64_t *total_blocks);

/* vLLM's dense form: block_tables[i * max_blocks + j] = block j of seqs[i], rows padded with 0
 * past the sequence's blocks; context_lens[i] = its tokens. Fails when a sequence has more than
 * max_blocks blocks. */
YK_API yk_status yk_kv_cache_block_tables(yk_kv_cache *cache, const int64_t *seqs, int64_t num_seqs,
                                          int32_t *block_tables, int64_t max_blocks, int32_t *context_lens);

/* FlashInfer's CSR form: sequence i owns kv_indices[kv_indptr[i] .. kv_indptr[i + 1]) (its
 * blocks in order); kv_last_page_len[i] = tokens in its last block, 1..page_size (0 for an empty
 * sequence). kv_indptr has num_seqs + 1 entries; kv_indices has capacity entries, and the call
 * fails when the total blocks exceed it. */
YK_API yk_status yk_kv_cache_csr(yk_kv_cache *cache, const int64_t *seqs, int64_t num_seqs, int32_t *kv_indptr,
                                 int32_t *kv_indices, int64_t capacity, int32_t *kv_last_page_len);

/* ---- float8 caches ----
 *
 * A cache of float8_e4m3fn (OCP FP8 E4M3: bias 7, no infinities, largest finite 448) holds each
 * value times 1 / scale, rounded to nearest even and saturated to +-448 (NaN stays NaN); attention
 * reads stored * scale. One scale for a layer's K and one for its V, as vLLM's k_scale and
 * v_scale (from a checkpoint, or calibrated by the engine). A member 0 means 1. Scales must be
 * positive and finite; caches of 16-bit types take none (0 or 1). Half the bytes of bfloat16: twice
 * the tokens a pool holds, and half the bytes decode reads.
 *
 * Float8 caches run wherever 16-bit ones do: append_kv quantizes on the way in; paged decode
 * streams the bytes (half the bandwidth) and converts them in registers, the mma.sync paged
 * prefill widens each tile to q's dtype in shared memory (the Hopper prefill takes 16-bit caches
 * only: a float8 call runs the mma.sync one); copies and swaps move the bytes. Every float8 value
 * is a float16 and a bfloat16, so the GPU reads them exactly, with one exception: in the paged
 * prefill with bfloat16 q, a NaN stored in the cache may read as +-480 (widened to bfloat16 by
 * moving bits, which takes no conversion unit; decode and the CPU fallback read NaN). */
typedef struct yk_kv_scales {
  float k, v;
} yk_kv_scales;

/* ---- kernels on the cache ----
 *
 * Ops over cache tensors: yk_kv_cache_layer's (block stride larger than a page: only strides
 * are used) or an engine's own, of any strides with the last dimension contiguous. Like every op
 * (include/yk/ops.h) they run on the GPU when the tensors are in CUDA memory, on the CPU fallback
 * when they are in host memory, and on failure have written nothing and launched nothing. */

/* Where yk_append_kv writes each new token: set one of the two forms and leave the other's
 * members NULL. Slots must be distinct (two tokens into one slot race on the GPU). */
typedef struct yk_append_kv_index {
  /* vLLM's form (reshape_and_cache): int32 or int64 [tokens]; token t goes to block
   * slot / page_size at offset slot % page_size (yk_kv_seq_append's slots). A negative slot skips
   * the token: batch padding. */
  const DLTensor *slot_mapping;
  /* FlashInfer's form (append_paged_kv_cache), all int32: token t is at position positions[t] of
   * sequence b = batch_indices[t], whose blocks are kv_indices[kv_indptr[b] .. kv_indptr[b + 1])
   * (yk_kv_cache_csr's arrays); it goes to that list's block positions[t] / page_size, at offset
   * positions[t] % page_size. kv_indptr: [batch + 1]; a negative position skips the token. */
  const DLTensor *batch_indices, *positions, *kv_indptr, *kv_indices;
} yk_append_kv_index;

/* RoPE applied to k on its way into the cache (k itself is not modified), with yk_rope's
 * arithmetic: the cache receives exactly the bits yk_rope on k then a plain append would write. */
typedef struct yk_append_kv_rope {
  const DLTensor *positions;     /* int32 or int64 [tokens], each in [0, max_position) */
  const DLTensor *cos_sin_cache; /* [max_position, rotary_dim], as yk_rope: float32 or k's dtype */
  int style; /* a yk_rope_style: YK_ROPE_NEOX or YK_ROPE_GPTJ (yk/ops.h, which includes this header) */
} yk_append_kv_rope;

/* Writes the new tokens' K and V into their pages: k_cache[block, offset] = k[t] (rotated when
 * rope is set) and v_cache likewise, for every token t the index places.
 * k, v: [tokens, kv_heads, head_dim], the cache's dtype (float16 or bfloat16; float32 too); for a
 *   float8_e4m3fn cache float32, float16 or bfloat16, quantized on the way with scales (NULL: 1, 1),
 *   after rope: the cache receives yk_rope's bits of k, times 1 / scale, rounded to float8.
 * k_cache, v_cache: one layer, NHD [num_blocks, page_size, kv_heads, head_dim] or HND
 *   [num_blocks, kv_heads, page_size, head_dim] as layout says.
 * rope: NULL for none.
 * Index values in host memory are checked before anything is written: a slot or block outside
 * the cache, a sequence or page outside the CSR table, a rope position out of range fail the
 * call. Values in device memory cannot be read before the kernel runs: there a token whose slot
 * or page lies outside the cache (or the CSR table) is skipped, not written; a rope position out
 * of range writes that token's k unrotated (as yk_rope leaves it). */
YK_API yk_status yk_append_kv(yk_ctx *ctx, const DLTensor *k, const DLTensor *v, DLTensor *k_cache, DLTensor *v_cache,
                              yk_kv_layout layout, const yk_append_kv_index *index, const yk_append_kv_rope *rope,
                              const yk_kv_scales *scales, void *stream);

/* vLLM's copy_blocks(key_caches, value_caches, block_mapping): in each of num_caches tensors,
 * block block_mapping[2 * i] is copied over block block_mapping[2 * i + 1], for i < num_pairs.
 * caches: [num_blocks, ...] tensors of one shape, dtype and strides (every layer's K and V, say),
 * each block a contiguous run (dimensions after the first compact); the block stride is free.
 * block_mapping: host memory, (source, destination) pairs of int32 block ids, all checked
 * against num_blocks. On the GPU the pairs travel by value in the kernels' parameters (a few
 * hundred a launch): no upload, no staging buffer, and the call can be captured in a CUDA graph.
 * The pairs are copied concurrently: no block may be both a source and a destination, nor a
 * destination twice (refused, YK_ERR_INVALID_ARGUMENT). yk_kv_cache_copy_blocks performs its
 * copy-on-write copies through this op. */
YK_API yk_status yk_copy_blocks(yk_ctx *ctx, DLTensor *const *caches, int num_caches, const int32_t *block_mapping,
                                int64_t num_pairs, void *stream);

#ifdef __cplusplus
}
#endif
#endif
