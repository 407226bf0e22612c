/* append_kv: new tokens' K and V into their pages of a paged KV cache, RoPE of k fused on the way:
 * spec, warm matrix, argument checks, public call (include/yk/kv.h). Template:
 * templates/append_kv.cu. CPU: cpu_fallback/append_kv.c. Tests: tests/test_append_kv.c. */
#include <stdio.h>

#include "cpu_fallback/append_kv.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/kv.h"
#include "yk/ops.h"

enum { HEAD_DIM, ROT_DIM, ROPE, VEC, THREADS, INDEX, CACHE_TYPE, POS_TYPE, KV_FLOAT8 };
enum { NONE = 0, NEOX = 1, GPTJ = 2 };
enum { SLOTS32 = 0, SLOTS64 = 1, CSR = 2 };
#define MAX_HEAD_DIM YK_APPEND_KV_MAX_HEAD_DIM
#define MAX_ROT_DIM 512 /* the CPU rope rotates a head through a 512-float stack buffer */
static const char *const ropes[] = {"none", "neox", "gptj"};
static const char *const indexes[] = {"slots32", "slots64", "csr"};
static const char *const cache_types[] = {"f32", "f16", "bf16"}; /* yk_dtype order */
static const char *const pos_types[] = {"int32", "int64"};

/* Elements a rotated work item's vectors tile: a half (NEOX) or the whole rotary span (GPT-J). */
static int rotated_span(const yk_spec *s) { return s->v[ROPE] == NEOX ? s->v[ROT_DIM] / 2 : s->v[ROT_DIM]; }

static void complete(yk_spec *s) {
  if (s->v[ROPE] == YK_UNSET) s->v[ROPE] = NONE;
  if (s->v[ROT_DIM] == YK_UNSET) s->v[ROT_DIM] = s->v[ROPE] == NONE ? 0 : s->v[HEAD_DIM];
  if (s->v[INDEX] == YK_UNSET) s->v[INDEX] = SLOTS64;
  if (s->v[CACHE_TYPE] == YK_UNSET) s->v[CACHE_TYPE] = s->dtype;
  if (s->v[POS_TYPE] == YK_UNSET) s->v[POS_TYPE] = 1;
  if (s->v[KV_FLOAT8] == YK_UNSET) s->v[KV_FLOAT8] = 0;
  /* A token of Llama 3 8B (8 heads of 128, K and V) is 256 vectors of 16 bytes: two a thread. */
  if (s->v[THREADS] == YK_UNSET) s->v[THREADS] = 128;
  if (s->v[VEC] == YK_UNSET && s->v[HEAD_DIM] > 0) {
    int vec = yk_default_vec((yk_dtype)s->dtype, s->v[HEAD_DIM]);
    if (s->v[ROPE] != NONE && rotated_span(s) > 0) {
      const int rotated = yk_default_vec((yk_dtype)s->dtype, rotated_span(s));
      vec = rotated < vec ? rotated : vec;
    }
    s->v[VEC] = vec;
  }
}

