/* The one tensor check: a DLTensor becomes a validated view, or a status and a message that names
 * the op and the argument ("rms_norm: weight: expected 1 dimension, got 2"). */
#ifndef YK_RUNTIME_TENSOR_H
#define YK_RUNTIME_TENSOR_H

#include <dlpack/dlpack.h>
#include <stdint.h>

#include "gen/spec.h"
#include "yk/context.h"

#define YK_VIEW_MAX_DIMS 8

/* Element types a view can have: the float types of yk_dtype, YK_E4M3 (gen/spec.h), and index types. */
enum { YK_I32 = 16, YK_I64 = 17 };
/* YK_ACCEPT_STRIDED: one value a row (an lse), so the last dimension may be strided too.
 * YK_ACCEPT_E4M3: float8 e4m3fn (DLPack code 10), which KV caches may hold. */
enum { YK_ACCEPT_FLOAT = 1, YK_ACCEPT_INDEX = 2, YK_ACCEPT_STRIDED = 4, YK_ACCEPT_E4M3 = 8 };

/* DLPack 1.0's code of float8 e4m3fn, which older dlpack.h headers (Debian's) lack. */
#define YK_DL_FLOAT8_E4M3FN 10

typedef struct yk_view {
  char *data; /* data + byte_offset */
  int ndim;
  int64_t shape[YK_VIEW_MAX_DIMS];
  int64_t stride[YK_VIEW_MAX_DIMS]; /* elements */
  int type;                         /* yk_dtype, YK_I32 or YK_I64 */
  int elem_bytes;
  int on_device; /* CUDA device memory (or managed); 0: host memory */
  int device_id;
} yk_view;

/* Checks t: not NULL, ndim in [min_ndim, max_ndim], an accepted type with one lane, non-negative
 * shape and strides, last dimension contiguous, data present unless empty, memory a CPU or CUDA
 * device holds. */
yk_status yk_view_of(yk_ctx *ctx, const char *op, const char *name, const DLTensor *t, int accept, int min_ndim,
                     int max_ndim, yk_view *out);

int64_t yk_view_numel(const yk_view *v);

/* The yk_dtype (or YK_E4M3, YK_I32, YK_I64) of a DLPack type among those accept allows; -1 for others. */
int yk_type_of(DLDataType t, int accept);

/* For outputs: refuses a view two of whose elements share an address (a stride of 0, or strides
 * that interleave). Accepts every permuted or padded layout: taken from the smallest stride
 * up, each dimension's stride is at least the span of the ones inside it. */
yk_status yk_view_disjoint(yk_ctx *ctx, const char *op, const char *name, const yk_view *v);

/* Refuses views whose memory ranges intersect (an output over an input it still has to read). */
yk_status yk_views_apart(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a, const char *b_name,
                         const yk_view *b);

/* All but the last dimension as one: rows and the element stride between them. Fails when the
 * leading dimensions cannot be walked with one stride, or (for outputs) when rows overlap. */
yk_status yk_view_rows(yk_ctx *ctx, const char *op, const char *name, const yk_view *v, int is_output, int64_t *rows,
                       int64_t *row_stride);

yk_status yk_view_type_error(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a, const char *b_name,
                             const yk_view *b);
yk_status yk_view_shape_error(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a, const char *b_name,
                              const yk_view *b);

/* A call's float8 cache scales (include/yk/kv.h) as two floats: NULL or a member 0 reads as 1;
 * each must be positive and finite, and caches not of float8 take 1 only. */
struct yk_kv_scales;
yk_status yk_kv_scales_of(yk_ctx *ctx, const char *op, const struct yk_kv_scales *scales, int float8, float *k,
                          float *v);

/* Fails unless b has a's type. */
static inline yk_status yk_view_same_type(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a,
                                          const char *b_name, const yk_view *b) {
  return a->type == b->type ? YK_OK : yk_view_type_error(ctx, op, a_name, a, b_name, b);
}

/* Fails unless b has a's shape. */
static inline yk_status yk_view_same_shape(yk_ctx *ctx, const char *op, const char *a_name, const yk_view *a,
                                           const char *b_name, const yk_view *b) {
  int same = a->ndim == b->ndim;
  for (int i = 0; same && i < a->ndim; i++) same = a->shape[i] == b->shape[i];
  return same ? YK_OK : yk_view_shape_error(ctx, op, a_name, a, b_name, b);
}

/* Every view in host memory (0), or every view on this context's CUDA device (1); anything else
 * fails: mixed memory, another device, or device memory on a context without CUDA. */
yk_status yk_views_placement(yk_ctx *ctx, const char *op, const yk_view *const *views, int count, int *on_device);

/* The widest vector (in elements, at most 16 bytes) that every address and byte count ORed into
 * bits allows. */
static inline int yk_vec_width(uint64_t bits, int elem_bytes) {
  uint64_t align = bits ? bits & (~bits + 1) : 16;
  if (align > 16) align = 16;
  int v = (int)align / elem_bytes;
  return v > 0 ? v : 1;
}

const char *yk_view_type_name(int type);

#endif
