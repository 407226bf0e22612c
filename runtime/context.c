#include "runtime/context.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "runtime/module.h"
#include "tune/tune_context.h"
#include "tune/tune_table.h"
#include "yk/yk.h"

void yk_ctx_options_init(yk_ctx_options *options) {
  memset(options, 0, sizeof *options);
  options->device = YK_DEVICE_AUTO;
}

const char *yk_version(void) { return YK_VERSION_STRING; }

/* The requested device kind: the option, else YK_DEVICE. */
static yk_status requested_device(const yk_ctx_options *options, yk_device_kind *out) {
  *out = options->device;
  if (*out != YK_DEVICE_AUTO) return YK_OK;
  const char *env = getenv("YK_DEVICE");
  if (!env || !env[0] || strcmp(env, "auto") == 0) return YK_OK;
  if (strcmp(env, "cpu") == 0)
    *out = YK_DEVICE_CPU;
  else if (strcmp(env, "cuda") == 0)
    *out = YK_DEVICE_CUDA;
  else
    return yk_error_no_ctx(YK_ERR_INVALID_ARGUMENT, "YK_DEVICE=%s: expected cpu, cuda or auto", env);
  return YK_OK;
}

/* Opens the driver and the device; 0 on success, else the reason in ctx->device_note. */
static int open_cuda(yk_ctx *ctx, int ordinal) {
  char why[512];
  if (yk_cuda_api_open(&ctx->cu, why, sizeof why)) {
    snprintf(ctx->device_note, sizeof ctx->device_note, "%s", why);
    return 1;
  }
  yk_cuda_api *cu = &ctx->cu;
  CUresult r = cu->cuInit(0);
  int count = 0;
  if (r == CUDA_SUCCESS) r = cu->cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS || count == 0) {
    char text[256];
    snprintf(ctx->device_note, sizeof ctx->device_note, "%s",
             r != CUDA_SUCCESS ? yk_cuda_error_text(cu, r, text, sizeof text) : "the driver reports 0 devices");
    yk_cuda_api_close(cu);
    return 1;
  }
  if (ordinal < 0 || ordinal >= count) {
    snprintf(ctx->device_note, sizeof ctx->device_note, "device %d requested, %d present", ordinal, count);
    yk_cuda_api_close(cu);
    return 1;
  }
  int max_smem = 0;
  if ((r = cu->cuDeviceGet(&ctx->cu_device, ordinal)) != CUDA_SUCCESS ||
      (r = cu->cuDeviceGetName(ctx->device_name, sizeof ctx->device_name, ctx->cu_device)) != CUDA_SUCCESS ||
      (r = cu->cuDeviceGetAttribute(&ctx->compute_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                                    ctx->cu_device)) != CUDA_SUCCESS ||
      (r = cu->cuDeviceGetAttribute(&ctx->compute_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                                    ctx->cu_device)) != CUDA_SUCCESS ||
      (r = cu->cuDeviceGetAttribute(&ctx->multiprocessors, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, ctx->cu_device)) !=
          CUDA_SUCCESS ||
      (r = cu->cuDeviceGetAttribute(&max_smem, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                                    ctx->cu_device)) != CUDA_SUCCESS ||
      (r = cu->cuDeviceTotalMem(&ctx->device_memory_bytes, ctx->cu_device)) != CUDA_SUCCESS ||
      (r = cu->cuDriverGetVersion(&ctx->driver_version)) != CUDA_SUCCESS ||
      (r = cu->cuDevicePrimaryCtxRetain(&ctx->cu_context, ctx->cu_device)) != CUDA_SUCCESS) {
    char text[256];
    snprintf(ctx->device_note, sizeof ctx->device_note, "device %d: %s", ordinal,
             yk_cuda_error_text(cu, r, text, sizeof text));
    yk_cuda_api_close(cu);
    return 1;
  }
  ctx->max_shared_per_block_optin = max_smem;
  ctx->ordinal = ordinal;
  return 0;
}

/* The compile target for the device: its own sm_XY where NVRTC knows it, else PTX for the newest
 * architecture NVRTC knows below it, which the driver compiles at load. */
static void choose_target(yk_ctx *ctx) {
  int number = ctx->compute_major * 10 + ctx->compute_minor;
  if (!ctx->has_nvrtc || yk_nvrtc_supports_arch(&ctx->nvrtc, number)) {
    snprintf(ctx->target, sizeof ctx->target, "sm_%d", number);
    /* generation-specific instructions (wgmma) exist for sm_90 as sm_90a */
    if (number == 90) snprintf(ctx->target_arch_specific, sizeof ctx->target_arch_specific, "sm_%da", number);
    return;
  }
  int best = 0;
  for (int i = 0; i < ctx->nvrtc.arch_count; i++)
    if (ctx->nvrtc.archs[i] <= number && ctx->nvrtc.archs[i] > best) best = ctx->nvrtc.archs[i];
  snprintf(ctx->target, sizeof ctx->target, best ? "compute_%d" : "sm_%d", best ? best : number);
}

