/* yk_tensor_map_rows: the TMA descriptor the Hopper prefill's producer reads K and V through. On the
 * host, a stand-in for cuTensorMapEncodeTiled records what the driver would be asked for: extents,
 * byte strides (the unused stride of an extent-1 dimension made valid), boxes, swizzle; and what
 * TMA cannot read is refused before the driver sees it. On a GPU, the driver itself. */
#include <string.h>

#include "runtime/context.h"
#include "runtime/module.h"
#include "runtime/tensor_map.h"
#include "tests/support.h"

static struct {
  int calls;
  CUresult result;
  CUtensorMapDataType type;
  cuuint32_t rank;
  void *address;
  cuuint64_t dims[5], strides[4];
  cuuint32_t box[5], steps[5];
  CUtensorMapSwizzle swizzle;
  CUtensorMapFloatOOBfill fill;
} seen;

static CUresult CUDAAPI fake_encode(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank, void *address,
                                    const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                    const cuuint32_t *steps, CUtensorMapInterleave interleave,
                                    CUtensorMapSwizzle swizzle, CUtensorMapL2promotion promotion,
                                    CUtensorMapFloatOOBfill fill) {
  (void)interleave, (void)promotion;
  seen.calls++;
  seen.type = type, seen.rank = rank, seen.address = address, seen.swizzle = swizzle, seen.fill = fill;
  memcpy(seen.dims, dims, rank * sizeof *dims);
  memcpy(seen.strides, strides, (rank - 1) * sizeof *strides);
  memcpy(seen.box, box, rank * sizeof *box);
  memcpy(seen.steps, steps, rank * sizeof *steps);
  memset(map, 0x5a, sizeof *map); /* something to see zeroed again on failure */
  return seen.result;
}

static yk_ctx *faked(void) {
  yk_ctx *ctx = ts_cpu_ctx();
  ctx->cu.cuTensorMapEncodeTiled = fake_encode;
  memset(&seen, 0, sizeof seen);
  return ctx;
}

static int zeroed(const CUtensorMap *map) {
  static const CUtensorMap zero;
  return memcmp(map, &zero, sizeof zero) == 0;
}

Test(tensor_map, dense_keys_become_four_dimensions) {
  yk_ctx *ctx = faked();
  CUtensorMap map;
  static char data[64] __attribute__((aligned(16)));
  /* k [batch 3][seq 40][kv heads 4][head_dim 128], contiguous */
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_BF16, data, 128, 40, 4, 3, 512, 128, 40 * 512, 128), 0);
  cr_assert_eq(seen.calls, 1);
  cr_assert_eq(seen.type, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16);
  cr_assert_eq(seen.rank, 4);
  cr_assert_eq(seen.address, data);
  const cuuint64_t dims[4] = {128, 40, 4, 3}, strides[3] = {1024, 256, 40960};
  const cuuint32_t box[4] = {64, 128, 1, 1}, steps[4] = {1, 1, 1, 1};
  cr_assert_arr_eq(seen.dims, dims, sizeof dims);
  cr_assert_arr_eq(seen.strides, strides, sizeof strides);
  cr_assert_arr_eq(seen.box, box, sizeof box);
  cr_assert_arr_eq(seen.steps, steps, sizeof steps);
  cr_assert_eq(seen.swizzle, CU_TENSOR_MAP_SWIZZLE_128B, "the producer's tiles are 128-byte swizzled");
  cr_assert_eq(seen.fill, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE, "rows past the tensor read as zeros");

  /* f16, padded rows (stride 136 elements) */
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_F16, data, 64, 9, 2, 2, 136, 64, 9 * 136, 64), 0);
  cr_assert_eq(seen.type, CU_TENSOR_MAP_DATA_TYPE_FLOAT16);
  cr_assert_eq(seen.strides[0], 272);
  cr_assert_eq(seen.box[1], 64);
  yk_ctx_destroy(ctx);
}

/* A ragged batch is one sequence axis (batch extent 1, batch stride 0), an MQA cache one head
 * (whose stride may be anything): those strides are never used, but the driver takes only
 * positive multiples of 16 bytes. */
