/* The ops. Every op takes DLPack tensors (so torch, CuPy, JAX and numpy arrays cross without a
 * copy), runs on the GPU when its tensors live on the context's CUDA device and on the CPU
 * fallback when they live in host memory, and returns a status.
 *
 * Tensors: dtype float32, float16 or bfloat16 (lanes 1) unless an op says otherwise; all float
 * tensors of one call share a dtype; the last dimension must be contiguous (stride 1); leading
 * dimensions may be strided. strides == NULL means compact row-major. byte_offset is honoured.
 * Arithmetic is float32 whatever the storage type; results are rounded once, to nearest even.
 *
 * stream: a CUstream (NULL: the legacy default stream). GPU calls are asynchronous on it; CPU
 * calls complete before they return and ignore it. A CPU call runs part of its work on the
 * calling thread, with up to about 100 KiB of its stack (attention's tiles); the context's own
 * workers get 1 MiB stacks whatever the C library's default.
 *
 * On failure nothing has been written and nothing launched. */
#ifndef YK_OPS_H
#define YK_OPS_H

#include <dlpack/dlpack.h>

#include "yk/context.h"
#include "yk/kv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out = x / sqrt(mean(x^2) + eps) * weight, per row.
 * x, out: [..., hidden] (out may be x itself); weight: [hidden]. */
YK_API yk_status yk_rms_norm(yk_ctx *ctx, const DLTensor *x, const DLTensor *weight, float eps, DLTensor *out,
                             void *stream);

/* In place, as vLLM and FlashInfer do: residual += x (rounded to the dtype), then
 * x = rms_norm(residual) * weight. x, residual: [..., hidden]; weight: [hidden]. */
YK_API yk_status yk_fused_add_rms_norm(yk_ctx *ctx, DLTensor *x, DLTensor *residual, const DLTensor *weight, float eps,
                                       void *stream);

typedef enum yk_rope_style {
  YK_ROPE_NEOX = 0, /* rotate halves: pairs (i, i + rotary_dim/2) */
  YK_ROPE_GPTJ = 1  /* interleaved: pairs (2i, 2i + 1) */
} yk_rope_style;

/* Rotary position embedding of q and k, in place, in one launch.
 * q: [tokens, q_heads, head_dim] or [batch, seq, q_heads, head_dim] (any strides: a
 *   [batch, heads, seq, head_dim] tensor passes as its transposed view);
 * k: the same with kv_heads, or NULL; positions: [tokens] or [batch, seq];
 * cos_sin_cache: [max_position, rotary_dim], cos in the first half of a row and sin in the
 *   second (vLLM's layout), float32 or the dtype of q; rotary_dim <= head_dim, even;
 *   dimensions past rotary_dim are left as they are;
 * positions int32 or int64, each in [0, max_position). The CPU path rejects a
 *   position out of range before writing; the GPU path cannot see the values before it runs and
 *   leaves such a token unrotated rather than read outside the cache. */
YK_API yk_status yk_rope(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos_sin_cache,
                         const DLTensor *positions, yk_rope_style style, void *stream);

/* The same with separate cos and sin tables [max_position, n], as Hugging Face models keep them
 * (n = head_dim, each half a copy of the other) or with one value a pair (n = rotary_dim / 2): the
 * first rotary_dim / 2 values of a row are used. Same dtype, shape and row stride for both. */
YK_API yk_status yk_rope_cos_sin(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos, const DLTensor *sin,
                                 const DLTensor *positions, int rotary_dim, yk_rope_style style, void *stream);

/* Gated activations: x: [..., 2*d] = [gate | up]; out: [..., d] = act(gate) * up. */
YK_API yk_status yk_silu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream);
YK_API yk_status yk_gelu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream);      /* erf form */
YK_API yk_status yk_gelu_tanh_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream); /* tanh form */

/* ---- attention ----
 *
 * Layouts (strides are free, the last dimension contiguous):
 *   dense batches:  q, out [batch, seq_q, q_heads, head_dim]; k, v [batch, seq_k, kv_heads, head_dim];
 *                   lse [batch, q_heads, seq_q]
 *   ragged batches: q, out [total_q, q_heads, head_dim]; k, v [total_k, kv_heads, head_dim];
 *                   lse [q_heads, total_q]; sequence i owns tokens cu_seqlens[i] .. cu_seqlens[i+1]
 * q, k, v, out in float16 or bfloat16 (float32 on the CPU too), one dtype; lse float32, natural
 * log of the softmax denominator of each query row (scale applied), -inf for a row that sees no
 * key. kv_heads divides q_heads (GQA; MQA with 1); q head h reads kv head h / (q_heads / kv_heads).
 * head_dim: on the GPU a multiple of 16 up to 256 (Hopper's wgmma kernel serves 64 and 128), on the
 * CPU 1..1024. Float32 accumulation throughout. Outputs must not overlap one another or an input. */
