/* Paged attention: decode and prefill over a paged KV cache, and the decode's plan/run split.
 * The kernels are the dense ones (templates/attention_decode.cu, attention_prefill.cu,
 * attention_prefill_sm90.cu) with their "paged" and "page_size" spec fields; the CPU path is
 * cpu_fallback/attention.c reading keys through a yk_page_map. Tests: tests/test_paged_attention.c. */
#include <stdio.h>
#include <stdlib.h>

#include "cpu_fallback/attention.h"
#include "gen/attention.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/module.h"
#include "yk/ops.h"

/* The caches and the table of a call, checked. */
typedef struct paged_keys {
  yk_view k, v;
  int64_t num_blocks, page_size, kv_heads, head_dim;
  yk_attn_operand k_rows, v_rows; /* the caches at block 0: seq_stride within a page, block_stride */
  int form;                       /* 1: block table, 2: CSR */
  int64_t batch;
  int host_readable; /* the table's values were read and checked here */
  int64_t max_len;   /* the longest sequence, where host_readable; else the caller's bound (or 0) */
  int64_t total_len; /* the batch's keys where host_readable; else a bound (CSR: its pages) or 0 */
  yk_page_map map;   /* the table's pointers (host ones for the CPU path) */
  yk_page_table_args table;
  float k_scale, v_scale; /* float8 caches' (1 for others) */
} paged_keys;

/* Every entry of a table the host can read: lengths within the table, block ids within the cache. */
static yk_status check_table_values(yk_ctx *ctx, const char *op, paged_keys *pk, int64_t nnz) {
  const yk_page_map *m = &pk->map;
  const int64_t P = pk->page_size;
  if (m->form == 2) {
    if (m->indptr[0] < 0)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr[0] is %d, negative", op, m->indptr[0]);
    for (int64_t b = 0; b < pk->batch; b++) {
      if (m->indptr[b + 1] < m->indptr[b])
        return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr decreases at %lld (%d then %d)", op, (long long)b,
                        m->indptr[b], m->indptr[b + 1]);
      if (m->indptr[b + 1] > m->indptr[b] && (m->lens[b] < 1 || m->lens[b] > P))
        return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_last_page_len[%lld] is %d, outside 1..page_size %lld", op,
                        (long long)b, m->lens[b], (long long)P);
    }
    if (m->indptr[pk->batch] > nnz)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr ends at %d, past the %lld entries of kv_indices", op,
                      m->indptr[pk->batch], (long long)nnz);
  }
  pk->max_len = 0;
  pk->total_len = 0;
  for (int64_t b = 0; b < pk->batch; b++) {
    const int64_t len = yk_page_map_len(m, b);
    if (m->form == 1 && (len < 0 || len > m->max_blocks * P))
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "%s: context_lens[%lld] is %lld, outside 0..%lld (max_blocks %lld x page_size %lld)", op,
                      (long long)b, (long long)len, (long long)(m->max_blocks * P), (long long)m->max_blocks,
                      (long long)P);
    for (int64_t j = 0; j < (len + P - 1) / P; j++) {
      const int64_t id = yk_page_map_block(m, b, j);
      if (id < 0 || id >= pk->num_blocks)
        return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: sequence %lld's block %lld is %lld, outside the %lld blocks",
                        op, (long long)b, (long long)j, (long long)id, (long long)pk->num_blocks);
    }
    if (len > pk->max_len) pk->max_len = len;
    pk->total_len += len;
  }
  return YK_OK;
}

