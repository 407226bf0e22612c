#include "runtime/tensor.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "yk/kv.h"

const char *yk_view_type_name(int type) {
  switch (type) {
  case YK_F32: return "float32";
  case YK_F16: return "float16";
  case YK_BF16: return "bfloat16";
  case YK_E4M3: return "float8_e4m3fn";
  case YK_I32: return "int32";
  case YK_I64: return "int64";
  }
  return "?";
}

static void shape_text(const int64_t *shape, int ndim, char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < ndim && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%" PRId64, i ? ", " : "", shape[i]);
  if (used < size) snprintf(buf + used, size - used, "]");
}

int yk_type_of(DLDataType t, int accept) {
  if (t.lanes != 1) return -1;
  if (accept & YK_ACCEPT_FLOAT) {
    if (t.code == kDLFloat && t.bits == 32) return YK_F32;
    if (t.code == kDLFloat && t.bits == 16) return YK_F16;
    if (t.code == kDLBfloat && t.bits == 16) return YK_BF16;
  }
  if ((accept & YK_ACCEPT_E4M3) && t.code == YK_DL_FLOAT8_E4M3FN && t.bits == 8) return YK_E4M3;
  if (accept & YK_ACCEPT_INDEX) {
    if (t.code == kDLInt && t.bits == 32) return YK_I32;
    if (t.code == kDLInt && t.bits == 64) return YK_I64;
  }
  return -1;
}

static const char *dl_type_text(DLDataType t, char *buf, size_t size) {
  static const char *codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  static const char *float8s[] = {"float8_e3m4",     "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn",
                                  "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"};
  const unsigned n_codes = sizeof codes / sizeof codes[0], n_float8s = sizeof float8s / sizeof float8s[0];
  const char *lanes = t.lanes == 1 ? "" : "xN";
  if (t.code >= n_codes && t.code < n_codes + n_float8s && t.bits == 8)
    snprintf(buf, size, "%s%s", float8s[t.code - n_codes], lanes);
  else
    snprintf(buf, size, "%s%u%s", t.code < n_codes ? codes[t.code] : "code?", t.bits, lanes);
  return buf;
}

/* Shape and strides (compact where t has none) into shape and stride, the element count, and in bad
 * the OR of them all (negative when any is). Nonzero when the count or the bytes the elements
 * span do not fit in 63 bits: no memory holds such a tensor, and every size computed from a view
 * that passes stays inside int64_t. */
static int measure(const DLTensor *t, int64_t *shape, int64_t *stride, int64_t *numel, int64_t *bad) {
  int64_t n_all = 1, compact = 1, extent = 0, or_all = 0;
  int over = 0;
  for (int i = t->ndim - 1; i >= 0; i--) {
    const int64_t n = t->shape[i], s = t->strides ? t->strides[i] : compact;
    or_all |= n | s; /* any negative shape or stride sets the sign bit */
    if (shape) shape[i] = n, stride[i] = s;
    int64_t step = 0;
    over |= __builtin_mul_overflow(n_all, n, &n_all);
    if (!t->strides) over |= __builtin_mul_overflow(compact, n, &compact);
    if (n > 0) over |= __builtin_mul_overflow(n - 1, s, &step) | __builtin_add_overflow(extent, step, &extent);
  }
  const int64_t elem_bytes = t->dtype.bits > 8 ? (t->dtype.bits + 7) / 8 : 1;
  int64_t bytes;
  over |= __builtin_add_overflow(extent, 1, &bytes) | __builtin_mul_overflow(bytes, elem_bytes, &bytes) |
          __builtin_add_overflow(bytes, (int64_t)(t->byte_offset & INT64_MAX), &bytes) | (t->byte_offset > INT64_MAX);
  *numel = n_all, *bad = or_all;
  return over && or_all >= 0;
}

/* Why t fails the checks of yk_view_of, as a status and message. Only called when it does: the
 * hot path checks compactly and leaves the diagnosis to this cold function. */
