#include "tune/tune_case.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"
#include "runtime/tensor.h"

/* Below this a case's tensors get YK_TUNE_SETS copies: several copies of a large one would only
 * cost memory, as a large case streams from DRAM anyway. */
#define ROTATE_BELOW_BYTES (64u << 20)

double yk_tune_tolerance(int dtype) { return dtype == YK_F32 ? 1e-4 : 2e-2; }

static size_t elem_bytes(int type) { return type == YK_I64 ? 8 : yk_dtype_size((yk_dtype)type); }

static int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

yk_tune_buffer *yk_tune_case_add(yk_tune_case *c, int type, yk_tune_role role, int ndim, const int64_t *shape,
                                 double lo, double hi) {
  if (c->buffers == YK_TUNE_BUFFERS) return NULL;
  yk_tune_buffer *b = &c->buf[c->buffers++];
  memset(b, 0, sizeof *b);
  b->type = type, b->role = role, b->ndim = ndim, b->lo = lo, b->hi = hi;
  memcpy(b->shape, shape, (size_t)ndim * sizeof *shape);
  memcpy(b->check_shape, shape, (size_t)ndim * sizeof *shape);
  return b;
}

static void describe(DLTensor *t, yk_tune_buffer *b, void *data, int on_device, int device_id, int64_t *shape) {
  memset(t, 0, sizeof *t);
  t->data = data;
  t->device.device_type = on_device ? kDLCUDA : kDLCPU;
  t->device.device_id = device_id;
  t->ndim = b->ndim;
  t->dtype.lanes = 1;
  t->dtype.bits = (uint8_t)(8 * elem_bytes(b->type));
  t->dtype.code = b->type == YK_I64 ? kDLInt : b->type == YK_BF16 ? kDLBfloat : kDLFloat;
  t->shape = shape;
  t->strides = NULL; /* compact */
}