yk_status yk_ctx_create(const yk_ctx_options *user_options, yk_ctx **out) {
  if (!out) return yk_error_no_ctx(YK_ERR_INVALID_ARGUMENT, "yk_ctx_create: out is NULL");
  *out = NULL;
  yk_ctx_options options;
  if (user_options)
    options = *user_options;
  else
    yk_ctx_options_init(&options);
  yk_device_kind want;
  yk_status st = requested_device(&options, &want);
  if (st != YK_OK) return st;

  yk_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return yk_error_no_ctx(YK_ERR_OUT_OF_MEMORY, "yk_ctx_create: out of memory");
  ctx->log = options.log;
  ctx->log_user = options.log_user;
  atomic_init(&ctx->warned_once, 0);
  if (yk_errors_init(ctx)) {
    free(ctx);
    return yk_error_no_ctx(YK_ERR_INTERNAL, "yk_ctx_create: cannot create a thread-local key");
  }

  ctx->device = YK_DEVICE_CPU;
  if (want == YK_DEVICE_CPU) {
    snprintf(ctx->device_note, sizeof ctx->device_note, "%s",
             options.device == YK_DEVICE_CPU ? "the CPU was requested" : "YK_DEVICE=cpu");
  } else if (open_cuda(ctx, options.device_ordinal) == 0) {
    ctx->device = YK_DEVICE_CUDA;
  } else if (want == YK_DEVICE_CUDA) {
    yk_error_no_ctx(YK_ERR_NO_DEVICE, "no CUDA device: %s", ctx->device_note);
    yk_errors_destroy(ctx);
    free(ctx);
    return YK_ERR_NO_DEVICE;
  }

  char why[1024];
  ctx->has_nvrtc = yk_nvrtc_api_open(&ctx->nvrtc, why, sizeof why) == 0;
  if (!ctx->has_nvrtc) snprintf(ctx->nvrtc_note, sizeof ctx->nvrtc_note, "%s", why);
  if (ctx->device == YK_DEVICE_CUDA) choose_target(ctx);
  const char *prefill = getenv("YK_PREFILL_KERNEL");
  ctx->prefill_mma_sync = prefill && !strcmp(prefill, "mma_sync");
  const char *backward = getenv("YK_BACKWARD_KERNEL");
  ctx->backward_mma_sync = backward && !strcmp(backward, "mma_sync");

  if (yk_kernel_cache_init(&ctx->cache)) goto fail_cache;
  if (yk_thread_pool_init(&ctx->pool, options.cpu_threads)) goto fail_pool;
  yk_disk_cache_init(ctx, &ctx->cache.disk, &options);
  yk_tune_attach(ctx);
  *out = ctx;
  return YK_OK;

fail_pool:
  yk_kernel_cache_destroy(&ctx->cache, ctx);
fail_cache:
  if (ctx->cu_context) ctx->cu.cuDevicePrimaryCtxRelease(ctx->cu_device);
  yk_cuda_api_close(&ctx->cu);
  yk_nvrtc_api_close(&ctx->nvrtc);
  yk_errors_destroy(ctx);
  free(ctx);
  return yk_error_no_ctx(YK_ERR_INTERNAL, "yk_ctx_create: cannot create locks");
}

void yk_ctx_destroy(yk_ctx *ctx) {
  if (!ctx) return;
  if (ctx->device == YK_DEVICE_CUDA) yk_cuda_make_current(ctx);
  yk_kernel_cache_destroy(&ctx->cache, ctx);
  yk_thread_pool_destroy(&ctx->pool);
  yk_tune_table_free(ctx->tune);
  if (ctx->cu_context) ctx->cu.cuDevicePrimaryCtxRelease(ctx->cu_device);
  yk_cuda_api_close(&ctx->cu);
  yk_nvrtc_api_close(&ctx->nvrtc);
  yk_errors_destroy(ctx);
  free(ctx);
}

yk_status yk_ctx_get_info(yk_ctx *ctx, yk_ctx_info *out) {
  if (!ctx || !out)
    return ctx ? yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_ctx_get_info: out is NULL") : YK_ERR_INVALID_ARGUMENT;
  int cuda = ctx->device == YK_DEVICE_CUDA;
  *out = (yk_ctx_info){
      .device = ctx->device,
      .device_note = cuda ? "" : ctx->device_note,
      .device_name = cuda ? ctx->device_name : "",
      .compute_major = ctx->compute_major,
      .compute_minor = ctx->compute_minor,
      .multiprocessors = ctx->multiprocessors,
      .device_memory_bytes = ctx->device_memory_bytes,
      .arch = ctx->target,
      .driver_version = ctx->driver_version,
      .nvrtc_major = ctx->nvrtc.major,
      .nvrtc_minor = ctx->nvrtc.minor,
      .nvrtc_path = ctx->has_nvrtc ? ctx->nvrtc.path : "",
      .cache_dir = ctx->cache.disk.dir,
      .cache_path = ctx->cache.disk.read_path,
      .cpu_threads = ctx->pool.threads,
      .cpu_kernels = ctx->pool.isa == YK_CPU_AMX      ? "amx"
                     : ctx->pool.isa == YK_CPU_AVX512 ? "avx512"
                     : ctx->pool.isa == YK_CPU_AVX2 ? "avx2"
                                                    : "plain",
  };
  return YK_OK;
}