static int valid(const yk_spec *s, char *why, size_t n) {
  const int vec = s->v[VEC], rope = s->v[ROPE], rot = s->v[ROT_DIM], dim = s->v[HEAD_DIM];
  if (rope == NONE && rot) return snprintf(why, n, "rot_dim %d needs rope neox or gptj", rot), 1;
  if (rope != NONE && (rot < 2 || rot % 2 || rot > dim))
    return snprintf(why, n, "rot_dim %d must be even, at least 2 and at most head_dim %d", rot, dim), 1;
  if (dim % vec) return snprintf(why, n, "vec %d does not divide head_dim %d", vec, dim), 1;
  if (rope != NONE && rotated_span(s) % vec)
    return snprintf(why, n, "vec %d does not divide the %s span %d", vec, ropes[rope], rotated_span(s)), 1;
  if (rope == GPTJ && vec < 2) return snprintf(why, n, "gptj needs vec >= 2 (whole pairs)"), 1;
  const int held = (rope == NEOX ? 6 : 2) * vec; /* both halves, cos, sin, results */
  if (!yk_fits_registers(held, s->v[THREADS]))
    return snprintf(why, n, "vec %d holds %d floats a thread, more than fit in registers at %d threads", vec, held,
                    s->v[THREADS]),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

static const char *const includes[] = {"rope_rotate.cuh", NULL}; /* the rotation rope and append_kv share */

const yk_op_def yk_op_append_kv = {
    .name = "append_kv",
    .summary = "new tokens' K and V into their pages of a paged KV cache (vLLM slots or FlashInfer CSR), "
               "RoPE of k fused",
    .includes = includes,
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 9,
    .fields =
        {
            {"head_dim", "elements a head", 1, MAX_HEAD_DIM, 0, 0, NULL},
            {"rot_dim", "rotated elements of k a head (even, <= head_dim; 0 without rope)", 0, MAX_ROT_DIM, 0, 1, NULL},
            {"rope", "RoPE of k on the way: none, neox (halves) or gptj (interleaved pairs)", 0, 2, 0, 1, ropes},
            {"vec", "elements per vector access (16 bytes at most)", 1, 8, 1, 1, NULL},
            {"threads", "threads a block; one block a token", 32, 1024, 0, 1, NULL},
            {"index", "where tokens go: vLLM slots (int32, int64) or FlashInfer's CSR table (int32)", 0, 2, 0, 1,
             indexes},
            {"cache_type", "dtype of cos_sin_cache", 0, 2, 0, 1, cache_types},
            {"pos_type", "dtype of the rope positions", 0, 1, 0, 1, pos_types},
            {"kv_float8", "1: the caches are float8 e4m3, written times their inverse scales", 0, 1, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .warm_specs = warm_specs,
};

/* What engines run: vLLM's reshape_and_cache (int64 slots) and FlashInfer's append (int32 CSR),
 * each plain and with NeoX RoPE fused (positions of the index's integer type). */
static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  static const int forms[][3] = {{NONE, SLOTS64, 1}, {NONE, CSR, 0}, {NEOX, SLOTS64, 1}, {NEOX, CSR, 0}};
  for (int d = 0; d < YK_DTYPE_COUNT; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++)
      for (int float8 = 0; float8 <= (d != YK_F32); float8++) /* 16-bit k and v into float8 caches too */
        for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
          yk_spec s;
          yk_spec_init(&s, &yk_op_append_kv, (yk_dtype)d);
          s.v[HEAD_DIM] = req->models[m]->head_dim;
          s.v[ROPE] = forms[f][0], s.v[INDEX] = forms[f][1];
          s.v[KV_FLOAT8] = float8;
          if (forms[f][0] != NONE) s.v[POS_TYPE] = forms[f][2]; /* as the call leaves it: the default */
          complete(&s);
          emit(user, &s);
        }
  }
}

/* A call's tensors, checked. */
typedef struct {
  yk_view k, v, kc, vc;
  yk_view index[4]; /* slot_mapping; or batch_indices, positions, kv_indptr, kv_indices */
  int csr;
  yk_view rope_positions, table;
  const yk_append_kv_rope *rope; /* NULL: none */
  int64_t tokens, heads, dim, page, blocks, rot_dim;
  int64_t kc_stride[3], vc_stride[3]; /* block, token in its page, head */
  int on_device;
  int float8;             /* float8_e4m3fn caches: k and v quantized on the way */
  float k_scale, v_scale; /* their scales (1 for 16-bit caches) */
} append_call;

static const char *const csr_names[4] = {"batch_indices", "positions", "kv_indptr", "kv_indices"};