static yk_status check_table(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, int on_device, paged_keys *pk) {
  const int block_table = kv->block_tables || kv->context_lens;
  const int csr = kv->kv_indptr || kv->kv_indices || kv->kv_last_page_len;
  if (block_table == csr)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: give one page table: block_tables and context_lens, or kv_indptr, kv_indices and "
                    "kv_last_page_len",
                    op);
  yk_view a, b, c;
  int ra = 1, rb = 1, rc = 1;
  yk_status st;
  if (block_table) {
    if ((st = yk_attention_index_view(ctx, op, "block_tables", kv->block_tables, 2, on_device, &a, &ra)) ||
        (st = yk_attention_index_view(ctx, op, "context_lens", kv->context_lens, 1, on_device, &b, &rb)))
      return st;
    pk->batch = a.shape[0];
    if (b.shape[0] != pk->batch)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: context_lens has %lld entries, block_tables %lld rows", op,
                      (long long)b.shape[0], (long long)pk->batch);
    pk->map = (yk_page_map){
        1, pk->page_size, a.shape[1], (const int32_t *)(void *)a.data, NULL, (const int32_t *)(void *)b.data};
  } else {
    if ((st = yk_attention_index_view(ctx, op, "kv_indptr", kv->kv_indptr, 1, on_device, &a, &ra)) ||
        (st = yk_attention_index_view(ctx, op, "kv_indices", kv->kv_indices, 1, on_device, &b, &rb)) ||
        (st = yk_attention_index_view(ctx, op, "kv_last_page_len", kv->kv_last_page_len, 1, on_device, &c, &rc)))
      return st;
    pk->batch = a.shape[0] - 1;
    if (pk->batch < 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr is empty", op);
    if (c.shape[0] != pk->batch)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_last_page_len has %lld entries for %lld sequences", op,
                      (long long)c.shape[0], (long long)pk->batch);
    pk->map = (yk_page_map){2,
                            pk->page_size,
                            b.shape[0],
                            (const int32_t *)(void *)b.data,
                            (const int32_t *)(void *)a.data,
                            (const int32_t *)(void *)c.data};
  }
  if (pk->map.max_blocks > INT32_MAX || pk->num_blocks > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^31 - 1 blocks", op);
  pk->form = pk->map.form;
  pk->table = (yk_page_table_args){pk->map.indices,         pk->map.indptr,          pk->map.lens,
                                   pk->k_rows.block_stride, pk->v_rows.block_stride, (int32_t)pk->map.max_blocks,
                                   (int32_t)pk->num_blocks};
  pk->host_readable = ra && rb && rc;
  if (pk->host_readable) return check_table_values(ctx, op, pk, pk->map.max_blocks);
  if (kv->max_context_len < 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: max_context_len %d is negative", op, kv->max_context_len);
  pk->max_len = kv->max_context_len;
  pk->total_len = pk->form == 2 ? pk->map.max_blocks * pk->page_size : 0; /* CSR: every listed page full */
  return YK_OK;
}

/* The caches: [num_blocks, page_size, kv_heads, head_dim] (NHD) or [.., kv_heads, page_size, ..]
 * (HND), any block stride. */
static yk_status check_caches(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, paged_keys *pk) {
  *pk = (paged_keys){0};
  if (!kv) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv is NULL", op);
  yk_status st;
  if ((st = yk_view_of(ctx, op, "k_cache", kv->k_cache, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 4, 4, &pk->k)) ||
      (st = yk_view_of(ctx, op, "v_cache", kv->v_cache, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 4, 4, &pk->v)) ||
      (st = yk_view_same_type(ctx, op, "k_cache", &pk->k, "v_cache", &pk->v)) ||
      (st = yk_view_same_shape(ctx, op, "k_cache", &pk->k, "v_cache", &pk->v)) ||
      (st = yk_kv_scales_of(ctx, op, &kv->scales, pk->k.type == YK_E4M3, &pk->k_scale, &pk->v_scale)))
    return st;
  if (kv->layout != YK_KV_NHD && kv->layout != YK_KV_HND)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: layout %d is neither YK_KV_NHD nor YK_KV_HND", op,
                    (int)kv->layout);
  const int nhd = kv->layout == YK_KV_NHD, tok = nhd ? 1 : 2, head = nhd ? 2 : 1;
  pk->num_blocks = pk->k.shape[0];
  pk->page_size = pk->k.shape[tok];
  pk->kv_heads = pk->k.shape[head];
  pk->head_dim = pk->k.shape[3];
  if (pk->page_size < 1 || pk->page_size > YK_KV_PAGE_SIZE_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: page_size %lld is outside 1..%d", op, (long long)pk->page_size,
                    YK_KV_PAGE_SIZE_MAX);
  const yk_view *caches[] = {&pk->k, &pk->v};
  for (int i = 0; i < 2; i++) {
    yk_attn_operand *o = i ? &pk->v_rows : &pk->k_rows;
    *o = (yk_attn_operand){.data = caches[i]->data,
                           .seq_stride = caches[i]->stride[tok],
                           .head_stride = caches[i]->stride[head],
                           .pages = &pk->map,
                           .block_stride = caches[i]->stride[0]};
  }
  return YK_OK;
}

/* The queries against the caches: dtype, heads, head_dim, memory; fills pr as yk_attention_check
 * would for the query side. q_dims: 3 (decode, ragged prefill) or 4. */
