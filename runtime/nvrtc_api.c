#include "runtime/nvrtc_api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void *open_first(const char *const *candidates, int count, char *path, size_t path_size, char *why,
                        size_t why_size) {
  size_t used = 0;
  why[0] = '\0';
  for (int i = 0; i < count; i++) {
    if (!candidates[i] || !candidates[i][0]) continue;
    void *lib = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (lib) {
      snprintf(path, path_size, "%s", candidates[i]);
      return lib;
    }
    const char *err = dlerror();
    int n = snprintf(why + used, why_size - used, "%s%s", used ? "; " : "", err ? err : candidates[i]);
    if (n > 0 && (size_t)n < why_size - used) used += (size_t)n;
  }
  return NULL;
}

/* The loaded file's real path, found from one of its symbols. */
static void resolve_path(void *symbol, char *path, size_t path_size) {
  Dl_info info;
  if (dladdr(symbol, &info) && info.dli_fname) {
    char *real = realpath(info.dli_fname, NULL);
    snprintf(path, path_size, "%s", real ? real : info.dli_fname);
    free(real);
  }
}

int yk_nvrtc_api_open(yk_nvrtc_api *api, char *why, size_t why_size) {
  memset(api, 0, sizeof *api);
  char home13[512] = "", home12[512] = "";
  const char *cuda_home = getenv("CUDA_HOME");
  if (cuda_home && cuda_home[0]) {
    snprintf(home13, sizeof home13, "%s/lib64/libnvrtc.so.13", cuda_home);
    snprintf(home12, sizeof home12, "%s/lib64/libnvrtc.so.12", cuda_home);
  }
  const char *candidates[] = {
      getenv("YK_NVRTC_PATH"),
      "libnvrtc.so.13",
      "libnvrtc.so.12",
      home13,
      home12,
      "/usr/local/cuda/lib64/libnvrtc.so.13",
      "/usr/local/cuda/lib64/libnvrtc.so.12",
  };
  char reasons[1024];
  void *lib = open_first(candidates, (int)(sizeof candidates / sizeof candidates[0]), api->path, sizeof api->path,
                         reasons, sizeof reasons);
  if (!lib) {
    snprintf(why, why_size, "NVRTC not found: %s", reasons);
    return 1;
  }
  struct {
    const char *name;
    void **slot;
  } symbols[] = {
      {"nvrtcVersion", (void **)&api->nvrtcVersion},
      {"nvrtcGetErrorString", (void **)&api->nvrtcGetErrorString},
      {"nvrtcGetNumSupportedArchs", (void **)&api->nvrtcGetNumSupportedArchs},
      {"nvrtcGetSupportedArchs", (void **)&api->nvrtcGetSupportedArchs},
      {"nvrtcCreateProgram", (void **)&api->nvrtcCreateProgram},
      {"nvrtcDestroyProgram", (void **)&api->nvrtcDestroyProgram},
      {"nvrtcCompileProgram", (void **)&api->nvrtcCompileProgram},
      {"nvrtcGetPTXSize", (void **)&api->nvrtcGetPTXSize},
      {"nvrtcGetPTX", (void **)&api->nvrtcGetPTX},
      {"nvrtcGetCUBINSize", (void **)&api->nvrtcGetCUBINSize},
      {"nvrtcGetCUBIN", (void **)&api->nvrtcGetCUBIN},
      {"nvrtcGetProgramLogSize", (void **)&api->nvrtcGetProgramLogSize},
      {"nvrtcGetProgramLog", (void **)&api->nvrtcGetProgramLog},
  };
  for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
    *symbols[i].slot = dlsym(lib, symbols[i].name);
    if (!*symbols[i].slot) {
      snprintf(why, why_size, "NVRTC at %s lacks %s", api->path, symbols[i].name);
      dlclose(lib);
      memset(api, 0, sizeof *api);
      return 1;
    }
  }
  int count = 0;
  if (api->nvrtcVersion(&api->major, &api->minor) != NVRTC_SUCCESS ||
      api->nvrtcGetNumSupportedArchs(&count) != NVRTC_SUCCESS || count <= 0 ||
      count > (int)(sizeof api->archs / sizeof api->archs[0]) ||
      api->nvrtcGetSupportedArchs(api->archs) != NVRTC_SUCCESS) {
    snprintf(why, why_size, "NVRTC at %s did not report its version and architectures", api->path);
    dlclose(lib);
    memset(api, 0, sizeof *api);
    return 1;
  }
  api->arch_count = count;
  resolve_path((void *)api->nvrtcVersion, api->path, sizeof api->path);
  /* nvrtcVersion names the release only; two builds of one release can emit different code, and
   * the library's size tells them apart at no cost (compiling a probe to read the build id from
   * the PTX header would cost ~40 ms at the first cache hit). */
  struct stat st;
  long long size = stat(api->path, &st) == 0 ? (long long)st.st_size : 0;
  snprintf(api->identity, sizeof api->identity, "nvrtc-%d.%d-%lld", api->major, api->minor, size);
  api->library = lib;
  return 0;
}

void yk_nvrtc_api_close(yk_nvrtc_api *api) {
  if (api->library) dlclose(api->library);
  memset(api, 0, sizeof *api);
}

int yk_nvrtc_supports_arch(const yk_nvrtc_api *api, int number) {
  for (int i = 0; i < api->arch_count; i++)
    if (api->archs[i] == number) return 1;
  return 0;
}