Test(tensor_map, unused_strides_are_made_valid) {
  yk_ctx *ctx = faked();
  CUtensorMap map;
  static char data[64] __attribute__((aligned(16)));
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_BF16, data, 128, 1000, 8, 1, 1024, 128, 0, 128), 0);
  cr_assert_eq(seen.dims[3], 1);
  cr_assert_gt(seen.strides[2], 0);
  cr_assert_eq(seen.strides[2] % 16, 0);
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_BF16, data, 128, 64, 1, 2, 128, 0, 64 * 128, 64), 0);
  cr_assert_eq(seen.dims[2], 1);
  cr_assert_gt(seen.strides[1], 0);
  cr_assert_eq(seen.strides[1] % 16, 0);
  cr_assert_eq(seen.strides[2], 64 * 128 * 2, "the batch stride as given");
  yk_ctx_destroy(ctx);
}

/* What TMA cannot read comes back nonzero, the map zeroed and no error recorded: the prefill then
 * loads by cp.async. */
Test(tensor_map, out_of_reach_is_refused_quietly) {
  yk_ctx *ctx = faked();
  CUtensorMap map;
  static char data[64] __attribute__((aligned(16)));
  const struct {
    const char *why;
    int dtype;
    const void *base;
    int64_t rows, heads, batch, row_stride, head_stride, batch_stride;
  } cases[] = {
      {"float32", YK_F32, data, 40, 4, 2, 512, 128, 40 * 512},
      {"an address off 16 bytes", YK_BF16, data + 2, 40, 4, 2, 512, 128, 40 * 512},
      {"a row stride off 16 bytes", YK_BF16, data, 40, 4, 2, 132, 128, 40 * 132},
      {"a head stride off 16 bytes", YK_BF16, data, 40, 4, 2, 512, 129, 40 * 512},
      {"a negative batch stride", YK_BF16, data, 40, 4, 2, 512, 128, -40 * 512},
      {"no rows", YK_BF16, data, 0, 4, 2, 512, 128, 40 * 512},
      {"a stride past 2^40 bytes", YK_BF16, data, 40, 4, 2, 512, 128, (int64_t)1 << 40},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memset(&map, 0x5a, sizeof map);
    cr_assert_neq(yk_tensor_map_rows(ctx, &map, cases[i].dtype, cases[i].base, 128, cases[i].rows, cases[i].heads,
                                     cases[i].batch, cases[i].row_stride, cases[i].head_stride, cases[i].batch_stride,
                                     128),
                  0, "%s", cases[i].why);
    cr_assert(zeroed(&map), "%s: the map is zeroed", cases[i].why);
  }
  cr_assert_eq(seen.calls, 0, "none of these reaches the driver");
  cr_assert_str_empty(yk_ctx_last_error(ctx), "no error recorded");

  seen.result = CUDA_ERROR_INVALID_VALUE; /* the driver's own refusal */
  memset(&map, 0x5a, sizeof map);
  cr_assert_neq(yk_tensor_map_rows(ctx, &map, YK_BF16, data, 128, 40, 4, 2, 512, 128, 40 * 512, 128), 0);
  cr_assert_eq(seen.calls, 1);
  cr_assert(zeroed(&map));

  ctx->cu.cuTensorMapEncodeTiled = NULL; /* a driver without TMA */
  cr_assert_neq(yk_tensor_map_rows(ctx, &map, YK_BF16, data, 128, 40, 4, 2, 512, 128, 40 * 512, 128), 0);
  cr_assert_str_empty(yk_ctx_last_error(ctx), "no error recorded");
  yk_ctx_destroy(ctx);
}

/* The driver accepts what the prefill asks of it, for a real device allocation. */
Test(tensor_map, gpu_driver_encodes_keys) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  cr_assert_not_null(ctx->cu.cuTensorMapEncodeTiled, "an sm_90 driver has cuTensorMapEncodeTiled");
  CUdeviceptr k;
  const size_t bytes = (size_t)2 * 300 * 8 * 136 * 2;
  cr_assert_eq(yk_cuda_make_current(ctx), YK_OK); /* the context is made current lazily, by the first op */
  cr_assert_eq(ctx->cu.cuMemAlloc(&k, bytes), CUDA_SUCCESS);
  CUtensorMap map;
  const void *base = (const void *)(uintptr_t)k;
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_BF16, base, 128, 300, 8, 2, 8 * 136, 136, 300 * 8 * 136, 128), 0,
               "padded dense keys");
  cr_assert(!zeroed(&map));
  cr_assert_eq(yk_tensor_map_rows(ctx, &map, YK_F16, base, 64, 600, 8, 1, 8 * 136, 136, 0, 64), 0, "ragged keys");
  cr_assert_eq(ctx->cu.cuMemFree(k), CUDA_SUCCESS);
  yk_ctx_destroy(ctx);
}
