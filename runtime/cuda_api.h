/* The CUDA driver API, opened with dlopen: the library links no CUDA library, so it loads where
 * no driver is installed and runs there on the CPU fallback. */
#ifndef YK_RUNTIME_CUDA_API_H
#define YK_RUNTIME_CUDA_API_H

#include <cuda.h>

/* X-macro of every driver entry point used, with the CUDA version whose ABI we ask for through
 * cuGetProcAddress. Plain dlsym of some names returns an old ABI (cuMemAlloc's 32-bit size, for
 * one), so names are resolved at a pinned version instead. Entries marked 0 are required. The
 * graph calls serve the tests and benchmarks that capture the ops' launches. */
// clang-format off
#define YK_CUDA_FUNCTIONS(X)                                                                     \
  X(cuInit, 0, (unsigned int))                                                                   \
  X(cuDriverGetVersion, 0, (int *))                                                              \
  X(cuGetErrorName, 0, (CUresult, const char **))                                                \
  X(cuGetErrorString, 0, (CUresult, const char **))                                              \
  X(cuDeviceGetCount, 0, (int *))                                                                \
  X(cuDeviceGet, 0, (CUdevice *, int))                                                           \
  X(cuDeviceGetName, 0, (char *, int, CUdevice))                                                 \
  X(cuDeviceGetAttribute, 0, (int *, CUdevice_attribute, CUdevice))                              \
  X(cuDeviceTotalMem, 0, (size_t *, CUdevice))                                                   \
  X(cuDevicePrimaryCtxRetain, 0, (CUcontext *, CUdevice))                                        \
  X(cuDevicePrimaryCtxRelease, 0, (CUdevice))                                                    \
  X(cuCtxGetCurrent, 0, (CUcontext *))                                                           \
  X(cuCtxSetCurrent, 0, (CUcontext))                                                             \
  X(cuCtxSynchronize, 0, (void))                                                                 \
  X(cuModuleLoadDataEx, 0, (CUmodule *, const void *, unsigned int, CUjit_option *, void **))    \
  X(cuModuleUnload, 0, (CUmodule))                                                               \
  X(cuModuleGetFunction, 0, (CUfunction *, CUmodule, const char *))                              \
  X(cuFuncGetAttribute, 0, (int *, CUfunction_attribute, CUfunction))                            \
  X(cuFuncSetAttribute, 0, (CUfunction, CUfunction_attribute, int))                              \
  X(cuLaunchKernel, 0,                                                                           \
    (CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, \
     void **, void **))                                                                          \
  X(cuLaunchKernelEx, 1, (const CUlaunchConfig *, CUfunction, void **, void **))                 \
  X(cuMemGetInfo, 0, (size_t *, size_t *))                                                       \
  X(cuMemAlloc, 0, (CUdeviceptr *, size_t))                                                      \
  X(cuMemFree, 0, (CUdeviceptr))                                                                 \
  X(cuMemAllocAsync, 1, (CUdeviceptr *, size_t, CUstream))                                       \
  X(cuMemFreeAsync, 1, (CUdeviceptr, CUstream))                                                  \
  X(cuMemAllocHost, 0, (void **, size_t))                                                        \
  X(cuMemFreeHost, 0, (void *))                                                                  \
  X(cuMemcpyHtoD, 0, (CUdeviceptr, const void *, size_t))                                        \
  X(cuMemcpyDtoH, 0, (void *, CUdeviceptr, size_t))                                              \
  X(cuMemcpyDtoD, 0, (CUdeviceptr, CUdeviceptr, size_t))                                         \
  X(cuMemcpyDtoDAsync, 0, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                          \
  X(cuMemcpyDtoHAsync, 0, (void *, CUdeviceptr, size_t, CUstream))                               \
  X(cuMemcpyHtoDAsync, 0, (CUdeviceptr, const void *, size_t, CUstream))                         \
  X(cuMemcpyAsync, 0, (CUdeviceptr, CUdeviceptr, size_t, CUstream))                              \
  X(cuMemsetD8, 0, (CUdeviceptr, unsigned char, size_t))                                         \
  X(cuMemsetD32Async, 0, (CUdeviceptr, unsigned int, size_t, CUstream))                          \
  X(cuStreamCreate, 0, (CUstream *, unsigned int))                                               \
  X(cuStreamDestroy, 0, (CUstream))                                                              \
  X(cuStreamSynchronize, 0, (CUstream))                                                          \
  X(cuEventCreate, 0, (CUevent *, unsigned int))                                                 \
  X(cuEventDestroy, 0, (CUevent))                                                                \
  X(cuEventRecord, 0, (CUevent, CUstream))                                                       \
  X(cuEventSynchronize, 0, (CUevent))                                                            \
  X(cuEventElapsedTime, 0, (float *, CUevent, CUevent))                                         \
  X(cuStreamBeginCapture, 1, (CUstream, CUstreamCaptureMode))                                    \
  X(cuStreamEndCapture, 1, (CUstream, CUgraph *))                                                \
  X(cuGraphInstantiateWithFlags, 1, (CUgraphExec *, CUgraph, unsigned long long))                \
  X(cuGraphLaunch, 1, (CUgraphExec, CUstream))                                                   \
  X(cuGraphExecDestroy, 1, (CUgraphExec))                                                        \
  X(cuGraphDestroy, 1, (CUgraph))                                                                \
  X(cuTensorMapEncodeTiled, 1,                                                                   \
    (CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *, const cuuint64_t *, \
     const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,            \
     CUtensorMapL2promotion, CUtensorMapFloatOOBfill))
// clang-format on

/* Members are named after the driver's functions; cuda.h's macros (cuMemAlloc -> cuMemAlloc_v2)
 * rename declaration and use alike, so the names stay consistent. */
typedef struct yk_cuda_api {
  void *library;
#define YK_CUDA_MEMBER(name, optional, args) CUresult(*name) args;
  YK_CUDA_FUNCTIONS(YK_CUDA_MEMBER)
#undef YK_CUDA_MEMBER
} yk_cuda_api;

/* The CUDA version whose entry points are requested: 12.0, so any 12.x or 13.x driver serves. */
#define YK_CUDA_ABI_VERSION 12000

/* Opens libcuda.so.1 and resolves the table. The driver and NVRTC stay mapped once opened
 * (RTLD_NODELETE): unloading them frees little, and unloading NVRTC orphans the C++ runtime's
 * allocations it pulled in. On failure returns nonzero with a reason in why
 * ("no CUDA driver: libcuda.so.1: cannot open shared object file") and leaves api zeroed. */
int yk_cuda_api_open(yk_cuda_api *api, char *why, size_t why_size);
void yk_cuda_api_close(yk_cuda_api *api);

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" into buf. */
const char *yk_cuda_error_text(const yk_cuda_api *api, CUresult r, char *buf, size_t size);

#endif