static uint64_t next_random(uint64_t *state) { /* splitmix64 */
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void fill(const yk_tune_buffer *b, void *data, int64_t n, uint64_t *rng) {
  for (int64_t i = 0; i < n; i++) {
    const double u = (double)(next_random(rng) >> 11) * (1.0 / 9007199254740992.0);
    if (b->type == YK_I64) {
      ((int64_t *)data)[i] = (int64_t)b->lo + (int64_t)(next_random(rng) % (uint64_t)(b->hi - b->lo));
      continue;
    }
    const float v = (float)(b->lo + (b->hi - b->lo) * u);
    if (b->type == YK_F32)
      ((float *)data)[i] = v;
    else
      ((uint16_t *)data)[i] = b->type == YK_BF16 ? yk_float_to_bf16(v) : yk_float_to_f16(v);
  }
}

static double value_at(const void *data, int type, int64_t i) {
  switch (type) {
  case YK_F32: return ((const float *)data)[i];
  case YK_F16: return yk_f16_to_float(((const uint16_t *)data)[i]);
  case YK_BF16: return yk_bf16_to_float(((const uint16_t *)data)[i]);
  default: return (double)((const int64_t *)data)[i];
  }
}

static yk_status out_of_memory(yk_ctx *ctx, const yk_tune_case *c) {
  return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tune: %s %s: out of host memory", c->op->name, c->shape);
}

static int is_input(const yk_tune_buffer *b) { return b->role == YK_TUNE_IN || b->role == YK_TUNE_DERIVED; }

/* Host buffers: the inputs' values, and the reference run's tensors (none where the check runs a
 * case of its own). */
static yk_status setup_host(yk_tune_case *c, int fill_inputs, uint64_t *rng) {
  for (int i = 0; i < c->buffers; i++) {
    yk_tune_buffer *b = &c->buf[i];
    const int64_t n = numel(b->ndim, b->shape), check_n = numel(b->ndim, b->check_shape);
    const size_t es = elem_bytes(b->type);
    if (is_input(b) || b->role == YK_TUNE_INOUT) {
      if (!(b->pristine = malloc((size_t)(n ? n : 1) * es))) return out_of_memory(c->ctx, c);
      if (fill_inputs && b->role != YK_TUNE_DERIVED)
        fill(b, b->pristine, n, rng);
      else
        memset(b->pristine, 0, (size_t)n * es);
    }
    if (is_input(b)) {
      b->host = b->pristine; /* the reference reads the leading check_shape part in place */
    } else if (b->role != YK_TUNE_SCRATCH && !c->check_at.batch) {
      if (!(b->host = malloc((size_t)(check_n ? check_n : 1) * es))) return out_of_memory(c->ctx, c);
      if (b->role == YK_TUNE_INOUT) memcpy(b->host, b->pristine, (size_t)check_n * es);
    }
    describe(&b->host_dl, b, b->host, 0, 0, b->check_shape);
  }
  return YK_OK;
}

static yk_status setup_device(yk_tune_case *c) {
  yk_ctx *ctx = c->ctx;
  size_t total = 0;
  for (int i = 0; i < c->buffers; i++)
    total += (size_t)numel(c->buf[i].ndim, c->buf[i].shape) * elem_bytes(c->buf[i].type);
  c->sets = total < ROTATE_BELOW_BYTES ? YK_TUNE_SETS : 1;
  yk_status st = yk_cuda_make_current(ctx);
  for (int i = 0; st == YK_OK && i < c->buffers; i++) {
    yk_tune_buffer *b = &c->buf[i];
    const size_t bytes = (size_t)numel(b->ndim, b->shape) * elem_bytes(b->type);
    for (int s = 0; st == YK_OK && s < c->sets; s++) {
      CUresult r = bytes ? ctx->cu.cuMemAlloc(&b->device[s], bytes) : CUDA_SUCCESS;
      if (r == CUDA_SUCCESS && b->pristine) r = ctx->cu.cuMemcpyHtoD(b->device[s], b->pristine, bytes);
      if (r == CUDA_SUCCESS && !b->pristine && bytes) r = ctx->cu.cuMemsetD8(b->device[s], 0, bytes);
      if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tune: allocating a case's tensors");
      describe(&b->device_dl[s], b, (void *)(uintptr_t)b->device[s], 1, ctx->ordinal, b->shape);
    }
  }
  return st;
}

/* The op's prepare on copy 0, then its derived buffers copied to the host (the reference's
 * inputs) and to the other copies. */
static yk_status prepare_derived(yk_tune_case *c) {
  yk_ctx *ctx = c->ctx;
  DLTensor *t[YK_TUNE_BUFFERS];
  for (int i = 0; i < c->buffers; i++) t[i] = &c->buf[i].device_dl[0];
  yk_status st = c->op->prepare(c, t, NULL);
  CUresult r = st == YK_OK ? ctx->cu.cuCtxSynchronize() : CUDA_SUCCESS;
  for (int i = 0; st == YK_OK && r == CUDA_SUCCESS && i < c->buffers; i++) {
    yk_tune_buffer *b = &c->buf[i];
    const size_t bytes = (size_t)numel(b->ndim, b->shape) * elem_bytes(b->type);
    if (b->role != YK_TUNE_DERIVED || !bytes) continue;
    r = ctx->cu.cuMemcpyDtoH(b->pristine, b->device[0], bytes);
    for (int s = 1; r == CUDA_SUCCESS && s < c->sets; s++) r = ctx->cu.cuMemcpyDtoD(b->device[s], b->device[0], bytes);
  }
  if (st == YK_OK && r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tune: preparing a case's inputs");
  return st;
}

yk_status yk_tune_case_define(yk_tune_case *c, yk_ctx *ctx, const yk_tune_op *op, const yk_model_preset *m,
                              yk_tune_shape shape, int dtype) {
  memset(c, 0, sizeof *c);
  c->ctx = ctx, c->op = op, c->dtype = dtype;
  yk_status st = op->define(c, m, shape);
  if (st == YK_OK && c->check_at.batch && c->check_at.batch * c->check_at.length >= shape.batch * shape.length)
    st = yk_error(ctx, YK_ERR_INTERNAL, "tune: %s %s: the check's case is not smaller", op->name, c->shape);
  return st;
}

yk_status yk_tune_case_setup(yk_tune_case *c, yk_ctx *ctx, const yk_tune_op *op, const yk_model_preset *m,
                             yk_tune_shape shape, int dtype, int fill_inputs, uint64_t seed) {
  yk_status st = yk_tune_case_define(c, ctx, op, m, shape, dtype);
  uint64_t rng = seed;
  if (st == YK_OK && (st = setup_host(c, fill_inputs, &rng)) == YK_OK) st = setup_device(c);
  if (st == YK_OK && op->prepare) st = prepare_derived(c);
  if (st == YK_OK && c->check_at.batch) { /* a smaller shape, which checks itself */
    if (!(c->check = malloc(sizeof *c->check))) st = out_of_memory(ctx, c);
    if (st == YK_OK && (st = yk_tune_case_setup(c->check, ctx, op, m, c->check_at, dtype, fill_inputs, ~seed))) {
      free(c->check);
      c->check = NULL;
    }
  }
  if (st != YK_OK) yk_tune_case_free(c);
  return st;
}

void yk_tune_case_free(yk_tune_case *c) {
  if (c->check) {
    yk_tune_case_free(c->check);
    free(c->check);
    c->check = NULL;
  }
  const int current = c->ctx && yk_cuda_make_current(c->ctx) == YK_OK;
  for (int i = 0; i < c->buffers; i++) {
    yk_tune_buffer *b = &c->buf[i];
    for (int s = 0; s < YK_TUNE_SETS; s++)
      if (b->device[s] && current) c->ctx->cu.cuMemFree(b->device[s]);
    if (b->host != b->pristine) free(b->host);
    free(b->pristine);
  }
  c->buffers = 0;
}

yk_status yk_tune_case_call(yk_tune_case *c, int rep) {
  DLTensor *t[YK_TUNE_BUFFERS];
  const int set = rep % c->sets;
  for (int i = 0; i < c->buffers; i++) t[i] = &c->buf[i].device_dl[set];
  return c->op->invoke(c, t, NULL);
}

static yk_status reference(yk_tune_case *c) {
  DLTensor *t[YK_TUNE_BUFFERS];
  for (int i = 0; i < c->buffers; i++) t[i] = &c->buf[i].host_dl;
  yk_status st = c->op->invoke(c, t, NULL);
  c->reference_ready = st == YK_OK;
  return st;
}

/* ||got - want|| / ||want|| over the reference's part of an output; INFINITY for a NaN. */
static double relative_error(const yk_tune_buffer *b, const void *got) {
  const int64_t n = numel(b->ndim, b->check_shape);
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; i++) {
    const double g = value_at(got, b->type, i), w = value_at(b->host, b->type, i);
    if (!isfinite(g)) return INFINITY;
    diff += (g - w) * (g - w), norm += w * w;
  }
  return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

yk_status yk_tune_case_check(yk_tune_case *c, double *error) {
  if (c->check) return yk_tune_case_check(c->check, error);
  yk_ctx *ctx = c->ctx;
  yk_status st = c->reference_ready ? YK_OK : reference(c);
  *error = 0;
  for (int i = 0; st == YK_OK && i < c->buffers; i++) { /* fresh inputs, NaN outputs: nothing left over counts */
    yk_tune_buffer *b = &c->buf[i];
    const size_t bytes = (size_t)numel(b->ndim, b->shape) * elem_bytes(b->type);
    CUresult r = CUDA_SUCCESS;
    if (b->role == YK_TUNE_INOUT) r = ctx->cu.cuMemcpyHtoD(b->device[0], b->pristine, bytes);
    if (b->role == YK_TUNE_OUT && bytes) r = ctx->cu.cuMemsetD8(b->device[0], 0xff, bytes);
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tune: resetting a case's tensors");
  }
  if (st == YK_OK && (st = yk_tune_case_call(c, 0)) == YK_OK) {
    CUresult r = ctx->cu.cuCtxSynchronize();
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tune: running a configuration");
  }
  for (int i = 0; st == YK_OK && i < c->buffers; i++) {
    const yk_tune_buffer *b = &c->buf[i];
    if (b->role != YK_TUNE_OUT && b->role != YK_TUNE_INOUT) continue;
    const size_t bytes = (size_t)numel(b->ndim, b->check_shape) * elem_bytes(b->type);
    void *got = malloc(bytes ? bytes : 1);
    if (!got) return out_of_memory(ctx, c);
    CUresult r = bytes ? ctx->cu.cuMemcpyDtoH(got, b->device[0], bytes) : CUDA_SUCCESS;
    if (r != CUDA_SUCCESS)
      st = yk_cuda_error(ctx, r, "tune: reading a result");
    else
      *error = fmax(*error, relative_error(b, got));
    free(got);
  }
  return st;
}
