#include "runtime/launch.h"

#include <stdio.h>

#include "runtime/error.h"
#include "runtime/module.h"

static yk_status launch(yk_ctx *ctx, const yk_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                        void *stream, void **args, int programmatic) {
  yk_status st = yk_cuda_make_current(ctx);
  if (st != YK_OK) return st;
  CUresult r;
  if (ctx->cu.cuLaunchKernelEx) {
    CUlaunchConfig config = {
        .gridDimX = grid_x,
        .gridDimY = grid_y,
        .gridDimZ = grid_z,
        .blockDimX = k->block_threads,
        .blockDimY = 1,
        .blockDimZ = 1,
        .sharedMemBytes = k->dynamic_smem_bytes,
        .hStream = (CUstream)stream,
    };
    /* sm_90 and a driver that captures programmatic edges into graphs (12.3) */
    CUlaunchAttribute early = {.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION};
    early.value.programmaticStreamSerializationAllowed = 1;
    if (programmatic && ctx->compute_major >= 9 && ctx->driver_version >= 12030)
      config.attrs = &early, config.numAttrs = 1;
    r = ctx->cu.cuLaunchKernelEx(&config, k->function, args, NULL);
  } else {
    r = ctx->cu.cuLaunchKernel(k->function, grid_x, grid_y, grid_z, k->block_threads, 1, 1, k->dynamic_smem_bytes,
                               (CUstream)stream, args, NULL);
  }
  if (r == CUDA_SUCCESS) return YK_OK;
  char what[640], text[512];
  yk_spec_format(&k->key.spec, text, sizeof text);
  snprintf(what, sizeof what, "launching %s on grid %ux%ux%u", text, grid_x, grid_y, grid_z);
  return yk_cuda_error(ctx, r, what);
}

yk_status yk_launch(yk_ctx *ctx, const yk_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z, void *stream,
                    void **args) {
  return launch(ctx, k, grid_x, grid_y, grid_z, stream, args, 0);
}

yk_status yk_launch_early(yk_ctx *ctx, const yk_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                          void *stream, void **args) {
  return launch(ctx, k, grid_x, grid_y, grid_z, stream, args, 1);
}
