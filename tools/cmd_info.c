/* yk info */
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"

static void count_entry(void *user, const yk_cache_entry *e) {
  double *totals = user;
  totals[e->read_only ? 2 : 0] += 1;
  totals[e->read_only ? 3 : 1] += (double)e->file_bytes;
}

int cmd_info(int argc, char **argv) {
  if (argc > 1) {
    printf("usage: yk info\n");
    return strcmp(argv[1], "--help") ? 2 : 0;
  }
  yk_ctx *ctx = cli_ctx(YK_DEVICE_AUTO);
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  char b1[32], b2[32];
  printf("yaie-kernels %s\n", yk_version());
  if (info.device == YK_DEVICE_CUDA)
    printf("device:      %s (compute %d.%d, %d SMs, %s), kernels built for %s\n", info.device_name, info.compute_major,
           info.compute_minor, info.multiprocessors, cli_bytes((double)info.device_memory_bytes, b1, sizeof b1),
           info.arch);
  else
    printf("device:      CPU fallback (%s)\n", info.device_note);
  if (info.driver_version)
    printf("driver:      CUDA %d.%d\n", info.driver_version / 1000, info.driver_version % 1000 / 10);
  else
    printf("driver:      none\n");
  if (info.nvrtc_major)
    printf("nvrtc:       %d.%d (%s)\n", info.nvrtc_major, info.nvrtc_minor, info.nvrtc_path);
  else
    printf("nvrtc:       not found (only cached kernels can run)\n");
  double totals[4] = {0};
  int entries = 0, invalid = 0;
  yk_cache_list(ctx, 0, count_entry, totals, &entries, &invalid);
  printf("cache:       %s: %.0f entries, %s\n", info.cache_dir[0] ? info.cache_dir : "(memory only)", totals[0],
         cli_bytes(totals[1], b1, sizeof b1));
  if (info.cache_path[0])
    printf("read-only:   %s: %.0f entries, %s\n", info.cache_path, totals[2], cli_bytes(totals[3], b2, sizeof b2));
  if (invalid) printf("             %d entries fail their header checks (yk cache verify)\n", invalid);
  printf("cpu threads: %d, %s attention kernels\nops:         ", info.cpu_threads, info.cpu_kernels);
  for (int i = 0; i < yk_op_count(); i++) printf("%s%s", i ? ", " : "", yk_op_name(i));
  printf("\n");
  yk_ctx_destroy(ctx);
  return 0;
}