typedef struct yk_attention_params {
  int causal;                   /* mask aligned to the bottom right when seq_q != seq_k: query i of
                                   a sequence sees keys j <= i + seq_k - seq_q */
  float scale;                  /* softmax scale, positive; 0 means 1 / sqrt(head_dim) */
  const DLTensor *cu_seqlens_q; /* int32 [batch + 1], increasing from 0: a ragged batch; or NULL */
  const DLTensor *cu_seqlens_k; /* set both or neither */
  int max_seqlen_q;             /* ragged batches on the GPU: bounds on the lengths, which the host */
  int max_seqlen_k;             /*   cannot read from device memory before the kernels run */
  int num_splits;               /* decode, and the prefill calls' few queries (below): key splits
                                   per sequence (of the longest, in a ragged batch), 0..128; 0
                                   chooses from the batch and its lengths */
  DLTensor *workspace;          /* decode with splits: float32 scratch of at least
                                   yk_attention_decode_workspace_floats(...) elements on the device;
                                   the prefill calls' few queries: of
                                   yk_flash_attention_forward_workspace_floats(...) (less caps
                                   their split, down to none); backward on the GPU: at least
                                   yk_flash_attention_backward_workspace_floats(...);
                                   NULL: allocated on the stream (cuMemAllocAsync) for the call */
  int deterministic;            /* backward: 1 keeps the same bits on every run; 0 (default) lets
                                   Hopper (head dims 64 and 128) add dq up in float32 by bulk
                                   reductions, 1.06-1.20x faster on the H200, whose last bits may
                                   differ from run to run */
} yk_attention_params;

/* out = softmax(q k^T * scale [masked]) v, tiled with an online softmax (memory O(n)); lse may be
 * NULL. The prefill kernel; on the GPU, a few queries a sequence, dense or ragged (seq_q, or
 * max_seqlen_q, times q_heads / kv_heads at most 256: speculative decoding's verification, a
 * chunked prefill's last chunk) run on the decode kernel instead, its tile's rows (token, q head)
 * pairs and its keys split and merged as decode's (params' num_splits and workspace as decode's):
 * 2.0-5.7x the prefill kernel on an H100. */
YK_API yk_status yk_flash_attention_forward(yk_ctx *ctx, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                                            const yk_attention_params *params, DLTensor *out, DLTensor *lse,
                                            void *stream);

/* Float32 elements of workspace the few queries above need on ctx's device to split as the call
 * would choose (num_splits 0) or as num_splits asks; 0 where they take the prefill kernel or do not
 * split. batch: sequences; total_q: tokens on q's token axis (batch x seq_q for dense batches);
 * max_seqlen_q: the longest sequence's queries; total_k: the keys of the batch (k's token rows, or
 * batch x seq_k) or 0 where unknown. For yk_paged_attention_prefill: max_seqlen_k the longest
 * sequence's keys (kv->max_context_len where the tables are in device memory) and total_k the
 * tables' tokens. To size once, give the largest batch and lengths with total_k = max_seqlen_k. */
YK_API size_t yk_flash_attention_forward_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t total_q,
                                                          int64_t max_seqlen_q, int64_t q_heads, int64_t kv_heads,
                                                          int64_t head_dim, int64_t max_seqlen_k, int64_t total_k,
                                                          int num_splits);

/* Gradients of the forward above given dout, the forward's out and lse. dq like q; dk, dv like k.
 * On the GPU, params->workspace (or a stream-ordered allocation when NULL) holds each query row's
 * log-sum-exp and rowsum(dout * out) between the kernels and, where dq is added up in float32 (see
 * params->deterministic), a float32 dq; the CPU ignores it and is always deterministic. */
YK_API yk_status yk_flash_attention_backward(yk_ctx *ctx, const DLTensor *dout, const DLTensor *q, const DLTensor *k,
                                             const DLTensor *v, const DLTensor *out, const DLTensor *lse,
                                             const yk_attention_params *params, DLTensor *dq, DLTensor *dk,
                                             DLTensor *dv, void *stream);

/* Float32 elements of workspace yk_flash_attention_backward needs on the GPU with this
 * params->deterministic: two a query row of each q head; where it is 0, rounded to 16 bytes and then
 * head_dim more a row of each q head, with 64 rows of padding a sequence. total_q: tokens on q's
 * token axis (batch x seq_q for dense batches); batch: the sequences. */
YK_API size_t yk_flash_attention_backward_workspace_floats(int64_t q_heads, int64_t total_q, int64_t batch,
                                                           int64_t head_dim, int deterministic);

