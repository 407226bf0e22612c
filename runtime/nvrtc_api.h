/* NVRTC, opened with dlopen. Only compiling needs it: a context whose kernels all come from the
 * disk cache runs without NVRTC installed. */
#ifndef YK_RUNTIME_NVRTC_API_H
#define YK_RUNTIME_NVRTC_API_H

#include <nvrtc.h>
#include <stddef.h>

typedef struct yk_nvrtc_api {
  void *library;
  char path[512];    /* the file dlopen loaded */
  char identity[96]; /* version and build, part of every cache key */
  int major, minor;
  int archs[64]; /* real architectures it compiles for (75, 80, 90, ...) */
  int arch_count;
  nvrtcResult (*nvrtcVersion)(int *, int *);
  const char *(*nvrtcGetErrorString)(nvrtcResult);
  nvrtcResult (*nvrtcGetNumSupportedArchs)(int *);
  nvrtcResult (*nvrtcGetSupportedArchs)(int *);
  nvrtcResult (*nvrtcCreateProgram)(nvrtcProgram *, const char *, const char *, int, const char *const *,
                                    const char *const *);
  nvrtcResult (*nvrtcDestroyProgram)(nvrtcProgram *);
  nvrtcResult (*nvrtcCompileProgram)(nvrtcProgram, int, const char *const *);
  nvrtcResult (*nvrtcGetPTXSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetPTX)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcGetCUBINSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetCUBIN)(nvrtcProgram, char *);
  nvrtcResult (*nvrtcGetProgramLogSize)(nvrtcProgram, size_t *);
  nvrtcResult (*nvrtcGetProgramLog)(nvrtcProgram, char *);
} yk_nvrtc_api;

/* Tries YK_NVRTC_PATH, then libnvrtc.so.13 and .12 on the loader's path, then the same names
 * under $CUDA_HOME/lib64 and /usr/local/cuda/lib64. Nonzero with a reason when none loads. */
int yk_nvrtc_api_open(yk_nvrtc_api *api, char *why, size_t why_size);
void yk_nvrtc_api_close(yk_nvrtc_api *api);

/* Whether NVRTC can emit a cubin for sm_<number> (90 for sm_90 and sm_90a). */
int yk_nvrtc_supports_arch(const yk_nvrtc_api *api, int number);

#endif
