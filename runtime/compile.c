#include "runtime/compile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int yk_compile_options(const yk_nvrtc_api *nvrtc, const char *target, const char *options[YK_COMPILE_MAX_OPTIONS],
                       char *arch_option, size_t arch_option_size) {
  int n = 0;
  snprintf(arch_option, arch_option_size, "--gpu-architecture=%s", target);
  options[n++] = arch_option;
  options[n++] = "-default-device";
  options[n++] = "--std=c++17";
  options[n++] = "--minimal"; /* no texture or runtime API declarations: cuts cold compile time */
  /* NVRTC's default raises the process's stack rlimit, which is not ours to change in a host
   * that compiles from several threads. */
  options[n++] = "--modify-stack-limit=false";
  if (strncmp(target, "sm_", 3) == 0) options[n++] = "--ptxas-options=-v"; /* registers, spills */
  /* NVRTC 12.9+ keeps its own cache of ptxas results (in the driver's compute cache, where a driver
   * is installed); a hit skips ptxas and its -v report, and we cache whole entries ourselves. */
  if (nvrtc->major > 12 || (nvrtc->major == 12 && nvrtc->minor >= 9)) options[n++] = "--no-cache";
  return n;
}

void yk_binary_free(yk_binary *b) {
  free(b->ptx);
  free(b->cubin);
  free(b->meta);
  memset(b, 0, sizeof *b);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* ptxas -v, one entry function:
 *   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
 *   ptxas info    : Used 16 registers, used 1 barriers, 128 bytes smem */
static void parse_ptxas_log(const char *log, yk_kernel_meta *m) {
  m->registers = m->spill_store_bytes = m->spill_load_bytes = m->stack_bytes = m->shared_bytes = -1;
  const char *p;
  if ((p = strstr(log, "bytes stack frame"))) {
    const char *line = p;
    while (line > log && line[-1] != '\n') line--;
    const char *dot = strchr(line, '.');
    if (dot && dot < p) m->stack_bytes = atoi(dot + 1);
    const char *q = strstr(p, ", ");
    if (q) m->spill_store_bytes = atoi(q + 2);
    q = q ? strstr(q + 2, ", ") : NULL;
    if (q) m->spill_load_bytes = atoi(q + 2);
  }
  if ((p = strstr(log, "Used "))) {
    m->registers = atoi(p + 5);
    const char *end = strchr(p, '\n');
    const char *smem = strstr(p, "bytes smem");
    if (smem && (!end || smem < end)) {
      const char *num = smem;
      while (num > p && num[-1] == ' ') num--;
      while (num > p && num[-1] >= '0' && num[-1] <= '9') num--;
      m->shared_bytes = atoi(num);
    } else {
      m->shared_bytes = 0;
    }
  }
}

static char *program_log(const yk_nvrtc_api *nv, nvrtcProgram prog) {
  size_t size = 0;
  if (nv->nvrtcGetProgramLogSize(prog, &size) != NVRTC_SUCCESS || size == 0) return NULL;
  char *log = malloc(size + 1);
  if (!log) return NULL;
  if (nv->nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = '\0';
  log[size] = '\0';
  return log;
}

static int write_meta(yk_binary *b, const char *spec_text, const char *target, const char *kernel_name,
                      const char *nvrtc_identity, const yk_kernel_meta *m) {
  char buf[1536];
  int n = snprintf(buf, sizeof buf,
                   "spec=%s\ntarget=%s\nkernel=%s\nnvrtc=%s\nregisters=%d\nspill_store_bytes=%d\n"
                   "spill_load_bytes=%d\nstack_bytes=%d\nshared_bytes=%d\ncompile_ms=%.3f\n",
                   spec_text, target, kernel_name, nvrtc_identity, m->registers, m->spill_store_bytes,
                   m->spill_load_bytes, m->stack_bytes, m->shared_bytes, m->compile_ms);
  if (n < 0 || (size_t)n >= sizeof buf || !(b->meta = malloc((size_t)n + 1))) return 1;
  memcpy(b->meta, buf, (size_t)n + 1);
  b->meta_size = (size_t)n + 1;
  yk_binary_parse_meta(b);
  return 0;
}

int yk_compile(const yk_nvrtc_api *nv, const char *source, const char *file_name, const char *target,
               const char *spec_text, const char *kernel_name, yk_binary *out, char *why, size_t why_size) {
  memset(out, 0, sizeof *out);
  const char *options[YK_COMPILE_MAX_OPTIONS];
  char arch_option[64];
  int count = yk_compile_options(nv, target, options, arch_option, sizeof arch_option);
  double t0 = now_ms();
  nvrtcProgram prog;
  nvrtcResult r = nv->nvrtcCreateProgram(&prog, source, file_name, 0, NULL, NULL);
  if (r != NVRTC_SUCCESS) {
    snprintf(why, why_size, "nvrtcCreateProgram: %s", nv->nvrtcGetErrorString(r));
    return 1;
  }
  r = nv->nvrtcCompileProgram(prog, count, options);
  char *log = program_log(nv, prog);
  int failed = 1;
  if (r != NVRTC_SUCCESS) {
    snprintf(why, why_size, "NVRTC %s for %s:\n%s", nv->nvrtcGetErrorString(r), target, log ? log : "(no log)");
    goto done;
  }
  if ((r = nv->nvrtcGetPTXSize(prog, &out->ptx_size)) != NVRTC_SUCCESS || !(out->ptx = malloc(out->ptx_size)) ||
      (r = nv->nvrtcGetPTX(prog, out->ptx)) != NVRTC_SUCCESS) {
    snprintf(why, why_size, "reading PTX: %s", r != NVRTC_SUCCESS ? nv->nvrtcGetErrorString(r) : "out of memory");
    goto done;
  }
  if (strncmp(target, "sm_", 3) == 0) {
    if ((r = nv->nvrtcGetCUBINSize(prog, &out->cubin_size)) != NVRTC_SUCCESS || out->cubin_size == 0 ||
        !(out->cubin = malloc(out->cubin_size)) || (r = nv->nvrtcGetCUBIN(prog, out->cubin)) != NVRTC_SUCCESS) {
      snprintf(why, why_size, "reading cubin: %s",
               r != NVRTC_SUCCESS ? nv->nvrtcGetErrorString(r) : "no cubin or out of memory");
      goto done;
    }
  }
  yk_kernel_meta m;
  parse_ptxas_log(log ? log : "", &m);
  m.compile_ms = now_ms() - t0;
  if (write_meta(out, spec_text, target, kernel_name, nv->identity, &m)) {
    snprintf(why, why_size, "out of memory");
    goto done;
  }
  failed = 0;
done:
  free(log);
  nv->nvrtcDestroyProgram(&prog);
  if (failed) yk_binary_free(out);
  return failed;
}

const char *yk_binary_meta_field(const yk_binary *b, const char *name, char *buf, size_t size) {
  buf[0] = '\0';
  size_t name_len = strlen(name);
  for (const char *line = b->meta; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (len > name_len && line[name_len] == '=' && strncmp(line, name, name_len) == 0) {
      size_t v = len - name_len - 1;
      if (v >= size) v = size - 1;
      memcpy(buf, line + name_len + 1, v);
      buf[v] = '\0';
      return buf;
    }
    line = end ? end + 1 : NULL;
  }
  return buf;
}

static int meta_int(const yk_binary *b, const char *name) {
  char v[32];
  return yk_binary_meta_field(b, name, v, sizeof v)[0] ? atoi(v) : -1;
}

void yk_binary_parse_meta(yk_binary *b) {
  char v[32];
  b->info.registers = meta_int(b, "registers");
  b->info.spill_store_bytes = meta_int(b, "spill_store_bytes");
  b->info.spill_load_bytes = meta_int(b, "spill_load_bytes");
  b->info.stack_bytes = meta_int(b, "stack_bytes");
  b->info.shared_bytes = meta_int(b, "shared_bytes");
  b->info.compile_ms = yk_binary_meta_field(b, "compile_ms", v, sizeof v)[0] ? atof(v) : -1;
}
