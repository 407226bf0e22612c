/* What the attention ops share: the checks of q, k, v, the ragged-batch offsets and the layouts,
 * and the translation of checked tensors into the operands the CPU fallback and kernels take. */
#ifndef YK_GEN_ATTENTION_H
#define YK_GEN_ATTENTION_H

#include "cpu_fallback/attention.h"
#include "runtime/cuda_api.h"
#include "runtime/tensor.h"
#include "yk/ops.h"

#define YK_ATTENTION_MAX_HEAD_DIM_GPU 256
#define YK_DECODE_MAX_SPLITS 128

typedef struct yk_attention_problem {
  yk_attention_shape shape; /* cu_seqlens here are host pointers, set on the CPU path only */
  int on_device;
  int decode;                 /* one query a sequence: q [batch, q_heads, head_dim] */
  int ragged_q, ragged_k;     /* cu_seqlens given */
  const int32_t *cu_q, *cu_k; /* as the kernels read them (device, pinned or managed memory) */
  int64_t total_q, total_k;   /* tokens on the token axes */
  int64_t max_seqlen_q, max_seqlen_k;
  yk_view q, k, v;
} yk_attention_problem;

/* Checks q, k, v and params (decode: the one-token layout) and fills the problem. */
yk_status yk_attention_check(yk_ctx *ctx, const char *op, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                             const yk_attention_params *params, int decode, yk_attention_problem *pr);

/* The parts of yk_attention_check paged attention shares: heads and head_dim against where the call
 * runs, and the scale (pr->shape's dtype, heads, head_dim and pr->on_device set first); a ragged
 * axis's offsets [batch + 1] (checked where the host can read them, which then also sets *max_len). */
yk_status yk_attention_check_heads(yk_ctx *ctx, const char *op, const yk_attention_params *params,
                                   yk_attention_problem *pr);
yk_status yk_attention_check_offsets(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int64_t batch,
                                     int64_t total, int on_device, const int32_t **out, int64_t *max_len);

/* A tensor with the shape and dtype of `like` (out, dout, dq like q; dk, dv like k), in the same
 * memory. */
yk_status yk_attention_check_like(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t,
                                  const char *like_name, const yk_view *like, const yk_attention_problem *pr,
                                  yk_view *out);

/* lse: float32 [batch, q_heads, seq_q] (dense), [q_heads, total_q] (ragged), [batch, q_heads]
 * (decode). NULL is allowed when optional. */
yk_status yk_attention_check_lse(yk_ctx *ctx, const char *op, const DLTensor *lse, int optional,
                                 const yk_attention_problem *pr, yk_view *out);

/* The kernels copy rows in 16-byte pieces: every row of these tensors must start on a 16-byte
 * boundary (base address and strides). */
yk_status yk_attention_check_aligned(yk_ctx *ctx, const char *op, const yk_view *const *views, const char *const *names,
                                     int count);

/* The combine of split-KV decode (gen/ops/merge_attention_states.c): float32 partials
 * [splits][tokens * heads][head_dim] and their lse [splits][tokens * heads] into out (of dtype)
 * and lse (data NULL: not wanted), token i being token i % per of sequence i / per, at
 * batch_stride * (i / per) + seq_stride * (i % per). */
yk_status yk_merge_partials(yk_ctx *ctx, int dtype, int64_t tokens, int64_t per, int64_t heads, int64_t head_dim,
                            int splits, const float *part_o, const float *part_lse, const yk_attn_operand *out,
                            const yk_attn_operand *lse, void *stream);

/* Compiles (or finds) the merge yk_merge_partials launches, so that a plan's runs never compile. */
yk_status yk_merge_partials_prepare(yk_ctx *ctx, int dtype, int64_t head_dim);

/* Outputs (views with data NULL are skipped) must not overlap themselves, one another, or an input
 * the call reads. */
yk_status yk_attention_check_outputs(yk_ctx *ctx, const char *op, const yk_view *const *outs,
                                     const char *const *out_names, int out_count, const yk_view *const *ins,
                                     const char *const *in_names, int in_count);

/* The warm matrix of an attention op (head_dim its field 0): f16 and bf16, each model's head dim
 * that accepts() allows (NULL: all), the four combinations of the 0/1 fields flag_a and flag_b,
 * each with contiguous keys and paged ones of both table forms at the default page size (fields
 * paged_field and paged_field + 1; -1: the op has none), the paged ones over 16-bit and float8
 * caches (field float8_field; -1: none); combinations the op refuses are left out. */
