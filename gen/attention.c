#include "gen/attention.h"

#include <math.h>
#include <stdio.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"
#include "runtime/tensor_map.h"
#include "yk/kv.h"

/* Offsets in memory the host can read are checked here: from 0, never decreasing, within the
 * token axis. Offsets in device memory are read by the kernels only, which skip a sequence whose
 * bounds are out of range rather than read outside the tensors. */
yk_status yk_attention_index_view(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int ndim,
                                  int on_device, yk_view *v, int *host_readable) {
  yk_status st = yk_view_of(ctx, op, name, t, YK_ACCEPT_INDEX, ndim, ndim, v);
  if (st) return st;
  if (v->type != YK_I32) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s must be int32", op, name);
  int64_t want = 1; /* a view's element count fits in int64_t (yk_view_of) */
  for (int d = ndim - 1; d >= 0; want *= v->shape[d], d--)
    if (v->stride[d] != want && v->shape[d] > 1)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s must be contiguous", op, name);
  const DLDeviceType where = t->device.device_type;
  const int device_readable = where == kDLCUDA || where == kDLCUDAHost || where == kDLCUDAManaged;
  *host_readable = where == kDLCPU || where == kDLCUDAHost || where == kDLCUDAManaged;
  if (on_device && !device_readable)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: %s is in pageable host memory; a GPU call needs it in device, "
                    "pinned or managed memory",
                    op, name);
  if (!on_device && where != kDLCPU && where != kDLCUDAHost)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s is in device memory but the tensors are on the host", op,
                    name);
  return YK_OK;
}

yk_status yk_attention_check_offsets(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int64_t batch,
                                     int64_t total, int on_device, const int32_t **out, int64_t *max_len) {
  yk_view v;
  int host_readable;
  yk_status st = yk_attention_index_view(ctx, op, name, t, 1, on_device, &v, &host_readable);
  if (st) return st;
  if (v.shape[0] != batch + 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s has %lld entries for %lld sequences (want batch + 1)", op,
                    name, (long long)v.shape[0], (long long)batch);
  const int32_t *cu = (const int32_t *)(const void *)v.data;
  if (host_readable) {
    if (cu[0] != 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s[0] is %d, not 0", op, name, cu[0]);
    int64_t longest = 0;
    for (int64_t b = 0; b < batch; b++) {
      if (cu[b + 1] < cu[b])
        return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s decreases at %lld (%d then %d)", op, name, (long long)b,
                        cu[b], cu[b + 1]);
      if (cu[b + 1] - cu[b] > longest) longest = cu[b + 1] - cu[b];
    }
    if (cu[batch] > total)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s ends at %d, past the %lld tokens of the tensor", op, name,
                      cu[batch], (long long)total);
    *max_len = longest; /* the offsets the host can read size the grid, not the caller's bound */
  } else if (*max_len <= 0) {
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: %s is in device memory; give max_seqlen_%c, which the host "
                    "cannot read from it",
                    op, name, name[11]);
  }
  *out = cu;
  return YK_OK;
}

yk_status yk_attention_check_heads(yk_ctx *ctx, const char *op, const yk_attention_params *params,
                                   yk_attention_problem *pr) {
  yk_attention_shape *s = &pr->shape;
  if (s->kv_heads == 0 || s->q_heads % s->kv_heads)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %lld kv heads do not divide %lld q heads", op,
                    (long long)s->kv_heads, (long long)s->q_heads);
  if (pr->on_device && s->dtype == YK_F32)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: the GPU kernels take float16 or bfloat16, not float32", op);
  if (pr->on_device && (s->head_dim % 16 || s->head_dim > YK_ATTENTION_MAX_HEAD_DIM_GPU || s->head_dim == 0))
    return yk_error(ctx, YK_ERR_UNSUPPORTED,
                    "%s: head_dim %lld is not built for the GPU (multiples of 16 up to %d: "
                    "64, 80, 96, 128, 256, ...)",
                    op, (long long)s->head_dim, YK_ATTENTION_MAX_HEAD_DIM_GPU);
  if (!pr->on_device && (s->head_dim == 0 || s->head_dim > 1024))
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: head_dim %lld is outside 1..1024", op, (long long)s->head_dim);
  /* the kernels keep max(score) * scale as the running maximum, which needs scale > 0 */
  if (!isfinite(params->scale) || params->scale < 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: scale must be finite and positive (0 for 1/sqrt(head_dim))", op);
  s->scale = params->scale != 0 ? params->scale : 1.f / sqrtf((float)s->head_dim);
  if (params->num_splits < 0 || params->num_splits > YK_DECODE_MAX_SPLITS)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: num_splits %d is outside 0..%d", op, params->num_splits,
                    YK_DECODE_MAX_SPLITS);
  return YK_OK;
}

