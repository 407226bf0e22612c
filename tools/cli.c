#include "tools/cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_to_stderr(void *user, yk_log_level level, const char *message) {
  (void)user;
  fprintf(stderr, "yk: %s: %s\n", level == YK_LOG_WARNING ? "warning" : "info", message);
}

yk_ctx *cli_ctx(yk_device_kind device) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = device;
  o.log = log_to_stderr;
  yk_ctx *ctx;
  if (yk_ctx_create(&o, &ctx) != YK_OK) {
    fprintf(stderr, "yk: %s\n", yk_ctx_last_error(NULL));
    exit(1);
  }
  return ctx;
}

const char *cli_option(int argc, char **argv, int *i, const char *name) {
  const char *arg = argv[*i];
  size_t n = strlen(name);
  if (strncmp(arg, name, n) != 0) return NULL;
  if (arg[n] == '=') return arg + n + 1;
  if (arg[n] != '\0') return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "yk: %s needs a value\n", name);
    exit(2);
  }
  return argv[++*i];
}

const char *cli_bytes(double bytes, char *buf, size_t size) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, u++;
  snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

int cli_fail(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "yk %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}