static yk_status check_tensors(yk_ctx *ctx, const char *op, const DLTensor *k, const DLTensor *v,
                               const DLTensor *k_cache, const DLTensor *v_cache, yk_kv_layout layout, append_call *c) {
  yk_status st;
  if ((st = yk_view_of(ctx, op, "k", k, YK_ACCEPT_FLOAT, 3, 3, &c->k)) ||
      (st = yk_view_of(ctx, op, "v", v, YK_ACCEPT_FLOAT, 3, 3, &c->v)) ||
      (st = yk_view_of(ctx, op, "k_cache", k_cache, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 4, 4, &c->kc)) ||
      (st = yk_view_of(ctx, op, "v_cache", v_cache, YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 4, 4, &c->vc)) ||
      (st = yk_view_same_type(ctx, op, "k", &c->k, "v", &c->v)) ||
      (st = yk_view_same_shape(ctx, op, "k", &c->k, "v", &c->v)) ||
      (c->kc.type != YK_E4M3 && (st = yk_view_same_type(ctx, op, "k", &c->k, "k_cache", &c->kc))) ||
      (st = yk_view_same_type(ctx, op, "k_cache", &c->kc, "v_cache", &c->vc)) ||
      (st = yk_view_same_shape(ctx, op, "k_cache", &c->kc, "v_cache", &c->vc)))
    return st;
  if (layout != YK_KV_NHD && layout != YK_KV_HND)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: layout %d is neither YK_KV_NHD nor YK_KV_HND", op, (int)layout);
  const int nhd = layout == YK_KV_NHD, head_axis = nhd ? 2 : 1, page_axis = nhd ? 1 : 2;
  c->tokens = c->k.shape[0], c->heads = c->k.shape[1], c->dim = c->k.shape[2];
  c->blocks = c->kc.shape[0], c->page = c->kc.shape[page_axis];
  if (c->kc.shape[head_axis] != c->heads || c->kc.shape[3] != c->dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: k_cache (%s) holds %lld kv heads of head_dim %lld, k has %lld of %lld", op,
                    nhd ? "NHD" : "HND", (long long)c->kc.shape[head_axis], (long long)c->kc.shape[3],
                    (long long)c->heads, (long long)c->dim);
  if (c->page < 1) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: k_cache has pages of 0 tokens", op);
  if (c->dim > MAX_HEAD_DIM || c->heads > 65536 || c->tokens > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: more than %d head dims, 65536 kv heads or 2^31 - 1 tokens", op,
                    MAX_HEAD_DIM);
  if ((st = yk_view_disjoint(ctx, op, "k_cache", &c->kc)) || (st = yk_view_disjoint(ctx, op, "v_cache", &c->vc)) ||
      (st = yk_views_apart(ctx, op, "k_cache", &c->kc, "k", &c->k)) ||
      (st = yk_views_apart(ctx, op, "k_cache", &c->kc, "v", &c->v)) ||
      (st = yk_views_apart(ctx, op, "v_cache", &c->vc, "k", &c->k)) ||
      (st = yk_views_apart(ctx, op, "v_cache", &c->vc, "v", &c->v)))
    return st;
  const int64_t axes[3] = {0, page_axis, head_axis};
  for (int i = 0; i < 3; i++) c->kc_stride[i] = c->kc.stride[axes[i]], c->vc_stride[i] = c->vc.stride[axes[i]];
  return YK_OK;
}

/* One index tensor: 1-D, tokens entries unless entries < 0, int32 where int32_only. */
static yk_status index_view(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int64_t entries,
                            int int32_only, yk_view *out) {
  yk_status st = yk_view_of(ctx, op, name, t, YK_ACCEPT_INDEX, 1, 1, out);
  if (st) return st;
  if (int32_only && out->type != YK_I32)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s must be int32 (FlashInfer's CSR form), not %s", op, name,
                    yk_view_type_name(out->type));
  if (entries >= 0 && out->shape[0] != entries)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s has %lld entries for %lld tokens", op, name,
                    (long long)out->shape[0], (long long)entries);
  return YK_OK;
}

static yk_status check_index(yk_ctx *ctx, const char *op, const yk_append_kv_index *index, append_call *c) {
  if (!index) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: index is NULL (set slot_mapping or the CSR form)", op);
  const DLTensor *csr[4] = {index->batch_indices, index->positions, index->kv_indptr, index->kv_indices};
  int set = 0, missing = -1;
  for (int i = 0; i < 4; i++) {
    if (csr[i])
      set++;
    else if (missing < 0)
      missing = i;
  }
  if (index->slot_mapping && set)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: index sets both slot_mapping and the CSR form (batch_indices, positions, kv_indptr, "
                    "kv_indices); set one",
                    op);
  if (!index->slot_mapping && !set)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: index sets neither slot_mapping nor the CSR form", op);
  c->csr = !index->slot_mapping;
  if (!c->csr) return index_view(ctx, op, "slot_mapping", index->slot_mapping, c->tokens, 0, &c->index[0]);
  if (set < 4)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: the CSR form needs batch_indices, positions, kv_indptr and kv_indices; %s is NULL", op,
                    csr_names[missing]);
  yk_status st;
  for (int i = 0; i < 4; i++)
    if ((st = index_view(ctx, op, csr_names[i], csr[i], i < 2 ? c->tokens : -1, 1, &c->index[i]))) return st;
  if (c->index[2].shape[0] < 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr needs batch + 1 entries, at least one", op);
  return YK_OK;
}

