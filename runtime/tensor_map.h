/* Tensor memory accelerator (TMA) descriptors for the kernels that load tiles with
 * cp.async.bulk.tensor (the Hopper prefill). Built on the host for each launch: a descriptor holds
 * the tensor's address. */
#ifndef YK_RUNTIME_TENSOR_MAP_H
#define YK_RUNTIME_TENSOR_MAP_H

#include <stdint.h>

#include "runtime/context.h"

/* Where a kernel's TMA loads read: a 4-D tensor [batch][rows][heads][cols] of 2-byte elements (f16,
 * bf16), cols contiguous, strides in elements, read in boxes of 64 columns x box_rows rows of one
 * head into the 128-byte swizzled shared-memory layout (16-byte chunk c of row r at c ^ (r % 8)).
 * Coordinates past rows (or any extent) read as zeros. Returns 0 with *map built; nonzero, with
 * *map zeroed and no error recorded, where TMA cannot read the tensor (no cuTensorMapEncodeTiled in
 * the driver, an address or stride not a multiple of 16 bytes, an extent past its range): the
 * caller then loads some other way. */
int yk_tensor_map_rows(const yk_ctx *ctx, CUtensorMap *map, int dtype, const void *base, int64_t cols, int64_t rows,
                       int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                       int box_rows);

#endif
