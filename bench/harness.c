#include "bench/harness.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"
#include "runtime/context.h"
#include "runtime/module.h"

int yh_tensor_init(yh_tensor *t, yk_ctx *ctx, int type, int ndim, const int64_t *shape, const int64_t *strides,
                   int on_device) {
  memset(t, 0, sizeof *t);
  t->ctx = ctx;
  t->type = type;
  t->elem_bytes = type == YK_F32 || type == YK_I32 ? 4 : type == YK_I64 ? 8 : type == YK_E4M3 ? 1 : 2;
  t->numel = 1;
  int64_t compact = 1, span = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->strides[i] = strides ? strides[i] : compact;
    compact *= shape[i];
    t->numel *= shape[i];
    if (shape[i] > 0) span += (shape[i] - 1) * t->strides[i];
  }
  t->span = t->numel ? span : 0;
  size_t bytes = (size_t)(t->span ? t->span : 1) * (size_t)t->elem_bytes;
  if (!(t->host = malloc(bytes))) return 1;
  if (on_device && (yk_cuda_make_current(ctx) != YK_OK || ctx->cu.cuMemAlloc(&t->device, bytes) != CUDA_SUCCESS)) {
    free(t->host);
    memset(t, 0, sizeof *t); /* yh_tensor_free after a failed init frees nothing twice */
    return 1;
  }
  t->dl.data = on_device ? (void *)(uintptr_t)t->device : t->host;
  t->dl.device.device_type = on_device ? kDLCUDA : kDLCPU;
  t->dl.device.device_id = on_device ? ctx->ordinal : 0;
  t->dl.ndim = ndim;
  t->dl.dtype.lanes = 1;
  t->dl.dtype.bits = (uint8_t)(8 * t->elem_bytes);
  t->dl.dtype.code = type == YK_BF16                      ? kDLBfloat
                     : type == YK_E4M3                    ? YK_DL_FLOAT8_E4M3FN
                     : (type == YK_I32 || type == YK_I64) ? kDLInt
                                                          : kDLFloat;
  t->dl.shape = t->shape;
  t->dl.strides = t->strides;
  return 0;
}

void yh_tensor_free(yh_tensor *t) {
  if (t->device && yk_cuda_make_current(t->ctx) == YK_OK) t->ctx->cu.cuMemFree(t->device);
  free(t->host);
  memset(t, 0, sizeof *t);
}

int yh_upload(yh_tensor *t) {
  if (!t->device || !t->span || yk_cuda_make_current(t->ctx) != YK_OK) return !t->device || !t->span ? 0 : 1;
  return t->ctx->cu.cuMemcpyHtoD(t->device, t->host, (size_t)t->span * (size_t)t->elem_bytes) != CUDA_SUCCESS;
}

int yh_download(yh_tensor *t) {
  if (!t->device || !t->span || yk_cuda_make_current(t->ctx) != YK_OK) return !t->device || !t->span ? 0 : 1;
  return t->ctx->cu.cuMemcpyDtoH(t->host, t->device, (size_t)t->span * (size_t)t->elem_bytes) != CUDA_SUCCESS;
}

static void put(const yh_tensor *t, int64_t at, double v) {
  char *p = (char *)t->host + at * t->elem_bytes;
  switch (t->type) {
  case YK_F32: {
    float f = (float)v;
    memcpy(p, &f, 4);
    break;
  }
  case YK_F16: {
    uint16_t h = yk_float_to_f16((float)v);
    memcpy(p, &h, 2);
    break;
  }
  case YK_BF16: {
    uint16_t h = yk_float_to_bf16((float)v);
    memcpy(p, &h, 2);
    break;
  }
  case YK_E4M3: *(uint8_t *)p = yk_float_to_e4m3((float)v); break;
  case YK_I32: {
    int32_t i = (int32_t)v;
    memcpy(p, &i, 4);
    break;
  }
  default: {
    int64_t i = (int64_t)v;
    memcpy(p, &i, 8);
    break;
  }
  }
}

static double get(const yh_tensor *t, int64_t at) {
  const char *p = (const char *)t->host + at * t->elem_bytes;
  uint16_t h;
  switch (t->type) {
  case YK_F32: {
    float f;
    memcpy(&f, p, 4);
    return f;
  }
  case YK_F16: memcpy(&h, p, 2); return yk_f16_to_float(h);
  case YK_BF16: memcpy(&h, p, 2); return yk_bf16_to_float(h);
  case YK_E4M3: return yk_e4m3_to_float(*(const uint8_t *)p);
  case YK_I32: {
    int32_t i;
    memcpy(&i, p, 4);
    return i;
  }
  default: {
    int64_t i;
    memcpy(&i, p, 8);
    return (double)i;
  }
  }
}

