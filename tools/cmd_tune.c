/* yk tune: sweep ops' configurations on the GPU into the tuning database, and keep that database
 * (import, export, CSV, the table of winners); the database half needs no GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/context.h"
#include "tools/cli.h"
#include "tools/tune_report.h"
#include "tune/tune_case.h"
#include "tune/tune_context.h"

static const char usage_text[] =
    "usage: yk tune --op OP[,OP|all] [--model llama-3-8b,...] [--shapes N,BxN,...] [--arch current]\n"
    "               [--dtype bf16] [--values FIELD=V1,V2 ...] [-j N] [--budget-ms MS] [--retime]\n"
    "               [--db FILE] [--csv FILE]\n"
    "       yk tune [--db FILE] [--import FILE] [--export FILE] [--csv FILE] [--list]\n"
    "Times every configuration of each op at each shape on this GPU (compiled in parallel, each checked\n"
    "against the CPU fallback) and records them all in the tuning database, which contexts read at\n"
    "creation to pick the fastest configuration for a shape. An op that launches several kernels (the\n"
    "backward) has each swept in turn, the others at their defaults, the whole call timed. Prints a\n"
    "table per op: the best configuration per shape and kernel, its time, the default's time and the\n"
    "speed-up.\n"
    "  --op       rms_norm, fused_add_rms_norm, rope, act_and_mul (silu_and_mul), attention_prefill,\n"
    "             attention_backward, attention_decode, or all\n"
    "  --model    widths from model presets (default llama-3-8b)\n"
    "  --shapes   tokens (token ops), sequence length (prefill, backward), BxN batch x length; default\n"
    "             per op\n"
    "  --values   candidate values of a field, replacing the op's list (threads=96,160)\n"
    "  --retime   time again what the database already holds for this GPU and these versions\n"
    "  --db       the database (default: $YK_TUNE_DB, else tune.jsonl in the kernel cache directory)\n"
    "  --csv      write every configuration's row (bench/plot_tune.sh plots it)\n"
    "  --import   merge a database into this one; --export copy this one to FILE\n"
    "  --list     the table of winners of every shape in the database (no sweep; --op filters)\n"
    "Without a GPU only the database options work.\n";

typedef struct {
  int tty; /* a progress bar redrawn in place; else a line a shape */
} progress_state;

static void progress(void *user, const yk_tune_progress *p) {
  progress_state *s = user;
  char best[160] = "";
  /* the fastest checked so far; the table's winner must also beat the default by YK_TUNE_MIN_GAIN */
  if (p->best) snprintf(best, sizeof best, "fastest %s %.4f ms", p->best->config, p->best->ms);
  if (p->best && p->default_ms > 0)
    snprintf(best + strlen(best), sizeof best - strlen(best), " (%.2fx the default)", p->default_ms / p->best->ms);
  char what[256]; /* "rms_norm T4096 H4096"; with the kernel where the shape's call has several swept */
  snprintf(what, sizeof what, "%s %s%s%s", p->op, p->shape, p->kernels > 1 ? ": " : "",
           p->kernels > 1 ? p->kernel : "");
  if (p->record && p->record->status != YK_TUNE_OK)
    fprintf(stderr, "%s  %s: %s: %s: %.200s\n", s->tty ? "\r\033[K" : "", what, p->record->config,
            yk_tune_status_name(p->record->status), p->record->note);
  if (!strcmp(p->phase, "compile")) {
    if (p->done == p->total) return; /* all from the database */
    fprintf(stderr, "%s%s: compiling %d configurations%s", s->tty ? "\r\033[K" : "", what, p->total - p->done,
            s->tty ? "" : "\n");
    return;
  }
  if (s->tty) {
    char bar[21];
    const int filled = p->total ? 20 * p->done / p->total : 20;
    for (int i = 0; i < 20; i++) bar[i] = i < filled ? '#' : '.';
    bar[20] = '\0';
    fprintf(stderr, "\r\033[K%s [%s] %d/%d %s", what, bar, p->done, p->total, best);
    if (p->done == p->total) fputc('\n', stderr);
  } else if (p->done == p->total) {
    fprintf(stderr, "%s: %d configurations, %s\n", what, p->total, best[0] ? best : "none checked");
  }
}

