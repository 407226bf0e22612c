/* Every public op's argument checks under mutation, on a CPU context (the checks are the same
 * code for device tensors). Each round starts from a valid call, changes one or two things (a
 * dimension, a stride, the dtype, the data pointer, the byte offset, the kind of memory, an index
 * value, a scalar) and makes the call. Whatever the op answers:
 *   - it reads and writes nothing outside the tensors' buffers (the sanitizer build checks);
 *   - a tensor whose shape and strides overflow 64-bit sizes is refused, since no memory holds it;
 *   - a refusal has a message and leaves every buffer as it was.
 * A mutation that makes a tensor claim more bytes than its buffer holds is a lie no library can
 * see through: such a round is not called. Buffers have room for SLACK times the valid tensor, so
 * that most changes stay honest.
 * The gpu_ tests make the same rounds with every tensor in device memory, where index values are
 * the kernels' to check: there every accepted call must also leave no CUDA error behind. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"
#include "yk/kv.h"
#include "yk/ops.h"

enum { MAX_TENSORS = 16, MAX_DIMS = 6, SLACK = 4, ROUNDS = 1500, GPU_ROUNDS = 300 };

typedef struct fz_tensor {
  DLTensor t;
  int64_t shape[MAX_DIMS], strides[MAX_DIMS];
  unsigned char *buf, *before; /* the buffer (on the host), and a copy taken just before the call */
  size_t cap;
  yh_tensor device; /* gpu_ tests: the buffer's device copy, which the tensor points at */
  int64_t count;    /* elements of the valid tensor */
  int64_t bound;    /* an index tensor: its valid values lie below this; 0 otherwise */
} fz_tensor;

typedef struct fz_case {
  yh_rng rng;
  yk_ctx *gpu;   /* set: tensors in this context's device memory */
  int head_unit; /* head dims are it or twice it: 8 on the host, 64 on the device (the GPU's usual ones) */
  fz_tensor tensors[MAX_TENSORS];
  int count;
  DLTensor *arg[MAX_TENSORS]; /* the op's tensor arguments, in its order */
  float eps;
  int style, rotary_dim, num_caches, act;
  yk_attention_params params;
  yk_paged_kv kv, shared;
  yk_kv_layout layout;
  yk_append_kv_index index;
  yk_append_kv_rope rope;
  int use_rope;
  int32_t mapping[8];
  int64_t pairs;
  char what[600]; /* the mutations, for failure messages */
} fz_case;

static const DLDataType F32 = {kDLFloat, 32, 1}, F16 = {kDLFloat, 16, 1}, BF16 = {kDLBfloat, 16, 1},
                        I32 = {kDLInt, 32, 1}, I64 = {kDLInt, 64, 1}, E4M3 = {YK_DL_FLOAT8_E4M3FN, 8, 1};

static uint64_t next(fz_case *c) { return yh_next(&c->rng); }
static int below(fz_case *c, int n) { return (int)(next(c) % (uint64_t)n); }
/* float32 too on the host; the GPU's attention kernels take 16-bit types alone */
static DLDataType float_type(fz_case *c) {
  return c->gpu ? (below(c, 2) ? F16 : BF16) : (DLDataType[]){F32, F16, BF16}[below(c, 3)];
}

/* A valid tensor of compact layout (strides given or NULL alike), values that every dtype holds
 * and every op takes: floats in [-1, 1), float8 bytes of modest magnitude, indices 0. */
static DLTensor *tensor(fz_case *c, DLDataType dtype, int ndim, const int64_t *dims) {
  cr_assert(c->count < MAX_TENSORS);
  fz_tensor *f = &c->tensors[c->count++];
  memset(f, 0, sizeof *f);
  int64_t n = 1;
  for (int i = ndim - 1; i >= 0; i--) f->shape[i] = dims[i], f->strides[i] = n, n *= dims[i];
  f->count = n;
  f->cap = ((size_t)n * dtype.bits / 8 * SLACK + 64 + 7) / 8 * 8;
  f->buf = calloc(1, f->cap), f->before = malloc(f->cap);
  cr_assert(f->buf && f->before);
  for (size_t i = 0; dtype.code == kDLFloat && dtype.bits == 32 && i < f->cap / 4; i++)
    ((float *)f->buf)[i] = (float)below(c, 2000) / 1000.f - 1.f;
  for (size_t i = 0; dtype.bits == 16 && i < f->cap / 2; i++) /* float16 in [2^-3, 2^0), bfloat16 in [2^-3, 2^1) */
    ((uint16_t *)f->buf)[i] =
        (uint16_t)((dtype.code == kDLFloat ? 0x3000 + below(c, 0x0c00) : 0x3e00 + below(c, 0x180)) |
                   (below(c, 2) << 15));
  for (size_t i = 0; dtype.bits == 8 && i < f->cap; i++) f->buf[i] = (unsigned char)(0x20 + below(c, 0x30));
  if (c->gpu) { /* the same bytes in device memory, uploaded before each call */
    const int64_t words = (int64_t)(f->cap / 4);
    cr_assert_eq(yh_tensor_init(&f->device, c->gpu, YK_F32, 1, &words, NULL, 1), 0, "device memory");
  }
  f->t = (DLTensor){.data = c->gpu ? (void *)(uintptr_t)f->device.device : f->buf,
                    .device = {c->gpu ? kDLCUDA : kDLCPU, 0},
                    .ndim = ndim,
                    .dtype = dtype,
                    .shape = f->shape,
                    .strides = below(c, 2) ? f->strides : NULL};
  return &f->t;
}

