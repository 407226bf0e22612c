/* One op on one shape, ready to time: random inputs on the host and in device memory (several
 * copies, rotated between repetitions when they are small), the CPU fallback's result as the
 * reference, and a check of a configuration's result against it. The ops a sweep knows and their
 * shapes are in tune/tune_ops.c and tune/tune_ops_attention.c.
 *
 * The check runs on the whole timed problem and compares a leading part of each output
 * (check_shape) where that part is a problem of its own (the causal prefill's first queries, a
 * batch's first sequences); where no part is (the backward's dk and dv sum over every query row
 * after their key), define names a smaller shape instead, and the check runs a separate case of
 * that shape, whole, on the same kernels (the same spec keys). */
#ifndef YK_TUNE_CASE_H
#define YK_TUNE_CASE_H

#include <cuda.h>
#include <dlpack/dlpack.h>

#include "runtime/tensor.h" /* yk_dtype, YK_I64 */
#include "yk/jit.h"
#include "yk/ops.h"

#define YK_TUNE_SETS 4 /* copies of a small case's tensors */
#define YK_TUNE_BUFFERS 10
#define YK_TUNE_CHECK_SEQ 1024 /* attention: query rows checked against the CPU, which is too slow for 16K */

typedef enum {
  YK_TUNE_IN,
  YK_TUNE_OUT,
  YK_TUNE_INOUT,
  YK_TUNE_SCRATCH,
  YK_TUNE_DERIVED /* an input the op's prepare computes from the random ones on the GPU (the backward's
                     out and lse, by the forward), copied to the host for the reference */
} yk_tune_role;

typedef struct yk_tune_buffer {
  int type; /* yk_dtype, or YK_I64 for indices */
  yk_tune_role role;
  int ndim;
  int64_t shape[4];
  int64_t check_shape[4]; /* the reference's shape: shape, or a leading part of it (prefill) */
  double lo, hi;          /* inputs: uniform in [lo, hi], integers in [lo, hi) */
  void *pristine;         /* inputs: the whole tensor's values */
  void *host;             /* the reference run's tensor (check_shape) */
  CUdeviceptr device[YK_TUNE_SETS];
  DLTensor host_dl, device_dl[YK_TUNE_SETS];
} yk_tune_buffer;

/* A shape from the command line: "4096" or "32x4096" (batch x length). */
typedef struct yk_tune_shape {
  int64_t batch, length;
} yk_tune_shape;

typedef struct yk_tune_case yk_tune_case;

typedef struct yk_tune_op {
  const char *name;           /* what yk tune --op names */
  const char *default_shapes; /* "1,16,128,1024,4096,16384" */
  /* Adds the buffers (yk_tune_case_add) and sets size, shape, bytes or flops from the model's
   * widths and the shape. */
  yk_status (*define)(yk_tune_case *c, const yk_model_preset *m, yk_tune_shape shape);
  /* The op on the buffers' tensors t (host ones run the CPU fallback). */
  yk_status (*invoke)(yk_tune_case *c, DLTensor *const *t, void *stream);
  /* NULL, or fills the YK_TUNE_DERIVED buffers of the device tensors t from the inputs, once at
   * setup, outside any sweep's override. */
  yk_status (*prepare)(yk_tune_case *c, DLTensor *const *t, void *stream);
} yk_tune_op;

struct yk_tune_case {
  yk_ctx *ctx;
  const yk_tune_op *op;
  int dtype;
  yk_tune_buffer buf[YK_TUNE_BUFFERS];
  int buffers, sets;
  /* what define sets */
  int64_t size;   /* the problem size the op passes to yk_spec_finish */
  char shape[64]; /* "T4096 H4096" */
  double bytes, flops;
  int activation;         /* act_and_mul: yk_activation */
  yk_tune_shape check_at; /* batch 0, or the shape of the separate case the check runs (see above) */
  /* set up */
  yk_tune_case *check; /* that case, or NULL: the check runs on this one */
  int reference_ready;
};

const yk_tune_op *yk_tune_op_find(const char *name);
int yk_tune_op_count(void);
const yk_tune_op *yk_tune_op_get(int index);

/* A buffer of the case being defined, check_shape = shape. NULL past YK_TUNE_BUFFERS. */
yk_tune_buffer *yk_tune_case_add(yk_tune_case *c, int type, yk_tune_role role, int ndim, const int64_t *shape,
                                 double lo, double hi);

/* Only defines the case (its buffers and work, as define sets them): nothing is allocated, no
 * GPU is needed. */
yk_status yk_tune_case_define(yk_tune_case *c, yk_ctx *ctx, const yk_tune_op *op, const yk_model_preset *m,
                              yk_tune_shape shape, int dtype);

/* Defines, allocates and fills the case, and sets up the separate case its check runs where define
 * names one (device memory zeroed instead when fill is 0: enough to see which spec the op
 * builds). */
yk_status yk_tune_case_setup(yk_tune_case *c, yk_ctx *ctx, const yk_tune_op *op, const yk_model_preset *m,
                             yk_tune_shape shape, int dtype, int fill, uint64_t seed);
void yk_tune_case_free(yk_tune_case *c);

/* The op on copy `rep % sets` of the device tensors, on the default stream. */
yk_status yk_tune_case_call(yk_tune_case *c, int rep);

/* Runs the op once on copy 0 (of the check's case where it has one), from fresh inputs into
 * poisoned outputs, and measures its relative error against the CPU fallback (computed on the
 * first call): ||got - want|| / ||want|| over each output's checked part, the largest; INFINITY
 * for a NaN. */
yk_status yk_tune_case_check(yk_tune_case *c, double *error);

/* The error a configuration may have and still count as right. */
double yk_tune_tolerance(int dtype);

#endif
