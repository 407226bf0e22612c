/* The context: device selection, YK_DEVICE, per-thread error messages, info. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support.h"

Test(ctx, cpu_requested_by_environment) {
  setenv("YK_DEVICE", "cpu", 1);
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(NULL, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  yk_ctx_info info;
  cr_assert_eq(yk_ctx_get_info(ctx, &info), YK_OK);
  cr_assert_eq(info.device, YK_DEVICE_CPU);
  cr_assert_str_eq(info.device_note, "YK_DEVICE=cpu");
  cr_assert_str_eq(info.device_name, "");
  cr_assert_gt(info.cpu_threads, 0);
  cr_assert_gt(info.nvrtc_major, 0, "NVRTC not found: the CI image has it");
  yk_ctx_destroy(ctx);
}

Test(ctx, bad_environment_value_is_refused) {
  setenv("YK_DEVICE", "tpu", 1);
  yk_ctx *ctx = (yk_ctx *)0x1;
  ts_assert_rejected(NULL, yk_ctx_create(NULL, &ctx), YK_ERR_INVALID_ARGUMENT, "YK_DEVICE=tpu");
  cr_assert_null(ctx);
}

/* YK_DEVICE=cuda demands a device: with one the context is on it, without one creation fails
 * with the reason. */
Test(ctx, cuda_required) {
  setenv("YK_DEVICE", "cuda", 1);
  yk_ctx *ctx = NULL;
  yk_status st = yk_ctx_create(NULL, &ctx);
  if (st == YK_OK) {
    yk_ctx_info info;
    yk_ctx_get_info(ctx, &info);
    cr_assert_eq(info.device, YK_DEVICE_CUDA);
    cr_assert_neq(info.device_name[0], '\0');
    cr_assert_gt(info.compute_major, 0);
    cr_assert(strncmp(info.arch, "sm_", 3) == 0 || strncmp(info.arch, "compute_", 8) == 0, "arch %s", info.arch);
    yk_ctx_destroy(ctx);
  } else {
    ts_assert_rejected(NULL, st, YK_ERR_NO_DEVICE, "no CUDA device: ");
    cr_assert_null(ctx);
  }
}

Test(ctx, auto_falls_back_to_cpu_with_a_reason) {
  unsetenv("YK_DEVICE");
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(NULL, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  if (info.device == YK_DEVICE_CPU) cr_assert_neq(info.device_note[0], '\0', "CPU chosen without a reason");
  yk_ctx_destroy(ctx);
}

typedef struct {
  yk_ctx *ctx;
  int hidden;
  int wrong_status;
  char message[256];
} failing_thread;

/* Each thread fails differently on one shared context, then reads its own message back. */
static void *fail_and_read(void *p) {
  failing_thread *t = p;
  char spec[64];
  snprintf(spec, sizeof spec, "rms_norm:dtype=bf16,hidden=%d,vec=16", t->hidden);
  char *out = NULL;
  for (int i = 0; i < 200; i++) {
    if (yk_spec_canonical(t->ctx, spec, &out) != YK_ERR_INVALID_ARGUMENT) { /* parsing must be thread-safe too */
      t->wrong_status++;
      yk_free(out);
    }
    snprintf(t->message, sizeof t->message, "%s", yk_ctx_last_error(t->ctx));
    if (!strstr(t->message, spec)) return NULL;
  }
  return NULL;
}

Test(ctx, last_error_is_per_thread) {
  yk_ctx *ctx = ts_cpu_ctx();
  enum { THREADS = 6 };
  pthread_t threads[THREADS];
  failing_thread t[THREADS];
  for (int i = 0; i < THREADS; i++) {
    t[i] = (failing_thread){ctx, 100 + i, 0, ""};
    pthread_create(&threads[i], NULL, fail_and_read, &t[i]);
  }
  for (int i = 0; i < THREADS; i++) {
    pthread_join(threads[i], NULL);
    char spec[64];
    snprintf(spec, sizeof spec, "hidden=%d", 100 + i);
    cr_assert(strstr(t[i].message, spec), "thread %d read another thread's message: %s", i, t[i].message);
    cr_assert_eq(t[i].wrong_status, 0, "thread %d: an invalid spec was accepted %d times", i, t[i].wrong_status);
  }
  cr_assert_str_eq(yk_ctx_last_error(ctx), "", "the main thread has not failed");
  yk_ctx_destroy(ctx);
}

Test(ctx, status_names_and_version) {
  cr_assert_str_eq(yk_status_name(YK_OK), "YK_OK");
  cr_assert_str_eq(yk_status_name(YK_ERR_COMPILE), "YK_ERR_COMPILE");
  cr_assert_str_eq(yk_status_name((yk_status)99), "YK_ERR_UNKNOWN");
  cr_assert_str_eq(yk_version(), "0.1.0");
  cr_assert_eq(yk_ctx_get_info(NULL, NULL), YK_ERR_INVALID_ARGUMENT);
  yk_ctx_destroy(NULL);
}

Test(ctx, struct_sizes_for_bindings) {
  cr_assert_eq(yk_struct_size("yk_attention_params"), sizeof(yk_attention_params));
  cr_assert_eq(yk_struct_size("yk_prefix_cache_stats"), sizeof(yk_prefix_cache_stats));
  cr_assert_eq(yk_struct_size("yk_radix_node"), sizeof(yk_radix_node));
  cr_assert_eq(yk_struct_size("yk_status"), 0, "an enum is not a struct");
  cr_assert_eq(yk_struct_size("no_such_struct"), 0);
  cr_assert_eq(yk_struct_size(NULL), 0);
  /* every struct a public header defines is in the table: a new one cannot be forgotten */
  static const char *const headers[] = {"context.h", "jit.h", "kv.h", "ops.h", "pool.h", "radix.h", "status.h"};
  int structs = 0;
  for (size_t h = 0; h < sizeof headers / sizeof headers[0]; h++) {
    char path[512], line[512], name[128];
    snprintf(path, sizeof path, "%s/%s", YK_PUBLIC_HEADERS, headers[h]);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    int in_struct = 0;
    while (fgets(line, sizeof line, f)) {
      if (!strncmp(line, "typedef struct", 14)) in_struct = 1;
      if (!strncmp(line, "typedef enum", 12)) in_struct = 0;
      if (sscanf(line, "} %127[a-z_0-9];", name) == 1 && !strncmp(name, "yk_", 3)) {
        if (in_struct) {
          cr_assert_neq(yk_struct_size(name), 0, "%s (%s) is missing from runtime/struct_sizes.c", name, headers[h]);
          structs++;
        }
        in_struct = 0;
      }
    }
    fclose(f);
  }
  cr_assert_geq(structs, 25, "found %d structs in the public headers", structs);
}