static fz_tensor *of(DLTensor *t) { return (fz_tensor *)(void *)((char *)t - offsetof(fz_tensor, t)); }

/* An index tensor holding values, each valid below bound. */
static DLTensor *indices(fz_case *c, DLDataType dtype, int64_t n, const int64_t *values, int64_t bound) {
  DLTensor *t = tensor(c, dtype, 1, &n);
  for (int64_t i = 0; i < n; i++) {
    if (dtype.bits == 64)
      ((int64_t *)(void *)of(t)->buf)[i] = values[i];
    else
      ((int32_t *)(void *)of(t)->buf)[i] = (int32_t)values[i];
  }
  of(t)->bound = bound;
  return t;
}

/* The bytes t claims from its data pointer; -1 where that overflows 64 bits (no memory holds it). */
static int64_t claimed_bytes(const DLTensor *t) {
  int64_t extent = 0, compact = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    const int64_t n = t->shape[i], s = t->strides ? t->strides[i] : compact;
    int64_t step;
    if (n <= 0 || s < 0) return 0; /* empty, or refused outright */
    if (__builtin_mul_overflow(n - 1, s, &step) || __builtin_add_overflow(extent, step, &extent) ||
        (!t->strides && __builtin_mul_overflow(compact, n, &compact)))
      return -1;
  }
  int64_t bytes;
  if (__builtin_add_overflow(extent, 1, &bytes) ||
      __builtin_mul_overflow(bytes, (int64_t)(t->dtype.bits + 7) / 8, &bytes) || t->byte_offset > INT64_MAX ||
      __builtin_add_overflow(bytes, (int64_t)t->byte_offset, &bytes))
    return -1;
  return bytes;
}

static void note(fz_case *c, const char *text) {
  strncat(c->what, text, sizeof c->what - strlen(c->what) - 1);
  strncat(c->what, "; ", sizeof c->what - strlen(c->what) - 1);
}

