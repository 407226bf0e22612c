#include "runtime/cuda_api.h"

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* cuGetProcAddress_v2 (CUDA 12.0+): symbol, pfn, cudaVersion, flags, symbolStatus. */
typedef CUresult (*get_proc_v2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

typedef struct {
  const char *name;
  size_t offset;
  int optional;
} entry_point;

static const entry_point entry_points[] = {
#define YK_CUDA_ENTRY(name, optional, args) {#name, offsetof(yk_cuda_api, name), optional},
    YK_CUDA_FUNCTIONS(YK_CUDA_ENTRY)
#undef YK_CUDA_ENTRY
};

int yk_cuda_api_open(yk_cuda_api *api, char *why, size_t why_size) {
  memset(api, 0, sizeof *api);
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (!lib) {
    snprintf(why, why_size, "no CUDA driver: %s", dlerror());
    return 1;
  }
  get_proc_v2_fn get_proc = (get_proc_v2_fn)dlsym(lib, "cuGetProcAddress_v2");
  if (!get_proc) {
    snprintf(why, why_size, "CUDA driver too old: cuGetProcAddress_v2 missing (need 12.0 or newer)");
    dlclose(lib);
    return 1;
  }
  for (size_t i = 0; i < sizeof entry_points / sizeof entry_points[0]; i++) {
    void *fn = NULL;
    CUdriverProcAddressQueryResult found = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    CUresult r = get_proc(entry_points[i].name, &fn, YK_CUDA_ABI_VERSION, CU_GET_PROC_ADDRESS_DEFAULT, &found);
    if (r != CUDA_SUCCESS || found != CU_GET_PROC_ADDRESS_SUCCESS || !fn) {
      if (entry_points[i].optional) continue;
      snprintf(why, why_size, "CUDA driver lacks %s at ABI %d (result %d)", entry_points[i].name, YK_CUDA_ABI_VERSION,
               (int)r);
      memset(api, 0, sizeof *api);
      dlclose(lib);
      return 1;
    }
    memcpy((char *)api + entry_points[i].offset, &fn, sizeof fn);
  }
  api->library = lib;
  return 0;
}

void yk_cuda_api_close(yk_cuda_api *api) {
  if (api->library) dlclose(api->library);
  memset(api, 0, sizeof *api);
}

const char *yk_cuda_error_text(const yk_cuda_api *api, CUresult r, char *buf, size_t size) {
  const char *name = NULL, *text = NULL;
  if (api->cuGetErrorName) api->cuGetErrorName(r, &name);
  if (api->cuGetErrorString) api->cuGetErrorString(r, &text);
  snprintf(buf, size, "%s (%s)", name ? name : "CUDA_ERROR_UNKNOWN", text ? text : "no description");
  return buf;
}