typedef struct {
  yk_tune_options sweep;
  yk_tune_values values[16];
  const char *db, *csv, *import, *export, *arch;
  int list;
  int sweep_wanted; /* --op without --list, where it only filters */
} tune_args;

static int parse_args(int argc, char **argv, tune_args *a) {
  memset(a, 0, sizeof *a);
  a->sweep.dtype = YK_BF16;
  for (int i = 1; i < argc; i++) {
    const char *v;
    char why[256];
    if ((v = cli_option(argc, argv, &i, "--op")) || (v = cli_option(argc, argv, &i, "--ops")))
      a->sweep.ops = v;
    else if ((v = cli_option(argc, argv, &i, "--model")) || (v = cli_option(argc, argv, &i, "--models")))
      a->sweep.models = v;
    else if ((v = cli_option(argc, argv, &i, "--shapes")))
      a->sweep.shapes = v;
    else if ((v = cli_option(argc, argv, &i, "--arch")))
      a->arch = v;
    else if ((v = cli_option(argc, argv, &i, "--dtype"))) {
      if ((a->sweep.dtype = yk_dtype_parse(v)) < 0) return cli_fail("tune", "unknown dtype '%s'", v), 2;
    } else if ((v = cli_option(argc, argv, &i, "--values"))) {
      if (a->sweep.value_count == 16) return cli_fail("tune", "at most 16 --values"), 2;
      if (yk_tune_values_parse(v, &a->values[a->sweep.value_count++], why, sizeof why))
        return cli_fail("tune", "--values %s", why), 2;
    } else if ((v = cli_option(argc, argv, &i, "-j")) || (v = cli_option(argc, argv, &i, "--jobs")))
      a->sweep.jobs = atoi(v);
    else if ((v = cli_option(argc, argv, &i, "--budget-ms")))
      a->sweep.budget_ms = atof(v);
    else if (!strcmp(argv[i], "--retime"))
      a->sweep.retime = 1;
    else if ((v = cli_option(argc, argv, &i, "--db")))
      a->db = v;
    else if ((v = cli_option(argc, argv, &i, "--csv")))
      a->csv = v;
    else if ((v = cli_option(argc, argv, &i, "--import")))
      a->import = v;
    else if ((v = cli_option(argc, argv, &i, "--export")))
      a->export = v;
    else if (!strcmp(argv[i], "--list"))
      a->list = 1;
    else
      return fputs(usage_text, strcmp(argv[i], "--help") ? stderr : stdout), strcmp(argv[i], "--help") ? 2 : -1;
  }
  a->sweep.values = a->values;
  a->sweep_wanted = a->sweep.ops && !a->list;
  if (!a->sweep.ops && !a->csv && !a->import && !a->export && !a->list)
    return fputs(usage_text, stderr), cli_fail("tune", "nothing to do: give --op, or a database option"), 2;
  return 0;
}

static void print_summary(const yk_tune_summary *s) {
  printf("\nsweep: %d shapes (%d kernels), %d configurations: %d timed, %d from the database; %d failed to "
         "compile, %d to launch, %d wrong; %d combinations broke the ops' rules\n",
         s->shapes, s->kernels, s->configs, s->timed, s->reused, s->compile_failed, s->launch_failed, s->wrong,
         s->rejected);
  printf("time: %.1f s in all: setting up %.1f s (inputs, each shape's first call), compiling %.1f s "
         "(%d configurations compiled, %d cached), checking %.1f s, timing %.1f s; NVRTC compiled %d kernels, "
         "%.1f s of compile time over the threads\n",
         s->seconds, s->setup_seconds, s->compile_seconds, s->compiled, s->cached, s->check_seconds, s->time_seconds,
         s->nvrtc_kernels, s->nvrtc_seconds);
}