static void mutate_tensor(fz_case *c, fz_tensor *f) {
  DLTensor *t = &f->t;
  const int d = t->ndim > 0 ? below(c, t->ndim) : 0;
  static const int64_t special[] = {0, 1, 2, -1, INT64_MIN, INT64_MAX, 1ll << 31, 1ll << 40, (1ll << 62) + 1};
  char text[160];
  switch (below(c, 10)) {
  case 0: /* a dimension to a special value */
    if (!t->ndim) return;
    {
      const int64_t old = t->shape[d];
      t->shape[d] = special[below(c, sizeof special / sizeof special[0])];
      snprintf(text, sizeof text, "shape[%d] %lld -> %lld", d, (long long)old, (long long)t->shape[d]);
      break;
    }
  case 1: { /* a dimension a little off: one mismatch between tensors */
    if (!t->ndim) return;
    const int64_t old = t->shape[d]; /* wrapping arithmetic: an earlier change may have made it huge */
    const int64_t moves[] = {(int64_t)((uint64_t)old + 1), (int64_t)((uint64_t)old - 1), (int64_t)((uint64_t)old * 2),
                             old / 2};
    t->shape[d] = moves[below(c, 4)];
    snprintf(text, sizeof text, "shape[%d] %lld -> %lld", d, (long long)old, (long long)t->shape[d]);
    break;
  }
  case 2: { /* a stride: zero (broadcast), overlapping, doubled, negative, huge */
    if (!t->ndim) return;
    if (!t->strides) t->strides = f->strides;
    const int64_t old = t->strides[d];
    const int64_t moves[] = {0,
                             (int64_t)((uint64_t)old - 1),
                             (int64_t)((uint64_t)old + 1),
                             (int64_t)((uint64_t)old * 2),
                             (int64_t)(0 - (uint64_t)old),
                             1ll << 50};
    t->strides[d] = moves[below(c, 6)];
    snprintf(text, sizeof text, "stride[%d] %lld -> %lld", d, (long long)old, (long long)t->strides[d]);
    break;
  }
  case 3: /* a dimension more (of size 1) or fewer */
    if (t->ndim < MAX_DIMS && below(c, 2)) {
      memmove(f->shape + 1, f->shape, sizeof(int64_t) * (size_t)t->ndim);
      memmove(f->strides + 1, f->strides, sizeof(int64_t) * (size_t)t->ndim);
      f->shape[0] = 1, f->strides[0] = t->ndim ? (int64_t)((uint64_t)f->strides[1] * (uint64_t)f->shape[1]) : 1;
      t->ndim++;
    } else if (t->ndim > 0) {
      t->ndim--;
    }
    snprintf(text, sizeof text, "ndim -> %d", t->ndim);
    break;
  case 4: { /* another dtype, accepted or not */
    static const DLDataType types[] = {
        {kDLFloat, 32, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1}, {YK_DL_FLOAT8_E4M3FN, 8, 1},
        {kDLInt, 32, 1},   {kDLInt, 64, 1},   {kDLUInt, 8, 1},    {kDLFloat, 64, 1},
        {kDLFloat, 16, 2}};
    t->dtype = types[below(c, sizeof types / sizeof types[0])];
    snprintf(text, sizeof text, "dtype %d/%d x%d", t->dtype.code, t->dtype.bits, t->dtype.lanes);
    break;
  }
  case 5:
    t->data = NULL;
    snprintf(text, sizeof text, "data NULL");
    break;
  case 6:
    t->byte_offset += (uint64_t)(1 + below(c, 2)) * (t->dtype.bits / 8 ? t->dtype.bits / 8 : 1);
    snprintf(text, sizeof text, "byte_offset %llu", (unsigned long long)t->byte_offset);
    break;
  case 7: { /* pinned host memory is host memory; the rest is refused on a CPU context. Device
             * memory called host memory would be a lie: there only a kind refused outright */
    static const DLDeviceType kinds[] = {kDLCUDA, kDLCUDAHost, kDLCUDAManaged, kDLVulkan};
    t->device.device_type = c->gpu ? kDLVulkan : kinds[below(c, 4)];
    snprintf(text, sizeof text, "device type %d", (int)t->device.device_type);
    break;
  }
  case 8:
    t->strides = t->strides ? NULL : f->strides;
    snprintf(text, sizeof text, "strides %s", t->strides ? "given" : "NULL");
    break;
  default: { /* an index value out of range, or negative */
    if (!f->bound || f->count == 0) return;
    const int64_t i = (int64_t)(next(c) % (uint64_t)f->count);
    const int64_t values[] = {-1, INT32_MAX, INT32_MIN, f->bound, f->bound + 1, 0};
    const int64_t v = values[below(c, 6)];
    if (t->dtype.bits == 64)
      ((int64_t *)f->buf)[i] = v;
    else
      ((int32_t *)f->buf)[i] = (int32_t)v;
    snprintf(text, sizeof text, "index[%lld] = %lld", (long long)i, (long long)v);
    break;
  }
  }
  char with_tensor[200];
  snprintf(with_tensor, sizeof with_tensor, "tensor %d: %s", (int)(f - c->tensors), text);
  note(c, with_tensor);
}

static void mutate_scalar(fz_case *c) {
  switch (below(c, 8)) {
  case 0: c->eps = below(c, 2) ? -1.f : NAN; break;
  case 1: c->style = below(c, 2) ? 2 : -1, c->layout = (yk_kv_layout)c->style; break;
  case 2: c->rotary_dim = (int[]){0, 3, 1 << 20, -2}[below(c, 4)]; break;
  case 3: c->params.scale = (float[]){-1.f, NAN, INFINITY}[below(c, 3)]; break;
  case 4: c->params.num_splits = below(c, 2) ? -1 : 1 << 20; break;
  case 5: c->pairs = below(c, 2) ? -1 : 0; break; /* more pairs than the array holds would be a lie */
  case 6:                                         /* a block id out of range, or a pair's block used twice */
    if (c->pairs > 0) c->mapping[below(c, 2 * (int)c->pairs)] = (int32_t[]){-1, 6, 0, 3}[below(c, 4)];
    break;
  default: c->num_caches = below(c, 2) ? 0 : -1; break;
  }
  char text[200];
  snprintf(text, sizeof text,
           "scalars: eps %g, style %d, rotary_dim %d, scale %g, num_splits %d, pairs %lld (first %d, %d), caches %d",
           (double)c->eps, c->style, c->rotary_dim, (double)c->params.scale, c->params.num_splits, (long long)c->pairs,
           c->mapping[0], c->mapping[1], c->num_caches);
  note(c, text);
}

/* ---- valid calls ---- */

static void norm_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  const int64_t rows[] = {1 + below(c, 4), 24}, hidden = 24;
  c->arg[0] = tensor(c, dt, 2, rows), c->arg[1] = tensor(c, dt, 1, &hidden), c->arg[2] = tensor(c, dt, 2, rows);
}
static yk_status norm_call(yk_ctx *ctx, fz_case *c) {
  return yk_rms_norm(ctx, c->arg[0], c->arg[1], c->eps, c->arg[2], NULL);
}

static void fused_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  const int64_t rows[] = {1 + below(c, 4), 24}, hidden = 24;
  c->arg[0] = tensor(c, dt, 2, rows), c->arg[1] = tensor(c, dt, 2, rows), c->arg[2] = tensor(c, dt, 1, &hidden);
}
static yk_status fused_call(yk_ctx *ctx, fz_case *c) {
  return yk_fused_add_rms_norm(ctx, c->arg[0], c->arg[1], c->arg[2], c->eps, NULL);
}

