/* yk cache ls | verify | clear | prune */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/disk_cache.h"
#include "tools/cli.h"

static const char usage_text[] =
    "usage: yk cache ls | verify | clear | prune [--max-size SIZE] [--older-than DAYS]\n"
    "  ls      list entries: key, target, registers, spills, size, spec\n"
    "  verify  check every entry's checksums; exit 1 if any is bad (another format version's entries,\n"
    "          from another library sharing the directory, are listed but not bad)\n"
    "  clear   remove every entry from the writable cache directory\n"
    "  prune   remove damaged entries, those unused for more than DAYS, then the\n"
    "          least recently used until the rest take at most SIZE (bytes, or with K, M, G or T)\n";

typedef struct listing {
  int verify, other_versions;
} listing;

static void print_entry(void *user, const yk_cache_entry *e) {
  listing *l = user;
  char size[32];
  if (!e->valid) {
    l->other_versions += e->other_version;
    printf("%.12s  %-8s %s: %s  (%s)\n", e->key, e->arch[0] ? e->arch : "?", e->other_version ? "OTHER" : "BAD",
           e->problem, e->path);
    return;
  }
  if (l->verify) return;
  printf("%.12s  %-8s %4d regs %4d/%-4d spill %9s %6.0f ms%s  %s\n", e->key, e->arch, e->registers,
         e->spill_store_bytes, e->spill_load_bytes, cli_bytes((double)e->file_bytes, size, sizeof size), e->compile_ms,
         e->read_only ? " ro" : "   ", e->spec);
}

/* prune's options into *max_bytes and *max_age_s; 0 if they parse. */
static int prune_options(int argc, char **argv, uint64_t *max_bytes, int64_t *max_age_s) {
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 >= argc) return cli_fail("cache", "%s needs a value", argv[i]);
    if (!strcmp(argv[i], "--max-size")) {
      if (yk_disk_cache_parse_size(argv[i + 1], max_bytes) || !*max_bytes)
        return cli_fail("cache", "--max-size %s: not a size above 0 (bytes, or with K, M, G or T)", argv[i + 1]);
    } else if (!strcmp(argv[i], "--older-than")) {
      char *end;
      const double days = strtod(argv[i + 1], &end);
      if (end == argv[i + 1] || *end || !(days > 0) || days > 1e6)
        return cli_fail("cache", "--older-than %s: not a number of days above 0", argv[i + 1]);
      *max_age_s = (int64_t)(days * 86400 + 0.5);
    } else {
      return cli_fail("cache", "unknown option %s (yk cache --help)", argv[i]);
    }
  }
  return 0;
}

int cmd_cache(int argc, char **argv) {
  const int known = argc >= 2 && (!strcmp(argv[1], "ls") || !strcmp(argv[1], "verify") || !strcmp(argv[1], "clear") ||
                                  !strcmp(argv[1], "prune"));
  if (!known || (argc != 2 && strcmp(argv[1], "prune"))) {
    int help = argc == 2 && !strcmp(argv[1], "--help");
    fputs(usage_text, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  uint64_t max_bytes = 0;
  int64_t max_age_s = 0;
  if (!strcmp(argv[1], "prune") && prune_options(argc, argv, &max_bytes, &max_age_s)) return 2;
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  int status = 0;
  if (!strcmp(argv[1], "clear")) {
    int removed = 0;
    if (yk_cache_clear(ctx, &removed) != YK_OK) status = cli_fail("cache", "%s", yk_ctx_last_error(ctx));
    printf("removed %d entries\n", removed);
  } else if (!strcmp(argv[1], "prune")) {
    int removed = 0;
    uint64_t kept = 0;
    char size[32];
    if (yk_cache_prune(ctx, max_bytes, max_age_s, &removed, &kept) != YK_OK)
      status = cli_fail("cache", "%s", yk_ctx_last_error(ctx));
    printf("removed %d entries; %s kept\n", removed, cli_bytes((double)kept, size, sizeof size));
  } else {
    listing l = {.verify = !strcmp(argv[1], "verify")};
    int entries = 0, invalid = 0;
    if (!l.verify) printf("key           target   registers  spill st/ld      size  compile     spec\n");
    if (yk_cache_list(ctx, l.verify, print_entry, &l, &entries, &invalid) != YK_OK)
      status = cli_fail("cache", "%s", yk_ctx_last_error(ctx));
    printf("%d entries, %d bad", entries, invalid);
    if (l.other_versions) printf(", %d of another format version", l.other_versions);
    printf("\n");
    if (invalid) status = 1;
  }
  yk_ctx_destroy(ctx);
  return status;
}
