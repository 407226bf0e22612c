/* The context: one per device an engine uses. It owns the loaded CUDA and NVRTC libraries, the
 * kernel cache (memory and disk), the CPU fallback's worker threads and the last-error messages.
 *
 * A context may be shared by threads: ops, warm-up and cache calls are thread-safe. The last-error
 * message is kept per calling thread, so one thread's failure never overwrites another's. */
#ifndef YK_CONTEXT_H
#define YK_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "yk/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct yk_ctx yk_ctx;

typedef enum yk_device_kind {
  YK_DEVICE_AUTO = 0, /* YK_DEVICE if set, else CUDA where a driver and a device exist, else CPU */
  YK_DEVICE_CPU = 1,  /* CPU fallback only; NVRTC still compiles (warm-up needs no GPU) */
  YK_DEVICE_CUDA = 2  /* a CUDA device is required: creating the context fails without one */
} yk_device_kind;

typedef enum yk_log_level { YK_LOG_WARNING = 1, YK_LOG_INFO = 2 } yk_log_level;

/* The library never prints. Warnings (an unwritable or untrusted cache directory, a corrupt
 * entry recompiled) go to this function when one is set, and are dropped otherwise. */
typedef void (*yk_log_fn)(void *user, yk_log_level level, const char *message);

typedef struct yk_ctx_options {
  yk_device_kind device;
  int device_ordinal;     /* CUDA device index; default 0 */
  const char *cache_dir;  /* NULL: YK_CACHE_DIR, else $XDG_CACHE_HOME/yk, else ~/.cache/yk */
  const char *cache_path; /* NULL: YK_CACHE_PATH; extra read-only directories, ':'-separated */
  int cache_memory_only;  /* nonzero (or YK_CACHE=memory): no disk reads or writes */
  int cpu_threads;        /* CPU fallback workers; 0: YK_NUM_THREADS, else online CPUs */
  yk_log_fn log;
  void *log_user;
} yk_ctx_options;

/* Fills the defaults above. */
YK_API void yk_ctx_options_init(yk_ctx_options *options);

/* Creates a context. options may be NULL for the defaults. On failure *out is NULL and the
 * reason is read with yk_ctx_last_error(NULL) from the same thread. */
YK_API yk_status yk_ctx_create(const yk_ctx_options *options, yk_ctx **out);

/* Waits for nothing: the caller synchronises its streams first. Frees every kernel, module,
 * thread and message of the context. NULL is ignored. */
YK_API void yk_ctx_destroy(yk_ctx *ctx);

/* The message of the calling thread's last failed call on ctx ("" if none). With ctx NULL, the
 * message of this thread's last failed yk_ctx_create. Valid until the thread's next call. */
YK_API const char *yk_ctx_last_error(const yk_ctx *ctx);

typedef struct yk_ctx_info {
  yk_device_kind device;   /* what this context runs ops on: YK_DEVICE_CPU or YK_DEVICE_CUDA */
  const char *device_note; /* why the CPU was chosen ("no CUDA driver: ..."); "" on CUDA */
  const char *device_name; /* "NVIDIA H100 80GB HBM3"; "" on CPU */
  int compute_major, compute_minor;
  int multiprocessors;
  size_t device_memory_bytes;
  const char *arch;             /* NVRTC target for this device ("sm_90"); "" on CPU */
  int driver_version;           /* cuDriverGetVersion (13000 for 13.0); 0 without a driver */
  int nvrtc_major, nvrtc_minor; /* 0.0 without NVRTC */
  const char *nvrtc_path;       /* the libnvrtc file loaded, or "" */
  const char *cache_dir;        /* the writable cache directory, or "" when memory-only */
  const char *cache_path;       /* the read-only directories searched after it, ':'-separated */
  int cpu_threads;
  const char *cpu_kernels; /* the CPU attention's build that runs: "amx" (AVX-512F's, with AMX tiles for the
                              bfloat16 forward where Linux grants them at its first call), "avx512" (AVX-512F
                              too), "avx2" (AVX2, FMA, F16C) or "plain" */
} yk_ctx_info;

/* Strings point into the context and live as long as it. */
YK_API yk_status yk_ctx_get_info(yk_ctx *ctx, yk_ctx_info *out);

/* What the kernel cache has done in this context, for logs and dashboards. */
typedef struct yk_ctx_stats {
  uint64_t kernels;                    /* (spec, target) entries in memory */
  uint64_t compiled;                   /* kernels NVRTC compiled */
  uint64_t disk_hits;                  /* kernels read from the disk cache */
  uint64_t loads;                      /* modules loaded onto the device */
  double compile_ms, disk_ms, load_ms; /* wall time spent on each */
} yk_ctx_stats;

YK_API yk_status yk_ctx_get_stats(yk_ctx *ctx, yk_ctx_stats *out);

#ifdef __cplusplus
}
#endif
#endif