yk_status yk_attention_check(yk_ctx *ctx, const char *op, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                             const yk_attention_params *params, int decode, yk_attention_problem *pr) {
  *pr = (yk_attention_problem){.decode = decode};
  if (!params) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: params is NULL", op);
  pr->ragged_q = params->cu_seqlens_q != NULL;
  pr->ragged_k = params->cu_seqlens_k != NULL;
  if (decode && pr->ragged_q)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: decode takes one query a sequence; cu_seqlens_q must be NULL",
                    op);
  if (!decode && pr->ragged_q != pr->ragged_k)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: give both cu_seqlens_q and cu_seqlens_k, or neither", op);
  const int q_dims = decode || pr->ragged_q ? 3 : 4, k_dims = pr->ragged_k ? 3 : 4;
  yk_status st;
  if ((st = yk_view_of(ctx, op, "q", q, YK_ACCEPT_FLOAT, q_dims, q_dims, &pr->q)) ||
      (st = yk_view_of(ctx, op, "k", k, YK_ACCEPT_FLOAT, k_dims, k_dims, &pr->k)) ||
      (st = yk_view_of(ctx, op, "v", v, YK_ACCEPT_FLOAT, k_dims, k_dims, &pr->v)) ||
      (st = yk_view_same_type(ctx, op, "q", &pr->q, "k", &pr->k)) ||
      (st = yk_view_same_type(ctx, op, "q", &pr->q, "v", &pr->v)) ||
      (st = yk_view_same_shape(ctx, op, "k", &pr->k, "v", &pr->v)))
    return st;
  const yk_view *all[] = {&pr->q, &pr->k, &pr->v};
  if ((st = yk_views_placement(ctx, op, all, 3, &pr->on_device))) return st;

  yk_attention_shape *s = &pr->shape;
  s->dtype = pr->q.type;
  s->q_heads = pr->q.shape[q_dims - 2];
  s->kv_heads = pr->k.shape[k_dims - 2];
  s->head_dim = pr->q.shape[q_dims - 1];
  if (pr->k.shape[k_dims - 1] != s->head_dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k has head_dim %lld, q has %lld", op,
                    (long long)pr->k.shape[k_dims - 1], (long long)s->head_dim);
  if ((st = yk_attention_check_heads(ctx, op, params, pr))) return st;
  s->causal = decode ? 0 : params->causal != 0;

  pr->total_q = pr->q.shape[0] * (q_dims == 4 ? pr->q.shape[1] : 1);
  pr->total_k = pr->k.shape[0] * (k_dims == 4 ? pr->k.shape[1] : 1);
  if (decode || !pr->ragged_q) s->batch = pr->q.shape[0];
  if (!pr->ragged_k && !decode && !pr->ragged_q && pr->k.shape[0] != s->batch)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k has batch %lld, q has %lld", op, (long long)pr->k.shape[0],
                    (long long)s->batch);
  if (decode && !pr->ragged_k && pr->k.shape[0] != s->batch)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k has batch %lld, q has %lld", op, (long long)pr->k.shape[0],
                    (long long)s->batch);
  if (pr->ragged_q) {
    if (!params->cu_seqlens_q->shape || params->cu_seqlens_q->ndim != 1)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cu_seqlens_q must have 1 dimension", op);
    if (params->cu_seqlens_q->shape[0] < 1)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cu_seqlens_q is empty", op);
    s->batch = params->cu_seqlens_q->shape[0] - 1;
    pr->max_seqlen_q = params->max_seqlen_q;
    if ((st = yk_attention_check_offsets(ctx, op, "cu_seqlens_q", params->cu_seqlens_q, s->batch, pr->total_q,
                                         pr->on_device, &pr->cu_q, &pr->max_seqlen_q)))
      return st;
  } else {
    s->seq_q = decode ? 1 : pr->q.shape[1];
    pr->max_seqlen_q = s->seq_q;
  }
  if (pr->ragged_k) {
    pr->max_seqlen_k = params->max_seqlen_k;
    if ((st = yk_attention_check_offsets(ctx, op, "cu_seqlens_k", params->cu_seqlens_k, s->batch, pr->total_k,
                                         pr->on_device, &pr->cu_k, &pr->max_seqlen_k)))
      return st;
  } else {
    s->seq_k = pr->k.shape[1];
    pr->max_seqlen_k = s->seq_k;
  }
  if (!pr->on_device) {
    s->cu_seqlens_q = pr->cu_q;
    s->cu_seqlens_k = pr->cu_k;
  }
  if (pr->max_seqlen_q > INT32_MAX || pr->max_seqlen_k > INT32_MAX || pr->total_q > INT32_MAX ||
      pr->total_k > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than 2^31 - 1 tokens", op);
  return YK_OK;
}

