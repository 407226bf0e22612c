#include "runtime/tensor_map.h"

#include <string.h>

#include "gen/spec.h"

int yk_tensor_map_rows(const yk_ctx *ctx, CUtensorMap *map, int dtype, const void *base, int64_t cols, int64_t rows,
                       int64_t heads, int64_t batch, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                       int box_rows) {
  memset(map, 0, sizeof *map);
  if (!ctx->cu.cuTensorMapEncodeTiled || (dtype != YK_F16 && dtype != YK_BF16) || ((uintptr_t)base & 15)) return 1;
  const int64_t extent[4] = {cols, rows, heads, batch}, stride[3] = {row_stride, head_stride, batch_stride};
  cuuint64_t dims[4], strides[3];
  int64_t span = cols; /* elements the dimensions below reach: the stride of a dimension of extent 1 is never used */
  for (int i = 0; i < 4; i++) {
    if (extent[i] < 1 || extent[i] > ((int64_t)1 << 32)) return 1;
    dims[i] = (cuuint64_t)extent[i];
    if (i == 0) continue;
    const int64_t s = extent[i] == 1 ? span : stride[i - 1];
    if (s <= 0 || (s * 2) % 16 || s * 2 >= ((int64_t)1 << 40)) return 1;
    strides[i - 1] = (cuuint64_t)(s * 2);
    span = s * extent[i];
  }
  const cuuint32_t box[4] = {64, (cuuint32_t)box_rows, 1, 1}, steps[4] = {1, 1, 1, 1};
  const CUresult r = ctx->cu.cuTensorMapEncodeTiled(
      map, dtype == YK_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, (void *)base, dims,
      strides, box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) memset(map, 0, sizeof *map);
  return r != CUDA_SUCCESS;
}