static yk_status check_rope(yk_ctx *ctx, const char *op, const yk_append_kv_rope *rope, append_call *c) {
  c->rope = rope;
  c->rot_dim = 0;
  if (!rope) return YK_OK;
  yk_status st;
  if ((st = index_view(ctx, op, "rope positions", rope->positions, c->tokens, 0, &c->rope_positions)) ||
      (st = yk_view_of(ctx, op, "cos_sin_cache", rope->cos_sin_cache, YK_ACCEPT_FLOAT, 2, 2, &c->table)))
    return st;
  if (rope->style != YK_ROPE_NEOX && rope->style != YK_ROPE_GPTJ)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: rope style %d is neither YK_ROPE_NEOX nor YK_ROPE_GPTJ", op,
                    rope->style);
  if (c->table.type != c->k.type && c->table.type != YK_F32)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos_sin_cache must be float32 or k's dtype %s, not %s", op,
                    yk_view_type_name(c->k.type), yk_view_type_name(c->table.type));
  c->rot_dim = c->table.shape[1];
  if (c->rot_dim < 2 || c->rot_dim % 2 || c->rot_dim > c->dim)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: the rotary dim %lld (cos_sin_cache's rows) must be even, at least 2 and at most head_dim %lld",
                    op, (long long)c->rot_dim, (long long)c->dim);
  if (c->rot_dim > MAX_ROT_DIM)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: the rotary dim %lld is above %d", op, (long long)c->rot_dim,
                    MAX_ROT_DIM);
  if (c->table.shape[0] == 0 && c->tokens > 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: cos_sin_cache has no rows", op);
  return YK_OK;
}

static yk_status check_scales(yk_ctx *ctx, const char *op, const yk_kv_scales *scales, append_call *c) {
  c->float8 = c->kc.type == YK_E4M3;
  return yk_kv_scales_of(ctx, op, scales, c->float8, &c->k_scale, &c->v_scale);
}

static yk_status check_placement(yk_ctx *ctx, const char *op, append_call *c) {
  const yk_view *all[10] = {&c->k, &c->v, &c->kc, &c->vc, &c->index[0]};
  int n = 5;
  for (int i = 1; c->csr && i < 4; i++) all[n++] = &c->index[i];
  if (c->rope) all[n++] = &c->rope_positions, all[n++] = &c->table;
  return yk_views_placement(ctx, op, all, n, &c->on_device);
}

/* ---- the CPU fallback ---- */

__attribute__((cold)) static yk_status refused(yk_ctx *ctx, const char *op, const append_call *c,
                                               const yk_append_kv_problem *p) {
  const long long t = p->token, value = p->value, detail = p->detail;
  const int32_t *indptr = (const int32_t *)c->index[2].data;
  switch (p->fault) {
  case YK_APPEND_KV_SLOT:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: slot_mapping[%lld] = %lld is past the cache's %lld slots", op, t,
                    value, (long long)(c->blocks * c->page));
  case YK_APPEND_KV_SEQUENCE:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: batch_indices[%lld] = %lld is not a sequence of kv_indptr (0..%lld)", op, t, value,
                    (long long)c->index[2].shape[0] - 2);
  case YK_APPEND_KV_INDPTR:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: kv_indptr[%lld] = %d, kv_indptr[%lld] = %d (token %lld) is not a range of kv_indices' %lld "
                    "entries",
                    op, detail, indptr[detail], detail + 1, indptr[detail + 1], t, (long long)c->index[3].shape[0]);
  case YK_APPEND_KV_PAGE:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: positions[%lld] = %lld is past the %d blocks of sequence %lld",
                    op, t, value, indptr[detail + 1] - indptr[detail], detail);
  case YK_APPEND_KV_BLOCK:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: kv_indices[%lld] = %lld (token %lld) is not a block of the cache (0..%lld)", op, detail, value,
                    t, (long long)c->blocks - 1);
  case YK_APPEND_KV_ROPE_POSITION:
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: rope positions[%lld] = %lld is outside [0, %lld)", op, t, value,
                    (long long)c->table.shape[0]);
  }
  return yk_error(ctx, YK_ERR_INTERNAL, "%s: token %lld refused for no reason found", op, t);
}