/* One query token a sequence against its whole key sequence (causal has no effect):
 * q, out [batch, q_heads, head_dim]; k, v dense [batch, seq_k, kv_heads, head_dim] or ragged
 * [total_k, kv_heads, head_dim] with cu_seqlens_k; lse [batch, q_heads] or NULL. Splits long key
 * sequences across blocks when the batch is too small to fill the GPU and merges them by lse.
 * A ragged batch (longest at least twice the mean, which k's rows and max_seqlen_k bound) is
 * balanced by its keys: its longest sequences take enough splits that no block holds more than
 * an SM's share of the whole batch (nor more than 2048 keys), the others chunks of that size,
 * even where the batch alone has blocks for every SM; num_splits, where given, is the longest
 * sequence's. A params->workspace too small for those splits caps them (the call splits as far
 * as it holds, never less than a dense batch of the shape would). */
YK_API yk_status yk_attention_decode(yk_ctx *ctx, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                                     const yk_attention_params *params, DLTensor *out, DLTensor *lse, void *stream);

/* Float32 elements of workspace yk_attention_decode needs on ctx's device for this shape and
 * num_splits (0: the split count the call chooses itself there); 0 when the call will not split.
 * total_k: a ragged batch's key rows (k's first dimension; for paged decode, the tables' tokens,
 * or a CSR table's kv_indices entries x page_size where the tables are in device memory), 0 for
 * a dense batch (or a block table in device memory). A ragged batch of fewer keys splits further,
 * so to size once for every batch an engine runs, give its largest batch and length, and
 * max_seqlen_k as total_k for ragged ones. */
YK_API size_t yk_attention_decode_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                                   int64_t head_dim, int64_t max_seqlen_k, int64_t total_k,
                                                   int num_splits);

/* Exact merge of two attentions of the same queries over disjoint key sets:
 * o [tokens, heads, head_dim] (float16, bfloat16 or float32), lse [tokens, heads] float32 (any
 * strides: a prefill's [heads, tokens] lse passes as its transposed view).
 * out_o may be o_a or o_b; out_lse may be lse_a or lse_b, or NULL. */
YK_API yk_status yk_merge_attention_states(yk_ctx *ctx, const DLTensor *o_a, const DLTensor *lse_a, const DLTensor *o_b,
                                           const DLTensor *lse_b, DLTensor *out_o, DLTensor *out_lse, void *stream);

/* ---- paged attention ----
 *
 * Keys and values in a paged KV cache: one layer's K and V caches, as yk_kv_cache_layer gives them
 * (or an engine's own, any strides with the last dimension contiguous), and a page table saying
 * which blocks hold each sequence's tokens, in either form engines keep: set one and leave the
 * other's tensors NULL. q is the caches' dtype; caches of float8_e4m3fn (yk/kv.h: read as stored
 * times scales) take q of float16 or bfloat16 (float32 too on the CPU). Token t of sequence i is
 * in block table_i[t / page_size] at offset t % page_size. Page tables are int32 and contiguous;
 * on the GPU in device, pinned or managed memory. Where the host can read them (host, pinned,
 * managed) every entry is checked before anything runs; in device memory the kernels check them
 * instead: a sequence whose entry is out of bounds is skipped and a block id outside the cache
 * reads block 0, never past the tensors. */
typedef struct yk_paged_kv {
  const DLTensor *k_cache, *v_cache; /* NHD [num_blocks, page_size, kv_heads, head_dim] or
                                        HND [num_blocks, kv_heads, page_size, head_dim] */
  yk_kv_layout layout;
  const DLTensor *block_tables;     /* vLLM: [batch, max_blocks] */
  const DLTensor *context_lens;     /*   [batch]: tokens of each sequence */
  const DLTensor *kv_indptr;        /* FlashInfer: [batch + 1], from 0, never decreasing */
  const DLTensor *kv_indices;       /*   [nnz]: the blocks of sequence i at kv_indptr[i] .. [i + 1] */
  const DLTensor *kv_last_page_len; /*   [batch]: tokens in the last block, 1..page_size */
  int max_context_len;              /* decode from tables the host cannot read: the longest sequence
                                       (vLLM's max_context_len), which sizes the key splits */
  yk_kv_scales scales;              /* float8_e4m3fn caches: value = stored * scale (yk/kv.h); {0, 0}: 1 */
} yk_paged_kv;

/* Decode over pages: one query token a sequence, q, out [batch, q_heads, head_dim], lse
 * [batch, q_heads] or NULL; params as yk_attention_decode's (scale, num_splits, workspace;
 * cu_seqlens NULL). GQA-packed tiles and split-KV merged by lse, as the dense decode. A ragged
 * batch is balanced where its keys can be counted: tables the host can read, or a CSR table's
 * kv_indices (its pages bound the keys); a block table in device memory gives only
 * max_context_len, and the split follows the batch alone. */
YK_API yk_status yk_paged_attention_decode(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *kv,
                                           const yk_attention_params *params, DLTensor *out, DLTensor *lse,
                                           void *stream);