__attribute__((cold, noinline)) static yk_status view_error(yk_ctx *ctx, const char *op, const char *name,
                                                            const DLTensor *t, int accept, int min_ndim, int max_ndim) {
  if (!t) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s is NULL", op, name);
  if (t->ndim < min_ndim || t->ndim > max_ndim) {
    if (min_ndim == max_ndim)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: expected %d dimension%s, got %d", op, name, min_ndim,
                      min_ndim == 1 ? "" : "s", t->ndim);
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: expected %d to %d dimensions, got %d", op, name, min_ndim,
                    max_ndim, t->ndim);
  }
  if (!t->shape) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: shape is NULL", op, name);
  if (yk_type_of(t->dtype, accept) < 0) {
    char got[32];
    const char *want = accept == YK_ACCEPT_INDEX ? "int32 or int64"
                       : accept & YK_ACCEPT_E4M3 ? "float32, float16, bfloat16 or float8_e4m3fn"
                                                 : "float32, float16 or bfloat16";
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: expected dtype %s, got %s", op, name, want,
                    dl_type_text(t->dtype, got, sizeof got));
  }
  if (t->device.device_type != kDLCPU && t->device.device_type != kDLCUDAHost && t->device.device_type != kDLCUDA &&
      t->device.device_type != kDLCUDAManaged)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: %s: memory of DLPack device type %d is not supported", op, name,
                    (int)t->device.device_type);
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] < 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: dimension %d is negative", op, name, i);
    if (t->strides && t->strides[i] < 0)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: negative strides are not supported", op, name);
  }
  int64_t numel, bad;
  if (measure(t, NULL, NULL, &numel, &bad))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: %s: its shape and strides describe more elements or bytes than 64-bit sizes hold", op, name);
  const int last = t->ndim - 1;
  if (!(accept & YK_ACCEPT_STRIDED) && t->ndim > 0 && t->shape[last] > 1 && t->strides && t->strides[last] != 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: %s: the last dimension must be contiguous (stride 1, got %" PRId64 ")", op, name,
                    t->strides[last]);
  if (!t->data && numel > 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s: data is NULL", op, name);
  return yk_error(ctx, YK_ERR_INTERNAL, "%s: %s: rejected for no reason found", op, name);
}

yk_status yk_view_of(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int accept, int min_ndim,
                     int max_ndim, yk_view *out) {
  if (__builtin_expect(!t || t->ndim < min_ndim || t->ndim > max_ndim || !t->shape, 0)) goto fail;
  const int type = yk_type_of(t->dtype, accept);
  if (__builtin_expect(type < 0, 0)) goto fail;
  const DLDeviceType device = t->device.device_type;
  if (device == kDLCUDA || device == kDLCUDAManaged)
    out->on_device = 1;
  else if (device == kDLCPU || device == kDLCUDAHost)
    out->on_device = 0;
  else
    goto fail;
  const int ndim = t->ndim;
  int64_t numel, bad;
  if (__builtin_expect(measure(t, out->shape, out->stride, &numel, &bad), 0)) goto fail;
  if (__builtin_expect(
          bad < 0 ||
              (!(accept & YK_ACCEPT_STRIDED) && ndim > 0 && out->shape[ndim - 1] > 1 && out->stride[ndim - 1] != 1) ||
              (!t->data && numel > 0),
          0))
    goto fail;
  out->device_id = t->device.device_id;
  out->type = type;
  out->elem_bytes = t->dtype.bits / 8;
  out->ndim = ndim;
  out->data = (char *)t->data + t->byte_offset;
  return YK_OK;
fail:
  return view_error(ctx, op, name, t, accept, min_ndim, max_ndim);
}

int64_t yk_view_numel(const yk_view *v) {
  int64_t n = 1;
  for (int i = 0; i < v->ndim; i++) n *= v->shape[i];
  return n;
}

yk_status yk_view_disjoint(yk_ctx *ctx, const char *op, const char *name, const yk_view *v) {
  int order[YK_VIEW_MAX_DIMS], n = 0;
  for (int i = 0; i < v->ndim; i++) {
    if (v->shape[i] <= 1) continue;
    int at = n++; /* insertion sort by stride: at most YK_VIEW_MAX_DIMS entries */
    while (at > 0 && v->stride[order[at - 1]] > v->stride[i]) order[at] = order[at - 1], at--;
    order[at] = i;
  }
  int64_t span = 1; /* elements covered by the dimensions taken so far */
  for (int k = 0; k < n; k++) {
    const int i = order[k];
    if (v->stride[i] < span)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "%s: %s: elements overlap (dimension %d has stride %" PRId64 ", inside a span of %" PRId64 ")",
                      op, name, i, v->stride[i], span);
    span = v->stride[i] * (v->shape[i] - 1) + span;
  }
  return YK_OK;
}

