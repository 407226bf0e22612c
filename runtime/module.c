#include "runtime/module.h"

#include <stdio.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"

#define STATIC_SHARED_LIMIT (48 * 1024) /* beyond this a kernel must opt in, per function */

yk_status yk_cuda_error(yk_ctx *ctx, CUresult r, const char *what) {
  char text[256];
  yk_cuda_error_text(&ctx->cu, r, text, sizeof text);
  return yk_error(ctx, r == CUDA_ERROR_OUT_OF_MEMORY ? YK_ERR_OUT_OF_MEMORY : YK_ERR_CUDA, "%s: %s", what, text);
}

yk_status yk_cuda_make_current(yk_ctx *ctx) {
  CUcontext current = NULL;
  CUresult r = ctx->cu.cuCtxGetCurrent(&current);
  if (r == CUDA_SUCCESS && current == ctx->cu_context) return YK_OK;
  if ((r = ctx->cu.cuCtxSetCurrent(ctx->cu_context)) != CUDA_SUCCESS) return yk_cuda_error(ctx, r, "cuCtxSetCurrent");
  return YK_OK;
}

yk_status yk_module_load(yk_ctx *ctx, yk_kernel *k) {
  if (ctx->device != YK_DEVICE_CUDA) return yk_error(ctx, YK_ERR_NO_DEVICE, "no CUDA device: %s", ctx->device_note);
  yk_status st = yk_cuda_make_current(ctx);
  if (st != YK_OK) return st;
  const yk_spec *spec = &k->key.spec;
  const yk_op_def *op = spec->op;
  char text[512];
  yk_spec_format(spec, text, sizeof text);

  const int use_cubin = k->binary.cubin && strcmp(k->key.target, ctx->target) == 0;
  char log[8192] = "";
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *values[] = {log, (void *)(uintptr_t)sizeof log};
  CUmodule module;
  CUresult r = ctx->cu.cuModuleLoadDataEx(&module, use_cubin ? (const void *)k->binary.cubin : k->binary.ptx, 2,
                                          options, values);
  if (r != CUDA_SUCCESS) {
    char what[1024 + sizeof log];
    snprintf(what, sizeof what, "loading %s (%s) on %s%s%s", text, use_cubin ? "cubin" : "PTX", ctx->device_name,
             log[0] ? ": " : "", log);
    return yk_cuda_error(ctx, r, what);
  }
  CUfunction function;
  if ((r = ctx->cu.cuModuleGetFunction(&function, module, op->name)) != CUDA_SUCCESS) {
    ctx->cu.cuModuleUnload(module);
    return yk_cuda_error(ctx, r, "cuModuleGetFunction");
  }
  unsigned smem = op->dynamic_smem_bytes ? op->dynamic_smem_bytes(spec) : 0;
  if (smem > STATIC_SHARED_LIMIT) {
    if ((int)smem > ctx->max_shared_per_block_optin) {
      ctx->cu.cuModuleUnload(module);
      return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s needs %u bytes of shared memory; %s allows %d", text, smem,
                      ctx->device_name, ctx->max_shared_per_block_optin);
    }
    r = ctx->cu.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)smem);
    if (r != CUDA_SUCCESS) {
      ctx->cu.cuModuleUnload(module);
      return yk_cuda_error(ctx, r, "raising the dynamic shared memory limit");
    }
  }
  k->module = module;
  k->function = function;
  k->block_threads = yk_spec_block_threads(spec);
  k->dynamic_smem_bytes = smem;
  return YK_OK;
}

void yk_module_unload(yk_ctx *ctx, yk_kernel *k) {
  if (k->module && ctx->cu.cuModuleUnload) ctx->cu.cuModuleUnload(k->module);
  k->module = NULL;
  k->function = NULL;
}