/* Prefill over pages (chunked prefill, prefix extension): the queries are the last tokens of each
 * sequence, whose keys (the earlier pages and their own, appended first) are in the table; q, out
 * [total_q, q_heads, head_dim] with params->cu_seqlens_q (and max_seqlen_q where the host cannot
 * read it), lse [q_heads, total_q]; or q [batch, seq_q, q_heads, head_dim], lse
 * [batch, q_heads, seq_q]. params->causal masks bottom-right: query i of a sequence of len_q
 * queries and len_k keys sees keys j <= i + len_k - len_q. cu_seqlens_k must be NULL. On the GPU,
 * queries of at most 256 (token, q head) rows a kv head (seq_q or max_seqlen_q, times q_heads /
 * kv_heads: speculative decoding's verification over a paged cache) run on the paged decode
 * kernel, split and merged as the dense prefill call's few queries are (the split sized by the
 * longest sequence: from a table the host can read, else kv->max_context_len, else what the table
 * holds; params' num_splits and workspace as yk_flash_attention_forward's). */
YK_API yk_status yk_paged_attention_prefill(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *kv,
                                            const yk_attention_params *params, DLTensor *out, DLTensor *lse,
                                            void *stream);

/* Paged decode split in two, as FlashInfer has it: planning on the host, once a step, decides the
 * key splits from the sequences' lengths and compiles what the step will launch; running only
 * checks tensor shapes and launches, once a layer, so it can be captured in a CUDA graph (no
 * allocation, no host read of device memory, no synchronisation). The plan balances a ragged
 * batch as yk_attention_decode does: its longest sequence takes the planned splits, the others
 * chunks of the same size. Each sequence cuts its own keys at run time, so a captured run stays
 * correct when later steps change the tables' contents and the lengths in place (the split count
 * and chunk size stay what was planned: plan again when the lengths have moved far). */
typedef struct yk_paged_plan yk_paged_plan;

typedef struct yk_paged_plan_shape {
  DLDataType dtype; /* float16 or bfloat16 */
  int q_heads, kv_heads, head_dim, page_size;
  int csr;             /* 1: FlashInfer's table form; 0: vLLM's */
  float scale;         /* 0: 1 / sqrt(head_dim) */
  int num_splits;      /* 0: chosen from the batch and the lengths; else the longest sequence's */
  DLDataType kv_dtype; /* the caches': float8_e4m3fn for a float8 cache; {0} (or dtype) for caches of dtype */
} yk_paged_plan_shape;

YK_API yk_status yk_paged_plan_create(yk_ctx *ctx, yk_paged_plan **out);
YK_API void yk_paged_plan_destroy(yk_paged_plan *plan); /* NULL is ignored */

/* Plans a decode of batch sequences with kv_lens[i] tokens (host memory). workspace_floats (may be
 * NULL) receives the float32 workspace yk_paged_decode_run needs (0: none). */
YK_API yk_status yk_paged_decode_plan(yk_paged_plan *plan, const yk_paged_plan_shape *shape, const int32_t *kv_lens,
                                      int64_t batch, size_t *workspace_floats);

/* Runs the planned decode: q, out, lse as yk_paged_attention_decode's, the batch and shape the
 * plan's; workspace a float32 device vector of the planned size (NULL when that is 0). */
YK_API yk_status yk_paged_decode_run(yk_paged_plan *plan, const DLTensor *q, const yk_paged_kv *kv, DLTensor *out,
                                     DLTensor *lse, DLTensor *workspace, void *stream);

/* Cascade decode, for batches that share a prefix: batch requests whose keys are one shared prefix
 * (the same pages for all) followed by each request's own pages. Attention over the prefix is
 * computed once for the batch (the requests' queries are the rows of one paged prefill over its
 * pages, which are read once a q head rather than once a request; on the GPU, batch x q_heads /
 * kv_heads of at most 128 runs them on the decode kernel, its keys split: each page read once a kv
 * head), over the suffixes by paged decode, and the two merged by lse: the result is paged decode
 * over prefix + suffix.
 * q, out [batch, q_heads, head_dim]; lse [batch, q_heads] or NULL. shared: a page table of one
 * sequence (the prefix); unique: one of batch sequences (the suffixes, empty ones allowed), over
 * the same caches. params: scale, num_splits (the suffix decode's), and workspace: float32 of at
 * least yk_cascade_decode_workspace_floats(...) elements in the tensors' memory, or NULL
 * (allocated for the call). */
YK_API yk_status yk_cascade_attention_decode(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *shared,
                                             const yk_paged_kv *unique, const yk_attention_params *params,
                                             DLTensor *out, DLTensor *lse, void *stream);
YK_API size_t yk_cascade_decode_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                                 int64_t head_dim, int64_t max_suffix_len, int num_splits);

#ifdef __cplusplus
}
#endif
#endif