static yk_status run_cpu(yk_ctx *ctx, const char *op, const append_call *c) {
  yk_append_kv_args a = {
      .dtype = c->k.type,
      .elem_bytes = c->k.elem_bytes,
      .float8 = c->float8,
      .k_inv_scale = 1.f / c->k_scale,
      .v_inv_scale = 1.f / c->v_scale,
      .tokens = c->tokens,
      .kv_heads = c->heads,
      .head_dim = c->dim,
      .k = c->k.data,
      .v = c->v.data,
      .k_token_stride = c->k.stride[0],
      .k_head_stride = c->k.stride[1],
      .v_token_stride = c->v.stride[0],
      .v_head_stride = c->v.stride[1],
      .k_cache = c->kc.data,
      .v_cache = c->vc.data,
      .k_cache_block_stride = c->kc_stride[0],
      .k_cache_offset_stride = c->kc_stride[1],
      .k_cache_head_stride = c->kc_stride[2],
      .v_cache_block_stride = c->vc_stride[0],
      .v_cache_offset_stride = c->vc_stride[1],
      .v_cache_head_stride = c->vc_stride[2],
      .where = {.csr = c->csr, .page_size = c->page, .num_blocks = c->blocks},
  };
  if (c->csr) {
    a.where.batch_indices = (const int32_t *)c->index[0].data, a.where.positions = (const int32_t *)c->index[1].data;
    a.where.kv_indptr = (const int32_t *)c->index[2].data, a.where.kv_indices = (const int32_t *)c->index[3].data;
    a.where.batch = c->index[2].shape[0] - 1, a.where.num_indices = c->index[3].shape[0];
  } else {
    a.where.slots = c->index[0].data, a.where.slots_64 = c->index[0].type == YK_I64;
  }
  if (c->rope) {
    a.rope_positions = c->rope_positions.data, a.rope_positions_64 = c->rope_positions.type == YK_I64;
    a.rope = (yk_rope_args){
        .dtype = c->k.type,
        .cache_dtype = c->table.type,
        .neox = c->rope->style == YK_ROPE_NEOX,
        .tokens = 1,
        .seq = 1,
        .kv_heads = c->heads,
        .head_dim = c->dim,
        .rotary_dim = c->rot_dim,
        .k_head_stride = c->kc_stride[2],
        .cos = c->table.data,
        .sin = c->table.data + c->rot_dim / 2 * c->table.elem_bytes,
        .table_row_stride = c->table.stride[0],
        .max_position = c->table.shape[0],
        .positions_64 = c->rope_positions.type == YK_I64,
    };
  }
  yk_append_kv_problem problem;
  return yk_cpu_append_kv(&ctx->pool, &a, &problem) ? refused(ctx, op, c, &problem) : YK_OK;
}

/* ---- the GPU ---- */

/* The kernel's parameter, by value: templates/append_kv.cu declares the same members in the same
 * order, all 8 bytes, so the layouts agree without padding. */
typedef struct {
  const void *k, *v;
  void *k_cache, *v_cache;
  const void *slots, *batch_indices, *positions, *kv_indptr, *kv_indices;
  const void *cos, *sin, *rope_positions;
  int64_t k_token, k_head, v_token, v_head;
  int64_t kc_block, kc_offset, kc_head, vc_block, vc_offset, vc_head;
  int64_t kv_heads, page_size, num_blocks, batch, num_indices, table_row_stride, max_position;
  float k_inv_scale, v_inv_scale; /* float8 caches */
} append_kv_params;
_Static_assert(sizeof(append_kv_params) == 30 * 8,
               "append_kv_params: 29 members of 8 bytes and two floats, as the template's");

/* The widest vector every address, stride and span allows (16 bytes at most). */
static int vector_width(const append_call *c, const yk_spec *spec) {
  const uint64_t es = (uint64_t)c->k.elem_bytes;
  uint64_t strides = (uint64_t)(c->k.stride[0] | c->k.stride[1] | c->v.stride[0] | c->v.stride[1]);
  uint64_t cache_strides = 0; /* a float8 cache's vectors are half as wide: held to k's alignment here */
  for (int i = 0; i < 3; i++) cache_strides |= (uint64_t)(c->kc_stride[i] | c->vc_stride[i]);
  const uint64_t bits = (uint64_t)(uintptr_t)c->k.data | (uint64_t)(uintptr_t)c->v.data |
                        (uint64_t)(uintptr_t)c->kc.data | (uint64_t)(uintptr_t)c->vc.data | strides * es |
                        cache_strides * (uint64_t)c->kc.elem_bytes | (uint64_t)c->dim * es |
                        (c->rope ? (uint64_t)rotated_span(spec) * es : 0);
  int vec = yk_vec_width(bits, c->k.elem_bytes);
  if (!c->rope) return vec;
  /* cos and sin vectors: VEC (NEOX) or VEC / 2 (GPT-J) elements of the table's type, as rope. */
  const uint64_t cs = (uint64_t)c->table.elem_bytes;
  const uint64_t table_bits = (uint64_t)(uintptr_t)c->table.data |
                              (uint64_t)(uintptr_t)(c->table.data + c->rot_dim / 2 * c->table.elem_bytes) |
                              (uint64_t)c->table.stride[0] * cs;
  const int table_vec = yk_vec_width(table_bits, c->table.elem_bytes) * (c->rope->style == YK_ROPE_GPTJ ? 2 : 1);
  if (yk_vec_width(table_bits, 1) < 16 && table_vec < vec) vec = table_vec;
  return vec;
}