static yk_status check_queries(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_attention_params *params,
                               int decode, paged_keys *pk, yk_attention_problem *pr) {
  *pr = (yk_attention_problem){.decode = decode};
  if (!params) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: params is NULL", op);
  if (params->cu_seqlens_k)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: paged keys come from the page table; cu_seqlens_k must be NULL",
                    op);
  if (decode && params->cu_seqlens_q)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: decode takes one query a sequence; cu_seqlens_q must be NULL",
                    op);
  pr->ragged_q = params->cu_seqlens_q != NULL;
  const int q_dims = decode || pr->ragged_q ? 3 : 4;
  yk_status st;
  const int float8 = pk->k.type == YK_E4M3;
  if ((st = yk_view_of(ctx, op, "q", q, YK_ACCEPT_FLOAT, q_dims, q_dims, &pr->q)) ||
      (!float8 && (st = yk_view_same_type(ctx, op, "q", &pr->q, "k_cache", &pk->k))))
    return st;
  const yk_view *all[] = {&pr->q, &pk->k, &pk->v};
  if ((st = yk_views_placement(ctx, op, all, 3, &pr->on_device))) return st;
  yk_attention_shape *s = &pr->shape;
  s->dtype = pr->q.type;
  s->kv_float8 = float8, s->k_scale = pk->k_scale, s->v_scale = pk->v_scale;
  s->q_heads = pr->q.shape[q_dims - 2];
  s->kv_heads = pk->kv_heads;
  s->head_dim = pr->q.shape[q_dims - 1];
  if (pk->head_dim != s->head_dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the caches have head_dim %lld, q has %lld", op,
                    (long long)pk->head_dim, (long long)s->head_dim);
  return yk_attention_check_heads(ctx, op, params, pr);
}

/* Everything a paged call reads, checked; out (like q) and lse (or NULL) too. */
static yk_status check_paged(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                             const yk_attention_params *params, int decode, const DLTensor *out, const DLTensor *lse,
                             paged_keys *pk, yk_attention_problem *pr, yk_view *ov, yk_view *lv) {
  yk_status st;
  if ((st = check_caches(ctx, op, kv, pk)) || (st = check_queries(ctx, op, q, params, decode, pk, pr)) ||
      (st = check_table(ctx, op, kv, pr->on_device, pk)))
    return st;
  yk_attention_shape *s = &pr->shape;
  pr->total_q = pr->q.shape[0] * (pr->q.ndim == 4 ? pr->q.shape[1] : 1);
  if (pr->ragged_q) {
    if (!params->cu_seqlens_q->shape || params->cu_seqlens_q->ndim != 1 ||
        params->cu_seqlens_q->shape[0] != pk->batch + 1)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cu_seqlens_q must have batch + 1 = %lld entries", op,
                      (long long)(pk->batch + 1));
    pr->max_seqlen_q = params->max_seqlen_q;
    if ((st = yk_attention_check_offsets(ctx, op, "cu_seqlens_q", params->cu_seqlens_q, pk->batch, pr->total_q,
                                         pr->on_device, &pr->cu_q, &pr->max_seqlen_q)))
      return st;
  } else {
    if (pr->q.shape[0] != pk->batch)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: q has batch %lld, the page table %lld sequences", op,
                      (long long)pr->q.shape[0], (long long)pk->batch);
    s->seq_q = decode ? 1 : pr->q.shape[1];
    pr->max_seqlen_q = s->seq_q;
  }
  s->batch = pk->batch;
  s->causal = decode ? 0 : params->causal != 0;
  s->kv_pages = &pk->map;
  if (!pr->on_device) s->cu_seqlens_q = pr->cu_q;
  pr->max_seqlen_k = pk->max_len;
  if (pr->max_seqlen_q > INT32_MAX || pr->total_q > INT32_MAX || pk->max_len > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^31 - 1 tokens", op);
  if ((st = yk_attention_check_like(ctx, op, "out", out, "q", &pr->q, pr, ov)) ||
      (st = yk_attention_check_lse(ctx, op, lse, 1, pr, lv)))
    return st;
  const yk_view *outs[] = {ov, lv}, *ins[] = {&pr->q, &pk->k, &pk->v};
  static const char *const out_names[] = {"out", "lse"}, *const in_names[] = {"q", "k_cache", "v_cache"};
  if ((st = yk_attention_check_outputs(ctx, op, outs, out_names, 2, ins, in_names, 3))) return st;
  if (!pr->on_device) return YK_OK;
  const yk_view *rows[] = {&pr->q, ov, &pk->k, &pk->v}; /* a cache's dims are its block, page and head strides */
  static const char *const names[] = {"q", "out", "k_cache", "v_cache"};
  if ((st = yk_attention_check_aligned(ctx, op, rows, names, 4))) return st;
  if (pk->batch > 65535)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: batch %lld is above 65535", op, (long long)pk->batch);
  return YK_OK;
}

static void cpu_forward(yk_ctx *ctx, const yk_attention_problem *pr, const paged_keys *pk, const yk_view *ov,
                        const yk_view *lv) {
  yk_cpu_attention_forward(&ctx->pool, &pr->shape, yk_attention_rows(&pr->q, pr, 0), pk->k_rows, pk->v_rows,
                           yk_attention_rows(ov, pr, 0), yk_attention_lse_rows(lv, pr));
}