/* The sweep on this GPU; its records go into db, even when it stops early. */
static int run_sweep(yk_ctx *ctx, tune_args *a, yk_tune_db *db) {
  if (a->arch && strcmp(a->arch, "current") && strcmp(a->arch, ctx->target))
    return cli_fail("tune", "tuning times kernels on this GPU: --arch takes current (%s here), not %s", ctx->target,
                    a->arch);
  progress_state state = {isatty(2)};
  a->sweep.progress = progress;
  a->sweep.user = &state;
  yk_tune_summary s;
  yk_status st = yk_tune_run(ctx, db, &a->sweep, &s);
  if (state.tty) fprintf(stderr, "\r\033[K");
  yk_tune_identity id;
  yk_tune_identity_of(ctx, &id);
  tune_print_table(stdout, ctx, db, &id, s.swept, s.swept_count, NULL);
  print_summary(&s);
  yk_tune_summary_free(&s);
  return st == YK_OK ? 0 : cli_fail("tune", "%s", yk_ctx_last_error(ctx));
}

/* Every GPU's table, this one's first. */
static void list_all(yk_ctx *ctx, const yk_tune_db *db, const char *ops) {
  yk_tune_identity gpus[64];
  const int n = tune_gpus(db, gpus, 64);
  if (!n) printf("the tuning database holds no records\n");
  for (int i = 0; i < n; i++) tune_print_table(stdout, ctx, db, &gpus[i], NULL, 0, ops);
}

static int tune_with(yk_ctx *ctx, tune_args *a) {
  char path[4096];
  if (a->db)
    snprintf(path, sizeof path, "%s", a->db);
  else
    yk_tune_db_path(ctx, path, sizeof path);
  if (!path[0]) return cli_fail("tune", "no tuning database (YK_TUNE_DB=off, or a memory-only cache): give --db FILE");
  yk_tune_db db = {0};
  int corrupt, failed = 0, changed = 0;
  yk_status st = yk_tune_db_load(ctx, path, &db, &corrupt);
  if (st != YK_OK && st != YK_ERR_NOT_FOUND) failed = cli_fail("tune", "%s", yk_ctx_last_error(ctx));
  if (!failed && a->import) {
    const int before = db.count;
    if (yk_tune_db_load(ctx, a->import, &db, &corrupt) != YK_OK)
      failed = cli_fail("tune", "--import: %s", yk_ctx_last_error(ctx));
    else
      printf("imported %s into %s: %d records, %d new\n", a->import, path, db.count, db.count - before), changed = 1;
  }
  if (!failed && a->sweep_wanted) failed = run_sweep(ctx, a, &db), changed = 1;
  if (changed && yk_tune_db_save(ctx, path, &db) != YK_OK)
    failed = cli_fail("tune", "%s", yk_ctx_last_error(ctx));
  else if (changed)
    printf("database: %s (%d records)\n", path, db.count);
  if (!failed && a->export) {
    if (yk_tune_db_save(ctx, a->export, &db) != YK_OK)
      failed = cli_fail("tune", "--export: %s", yk_ctx_last_error(ctx));
    else
      printf("exported %d records to %s\n", db.count, a->export);
  }
  if (!failed && a->csv) {
    if (tune_write_csv(a->csv, ctx, &db, a->sweep.ops))
      failed = cli_fail("tune", "cannot write %s", a->csv);
    else
      printf("csv: %s\n", a->csv);
  }
  if (!failed && a->list) list_all(ctx, &db, a->sweep.ops);
  yk_tune_db_free(&db);
  return failed;
}

int cmd_tune(int argc, char **argv) {
  tune_args a;
  int r = parse_args(argc, argv, &a);
  if (r) return r < 0 ? 0 : r;
  yk_ctx *ctx = cli_ctx(YK_DEVICE_AUTO);
  if (a.sweep_wanted && ctx->device != YK_DEVICE_CUDA) {
    cli_fail("tune",
             "no CUDA device (%s): a sweep times kernels on the GPU; --import, --export, --csv and --list "
             "work without one",
             ctx->device_note);
    yk_ctx_destroy(ctx);
    return 1;
  }
  r = tune_with(ctx, &a);
  yk_ctx_destroy(ctx);
  return r;
}
