/* yk: information, offline warm-up, cache upkeep, generated source, the demo and the benchmarks. */
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"

static const struct {
  const char *name;
  cli_command_fn fn;
  const char *help;
} commands[] = {
    {"info", cmd_info, "devices, driver and NVRTC versions, cache directories and size"},
    {"warm", cmd_warm, "compile the default spec matrix into the cache (NVRTC only, no GPU)"},
    {"cache", cmd_cache, "ls | verify | clear | prune: list, check, empty or bound the disk cache"},
    {"gen", cmd_gen, "print the CUDA source (or key) the generator makes for a spec"},
    {"demo", cmd_demo, "run one decoder step's ops through the cache and check them"},
    {"bench", cmd_bench, "time every op and the JIT on the GPU; write a results table"},
    {"tune", cmd_tune, "sweep configurations on the GPU into the tuning database; import, export, csv"},
};

static int usage(FILE *to) {
  fprintf(to, "usage: yk <command> [options]   (yk <command> --help for its options)\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(to, "  %-6s %s\n", commands[i].name, commands[i].help);
  fprintf(to, "\nenvironment: YK_DEVICE=cpu|cuda|auto, YK_CACHE_DIR, YK_CACHE_PATH, YK_CACHE=memory,\n"
              "             YK_CACHE_MAX_SIZE, YK_NVRTC_PATH, YK_NUM_THREADS, YK_TUNE_DB\n");
  return to == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) return usage(stdout);
  if (!strcmp(argv[1], "--version")) return printf("yk %s\n", yk_version()), 0;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "yk: no command '%s'\n", argv[1]);
  return usage(stderr);
}