/* The decode launch of a checked call cutting its keys by `split`. */
static yk_decode_launch decode_launch(const yk_attention_problem *pr, const paged_keys *pk, const yk_view *ov,
                                      const yk_view *lv, yk_decode_split split) {
  return (yk_decode_launch){
      .a = yk_attention_operands_of(pr, pk->k_rows, pk->v_rows, ov, lv),
      .table = &pk->table,
      .paged = pk->form,
      .page_size = (int)pk->page_size,
      .max_seqlen_k = INT32_MAX, /* each sequence's own length cuts its splits; the table bounds it */
      .splits = split.splits,
      .chunk_keys = split.chunk_keys,
  };
}

yk_status yk_paged_attention_decode(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *kv,
                                    const yk_attention_params *params, DLTensor *out, DLTensor *lse, void *stream) {
  static const char op[] = "paged_attention_decode";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = check_paged(ctx, op, q, kv, params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
  if (pk.batch == 0) return YK_OK;
  if (!pr.on_device) {
    cpu_forward(ctx, &pr, &pk, &ov, &lv);
    return YK_OK;
  }
  if (!pk.host_readable && pk.max_len == 0 && params->num_splits == 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: the page table is in device memory; give kv->max_context_len (or num_splits), which the "
                    "host cannot read from it",
                    op);
  yk_decode_launch L =
      decode_launch(&pr, &pk, &ov, &lv,
                    yk_decode_splits_within(ctx, pk.batch, yk_decode_sequence_blocks(pr.shape.q_heads, pk.kv_heads),
                                            pk.max_len, pk.total_len, params->num_splits, params->workspace,
                                            yk_decode_split_floats(pk.batch, pr.shape.q_heads, pk.head_dim), 1));
  return yk_decode_run_in(ctx, op, &L, params->workspace, stream);
}

/* The paged prefill, for op: its own call's, and the cascade's prefix. decode_kernel: whether a few
 * queries a sequence may take the decode kernel (a cascade's prefix past CASCADE_DECODE_ROWS keeps
 * to the prefill kernel's chunks). */
static yk_status paged_prefill(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                               const yk_attention_params *params, int decode_kernel, DLTensor *out, DLTensor *lse,
                               void *stream) {
  paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = check_paged(ctx, op, q, kv, params, 0, out, lse, &pk, &pr, &ov, &lv))) return st;
  if (pk.batch == 0 || pr.max_seqlen_q == 0) return YK_OK;
  if (!pr.on_device) {
    cpu_forward(ctx, &pr, &pk, &ov, &lv);
    return YK_OK;
  }
  /* the longest sequence; or, from a table in device memory without max_context_len, as many keys
     as the table holds: a bound that only sizes the split, since each sequence cuts its own keys */
  const int64_t max_keys = pk.max_len || pk.host_readable ? pk.max_len : pk.map.max_blocks * pk.page_size;
  if (decode_kernel && yk_decode_takes_queries(&pr, max_keys)) { /* a few queries a sequence */
    yk_decode_launch D = decode_launch(&pr, &pk, &ov, &lv, (yk_decode_split){1, 0});
    return yk_decode_queries(ctx, op, &pr, &D, max_keys, pk.total_len, params, stream);
  }
  const yk_prefill_launch L = {
      .a = yk_attention_operands_of(&pr, pk.k_rows, pk.v_rows, &ov, &lv),
      .causal = pr.shape.causal,
      .cu_q = pr.cu_q,
      .table = &pk.table,
      .paged = pk.form,
      .page_size = (int)pk.page_size,
      .max_seqlen_q = pr.max_seqlen_q,
      .max_seqlen_k = INT32_MAX, /* the table bounds each sequence's keys */
  };
  return yk_prefill_run(ctx, &L, stream);
}

yk_status yk_paged_attention_prefill(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *kv,
                                     const yk_attention_params *params, DLTensor *out, DLTensor *lse, void *stream) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  return paged_prefill(ctx, "paged_attention_prefill", q, kv, params, 1, out, lse, stream);
}

/* ---- plan / run ---- */

struct yk_paged_plan {
  yk_ctx *ctx;
  int planned;
  yk_paged_plan_shape shape;
  int dtype;
  int kv_float8; /* the caches are float8 */
  int64_t batch;
  yk_decode_split split;
  size_t workspace_floats;
};

yk_status yk_paged_plan_create(yk_ctx *ctx, yk_paged_plan **out) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!out) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "paged_plan_create: out is NULL");
  yk_paged_plan *p = calloc(1, sizeof *p);
  if (!p) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "paged_plan_create: out of host memory");
  p->ctx = ctx;
  *out = p;
  return YK_OK;
}

void yk_paged_plan_destroy(yk_paged_plan *plan) { free(plan); }

