/* yk cache ls | verify | clear */
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"

static const char usage_text[] = "usage: yk cache ls | verify | clear\n"
                                 "  ls      list entries: key, target, registers, spills, size, spec\n"
                                 "  verify  check every entry's checksums; exit 1 if any is bad\n"
                                 "  clear   remove every entry from the writable cache directory\n";

static void print_entry(void *user, const yk_cache_entry *e) {
  int *verify = user;
  char size[32];
  if (!e->valid) {
    printf("%.12s  %-8s BAD: %s  (%s)\n", e->key, e->arch[0] ? e->arch : "?", e->problem, e->path);
    return;
  }
  if (*verify) return;
  printf("%.12s  %-8s %4d regs %4d/%-4d spill %9s %6.0f ms%s  %s\n", e->key, e->arch, e->registers,
         e->spill_store_bytes, e->spill_load_bytes, cli_bytes((double)e->file_bytes, size, sizeof size), e->compile_ms,
         e->read_only ? " ro" : "   ", e->spec);
}

int cmd_cache(int argc, char **argv) {
  if (argc != 2 || (strcmp(argv[1], "ls") && strcmp(argv[1], "verify") && strcmp(argv[1], "clear"))) {
    int help = argc == 2 && !strcmp(argv[1], "--help");
    fputs(usage_text, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  int status = 0;
  if (!strcmp(argv[1], "clear")) {
    int removed = 0;
    if (yk_cache_clear(ctx, &removed) != YK_OK) status = cli_fail("cache", "%s", yk_ctx_last_error(ctx));
    printf("removed %d entries\n", removed);
  } else {
    int verify = !strcmp(argv[1], "verify"), entries = 0, invalid = 0;
    if (!verify) printf("key           target   registers  spill st/ld      size  compile     spec\n");
    if (yk_cache_list(ctx, verify, print_entry, &verify, &entries, &invalid) != YK_OK)
      status = cli_fail("cache", "%s", yk_ctx_last_error(ctx));
    printf("%d entries, %d bad\n", entries, invalid);
    if (invalid) status = 1;
  }
  yk_ctx_destroy(ctx);
  return status;
}
