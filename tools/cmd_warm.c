/* yk warm: compile the default spec matrix into the cache with NVRTC alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/cli.h"

static const char usage_text[] =
    "usage: yk warm [--arch sm_80,sm_90] [--ops rms_norm,rope,...] [--dtypes bf16,f16,f32]\n"
    "               [--models llama-3-8b,...] [-j N]\n"
    "Compiles every spec the given models' shapes need into the cache; no GPU is used.\n"
    "Defaults: the device's arch (sm_80,sm_90 without one), every op, bf16 and f16, every model.\n";

typedef struct {
  int tty;
  int failures_shown;
} progress_state;

static void progress(void *user, const yk_warm_progress *p) {
  progress_state *s = user;
  if (p->status != YK_OK && s->failures_shown++ < 5)
    fprintf(stderr, "%sfailed: %s for %s: %s\n", s->tty ? "\r\033[K" : "", p->spec, p->arch, p->message);
  if (s->tty)
    fprintf(stderr, "\r\033[K[%d/%d] compiled %d, cached %d, failed %d  %s %s", p->done, p->total, p->compiled,
            p->cached, p->failed, p->spec, p->arch);
  else if (p->done == p->total || p->done % 25 == 0)
    fprintf(stderr, "[%d/%d] compiled %d, cached %d, failed %d\n", p->done, p->total, p->compiled, p->cached,
            p->failed);
}

int cmd_warm(int argc, char **argv) {
  yk_warm_options o = {0};
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = cli_option(argc, argv, &i, "--arch")))
      o.archs = v;
    else if ((v = cli_option(argc, argv, &i, "--ops")))
      o.ops = v;
    else if ((v = cli_option(argc, argv, &i, "--dtypes")))
      o.dtypes = v;
    else if ((v = cli_option(argc, argv, &i, "--models")))
      o.models = v;
    else if ((v = cli_option(argc, argv, &i, "-j")) || (v = cli_option(argc, argv, &i, "--jobs")))
      o.jobs = atoi(v);
    else
      return fputs(usage_text, strcmp(argv[i], "--help") ? stderr : stdout), strcmp(argv[i], "--help") ? 2 : 0;
  }
  /* Offline warm-up needs no GPU: a CPU context compiles for whatever arch is asked. Without
   * --arch, use the local device's arch when there is one. */
  yk_ctx *ctx = cli_ctx(o.archs ? YK_DEVICE_CPU : YK_DEVICE_AUTO);
  progress_state state = {isatty(2), 0};
  o.progress = progress;
  o.user = &state;
  yk_warm_result r;
  yk_status st = yk_warm(ctx, &o, &r);
  if (state.tty) fprintf(stderr, "\r\033[K");
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  if (st != YK_OK && r.total == 0) {
    cli_fail("warm", "%s", yk_ctx_last_error(ctx));
    yk_ctx_destroy(ctx);
    return 1;
  }
  printf("warm: %d specs: %d compiled, %d already cached, %d failed in %.1f s (%s)\n", r.total, r.compiled, r.cached,
         r.failed, r.seconds, info.cache_dir[0] ? info.cache_dir : "memory only");
  yk_ctx_destroy(ctx);
  return st == YK_OK ? 0 : 1;
}