yk_status yk_paged_decode_plan(yk_paged_plan *plan, const yk_paged_plan_shape *shape, const int32_t *kv_lens,
                               int64_t batch, size_t *workspace_floats) {
  static const char op[] = "paged_decode_plan";
  if (!plan) return YK_ERR_INVALID_ARGUMENT;
  yk_ctx *ctx = plan->ctx;
  if (!shape || (batch > 0 && !kv_lens))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shape or kv_lens is NULL", op);
  if (ctx->device != YK_DEVICE_CUDA)
    return yk_error(ctx, YK_ERR_NO_DEVICE, "%s: no CUDA device: plans are for the GPU kernels (%s)", op,
                    ctx->device_note);
  const int dtype = yk_type_of(shape->dtype, YK_ACCEPT_FLOAT);
  if (dtype != YK_F16 && dtype != YK_BF16)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: the GPU kernels take float16 or bfloat16", op);
  const int kv_type = shape->kv_dtype.bits ? yk_type_of(shape->kv_dtype, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3) : dtype;
  if (kv_type != dtype && kv_type != YK_E4M3)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: the caches' kv_dtype must be the dtype or float8_e4m3fn", op);
  if (batch < 0 || batch > 65535)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: batch %lld is outside 0..65535", op, (long long)batch);
  if (shape->page_size < 1 || shape->page_size > YK_KV_PAGE_SIZE_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: page_size %d is outside 1..%d", op, shape->page_size,
                    YK_KV_PAGE_SIZE_MAX);
  yk_status st;
  yk_attention_problem pr = {.on_device = 1, .decode = 1};
  pr.shape = (yk_attention_shape){
      .dtype = dtype, .q_heads = shape->q_heads, .kv_heads = shape->kv_heads, .head_dim = shape->head_dim};
  const yk_attention_params params = {.scale = shape->scale, .num_splits = shape->num_splits};
  if (shape->q_heads <= 0 || shape->kv_heads <= 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: q_heads %d and kv_heads %d must be positive", op, shape->q_heads,
                    shape->kv_heads);
  if ((st = yk_attention_check_heads(ctx, op, &params, &pr))) return st;
  int64_t longest = 0, total = 0;
  for (int64_t b = 0; b < batch; b++) {
    if (kv_lens[b] < 0)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_lens[%lld] is %d, negative", op, (long long)b, kv_lens[b]);
    if (kv_lens[b] > longest) longest = kv_lens[b];
    total += kv_lens[b];
  }
  const yk_decode_split split =
      yk_decode_splits(ctx, batch, shape->q_heads, shape->kv_heads, longest, total, shape->num_splits);
  const int splits = split.splits;
  /* compile now, so that running never does: the run's spec, which its grid shapes too */
  yk_decode_launch L = {.a = {.dtype = dtype,
                              .batch = batch,
                              .q_heads = shape->q_heads,
                              .kv_heads = shape->kv_heads,
                              .head_dim = shape->head_dim,
                              .kv_float8 = kv_type == YK_E4M3},
                        .paged = shape->csr ? 2 : 1,
                        .page_size = shape->page_size,
                        .splits = splits,
                        .chunk_keys = split.chunk_keys};
  yk_spec spec;
  yk_kernel *kern;
  yk_decode_spec(ctx, &L, &spec);
  if ((st = yk_kernel_get(ctx, &spec, &kern))) return st;
  const size_t floats = yk_decode_workspace_floats(batch, shape->q_heads, shape->head_dim, splits);
  if (splits > 1 && (st = yk_merge_partials_prepare(ctx, dtype, shape->head_dim))) return st;
  plan->shape = *shape;
  plan->shape.scale = pr.shape.scale;
  plan->dtype = dtype;
  plan->kv_float8 = kv_type == YK_E4M3;
  plan->batch = batch;
  plan->split = split;
  plan->workspace_floats = floats;
  plan->planned = 1;
  if (workspace_floats) *workspace_floats = floats;
  return YK_OK;
}