static void act_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  const int64_t tokens = 1 + below(c, 4), in[] = {tokens, 20}, out[] = {tokens, 10};
  c->arg[0] = tensor(c, dt, 2, in), c->arg[1] = tensor(c, dt, 2, out), c->act = below(c, 3);
}
static yk_status act_call(yk_ctx *ctx, fz_case *c) {
  yk_status (*const acts[])(yk_ctx *, const DLTensor *, DLTensor *, void *) = {yk_silu_and_mul, yk_gelu_and_mul,
                                                                               yk_gelu_tanh_and_mul};
  return acts[c->act](ctx, c->arg[0], c->arg[1], NULL);
}

/* q [tokens, 4, d], k [tokens, 1 or 2, d], positions below 16; tables follow in each setup */
static void rope_qk(fz_case *c, DLDataType dt, int64_t *tokens, int64_t *d) {
  *tokens = 1 + below(c, 4), *d = c->head_unit * (1 + below(c, 2));
  const int64_t q[] = {*tokens, 4, *d}, k[] = {*tokens, 1 + below(c, 2), *d};
  c->arg[0] = tensor(c, dt, 3, q), c->arg[1] = tensor(c, dt, 3, k);
}
static DLTensor *positions(fz_case *c, int64_t tokens, int64_t max_position) {
  int64_t p[8];
  for (int64_t i = 0; i < tokens; i++) p[i] = below(c, (int)max_position);
  return indices(c, below(c, 2) ? I32 : I64, tokens, p, max_position);
}

static void rope_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  int64_t tokens, d;
  rope_qk(c, dt, &tokens, &d);
  const int64_t table[] = {16, d};
  c->arg[2] = tensor(c, below(c, 2) ? F32 : dt, 2, table), c->arg[3] = positions(c, tokens, 16);
}
static yk_status rope_call(yk_ctx *ctx, fz_case *c) {
  return yk_rope(ctx, c->arg[0], c->arg[1], c->arg[2], c->arg[3], (yk_rope_style)c->style, NULL);
}

static void rope_cos_sin_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  int64_t tokens, d;
  rope_qk(c, dt, &tokens, &d);
  const int64_t table[] = {16, d};
  c->arg[2] = tensor(c, dt, 2, table), c->arg[3] = tensor(c, dt, 2, table), c->arg[4] = positions(c, tokens, 16);
  c->rotary_dim = (int)d;
}
static yk_status rope_cos_sin_call(yk_ctx *ctx, fz_case *c) {
  return yk_rope_cos_sin(ctx, c->arg[0], c->arg[1], c->arg[2], c->arg[3], c->arg[4], c->rotary_dim,
                         (yk_rope_style)c->style, NULL);
}

/* Attention over 2 sequences, 4 q heads on 1 or 2 kv heads, dense or ragged: arg[0..4] = q, k, v,
 * out, lse, then for the backward dout, dq, dk, dv. */
static void attention_setup(fz_case *c, int backward) {
  const DLDataType dt = float_type(c);
  const int64_t b = 2, sq = 1 + below(c, 3), sk = 1 + below(c, 4), hk = 1 + below(c, 2),
                d = c->head_unit * (1 + below(c, 2));
  c->params.causal = below(c, 2);
  const int ragged = below(c, 2), dims = ragged ? 3 : 4;
  const int64_t dense_q[] = {b, sq, 4, d}, dense_k[] = {b, sk, hk, d}, dense_lse[] = {b, 4, sq};
  const int64_t ragged_q[] = {b * sq, 4, d}, ragged_k[] = {b * sk, hk, d}, ragged_lse[] = {4, b * sq};
  const int64_t *q = ragged ? ragged_q : dense_q, *k = ragged ? ragged_k : dense_k;
  c->arg[0] = tensor(c, dt, dims, q), c->arg[1] = tensor(c, dt, dims, k), c->arg[2] = tensor(c, dt, dims, k);
  c->arg[3] = tensor(c, dt, dims, q), c->arg[4] = tensor(c, F32, ragged ? 2 : 3, ragged ? ragged_lse : dense_lse);
  for (int i = 0; backward && i < 4; i++) c->arg[5 + i] = tensor(c, dt, dims, i < 2 ? q : k);
  if (ragged) {
    const int64_t cu_q[] = {0, sq, b * sq}, cu_k[] = {0, sk, b * sk};
    c->params.cu_seqlens_q = indices(c, I32, b + 1, cu_q, b * sq + 1);
    c->params.cu_seqlens_k = indices(c, I32, b + 1, cu_k, b * sk + 1);
    c->params.max_seqlen_q = (int)sq, c->params.max_seqlen_k = (int)sk; /* for offsets the host cannot read */
  }
}
static void forward_setup(fz_case *c) { attention_setup(c, 0); }
static yk_status forward_call(yk_ctx *ctx, fz_case *c) {
  return yk_flash_attention_forward(ctx, c->arg[0], c->arg[1], c->arg[2], &c->params, c->arg[3], c->arg[4], NULL);
}
static void backward_setup(fz_case *c) { attention_setup(c, 1); }
static yk_status backward_call(yk_ctx *ctx, fz_case *c) {
  return yk_flash_attention_backward(ctx, c->arg[5], c->arg[0], c->arg[1], c->arg[2], c->arg[3], c->arg[4], &c->params,
                                     c->arg[6], c->arg[7], c->arg[8], NULL);
}