void yk_attention_warm(const yk_warm_request *req, const yk_op_def *op, int flag_a, int flag_b, int paged_field,
                       int float8_field, int (*accepts)(int head_dim), yk_spec_emit_fn emit, void *user);

/* The Hopper prefill's spec before completion for queries of at most max_seqlen_q a sequence, and the
 * query rows its blocks own (gen/ops/attention_prefill_sm90.c). */
void yk_attention_prefill_sm90_spec(yk_spec *s, int dtype, int head_dim, int causal, int ragged, int paged,
                                    int page_size, int64_t max_seqlen_q);
int yk_attention_prefill_sm90_rows(const yk_spec *s);
/* Rows of the K and V boxes a complete spec loads by TMA (its block_n), 0 where it loads by cp.async;
 * and the same spec loading by cp.async, for keys a tensor map cannot describe. */
int yk_attention_prefill_sm90_tma_rows(const yk_spec *s);
void yk_attention_prefill_sm90_without_tma(yk_spec *s);

/* The backward's kernels (the spec field part): dq and dk/dv in both ops; on Hopper with atomic_dq,
 * the rows' stats before dk/dv and dq's float32 conversion after. */
enum { YK_BACKWARD_PART_DQ, YK_BACKWARD_PART_DKDV, YK_BACKWARD_PART_STATS, YK_BACKWARD_PART_DQ_OUT };
/* The Hopper backward's kernels (gen/ops/attention_backward_sm90.c): a part's spec before
 * completion (atomic_dq: dk/dv also accumulates dq), and the rows (queries or keys) a block owns. */
void yk_attention_backward_sm90_spec(yk_spec *s, int dtype, int head_dim, int part, int causal, int ragged,
                                     int atomic_dq);
int yk_attention_backward_sm90_rows(const yk_spec *s);
/* Rows of the walked tiles a complete spec loads by TMA (its tile), 0 where it loads by cp.async;
 * and the same spec loading by cp.async, for tensors a tensor map cannot describe. */
int yk_attention_backward_sm90_tma_rows(const yk_spec *s);
void yk_attention_backward_sm90_without_tma(yk_spec *s);

/* ---- paged keys (gen/paged_attention.c) ---- */

/* The spec fields "paged" (0 contiguous, 1 block table, 2 CSR) and "page_size" the attention
 * kernels share: their names, defaults (contiguous) and rule (page_size set exactly when paged). */
extern const char *const yk_paged_choices[];
void yk_attention_complete_paged(int32_t *paged, int32_t *page_size);
/* Their entries in an op's field list, in this order (the op's enum names them PAGED, PAGE_SIZE). */
#define YK_PAGED_FIELDS                                                                                                \
  {"paged",         "keys from a paged KV cache: 0 contiguous, 1 vLLM block table, 2 FlashInfer CSR", 0, 2, 0, 1,      \
   yk_paged_choices},                                                                                                  \
  {                                                                                                                    \
    "page_size", "tokens a page of the paged cache (0: contiguous keys)", 0, YK_KV_PAGE_SIZE_MAX, 0, 1, NULL           \
  }
int yk_attention_paged_invalid(int paged, int page_size, char *why, size_t n);

/* The kernels' yk_page_table (templates/attention_common.cuh), passed by value: same layout. */
typedef struct yk_page_table_args {
  const int32_t *indices, *indptr, *lens;
  long long k_block, v_block;
  int32_t max_blocks, num_blocks;
} yk_page_table_args;
_Static_assert(sizeof(yk_page_table_args) == 48, "yk_page_table_args must match the kernels' yk_page_table");

/* An int32 index tensor (offsets, page tables) of ndim dimensions, contiguous, placed where the
 * call's kernels can read it (on_device: device, pinned or managed memory; else host or pinned).
 * *host_readable: whether the host may read its values to check them. */
yk_status yk_attention_index_view(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int ndim,
                                  int on_device, yk_view *out, int *host_readable);

/* What every attention launch takes from a checked problem: its shape and rows. */
typedef struct yk_attention_operands {
  int dtype;
  int64_t batch, q_heads, kv_heads, head_dim;
  float scale;
  yk_attn_operand q, k, v, out, lse;
  int kv_float8;          /* k and v are a float8 cache's */
  float k_scale, v_scale; /* its scales */
} yk_attention_operands;

