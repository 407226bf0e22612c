/* Tensors in host or device memory with random contents, float64 views of them and error norms:
 * what the tests, the demo and the benchmarks share. Not part of the library's API. */
#ifndef YK_BENCH_HARNESS_H
#define YK_BENCH_HARNESS_H

#include <cuda.h>
#include <dlpack/dlpack.h>
#include <stdint.h>

#include "runtime/tensor.h"
#include "yk/yk.h"

typedef struct yh_rng {
  uint64_t state;
} yh_rng;

static inline uint64_t yh_next(yh_rng *r) { /* splitmix64 */
  uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline double yh_uniform(yh_rng *r, double lo, double hi) {
  return lo + (hi - lo) * (double)(yh_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct yh_tensor {
  DLTensor dl;
  int64_t shape[YK_VIEW_MAX_DIMS], strides[YK_VIEW_MAX_DIMS];
  int type; /* yk_dtype, YK_I32 or YK_I64 */
  int elem_bytes;
  int64_t numel; /* logical elements */
  int64_t span;  /* elements the strided layout covers, gaps included */
  void *host;    /* span elements: the tensor itself on the host, the staging copy otherwise */
  CUdeviceptr device;
  yk_ctx *ctx;
} yh_tensor;

/* strides NULL: compact. on_device: allocate on the context's CUDA device. Returns 0 on success. */
int yh_tensor_init(yh_tensor *t, yk_ctx *ctx, int type, int ndim, const int64_t *shape, const int64_t *strides,
                   int on_device);
void yh_tensor_free(yh_tensor *t);

/* Fill every element of the span (gaps too) and copy it to the device. */
void yh_fill_uniform(yh_tensor *t, yh_rng *rng, double lo, double hi);
void yh_fill_integers(yh_tensor *t, yh_rng *rng, int64_t lo, int64_t hi); /* [lo, hi) */
void yh_poison(yh_tensor *t);                                             /* NaN in every element */

int yh_upload(yh_tensor *t);   /* host -> device (no-op on the host) */
int yh_download(yh_tensor *t); /* device -> host */

/* Logical elements in row-major order, as float64 (downloading first). */
void yh_to_double(yh_tensor *t, double *out);
/* Writes compact float64 values into the logical elements (rounded to the type) and uploads. */
void yh_from_double(yh_tensor *t, const double *in);

/* A copy of the host span, to check later that nothing outside the logical elements changed. */
void *yh_snapshot(yh_tensor *t);
/* Bytes outside the logical elements that differ from the snapshot (downloading first). */
int64_t yh_gap_bytes_changed(yh_tensor *t, const void *snapshot);
/* Bytes anywhere in the span that differ from the snapshot (downloading first). */
int64_t yh_bytes_changed(yh_tensor *t, const void *snapshot);

/* ||got - ref|| / max(||ref||, floor); INFINITY if got holds a NaN or an infinity. */
double yh_error(const double *got, const double *ref, int64_t n, double floor);
/* ||got - ref|| / ||ref|| */
static inline double yh_rel_error(const double *got, const double *ref, int64_t n) { return yh_error(got, ref, n, 0); }

/* Same type and layout: copies src's host contents into dst (and to dst's device). 0 on success. */
int yh_tensor_copy(yh_tensor *dst, const yh_tensor *src);

/* Synchronises the context's device (0 on success). */
int yh_sync(yk_ctx *ctx);

#endif