/* Calls fn(offset, index) for every logical element in row-major order. */
#define FOR_EACH_ELEMENT(t, offset, index, body)                                                                       \
  do {                                                                                                                 \
    int64_t idx_[YK_VIEW_MAX_DIMS] = {0};                                                                              \
    for (int64_t index = 0; index < (t)->numel; index++) {                                                             \
      int64_t offset = 0;                                                                                              \
      for (int d_ = 0; d_ < (t)->dl.ndim; d_++) offset += idx_[d_] * (t)->strides[d_];                                 \
      body;                                                                                                            \
      for (int d_ = (t)->dl.ndim - 1; d_ >= 0; d_--) {                                                                 \
        if (++idx_[d_] < (t)->shape[d_]) break;                                                                        \
        idx_[d_] = 0;                                                                                                  \
      }                                                                                                                \
    }                                                                                                                  \
  } while (0)

void yh_fill_uniform(yh_tensor *t, yh_rng *rng, double lo, double hi) {
  for (int64_t i = 0; i < t->span; i++) put(t, i, yh_uniform(rng, lo, hi));
  yh_upload(t);
}

void yh_fill_integers(yh_tensor *t, yh_rng *rng, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < t->span; i++) put(t, i, (double)(lo + (int64_t)(yh_next(rng) % (uint64_t)(hi - lo))));
  yh_upload(t);
}

void yh_poison(yh_tensor *t) {
  memset(t->host, 0xff, (size_t)t->span * (size_t)t->elem_bytes); /* all-ones: NaN in f32, f16 and bf16 */
  yh_upload(t);
}

void yh_to_double(yh_tensor *t, double *out) {
  yh_download(t);
  FOR_EACH_ELEMENT(t, offset, i, out[i] = get(t, offset));
}

void yh_from_double(yh_tensor *t, const double *in) {
  FOR_EACH_ELEMENT(t, offset, i, put(t, offset, in[i]));
  yh_upload(t);
}

void *yh_snapshot(yh_tensor *t) {
  yh_download(t);
  size_t bytes = (size_t)t->span * (size_t)t->elem_bytes;
  void *copy = malloc(bytes ? bytes : 1);
  if (copy) memcpy(copy, t->host, bytes);
  return copy;
}

int64_t yh_gap_bytes_changed(yh_tensor *t, const void *snapshot) {
  yh_download(t);
  char *logical = calloc((size_t)(t->span ? t->span : 1), 1);
  if (!logical) return -1;
  FOR_EACH_ELEMENT(t, offset, i, logical[offset] = 1);
  int64_t changed = 0;
  for (int64_t e = 0; e < t->span; e++)
    if (!logical[e])
      changed += memcmp((const char *)snapshot + e * t->elem_bytes, (char *)t->host + e * t->elem_bytes,
                        (size_t)t->elem_bytes) != 0;
  free(logical);
  return changed;
}

int64_t yh_bytes_changed(yh_tensor *t, const void *snapshot) {
  yh_download(t);
  int64_t changed = 0;
  const unsigned char *a = snapshot, *b = t->host;
  for (int64_t i = 0; i < t->span * t->elem_bytes; i++) changed += a[i] != b[i];
  return changed;
}

double yh_error(const double *got, const double *ref, int64_t n, double floor) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite(got[i])) return INFINITY;
    diff += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  norm = sqrt(norm);
  norm = norm > floor ? norm : floor;
  return norm > 0 ? sqrt(diff) / norm : sqrt(diff);
}

int yh_sync(yk_ctx *ctx) {
  if (ctx->device != YK_DEVICE_CUDA) return 0;
  return yk_cuda_make_current(ctx) != YK_OK || ctx->cu.cuCtxSynchronize() != CUDA_SUCCESS;
}

int yh_tensor_copy(yh_tensor *dst, const yh_tensor *src) {
  if (dst->type != src->type || dst->span != src->span) return 1;
  memcpy(dst->host, src->host, (size_t)src->span * (size_t)src->elem_bytes);
  return yh_upload(dst);
}