/* The kernels' softmax scale (a float8 cache's k scale folded in) and the factor of O (its v scale;
 * 1 for 16-bit keys and values). */
static inline float yk_attention_score_scale(const yk_attention_operands *a) {
  return a->kv_float8 ? a->scale * a->k_scale : a->scale;
}
static inline float yk_attention_out_scale(const yk_attention_operands *a) { return a->kv_float8 ? a->v_scale : 1.f; }

/* pr's shape, q, out (like q) and lse (views with data NULL: none) rows, with k and v as given:
 * pr's own, or a paged cache's. */
yk_attention_operands yk_attention_operands_of(const yk_attention_problem *pr, yk_attn_operand k, yk_attn_operand v,
                                               const yk_view *out, const yk_view *lse);

/* The decode kernel and its split merge, on checked operands (attention_decode.c): a dense or
 * ragged key batch (table NULL) or paged keys. */
typedef struct yk_decode_launch {
  yk_attention_operands a;
  int queries;                     /* several queries a sequence (q, out and lse token-major); 0: one */
  const int32_t *cu_q;             /* with queries: ragged ones, device-readable offsets; NULL: dense */
  int64_t max_seqlen_q, total_q;   /* with queries: a bound on a sequence's (dense: every sequence's), q's tokens */
  int causal;                      /* with queries */
  const int32_t *cu_k;             /* ragged keys, device-readable; or NULL */
  const yk_page_table_args *table; /* paged keys; or NULL */
  int paged, page_size;
  int64_t max_seqlen_k; /* a bound on every sequence's keys (one above it is skipped); INT32_MAX for
                           paged keys, which their table bounds */
  int splits;
  int chunk_keys;   /* 0: each sequence in `splits` chunks; else chunks of at least this many keys */
  float *workspace; /* splits > 1: yk_decode_workspace_floats(...) floats on the device */
} yk_decode_launch;

/* How a decode cuts its keys: `splits` chunks a sequence at most (the grid's depth), each of at
 * least chunk_keys keys (0: every sequence in `splits` chunks). max_keys bounds every sequence,
 * total_keys is the batch's keys (or a bound on them; 0 where unknown, and then chunk_keys is 0).
 * num_splits 0 chooses the splits from the batch and those lengths; else it is the splits of the
 * longest sequence. */
typedef struct yk_decode_split {
  int splits, chunk_keys;
} yk_decode_split;
yk_decode_split yk_decode_splits(const yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t max_keys,
                                 int64_t total_keys, int num_splits);
/* The same for seq_blocks blocks a sequence before it splits (a few queries' rows take more than
 * one query's, yk_decode_sequence_blocks: a block a kv head and 16 of its q heads). */
yk_decode_split yk_decode_splits_of(const yk_ctx *ctx, int64_t batch, int64_t seq_blocks, int64_t max_keys,
                                    int64_t total_keys, int num_splits);
int64_t yk_decode_sequence_blocks(int64_t q_heads, int64_t kv_heads);
/* The split of a direct call: yk_decode_splits_of, but halved while a caller's workspace (NULL:
 * allocated for the call, which nothing caps) holds less than split_floats float32 a split; down
 * to num_splits where given, else to the split of the lengths unknown (a dense batch of the shape)
 * with keep_batch_split, else to none. */
yk_decode_split yk_decode_splits_within(const yk_ctx *ctx, int64_t batch, int64_t seq_blocks, int64_t max_keys,
                                        int64_t total_keys, int num_splits, const DLTensor *workspace,
                                        size_t split_floats, int keep_batch_split);
/* Float32 partials a split of `tokens` query tokens of q_heads takes (their rows and lse), and a
 * decode's workspace for `splits` (0 when it does not split). */
size_t yk_decode_split_floats(int64_t tokens, int64_t q_heads, int64_t head_dim);
size_t yk_decode_workspace_floats(int64_t batch, int64_t q_heads, int64_t head_dim, int splits);

/* The prefill calls' few queries a sequence (ragged or dense, at most 256 (token, q head) rows a kv
 * head, on the GPU) run on the decode kernel: yk_decode_takes_queries says whether; yk_decode_queries
 * runs a checked call whose keys and operands L holds (contiguous with cu_k, or paged), its split
 * chosen as decode's from max_keys (a bound on every sequence's keys; 0: none has any) and
 * total_keys (the batch's keys, or a bound on them; 0 where unknown), and params' num_splits and
 * workspace (yk_flash_attention_forward_workspace_floats). yk_decode_fits_queries: whether max_seqlen_q
 * queries of a sequence fit the tile's rows, wherever they run. */