static void decode_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  const int64_t b = 2, sk = 1 + below(c, 5), hk = 1 + below(c, 2), d = c->head_unit * (1 + below(c, 2));
  const int64_t q[] = {b, 4, d}, lse[] = {b, 4}, dense_k[] = {b, sk, hk, d}, ragged_k[] = {b * sk, hk, d};
  const int ragged = below(c, 2);
  c->arg[0] = tensor(c, dt, 3, q), c->arg[3] = tensor(c, dt, 3, q), c->arg[4] = tensor(c, F32, 2, lse);
  c->arg[1] = tensor(c, dt, ragged ? 3 : 4, ragged ? ragged_k : dense_k);
  c->arg[2] = tensor(c, dt, ragged ? 3 : 4, ragged ? ragged_k : dense_k);
  if (ragged) {
    const int64_t cu_k[] = {0, sk, b * sk};
    c->params.cu_seqlens_k = indices(c, I32, b + 1, cu_k, b * sk + 1);
    c->params.max_seqlen_k = (int)sk;
  }
}
static yk_status decode_call(yk_ctx *ctx, fz_case *c) {
  return yk_attention_decode(ctx, c->arg[0], c->arg[1], c->arg[2], &c->params, c->arg[3], c->arg[4], NULL);
}

static void merge_setup(fz_case *c) {
  const DLDataType dt = float_type(c); /* one dtype for o_a, o_b and out_o */
  const int64_t tokens = 1 + below(c, 4), o[] = {tokens, 4, c->head_unit}, lse[] = {tokens, 4};
  c->arg[0] = tensor(c, dt, 3, o), c->arg[1] = tensor(c, F32, 2, lse), c->arg[2] = tensor(c, dt, 3, o);
  c->arg[3] = tensor(c, F32, 2, lse), c->arg[4] = tensor(c, dt, 3, o);
  c->arg[5] = below(c, 4) ? tensor(c, F32, 2, lse) : NULL;
}
static yk_status merge_call(yk_ctx *ctx, fz_case *c) {
  return yk_merge_attention_states(ctx, c->arg[0], c->arg[1], c->arg[2], c->arg[3], c->arg[4], c->arg[5], NULL);
}

/* A page table of `seqs` sequences of lens[i] tokens over caches of 6 blocks, in either form. */
static void page_table(fz_case *c, yk_paged_kv *kv, int seqs, const int64_t *lens, int64_t page) {
  enum { BLOCKS = 6, MOST = 3 }; /* blocks in the cache; blocks a sequence */
  int64_t ids[2 * MOST];
  for (int i = 0; i < 2 * MOST; i++) ids[i] = below(c, BLOCKS);
  if (below(c, 2)) {
    const int64_t table[] = {seqs, MOST};
    DLTensor *t = tensor(c, I32, 2, table);
    for (int i = 0; i < seqs * MOST; i++) ((int32_t *)(void *)of(t)->buf)[i] = (int32_t)ids[i];
    of(t)->bound = BLOCKS;
    kv->block_tables = t;
    kv->context_lens = indices(c, I32, seqs, lens, page * MOST + 1);
  } else {
    int64_t indptr[3] = {0}, last[2];
    for (int i = 0; i < seqs; i++) {
      const int64_t blocks = (lens[i] + page - 1) / page;
      indptr[i + 1] = indptr[i] + blocks, last[i] = lens[i] - (blocks - 1) * page;
    }
    kv->kv_indptr = indices(c, I32, seqs + 1, indptr, 2 * MOST + 1);
    kv->kv_indices = indices(c, I32, indptr[seqs], ids, BLOCKS);
    kv->kv_last_page_len = indices(c, I32, seqs, last, page + 1);
  }
}

/* Paged caches of 6 blocks (16-bit, or float8 with 16-bit or float32 q), NHD or HND, and q, out
 * [2, 4, d] (decode) or [2, 2, 4, d] (prefill): arg[0..2] = q, out, lse. */
