/* Paged attention: decode and prefill over a paged KV cache, and the decode's plan/run split (the
 * cascade over a shared prefix builds on them: gen/cascade_attention.c). The kernels are the dense
 * ones (templates/attention_decode.cu, attention_prefill.cu, attention_prefill_sm90.cu) with their
 * "paged" and "page_size" spec fields; the CPU path is cpu_fallback/attention.c reading keys through
 * a yk_page_map. Tests: tests/test_paged_attention.c. */
#include "gen/paged_attention.h"

#include <stdio.h>
#include <stdlib.h>

#include "cpu_fallback/attention.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/module.h"
#include "yk/ops.h"

/* Every entry of a table the host can read: lengths within the table, block ids within the cache. */
static yk_status check_table_values(yk_ctx *ctx, const char *op, yk_paged_keys *pk, int64_t nnz) {
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

yk_status yk_paged_check_table(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, int on_device, yk_paged_keys *pk) {
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

yk_status yk_paged_check_caches(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, yk_paged_keys *pk) {
  *pk = (yk_paged_keys){0};
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
                               int decode, yk_paged_keys *pk, yk_attention_problem *pr) {
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

yk_status yk_paged_check(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                         const yk_attention_params *params, int decode, const DLTensor *out, const DLTensor *lse,
                         yk_paged_keys *pk, yk_attention_problem *pr, yk_view *ov, yk_view *lv) {
  yk_status st;
  if ((st = yk_paged_check_caches(ctx, op, kv, pk)) || (st = check_queries(ctx, op, q, params, decode, pk, pr)) ||
      (st = yk_paged_check_table(ctx, op, kv, pr->on_device, pk)))
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

static void cpu_forward(yk_ctx *ctx, const yk_attention_problem *pr, const yk_paged_keys *pk, const yk_view *ov,
                        const yk_view *lv) {
  yk_cpu_attention_forward(&ctx->pool, &pr->shape, yk_attention_rows(&pr->q, pr, 0), pk->k_rows, pk->v_rows,
                           yk_attention_rows(ov, pr, 0), yk_attention_lse_rows(lv, pr));
}

/* The decode launch of a checked call cutting its keys by `split`. */
static yk_decode_launch decode_launch(const yk_attention_problem *pr, const yk_paged_keys *pk, const yk_view *ov,
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
  yk_paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_paged_check(ctx, op, q, kv, params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
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

yk_status yk_paged_prefill_as(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                              const yk_attention_params *params, int decode_kernel, DLTensor *out, DLTensor *lse,
                              void *stream) {
  yk_paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_paged_check(ctx, op, q, kv, params, 0, out, lse, &pk, &pr, &ov, &lv))) return st;
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
  return yk_paged_prefill_as(ctx, "paged_attention_prefill", q, kv, params, 1, out, lse, stream);
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
  yk_paged_keys pk;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_paged_check(ctx, op, q, kv, &params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
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