int yk_decode_fits_queries(int64_t q_heads, int64_t kv_heads, int64_t max_seqlen_q);
int yk_decode_takes_queries(const yk_attention_problem *pr, int64_t max_keys);
yk_status yk_decode_queries(yk_ctx *ctx, const char *op, const yk_attention_problem *pr, yk_decode_launch *L,
                            int64_t max_keys, int64_t total_keys, const yk_attention_params *params, void *stream);

/* The spec a launch takes, finished (for plans that compile ahead). */
void yk_decode_spec(yk_ctx *ctx, const yk_decode_launch *launch, yk_spec *spec);

yk_status yk_decode_run(yk_ctx *ctx, const yk_decode_launch *launch, void *stream);
/* yk_decode_run in a caller's workspace (checked), or one allocated on the stream for the call
 * (workspace NULL): the one way a decode call gets its partials' space. */
yk_status yk_decode_run_in(yk_ctx *ctx, const char *op, yk_decode_launch *launch, const DLTensor *workspace,
                           void *stream);

/* A caller's workspace: a float32 vector of at least floats elements, 16-byte aligned, in device
 * memory (on_device) or host memory; *out its data. */
yk_status yk_workspace_check(yk_ctx *ctx, const char *op, const DLTensor *given, size_t floats, int on_device,
                             float **out);
/* The float32 elements a caller's workspace offers as yk_workspace_check reads it (a float32
 * vector; 0 for anything it would refuse for its type or rank), before it is checked. */
size_t yk_workspace_floats_offered(const DLTensor *given);
/* The device workspace of a split decode or a backward: params' workspace checked (floats at
 * least), or NULL there and floats allocated on the stream (*scratch, to free with
 * yk_device_workspace_release, which returns st or the free's error). */
yk_status yk_device_workspace(yk_ctx *ctx, const char *op, const DLTensor *given, size_t floats, void *stream,
                              float **out, CUdeviceptr *scratch);
yk_status yk_device_workspace_release(yk_ctx *ctx, CUdeviceptr scratch, yk_status st, void *stream);

/* The prefill kernel (attention_prefill.c: the Hopper one where it applies) on checked operands:
 * contiguous keys (table NULL; ragged with cu_q and cu_k) or paged keys (queries ragged with cu_q
 * or dense). max_seqlen_q sizes the grid; max_seqlen_k bounds the keys a sequence may have. */
typedef struct yk_prefill_launch {
  yk_attention_operands a;
  int causal;
  const int32_t *cu_q, *cu_k; /* device-readable offsets, or NULL */
  const yk_page_table_args *table;
  int paged, page_size;
  int64_t max_seqlen_q, max_seqlen_k;
  int64_t k_rows; /* contiguous keys: rows on k's and v's token axis (a sequence's, or every ragged
                     sequence's); 0 for paged keys */
} yk_prefill_launch;

yk_status yk_prefill_run(yk_ctx *ctx, const yk_prefill_launch *launch, void *stream);

/* Operands for the layouts above. */
yk_attn_operand yk_attention_rows(const yk_view *v, const yk_attention_problem *pr, int is_k);

/* The head dims the calls route to the Hopper (sm_90a) attention kernels, and the warm-up compiles for
 * them: 64 and 128. The prefill's spec builds 256 too, kept off this list until its GPU tests have run
 * (bench/probes/prefill_d256.patch adds it; bench/NOTES.md item 95); the backward's cannot (its dk and
 * dv accumulators, 128 registers a thread each at 256, would not fit). */
int yk_attention_prefill_sm90_head_dim(int head_dim);
int yk_attention_backward_sm90_head_dim(int head_dim);

/* A tensor map of operand x (rows [batch][rows][heads][head_dim] of 2-byte elements; batches 1 for
 * every ragged sequence on one token axis) for TMA boxes of box_rows rows: yk_tensor_map_rows on
 * the operand's strides, 0 on success, nonzero where TMA cannot read it. */
int yk_attention_tensor_map(const yk_ctx *ctx, CUtensorMap *map, int dtype, int64_t head_dim, const yk_attn_operand *x,
                            int64_t rows, int64_t heads, int64_t batches, int box_rows);
yk_attn_operand yk_attention_lse_rows(const yk_view *lse, const yk_attention_problem *pr);

#endif