yk_status yk_attention_check_like(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t,
                                  const char *like_name, const yk_view *like, const yk_attention_problem *pr,
                                  yk_view *out) {
  yk_status st;
  if ((st = yk_view_of(ctx, op, name, t, YK_ACCEPT_FLOAT, like->ndim, like->ndim, out)) ||
      (st = yk_view_same_type(ctx, op, like_name, like, name, out)) ||
      (st = yk_view_same_shape(ctx, op, like_name, like, name, out)))
    return st;
  if (out->on_device != pr->on_device || (out->on_device && out->device_id != like->device_id))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s is not in the same memory as %s", op, name, like_name);
  return YK_OK;
}

yk_status yk_attention_check_lse(yk_ctx *ctx, const char *op, const DLTensor *lse, int optional,
                                 const yk_attention_problem *pr, yk_view *out) {
  if (!lse) {
    if (optional) {
      *out = (yk_view){0};
      return YK_OK;
    }
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: lse is NULL", op);
  }
  const int ragged = pr->ragged_q, dims = ragged || pr->decode ? 2 : 3;
  yk_status st = yk_view_of(ctx, op, "lse", lse, YK_ACCEPT_FLOAT, dims, dims, out);
  if (st) return st;
  if (out->type != YK_F32) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: lse must be float32", op);
  const yk_attention_shape *s = &pr->shape;
  int64_t want[3];
  if (pr->decode)
    want[0] = s->batch, want[1] = s->q_heads;
  else if (ragged)
    want[0] = s->q_heads, want[1] = pr->total_q;
  else
    want[0] = s->batch, want[1] = s->q_heads, want[2] = s->seq_q;
  for (int i = 0; i < dims; i++)
    if (out->shape[i] != want[i])
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: lse dimension %d is %lld, expected %lld (%s)", op, i,
                      (long long)out->shape[i], (long long)want[i],
                      pr->decode ? "[batch, q_heads]"
                      : ragged   ? "[q_heads, total_q]"
                                 : "[batch, q_heads, seq_q]");
  if (out->on_device != pr->on_device)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: lse is not in the same memory as q", op);
  return YK_OK;
}

yk_attention_operands yk_attention_operands_of(const yk_attention_problem *pr, yk_attn_operand k, yk_attn_operand v,
                                               const yk_view *out, const yk_view *lse) {
  const yk_attention_shape *s = &pr->shape;
  return (yk_attention_operands){.dtype = s->dtype,
                                 .batch = s->batch,
                                 .q_heads = s->q_heads,
                                 .kv_heads = s->kv_heads,
                                 .head_dim = s->head_dim,
                                 .scale = s->scale,
                                 .q = yk_attention_rows(&pr->q, pr, 0),
                                 .k = k,
                                 .v = v,
                                 .out = yk_attention_rows(out, pr, 0),
                                 .lse = yk_attention_lse_rows(lse, pr),
                                 .kv_float8 = s->kv_float8,
                                 .k_scale = s->k_scale,
                                 .v_scale = s->v_scale};
}

