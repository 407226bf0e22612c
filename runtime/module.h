/* Loading a compiled kernel onto the context's device, once per context. */
#ifndef YK_RUNTIME_MODULE_H
#define YK_RUNTIME_MODULE_H

#include "cache/kernel_cache.h"

/* COMPILED -> LOADED: the cubin where it matches the device, else the PTX through the driver's JIT
 * (its error log comes back in the message). Resolves the function and raises its dynamic shared
 * memory limit where it needs more than 48 KB. */
yk_status yk_module_load(yk_ctx *ctx, yk_kernel *k);
void yk_module_unload(yk_ctx *ctx, yk_kernel *k);

/* Makes the context's CUDA context current on the calling thread if it is not. */
yk_status yk_cuda_make_current(yk_ctx *ctx);

/* The status and message for a failed driver call: "<what>: CUDA_ERROR_... (text)". */
yk_status yk_cuda_error(yk_ctx *ctx, CUresult r, const char *what);

#endif