static void paged_setup(fz_case *c, int prefill, int cascade) {
  const DLDataType dt = float_type(c), cache = below(c, 5) ? dt : E4M3;
  const int64_t page = below(c, 2) ? 1 : 4, hk = 1 + below(c, 2), d = c->head_unit * (1 + below(c, 2));
  c->layout = below(c, 2) ? YK_KV_HND : YK_KV_NHD;
  const int64_t caches[] = {6, c->layout == YK_KV_HND ? hk : page, c->layout == YK_KV_HND ? page : hk, d};
  c->kv = (yk_paged_kv){
      .k_cache = tensor(c, cache, 4, caches), .v_cache = tensor(c, cache, 4, caches), .layout = c->layout};
  int64_t lens[2] = {1 + below(c, (int)(3 * page)), 1 + below(c, (int)(3 * page))};
  for (int i = 0; prefill && i < 2; i++) lens[i] = lens[i] < 2 ? 2 : lens[i]; /* two queries a sequence */
  page_table(c, &c->kv, 2, lens, page);
  c->kv.max_context_len = (int)(3 * page); /* for tables the host cannot read */
  if (cascade) {
    c->shared = c->kv;
    c->shared.block_tables = c->shared.context_lens = c->shared.kv_indptr = c->shared.kv_indices =
        c->shared.kv_last_page_len = NULL;
    page_table(c, &c->shared, 1, lens, page);
  }
  const int64_t q[] = {2, 4, d}, lse[] = {2, 4}, q_prefill[] = {2, 2, 4, d}, lse_prefill[] = {2, 4, 2};
  c->arg[0] = tensor(c, dt, prefill ? 4 : 3, prefill ? q_prefill : q);
  c->arg[1] = tensor(c, dt, prefill ? 4 : 3, prefill ? q_prefill : q);
  c->arg[2] = tensor(c, F32, prefill ? 3 : 2, prefill ? lse_prefill : lse);
}
static void paged_decode_setup(fz_case *c) { paged_setup(c, 0, 0); }
static yk_status paged_decode_call(yk_ctx *ctx, fz_case *c) {
  c->kv.layout = c->layout;
  return yk_paged_attention_decode(ctx, c->arg[0], &c->kv, &c->params, c->arg[1], c->arg[2], NULL);
}
static void paged_prefill_setup(fz_case *c) {
  paged_setup(c, 1, 0);
  c->params.causal = below(c, 2);
}
static yk_status paged_prefill_call(yk_ctx *ctx, fz_case *c) {
  c->kv.layout = c->layout;
  return yk_paged_attention_prefill(ctx, c->arg[0], &c->kv, &c->params, c->arg[1], c->arg[2], NULL);
}
static void cascade_setup(fz_case *c) { paged_setup(c, 0, 1); }
static yk_status cascade_call(yk_ctx *ctx, fz_case *c) {
  c->kv.layout = c->shared.layout = c->layout;
  return yk_cascade_attention_decode(ctx, c->arg[0], &c->shared, &c->kv, &c->params, c->arg[1], c->arg[2], NULL);
}

/* Tokens of k and v [tokens, 1 or 2, d] into caches of 5 blocks of 4, by slots or by CSR
 * positions, with RoPE of k or without: arg[0..3] = k, v, k_cache, v_cache. */
static void append_setup(fz_case *c) {
  const DLDataType dt = float_type(c), cache = below(c, 5) ? dt : E4M3;
  const int64_t tokens = 1 + below(c, 4), hk = 1 + below(c, 2), d = c->head_unit * (1 + below(c, 2)), page = 4,
                blocks = 5;
  c->layout = below(c, 2) ? YK_KV_HND : YK_KV_NHD;
  const int64_t k[] = {tokens, hk, d},
                caches[] = {blocks, c->layout == YK_KV_HND ? hk : page, c->layout == YK_KV_HND ? page : hk, d};
  c->arg[0] = tensor(c, dt, 3, k), c->arg[1] = tensor(c, dt, 3, k);
  c->arg[2] = tensor(c, cache, 4, caches), c->arg[3] = tensor(c, cache, 4, caches);
  memset(&c->index, 0, sizeof c->index);
  int64_t where[8];
  if (below(c, 2)) { /* distinct slots */
    for (int64_t t = 0; t < tokens; t++) where[t] = t * 3 % (blocks * page);
    c->index.slot_mapping = indices(c, below(c, 2) ? I32 : I64, tokens, where, blocks * page);
  } else { /* one sequence of 3 blocks; token t at position t */
    const int64_t zeros[8] = {0}, indptr[] = {0, 3}, ids[] = {4, 0, 2};
    for (int64_t t = 0; t < tokens; t++) where[t] = t;
    c->index.batch_indices = indices(c, I32, tokens, zeros, 1);
    c->index.positions = indices(c, I32, tokens, where, 3 * page);
    c->index.kv_indptr = indices(c, I32, 2, indptr, 4);
    c->index.kv_indices = indices(c, I32, 3, ids, blocks);
  }
  c->use_rope = below(c, 2);
  if (c->use_rope) {
    const int64_t table[] = {16, d};
    c->rope = (yk_append_kv_rope){
        .positions = positions(c, tokens, 16), .cos_sin_cache = tensor(c, F32, 2, table), .style = below(c, 2)};
  }
}
static yk_status append_call(yk_ctx *ctx, fz_case *c) {
  return yk_append_kv(ctx, c->arg[0], c->arg[1], c->arg[2], c->arg[3], c->layout, &c->index,
                      c->use_rope ? &c->rope : NULL, NULL, NULL);
}