yk_attn_operand yk_attention_rows(const yk_view *v, const yk_attention_problem *pr, int is_k) {
  const int ragged = is_k ? pr->ragged_k : pr->ragged_q;
  yk_attn_operand o = {.data = v->data};
  if (!is_k && pr->decode) /* [batch, heads, dim]: one token a sequence */
    o.batch_stride = v->stride[0], o.seq_stride = 0, o.head_stride = v->stride[1];
  else if (ragged)
    o.batch_stride = 0, o.seq_stride = v->stride[0], o.head_stride = v->stride[1];
  else
    o.batch_stride = v->stride[0], o.seq_stride = v->stride[1], o.head_stride = v->stride[2];
  return o;
}

int yk_attention_prefill_sm90_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

int yk_attention_backward_sm90_head_dim(int head_dim) { return head_dim == 64 || head_dim == 128; }

int yk_attention_tensor_map(const yk_ctx *ctx, CUtensorMap *map, int dtype, int64_t head_dim, const yk_attn_operand *x,
                            int64_t rows, int64_t heads, int64_t batches, int box_rows) {
  return yk_tensor_map_rows(ctx, map, dtype, x->data, head_dim, rows, heads, batches, x->seq_stride, x->head_stride,
                            x->batch_stride, box_rows);
}

yk_attn_operand yk_attention_lse_rows(const yk_view *lse, const yk_attention_problem *pr) {
  yk_attn_operand o = {.data = lse->data};
  if (!lse->data) return o;
  if (pr->decode)
    o.batch_stride = lse->stride[0], o.seq_stride = 0, o.head_stride = lse->stride[1];
  else if (pr->ragged_q)
    o.batch_stride = 0, o.seq_stride = lse->stride[1], o.head_stride = lse->stride[0];
  else
    o.batch_stride = lse->stride[0], o.seq_stride = lse->stride[2], o.head_stride = lse->stride[1];
  return o;
}

yk_status yk_attention_check_aligned(yk_ctx *ctx, const char *op, const yk_view *const *views, const char *const *names,
                                     int count) {
  for (int i = 0; i < count; i++) {
    uint64_t bits = (uint64_t)(uintptr_t)views[i]->data;
    for (int d = 0; d + 1 < views[i]->ndim; d++)
      if (views[i]->shape[d] > 1) bits |= (uint64_t)views[i]->stride[d] * (uint64_t)views[i]->elem_bytes;
    if (bits & 15)
      return yk_error(ctx, YK_ERR_UNSUPPORTED,
                      "%s: rows of the %s tensor must start on 16-byte boundaries (the "
                      "base address and every stride a multiple of 16 bytes)",
                      op, names[i]);
  }
  return YK_OK;
}

void yk_attention_warm(const yk_warm_request *req, const yk_op_def *op, int flag_a, int flag_b, int paged_field,
                       int float8_field, int (*accepts)(int head_dim), yk_spec_emit_fn emit, void *user) {
  for (int d = YK_F16; d <= YK_BF16; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++) {
      if (accepts && !accepts(req->models[m]->head_dim)) continue;
      for (int paged = 0; paged <= (paged_field >= 0 ? 2 : 0); paged++)
        for (int float8 = 0; float8 <= (paged && float8_field >= 0); float8++) /* float8 KV caches are paged */
          for (int variant = 0; variant < 4; variant++) {
            yk_spec s;
            char why[256];
            yk_spec_init(&s, op, (yk_dtype)d);
            s.v[0] = req->models[m]->head_dim;
            s.v[flag_a] = variant & 1;
            s.v[flag_b] = variant >> 1;
            if (paged_field >= 0) s.v[paged_field] = paged, s.v[paged_field + 1] = paged ? YK_KV_PAGE_SIZE_DEFAULT : 0;
            if (float8_field >= 0) s.v[float8_field] = float8;
            op->complete(&s);
            if (!op->valid(&s, why, sizeof why)) emit(user, &s);
          }
    }
  }
}