yk_status yk_paged_decode_run(yk_paged_plan *plan, const DLTensor *q, const yk_paged_kv *kv, DLTensor *out,
                              DLTensor *lse, DLTensor *workspace, void *stream) {
  static const char op[] = "paged_decode_run";
  if (!plan) return YK_ERR_INVALID_ARGUMENT;
  yk_ctx *ctx = plan->ctx;
  if (!plan->planned) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the plan has not been made", op);
  const yk_attention_params params = {.scale = plan->shape.scale, .num_splits = plan->split.splits};
  paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = check_paged(ctx, op, q, kv, &params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
  const yk_paged_plan_shape *s = &plan->shape;
  if (!pr.on_device) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the tensors are not on the device", op);
  if (pk.batch != plan->batch || pr.shape.q_heads != s->q_heads || pk.kv_heads != s->kv_heads ||
      pk.head_dim != s->head_dim || pk.page_size != s->page_size || (pk.form == 2) != (s->csr != 0) ||
      plan->dtype != pr.shape.dtype || plan->kv_float8 != pr.shape.kv_float8)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: the tensors (batch %lld, heads %lld/%lld, head_dim %lld, page_size %lld, %s, %s over %s "
                    "caches) are not the plan's (batch %lld, heads %d/%d, head_dim %d, page_size %d, %s, %s over %s "
                    "caches)",
                    op, (long long)pk.batch, (long long)pr.shape.q_heads, (long long)pk.kv_heads,
                    (long long)pk.head_dim, (long long)pk.page_size, pk.form == 2 ? "csr" : "block table",
                    yk_view_type_name(pr.shape.dtype), yk_view_type_name(pk.k.type), (long long)plan->batch, s->q_heads,
                    s->kv_heads, s->head_dim, s->page_size, s->csr ? "csr" : "block table",
                    yk_view_type_name(plan->dtype), yk_view_type_name(plan->kv_float8 ? YK_E4M3 : plan->dtype));
  if (pk.batch == 0) return YK_OK;
  yk_decode_launch L = decode_launch(&pr, &pk, &ov, &lv, plan->split);
  if (plan->workspace_floats) {
    if (!workspace)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the plan needs a workspace of %zu floats", op,
                      plan->workspace_floats);
    CUdeviceptr none;
    if ((st = yk_device_workspace(ctx, op, workspace, plan->workspace_floats, stream, &L.workspace, &none))) return st;
  }
  return yk_decode_run(ctx, &L, stream);
}

/* ---- cascade decode ---- */

/* The prefix is cut into up to MAX_CHUNKS chunks of whole pages, run as the sequences of one
 * prefill launch (the same queries against each chunk) and merged by lse: one chunk gives a block
 * per q head, which leaves most SMs idle. A batch of a few requests (at most CASCADE_DECODE_ROWS
 * rows of (request, q head) a kv head: parallel sampling, a beam) runs its prefix on the decode
 * kernel instead, as one sequence of B queries whose keys it splits and merges itself: each K and
 * V byte read once for the group's q heads, where the prefill kernel reads them again for each q
 * head of tiles mostly empty (B of 128 rows). yk bench --paged, H100 (session 31), 32 q / 8 kv
 * heads: 32 requests' prefix of 32768 keys (128 rows, one block of 8 row tiles a kv head) ran
 * 1.66x on the decode kernel, 64 requests' of 4096 (256 rows) 0.87x, where the prefill kernel's
 * chunks already fill the SMs. */
#define MAX_CHUNKS 8
#define CASCADE_DECODE_ROWS 128

/* Whether the batch's queries take the prefix on the decode kernel (on the GPU), and the float32
 * partials its split may take: sized for any prefix's length, since the workspace's size is asked
 * without it (the split grows with the keys only until the SMs are full). */
static int cascade_prefix_on_decode(int on_device, int64_t batch, int64_t q_heads, int64_t kv_heads) {
  return on_device && batch * (q_heads / kv_heads) <= CASCADE_DECODE_ROWS &&
         yk_decode_fits_queries(q_heads, kv_heads, batch);
}

static size_t cascade_prefix_floats(yk_ctx *ctx, int on_device, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                    int64_t head_dim) {
  if (!cascade_prefix_on_decode(on_device, batch, q_heads, kv_heads)) return 0;
  return yk_flash_attention_forward_workspace_floats(ctx, 1, batch, batch, q_heads, kv_heads, head_dim, INT32_MAX,
                                                     INT32_MAX, 0);
}

/* The split partials' region: the suffixes' decode's of `splits`, or the prefix's, the larger. */
static size_t cascade_partials_floats(size_t prefix_floats, int64_t batch, int64_t q_heads, int64_t head_dim,
                                      int splits) {
  const size_t suffix = yk_decode_workspace_floats(batch, q_heads, head_dim, splits);
  return suffix > prefix_floats ? suffix : prefix_floats;
}

/* The cascade's scratch, in float32 units: the suffixes' output and the prefix chunks' outputs (in
 * q's dtype, room for float32, the CPU path's widest), both lse, the chunks' lengths, then the
 * split partials of the suffixes' decode and of the prefix's on the decode kernel, which run one
 * after the other and share them (decode_floats, the larger); each part 16-byte aligned. */
typedef struct cascade_layout {
  size_t o_unique, o_chunks, lse_shared, lse_unique, lens, decode, total;
} cascade_layout;