static yk_status run_gpu(yk_ctx *ctx, const char *op, const append_call *c, void *stream) {
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_append_kv, (yk_dtype)c->k.type);
  spec.v[HEAD_DIM] = (int32_t)c->dim;
  spec.v[INDEX] = c->csr ? CSR : c->index[0].type == YK_I64 ? SLOTS64 : SLOTS32;
  if (c->rope) {
    spec.v[ROPE] = c->rope->style == YK_ROPE_NEOX ? NEOX : GPTJ;
    spec.v[ROT_DIM] = (int32_t)c->rot_dim;
    spec.v[CACHE_TYPE] = c->table.type;
    spec.v[POS_TYPE] = c->rope_positions.type == YK_I64;
  }
  spec.v[KV_FLOAT8] = c->float8;
  spec.v[VEC] = vector_width(c, &spec);
  yk_spec_finish(ctx, &spec, 0);
  if (spec.v[ROPE] == GPTJ && spec.v[VEC] < 2)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: gptj rope needs k, the caches and the table aligned to whole pairs",
                    op);
  yk_kernel *kern;
  yk_status st = yk_kernel_get(ctx, &spec, &kern);
  if (st) return st;
  append_kv_params p = {
      .k = c->k.data,
      .v = c->v.data,
      .k_cache = c->kc.data,
      .v_cache = c->vc.data,
      .k_token = c->k.stride[0],
      .k_head = c->k.stride[1],
      .v_token = c->v.stride[0],
      .v_head = c->v.stride[1],
      .kc_block = c->kc_stride[0],
      .kc_offset = c->kc_stride[1],
      .kc_head = c->kc_stride[2],
      .vc_block = c->vc_stride[0],
      .vc_offset = c->vc_stride[1],
      .vc_head = c->vc_stride[2],
      .kv_heads = c->heads,
      .page_size = c->page,
      .num_blocks = c->blocks,
      .k_inv_scale = 1.f / c->k_scale,
      .v_inv_scale = 1.f / c->v_scale,
  };
  if (c->csr) {
    p.batch_indices = c->index[0].data, p.positions = c->index[1].data;
    p.kv_indptr = c->index[2].data, p.kv_indices = c->index[3].data;
    p.batch = c->index[2].shape[0] - 1, p.num_indices = c->index[3].shape[0];
  } else {
    p.slots = c->index[0].data;
  }
  if (c->rope) {
    p.cos = c->table.data, p.sin = c->table.data + c->rot_dim / 2 * c->table.elem_bytes;
    p.rope_positions = c->rope_positions.data;
    p.table_row_stride = c->table.stride[0], p.max_position = c->table.shape[0];
  }
  void *args[] = {&p};
  return yk_launch(ctx, kern, (unsigned)c->tokens, 1, 1, stream, args);
}

yk_status yk_append_kv(yk_ctx *ctx, const DLTensor *k, const DLTensor *v, DLTensor *k_cache, DLTensor *v_cache,
                       yk_kv_layout layout, const yk_append_kv_index *index, const yk_append_kv_rope *rope,
                       const yk_kv_scales *scales, void *stream) {
  static const char op[] = "append_kv";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  append_call c;
  yk_status st;
  if ((st = check_tensors(ctx, op, k, v, k_cache, v_cache, layout, &c)) || (st = check_index(ctx, op, index, &c)) ||
      (st = check_rope(ctx, op, rope, &c)) || (st = check_scales(ctx, op, scales, &c)) ||
      (st = check_placement(ctx, op, &c)))
    return st;
  if (c.tokens == 0) return YK_OK;
  return c.on_device ? run_gpu(ctx, op, &c, stream) : run_cpu(ctx, op, &c);
}