const char *const yk_paged_choices[] = {"none", "block_table", "csr", NULL};

void yk_attention_complete_paged(int32_t *paged, int32_t *page_size) {
  if (*paged == YK_UNSET) *paged = 0;
  if (*page_size == YK_UNSET) *page_size = *paged ? YK_KV_PAGE_SIZE_DEFAULT : 0;
}

int yk_attention_paged_invalid(int paged, int page_size, char *why, size_t n) {
  if ((paged == 0) != (page_size == 0))
    return snprintf(why, n, "page_size %d: set for paged keys (1..%d) and only for them (paged %d)", page_size,
                    YK_KV_PAGE_SIZE_MAX, paged),
           1;
  return 0;
}

yk_status yk_attention_check_outputs(yk_ctx *ctx, const char *op, const yk_view *const *outs,
                                     const char *const *out_names, int out_count, const yk_view *const *ins,
                                     const char *const *in_names, int in_count) {
  yk_status st;
  for (int i = 0; i < out_count; i++) {
    if (!outs[i]->data) continue;
    if ((st = yk_view_disjoint(ctx, op, out_names[i], outs[i]))) return st;
    for (int j = 0; j < in_count; j++)
      if (ins[j]->data && (st = yk_views_apart(ctx, op, out_names[i], outs[i], in_names[j], ins[j]))) return st;
    for (int j = 0; j < i; j++)
      if (outs[j]->data && (st = yk_views_apart(ctx, op, out_names[i], outs[i], out_names[j], outs[j]))) return st;
  }
  return YK_OK;
}

/* Workspaces: the split decode (dense and paged), the backward and plan/run paged decode share them. */
yk_status yk_workspace_check(yk_ctx *ctx, const char *op, const DLTensor *given, size_t floats, int on_device,
                             float **out) {
  yk_view wv;
  yk_status st = yk_view_of(ctx, op, "workspace", given, YK_ACCEPT_FLOAT, 1, 1, &wv);
  if (st) return st;
  if (wv.type != YK_F32 || wv.on_device != on_device || (size_t)wv.shape[0] < floats || ((uintptr_t)wv.data & 15))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: workspace must be a float32 %s vector of at least %zu elements, 16-byte aligned", op,
                    on_device ? "device" : "host", floats);
  *out = (float *)(void *)wv.data;
  return YK_OK;
}

size_t yk_workspace_floats_offered(const DLTensor *given) {
  const int float32 = given->dtype.code == kDLFloat && given->dtype.bits == 32 && given->dtype.lanes == 1;
  return given->ndim == 1 && float32 && given->shape && given->shape[0] > 0 ? (size_t)given->shape[0] : 0;
}

yk_status yk_device_workspace(yk_ctx *ctx, const char *op, const DLTensor *given, size_t floats, void *stream,
                              float **out, CUdeviceptr *scratch) {
  *out = NULL, *scratch = 0;
  if (!floats) return YK_OK;
  if (given) return yk_workspace_check(ctx, op, given, floats, 1, out);
  if (!ctx->cu.cuMemAllocAsync)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: the driver has no cuMemAllocAsync; pass params->workspace", op);
  yk_status st = yk_cuda_make_current(ctx);
  if (st) return st;
  CUresult r = ctx->cu.cuMemAllocAsync(scratch, floats * sizeof(float), (CUstream)stream);
  if (r != CUDA_SUCCESS) return yk_cuda_error(ctx, r, "allocating the workspace");
  *out = (float *)(uintptr_t)*scratch;
  return YK_OK;
}

yk_status yk_device_workspace_release(yk_ctx *ctx, CUdeviceptr scratch, yk_status st, void *stream) {
  if (!scratch) return st;
  CUresult r = ctx->cu.cuMemFreeAsync(scratch, (CUstream)stream); /* stream-ordered: after the kernels */
  if (r != CUDA_SUCCESS && st == YK_OK) st = yk_cuda_error(ctx, r, "freeing the workspace");
  return st;
}