static cascade_layout cascade_scratch(int64_t batch, int64_t q_heads, int64_t head_dim, size_t decode_floats) {
  cascade_layout l;
  const size_t rows = (size_t)(batch * q_heads), round4 = 3;
  l.o_unique = 0;
  l.o_chunks = (rows * (size_t)head_dim + round4) & ~round4;
  l.lse_shared = (l.o_chunks + MAX_CHUNKS * rows * (size_t)head_dim + round4) & ~round4;
  l.lse_unique = (l.lse_shared + MAX_CHUNKS * rows + round4) & ~round4;
  l.lens = (l.lse_unique + rows + round4) & ~round4;
  l.decode = (l.lens + MAX_CHUNKS + round4) & ~round4;
  l.total = l.decode + decode_floats;
  return l;
}

size_t yk_cascade_decode_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                          int64_t head_dim, int64_t max_suffix_len, int num_splits) {
  if (!ctx || batch <= 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || head_dim <= 0 ||
      max_suffix_len < 0 || num_splits < 0 || num_splits > YK_DECODE_MAX_SPLITS)
    return 0;
  const int splits = yk_decode_splits(ctx, batch, q_heads, kv_heads, max_suffix_len, 0, num_splits).splits;
  const size_t prefix = cascade_prefix_floats(ctx, ctx->device == YK_DEVICE_CUDA, batch, q_heads, kv_heads, head_dim);
  return cascade_scratch(batch, q_heads, head_dim, cascade_partials_floats(prefix, batch, q_heads, head_dim, splits))
      .total;
}

/* A view into the scratch: ndim dimensions of type at float offset `at`. */
static DLTensor scratch_view(const DLTensor *like, void *base, size_t at, DLDataType type, int ndim,
                             const int64_t *shape, const int64_t *strides) {
  DLTensor t = {.data = base, .device = like->device, .ndim = ndim, .dtype = type};
  t.shape = (int64_t *)shape, t.strides = (int64_t *)strides, t.byte_offset = at * sizeof(float);
  return t;
}

/* Chunks of the prefix: a power of two that divides its pages and keeps the prefill's blocks to
 * about one an SM; 1 where the prefix's length is not known exactly or its table is CSR. */
static int cascade_chunks(const yk_ctx *ctx, const yk_paged_kv *shared, const paged_keys *prefix, int64_t q_heads,
                          int64_t batch, int on_device) {
  const int64_t len = prefix->max_len, P = prefix->page_size, pages = len / P;
  if (!on_device || !shared->block_tables || len <= 0 || len % P) return 1;
  const int64_t blocks = q_heads * ((batch + 127) / 128);
  int chunks = 1;
  while (chunks * 2 <= MAX_CHUNKS && pages % (chunks * 2) == 0 && blocks * chunks * 2 <= ctx->multiprocessors)
    chunks *= 2;
  return chunks;
}