/* [first, last] byte addresses a view touches; empty views touch nothing (first > last). */
static void view_bounds(const yk_view *v, uintptr_t *first, uintptr_t *last) {
  int64_t end = 0;
  for (int i = 0; i < v->ndim; i++) {
    if (v->shape[i] == 0) {
      *first = 1, *last = 0;
      return;
    }
    end += (v->shape[i] - 1) * v->stride[i];
  }
  *first = (uintptr_t)v->data;
  *last = *first + (uintptr_t)(end + 1) * (uintptr_t)v->elem_bytes - 1;
}

yk_status yk_views_apart(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a, const char *b_name,
                         const yk_view *b) {
  uintptr_t a0, a1, b0, b1;
  view_bounds(a, &a0, &a1), view_bounds(b, &b0, &b1);
  if (a0 <= a1 && b0 <= b1 && a0 <= b1 && b0 <= a1 && a->on_device == b->on_device)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s overlaps %s, which the call still reads", op, a_name, b_name);
  return YK_OK;
}

yk_status yk_view_rows(yk_ctx *ctx, const char *op, const char *name, const yk_view *v, int is_output, int64_t *rows,
                       int64_t *row_stride) {
  const int last = v->ndim - 1;
  const int64_t cols = v->shape[last];
  int64_t n = 1, stride = cols;
  /* Walk the leading dimensions from the innermost: each must step by the one inside it times its
   * count, so that rows are evenly spaced. Dimensions of size 1 have no step to match. */
  int have_stride = 0;
  for (int i = last - 1; i >= 0; i--) {
    if (v->shape[i] == 1) continue;
    if (!have_stride) {
      stride = v->stride[i];
      have_stride = 1;
    } else if (v->stride[i] != stride * n) {
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "%s: %s: leading dimensions must be walkable with one row stride (dimension %d has stride "
                      "%" PRId64 ", expected %" PRId64 ")",
                      op, name, i, v->stride[i], stride * n);
    }
    n *= v->shape[i];
  }
  if (is_output && n > 1 && stride < cols)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: %s: rows overlap (row stride %" PRId64 " < row length %" PRId64 ")", op, name, stride, cols);
  if (n > INT32_MAX || cols > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: %s: more than 2^31 - 1 rows or columns", op, name);
  *rows = n;
  *row_stride = stride;
  return YK_OK;
}

__attribute__((cold, noinline)) yk_status yk_view_type_error(yk_ctx *ctx, const char *op, const char *a_name,
                                                             const yk_view *a, const char *b_name, const yk_view *b) {
  return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s is %s but %s is %s", op, b_name, yk_view_type_name(b->type),
                  a_name, yk_view_type_name(a->type));
}

__attribute__((cold, noinline)) yk_status yk_view_shape_error(yk_ctx *ctx, const char *op, const char *a_name,
                                                              const yk_view *a, const char *b_name, const yk_view *b) {
  char sa[160], sb[160];
  shape_text(a->shape, a->ndim, sa, sizeof sa);
  shape_text(b->shape, b->ndim, sb, sizeof sb);
  return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s has shape %s, expected %s like %s", op, b_name, sb, sa, a_name);
}

yk_status yk_views_placement(yk_ctx *ctx, const char *op, const yk_view *const *views, int count, int *on_device) {
  int device = views[0]->on_device;
  for (int i = 1; i < count; i++)
    if (views[i]->on_device != device)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: tensors mix host and device memory", op);
  if (device) {
    if (ctx->device != YK_DEVICE_CUDA)
      return yk_error(ctx, YK_ERR_NO_DEVICE, "%s: tensors are in CUDA memory but the context has no CUDA device: %s",
                      op, ctx->device_note);
    for (int i = 0; i < count; i++)
      if (views[i]->device_id != ctx->ordinal)
        return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: a tensor is on CUDA device %d, the context on device %d", op,
                        views[i]->device_id, ctx->ordinal);
  }
  *on_device = device;
  return YK_OK;
}

yk_status yk_kv_scales_of(yk_ctx *ctx, const char *op, const yk_kv_scales *scales, int float8, float *k, float *v) {
  const float given[2] = {scales ? scales->k : 0.f, scales ? scales->v : 0.f};
  float *out[2] = {k, v};
  for (int i = 0; i < 2; i++) {
    const float s = given[i] == 0.f ? 1.f : given[i];
    const char *name = i ? "v" : "k";
    if (!(s > 0.f) || isinf(s))
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: the %s scale %g is not positive and finite", op, name,
                      (double)given[i]);
    if (!float8 && s != 1.f)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "%s: the %s scale is %g, but scales apply to float8_e4m3fn caches only (these hold 16-bit "
                      "values: give 0 or 1)",
                      op, name, (double)s);
    *out[i] = s;
  }
  return YK_OK;
}