/* One or two caches of 6 blocks; pairs (i, 3 + i). */
static void copy_setup(fz_case *c) {
  const DLDataType dt = float_type(c);
  const int64_t caches[] = {6, 4, 2, c->head_unit};
  c->num_caches = 1 + below(c, 2);
  for (int i = 0; i < c->num_caches; i++) c->arg[i] = tensor(c, dt, 4, caches);
  c->pairs = 1 + below(c, 3);
  for (int i = 0; i < c->pairs; i++) c->mapping[2 * i] = i, c->mapping[2 * i + 1] = 3 + i;
}
static yk_status copy_call(yk_ctx *ctx, fz_case *c) {
  return yk_copy_blocks(ctx, c->arg, c->num_caches, c->mapping, c->pairs, NULL);
}

typedef struct fz_op {
  const char *name;
  void (*setup)(fz_case *c);
  yk_status (*call)(yk_ctx *ctx, fz_case *c);
} fz_op;

static void reset(fz_case *c) {
  for (int i = 0; i < c->count; i++) {
    free(c->tensors[i].buf), free(c->tensors[i].before);
    if (c->gpu) yh_tensor_free(&c->tensors[i].device);
  }
  const fz_case keep = {.rng = c->rng, .gpu = c->gpu, .head_unit = c->head_unit};
  memset(c, 0, sizeof *c);
  c->rng = keep.rng, c->gpu = keep.gpu, c->head_unit = keep.head_unit;
  c->eps = 1e-6f;
}

/* The tensors' buffers as the call will see them: device copies refreshed from the host bytes,
 * and every buffer's bytes kept to compare after a refusal. */
static void before_call(fz_case *c) {
  for (int i = 0; i < c->count; i++) {
    fz_tensor *f = &c->tensors[i];
    memcpy(f->before, f->buf, f->cap);
    if (c->gpu) {
      memcpy(f->device.host, f->buf, f->cap);
      cr_assert_eq(yh_upload(&f->device), 0, "upload");
    }
  }
}

/* Whether tensor i still holds the bytes it had before the call. */
static int unchanged(fz_case *c, int i) {
  fz_tensor *f = &c->tensors[i];
  if (!c->gpu) return !memcmp(f->before, f->buf, f->cap);
  cr_assert_eq(yh_download(&f->device), 0, "download");
  return !memcmp(f->before, f->device.host, f->cap);
}

/* One valid call, then ROUNDS (GPU_ROUNDS) mutated ones. */
static void fuzz(const fz_op *op, int on_device) {
  yk_ctx *ctx = on_device ? ts_gpu_ctx() : ts_cpu_ctx();
  if (on_device) TS_REQUIRE_GPU(ctx);
  fz_case *c = calloc(1, sizeof *c);
  cr_assert(c);
  const uint64_t seed = ts_seed(op->name);
  c->rng = (yh_rng){seed};
  c->gpu = on_device ? ctx : NULL, c->head_unit = on_device ? 64 : 8;
  int calls = 0, accepted = 0, impossible = 0;
  for (int round = 0; round <= (on_device ? GPU_ROUNDS : ROUNDS); round++) {
    reset(c);
    op->setup(c);
    for (int m = 0; round > 0 && m < 1 + below(c, 2); m++) {
      if (below(c, 6))
        mutate_tensor(c, &c->tensors[below(c, c->count)]);
      else
        mutate_scalar(c);
    }
    int lie = 0, overflow = 0;
    for (int i = 0; i < c->count; i++) {
      const DLTensor *t = &c->tensors[i].t;
      const int read_as_host = t->device.device_type == kDLCPU || t->device.device_type == kDLCUDAHost;
      if (!t->data || (c->gpu ? t->device.device_type != kDLCUDA : !read_as_host)) continue;
      const int64_t bytes = claimed_bytes(t);
      if (bytes < 0)
        overflow = 1;
      else if ((size_t)bytes > c->tensors[i].cap)
        lie = 1;
    }
    if (lie && !overflow) continue;
    before_call(c);
    const yk_status st = op->call(ctx, c);
    calls++;
    if (c->gpu) /* device index values are the kernels' to check: no fault, whatever they hold */
      cr_assert_eq(yh_sync(ctx), 0, "%s (seed %llu, round %d): a CUDA error after the call (%s): %s", op->name,
                   (unsigned long long)seed, round, yk_status_name(st), c->what);
    if (round == 0)
      cr_assert_eq(st, YK_OK, "%s (seed %llu): the unchanged call failed: %s", op->name, (unsigned long long)seed,
                   yk_ctx_last_error(ctx));
    if (st == YK_OK) {
      accepted++;
      cr_assert(!overflow, "%s (seed %llu, round %d): accepted a tensor of more than 2^63 bytes: %s", op->name,
                (unsigned long long)seed, round, c->what);
      continue;
    }
    impossible += overflow;
    const char *message = yk_ctx_last_error(ctx);
    cr_assert(message && *message, "%s (seed %llu, round %d): status %s without a message: %s", op->name,
              (unsigned long long)seed, round, yk_status_name(st), c->what);
    for (int i = 0; i < c->count; i++)
      cr_assert(unchanged(c, i), "%s (seed %llu, round %d): refused (%s) but changed tensor %d: %s", op->name,
                (unsigned long long)seed, round, message, i, c->what);
  }
  /* the rounds must have done what they are for: calls that pass, and impossible tensors refused */
  cr_assert_gt(accepted, calls / 20, "%s (seed %llu): %d of %d calls accepted", op->name, (unsigned long long)seed,
               accepted, calls);
  cr_assert_gt(impossible, 0, "%s (seed %llu): no impossible tensor came up in %d calls", op->name,
               (unsigned long long)seed, calls);
  reset(c);
  free(c);
  yk_ctx_destroy(ctx);
}

