/* The context's insides, for the library's own files. */
#ifndef YK_RUNTIME_CONTEXT_H
#define YK_RUNTIME_CONTEXT_H

#include <pthread.h>
#include <stdatomic.h>

#include "cache/kernel_cache.h"
#include "cpu_fallback/parallel.h"
#include "runtime/cuda_api.h"
#include "runtime/nvrtc_api.h"
#include "yk/context.h"

typedef struct yk_error_slot yk_error_slot;
typedef struct yk_tune_table yk_tune_table;

struct yk_ctx {
  yk_device_kind device; /* YK_DEVICE_CPU or YK_DEVICE_CUDA: where ops run */
  char device_note[512];

  /* CUDA, when device == YK_DEVICE_CUDA */
  yk_cuda_api cu;
  CUdevice cu_device;
  CUcontext cu_context; /* the device's primary context, retained */
  int ordinal;
  char device_name[128];
  int compute_major, compute_minor, multiprocessors, driver_version;
  int max_shared_per_block_optin;
  size_t device_memory_bytes;
  char target[16]; /* what this device's kernels compile to: "sm_90", or "compute_X" for a
                      device newer than NVRTC knows */
  char target_arch_specific[16]; /* "sm_90a" where the device runs one generation's own
                                    instructions and NVRTC builds them, else "" */
  int prefill_mma_sync;           /* YK_PREFILL_KERNEL=mma_sync: never the sm_90a prefill (tests, comparisons) */
  int backward_mma_sync;          /* YK_BACKWARD_KERNEL=mma_sync: never the sm_90a backward (likewise) */

  /* NVRTC: optional; without it only what the disk cache already holds can run */
  yk_nvrtc_api nvrtc;
  int has_nvrtc;
  char nvrtc_note[1024];

  yk_kernel_cache cache;
  yk_thread_pool pool;

  /* per-thread last-error messages (runtime/error.c) */
  pthread_key_t error_key;
  pthread_mutex_t error_lock;
  yk_error_slot *error_slots;

  yk_log_fn log;
  void *log_user;
  atomic_uint warned_once; /* YK_WARN_* bits already reported */

  /* Rewrites the tunable fields of a spec an op is about to launch (yk_spec_finish): how a sweep
   * times configurations through the ops themselves. NULL in normal use. */
  void (*spec_override)(void *user, yk_spec *spec);
  void *spec_override_user;

  /* This GPU's tuned configurations (tune/tune_table.h), read from the tuning database at
   * creation and never changed after; NULL when there are none. */
  yk_tune_table *tune;
};

#endif