yk_status yk_cascade_attention_decode(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *shared,
                                      const yk_paged_kv *unique, const yk_attention_params *params, DLTensor *out,
                                      DLTensor *lse, void *stream) {
  static const char op[] = "cascade_attention_decode";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  /* the suffixes' call checks q, out, lse and the caches; the prefix's table is checked here */
  paged_keys pk, prefix;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = check_paged(ctx, op, q, unique, params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
  if (!shared) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared is NULL", op);
  if ((st = check_caches(ctx, op, shared, &prefix))) return st;
  if (prefix.k.data != pk.k.data || prefix.v.data != pk.v.data)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared and unique must page the same caches", op);
  if (prefix.k_scale != pk.k_scale || prefix.v_scale != pk.v_scale)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: shared's scales (%g, %g) are not unique's (%g, %g): they page the same caches", op,
                    (double)prefix.k_scale, (double)prefix.v_scale, (double)pk.k_scale, (double)pk.v_scale);
  if ((st = check_table(ctx, op, shared, pr.on_device, &prefix))) return st;
  if (prefix.batch != 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared has %lld sequences; the prefix is one", op,
                    (long long)prefix.batch);
  if (pk.batch == 0) return YK_OK;
  const int64_t B = pk.batch, H = pr.shape.q_heads, D = pr.shape.head_dim;
  const int splits =
      pr.on_device ? yk_decode_splits(ctx, B, H, pk.kv_heads, pk.max_len ? pk.max_len : 1, 0, params->num_splits).splits
                   : 1;
  const int prefix_on_decode = cascade_prefix_on_decode(pr.on_device, B, H, pk.kv_heads);
  const int64_t C = prefix_on_decode ? 1 : cascade_chunks(ctx, shared, &prefix, H, B, pr.on_device);
  const size_t prefix_floats = cascade_prefix_floats(ctx, pr.on_device, B, H, pk.kv_heads, D);
  const cascade_layout l = cascade_scratch(B, H, D, cascade_partials_floats(prefix_floats, B, H, D, splits));

  /* the scratch: the caller's, or one allocation for the call */
  float *base = NULL, *allocated = NULL;
  CUdeviceptr scratch = 0;
  if (pr.on_device) {
    if ((st = yk_device_workspace(ctx, op, params->workspace, l.total, stream, &base, &scratch))) return st;
  } else if (params->workspace) {
    if ((st = yk_workspace_check(ctx, op, params->workspace, l.total, 0, &base))) return st;
  } else if (!(base = allocated = malloc(l.total * sizeof(float)))) {
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for %zu floats of scratch", op, l.total);
  }
  const DLDataType f32 = {kDLFloat, 32, 1}, i32 = {kDLInt, 32, 1};
  /* the prefix: the batch's queries as one sequence of B rows against each chunk, [C, B, H, D] */
  const int64_t q4[4] = {C, B, H, D}, q4_strides[4] = {0, pr.q.stride[0], pr.q.stride[1], 1};
  const int64_t o4_strides[4] = {0, ov.stride[0], ov.stride[1], 1};
  DLTensor q_rows = *q, out_rows = *out;
  q_rows.ndim = out_rows.ndim = 4, q_rows.shape = out_rows.shape = (int64_t *)q4;
  q_rows.strides = (int64_t *)q4_strides, out_rows.strides = (int64_t *)o4_strides;
  if (C > 1) out_rows = scratch_view(q, base, l.o_chunks, q->dtype, 4, q4, NULL);
  const int64_t lse3[3] = {C, H, B}, lse2[2] = {B, H}, lse2_t[2] = {1, B}, o3[3] = {B, H, D}, rows = B * H;
  DLTensor lse_shared = scratch_view(q, base, l.lse_shared, f32, 3, lse3, NULL);
  DLTensor lse_unique = scratch_view(q, base, l.lse_unique, f32, 2, lse2, NULL);
  DLTensor o_unique = scratch_view(q, base, l.o_unique, q->dtype, 3, o3, NULL);
  DLTensor decode_ws = scratch_view(q, base, l.decode, f32, 1, (const int64_t[]){(int64_t)(l.total - l.decode)}, NULL);
  /* chunk c of the prefix: row c of its table seen as [C, pages / C], and its length */
  const int64_t chunk_len = prefix.max_len / C, table_shape[2] = {C, prefix.max_len / prefix.page_size / C};
  DLTensor chunk_table = C > 1 ? *shared->block_tables : (DLTensor){0};
  chunk_table.ndim = 2, chunk_table.shape = (int64_t *)table_shape, chunk_table.strides = NULL;
  DLTensor chunk_lens = scratch_view(q, base, l.lens, i32, 1, &q4[0], NULL);
  yk_paged_kv chunks = *shared;
  if (C > 1) {
    chunks.block_tables = &chunk_table, chunks.context_lens = &chunk_lens, chunks.max_context_len = (int)chunk_len;
    CUresult r = ctx->cu.cuMemsetD32Async((CUdeviceptr)(uintptr_t)(base + l.lens), (unsigned)chunk_len, (size_t)C,
                                          (CUstream)stream);
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "setting the prefix chunks' lengths");
  }
  if (!pr.on_device) q_rows.device = out_rows.device = lse_shared.device = (DLDevice){kDLCPU, 0};
  yk_attention_params prefix_params = {.scale = pr.shape.scale};
  yk_attention_params suffix_params = {.scale = pr.shape.scale, .num_splits = splits};
  if (prefix_floats) prefix_params.workspace = &decode_ws;
  if (splits > 1) suffix_params.workspace = &decode_ws;
  if (st == YK_OK)
    st = paged_prefill(ctx, op, &q_rows, &chunks, &prefix_params, prefix_on_decode, &out_rows, &lse_shared, stream);
  /* the chunks merged into the first, which then holds the whole prefix's attention */
  DLTensor o_first = C > 1 ? scratch_view(q, base, l.o_chunks, q->dtype, 3, o3, NULL) : *out;
  DLTensor lse_first = scratch_view(q, base, l.lse_shared, f32, 2, lse2, lse2_t);
  for (int64_t c = 1; c < C && st == YK_OK; c++) {
    DLTensor o_c = scratch_view(q, base, l.o_chunks + (size_t)(c * rows * D) / 2, q->dtype, 3, o3, NULL);
    DLTensor lse_c = scratch_view(q, base, l.lse_shared + (size_t)(c * rows), f32, 2, lse2, lse2_t);
    st = yk_merge_attention_states(ctx, &o_first, &lse_first, &o_c, &lse_c, &o_first, &lse_first, stream);
  }
  if (st == YK_OK) st = yk_paged_attention_decode(ctx, q, unique, &suffix_params, &o_unique, &lse_unique, stream);
  if (st == YK_OK) st = yk_merge_attention_states(ctx, &o_first, &lse_first, &o_unique, &lse_unique, out, lse, stream);
  if (pr.on_device) return yk_device_workspace_release(ctx, scratch, st, stream);
  free(allocated);
  return st;
}