#define FUZZ(name, prefix)                                                                                             \
  Test(bad_input_fuzz, name) { fuzz(&(fz_op){#name, prefix##_setup, prefix##_call}, 0); }                              \
  Test(bad_input_fuzz, gpu_##name) { fuzz(&(fz_op){#name, prefix##_setup, prefix##_call}, 1); }
FUZZ(rms_norm, norm)
FUZZ(fused_add_rms_norm, fused)
FUZZ(act_and_mul, act)
FUZZ(rope, rope)
FUZZ(rope_cos_sin, rope_cos_sin)
FUZZ(flash_attention_forward, forward)
FUZZ(flash_attention_backward, backward)
FUZZ(attention_decode, decode)
FUZZ(merge_attention_states, merge)
FUZZ(paged_attention_decode, paged_decode)
FUZZ(paged_attention_prefill, paged_prefill)
FUZZ(cascade_attention_decode, cascade)
FUZZ(append_kv, append)
FUZZ(copy_blocks, copy)

/* The two overflows the rounds above first found, kept as plain cases. */
Test(bad_input_fuzz, shapes_past_64_bits_are_refused) {
  yk_ctx *ctx = ts_cpu_ctx();
  float x[4] = {1, 2, 3, 4}, w[2] = {1, 1}, out[4];
  int64_t huge[] = {INT64_MAX / 2, 2}, cols = 2, stride_zero[] = {0, 1};
  DLTensor tx = {.data = x, .device = {kDLCPU, 0}, .ndim = 2, .dtype = F32, .shape = huge, .strides = stride_zero};
  DLTensor tw = {.data = w, .device = {kDLCPU, 0}, .ndim = 1, .dtype = F32, .shape = &cols};
  DLTensor to = {.data = out, .device = {kDLCPU, 0}, .ndim = 2, .dtype = F32, .shape = huge, .strides = stride_zero};
  /* rows broadcast by stride 0: the bytes fit, the element count does not */
  int64_t rows_cols[] = {INT64_MAX / 2, 4};
  tx.shape = rows_cols;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &tx, &tw, 1e-6f, &to, NULL), YK_ERR_INVALID_ARGUMENT, "64-bit sizes");
  /* the bytes overflow */
  int64_t big[] = {1ll << 40, 1ll << 30}, strides[] = {1ll << 30, 1};
  tx.shape = big, tx.strides = strides;
  ts_assert_rejected(ctx, yk_rms_norm(ctx, &tx, &tw, 1e-6f, &to, NULL), YK_ERR_INVALID_ARGUMENT, "64-bit sizes");
  yk_ctx_destroy(ctx);
}

Test(bad_input_fuzz, cu_seqlens_of_no_entries_are_refused) {
  yk_ctx *ctx = ts_cpu_ctx();
  float data[64];
  int32_t cu[2] = {0, 1};
  int64_t qs[] = {1, 1, 8}, lse_shape[] = {1, 1}, cu_len = INT64_MIN;
  DLTensor q = {.data = data, .device = {kDLCPU, 0}, .ndim = 3, .dtype = F32, .shape = qs};
  DLTensor lse = {.data = data, .device = {kDLCPU, 0}, .ndim = 2, .dtype = F32, .shape = lse_shape};
  DLTensor cu_q = {.data = cu, .device = {kDLCPU, 0}, .ndim = 1, .dtype = I32, .shape = &cu_len};
  yk_attention_params params = {.cu_seqlens_q = &cu_q, .cu_seqlens_k = &cu_q};
  float out[8];
  DLTensor o = {.data = out, .device = {kDLCPU, 0}, .ndim = 3, .dtype = F32, .shape = qs};
  ts_assert_rejected(ctx, yk_flash_attention_forward(ctx, &q, &q, &q, &params, &o, &lse, NULL), YK_ERR_INVALID_ARGUMENT,
                     "cu_seqlens_q is empty");
  cu_len = 0;
  ts_assert_rejected(ctx, yk_flash_attention_forward(ctx, &q, &q, &q, &params, &o, &lse, NULL), YK_ERR_INVALID_ARGUMENT,
                     "cu_seqlens_q is empty");
  yk_ctx_destroy(ctx);
}
