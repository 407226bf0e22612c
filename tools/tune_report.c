#include "tools/tune_report.h"

#include <stdlib.h>
#include <string.h>

#include "tune/tune_case.h"
#include "tune/tune_key.h"
#include "tune/tune_select.h"

int tune_gpus(const yk_tune_db *db, yk_tune_identity *out, int max) {
  int n = 0;
  for (int i = db->count - 1; i >= 0; i--) { /* latest first: its versions speak for the GPU */
    const yk_tune_identity *id = &db->records[i].id;
    int seen = 0;
    for (int j = 0; j < n && !seen; j++) seen = !strcmp(out[j].gpu, id->gpu) && !strcmp(out[j].arch, id->arch);
    if (!seen && n < max) out[n++] = *id;
  }
  return n;
}

static int op_selected(const char *ops, const char *op) {
  if (!ops || !strcmp(ops, "all")) return 1;
  char buf[512], *save = NULL;
  snprintf(buf, sizeof buf, "%s", ops);
  for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    const yk_tune_op *found = yk_tune_op_find(t);
    if (!strcmp(found ? found->name : t, op)) return 1;
  }
  return 0;
}

/* The kernel a record's key is (yk_tune_key_label), or its op's name where the key does not parse. */
static void kernel_of(const char *spec, char *out, size_t size) {
  yk_spec key;
  char why[256];
  if (yk_tune_key_parse(spec, &key, why, sizeof why))
    snprintf(out, size, "%.*s", (int)strcspn(spec, ":"), spec);
  else
    yk_tune_key_label(&key, out, size);
}

/* ---- the table ---- */

typedef struct {
  yk_tune_record winner; /* status YK_TUNE_WRONG when there is none */
  char kernel[64];
  double default_ms;
  int ok, total;
} table_row;

typedef struct {
  const yk_tune_swept *swept;
  int swept_count;
  const char *ops;
  table_row *rows;
  int count, capacity;
} table_state;

static int was_swept(const table_state *s, const yk_tune_record *r) {
  if (!s->swept) return 1;
  for (int i = 0; i < s->swept_count; i++)
    if (s->swept[i].bucket == r->bucket && !strcmp(s->swept[i].spec, r->spec) && !strcmp(s->swept[i].op, r->op))
      return 1;
  return 0;
}

static void add_row(void *user, const yk_tune_record *const *records, int count) {
  table_state *s = user;
  if (!op_selected(s->ops, records[0]->op) || !was_swept(s, records[0])) return;
  if (s->count == s->capacity) {
    const int capacity = s->capacity ? 2 * s->capacity : 32;
    table_row *grown = realloc(s->rows, (size_t)capacity * sizeof *grown);
    if (!grown) return;
    s->rows = grown, s->capacity = capacity;
  }
  table_row *row = &s->rows[s->count++];
  const yk_tune_record *def = NULL, *best = yk_tune_winner(records, count, &def);
  row->winner = best ? *best : *records[0];
  if (!best) row->winner.status = YK_TUNE_WRONG;
  kernel_of(records[0]->spec, row->kernel, sizeof row->kernel);
  row->default_ms = def ? def->ms : 0;
  row->total = count, row->ok = 0;
  for (int i = 0; i < count; i++) row->ok += records[i]->status == YK_TUNE_OK;
}

static int by_op_then_size(const void *pa, const void *pb) {
  const table_row *a = pa, *b = pb;
  int c = strcmp(a->winner.op, b->winner.op);
  if (c) return c;
  if (a->winner.size != b->winner.size) return a->winner.size < b->winner.size ? -1 : 1;
  return strcmp(a->winner.spec, b->winner.spec);
}

/* Whether some shape of the op's rows (from first, sorted) has several kernels swept. */
static int several_kernels(const table_row *rows, int first, int count) {
  for (int i = first + 1; i < count && !strcmp(rows[i].winner.op, rows[first].winner.op); i++)
    if (rows[i].winner.size == rows[i - 1].winner.size && !strcmp(rows[i].winner.shape, rows[i - 1].winner.shape))
      return 1;
  return 0;
}

/* The first column: the shape, and the kernel where the op's shapes have several. */
static void first_cell(FILE *to, const char *shape, const char *kernel, int several) {
  fprintf(to, "| %-30s |", shape);
  if (several) fprintf(to, " %-35s |", kernel);
}

static void print_header(FILE *to, const char *op, const yk_tune_identity *id, int several) {
  fprintf(to, "\n%s on %s (%s)\n", op, id->gpu, id->arch);
  if (several) /* the speed-up of one kernel's row is the whole call's with that kernel tuned alone */
    fprintf(to, "(a row a kernel of the call: the whole call timed, that kernel's configuration varied, the "
                "others' at their defaults)\n");
  first_cell(to, "shape", "kernel", several);
  fprintf(to, " %7s | %6s | %-50s | %9s | %10s | %8s | %13s |\n", "bucket", "ok", "best configuration", "best ms",
          "default ms", "speed-up", "best");
  fprintf(to, "|--------------------------------|%s", several ? "-------------------------------------|" : "");
  fprintf(to, "---------|--------|%s|-----------|------------|----------|---------------|\n",
          "----------------------------------------------------");
}

static void print_row(FILE *to, const table_row *row, int several) {
  const yk_tune_record *w = &row->winner;
  char ok[16], rate[32] = "";
  snprintf(ok, sizeof ok, "%d/%d", row->ok, row->total);
  first_cell(to, w->shape, row->kernel, several);
  if (w->status != YK_TUNE_OK) {
    fprintf(to, " %7lld | %6s | %-50s | %9s | %10s | %8s | %13s |\n", (long long)w->bucket, ok, "(no checked default)",
            "-", "-", "-", "");
    return;
  }
  if (w->flops > 0) snprintf(rate, sizeof rate, "%.1f TFLOP/s", w->flops / w->ms / 1e9);
  if (w->bytes > 0) snprintf(rate, sizeof rate, "%.0f GB/s", w->bytes / w->ms / 1e6);
  fprintf(to, " %7lld | %6s | %-50s | %9.4f | %10.4f | %7.2fx | %13s |\n", (long long)w->bucket, ok, w->config, w->ms,
          row->default_ms, row->default_ms / w->ms, rate);
}

void tune_print_table(FILE *to, yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id,
                      const yk_tune_swept *swept, int swept_count, const char *ops) {
  table_state s = {swept, swept_count, ops, NULL, 0, 0};
  if (yk_tune_groups(ctx, db, id, add_row, &s) != YK_OK) return;
  if (s.count) qsort(s.rows, (size_t)s.count, sizeof *s.rows, by_op_then_size); /* NULL when empty */
  int several = 0;
  for (int i = 0; i < s.count; i++) {
    if (!i || strcmp(s.rows[i].winner.op, s.rows[i - 1].winner.op))
      print_header(to, s.rows[i].winner.op, id, several = several_kernels(s.rows, i, s.count));
    print_row(to, &s.rows[i], several);
  }
  free(s.rows);
}

/* ---- CSV ---- */

typedef struct {
  FILE *f;
  const char *ops;
} csv_state;

/* RFC 4180: quoted, quotes doubled. */
static void quoted(FILE *f, const char *text, const char *after) {
  fputc('"', f);
  for (const char *c = text; *c; c++) {
    if (*c == '"') fputc('"', f);
    fputc(*c == '\n' ? ' ' : *c, f);
  }
  fprintf(f, "\"%s", after);
}

static void csv_group(void *user, const yk_tune_record *const *records, int count) {
  csv_state *s = user;
  if (!op_selected(s->ops, records[0]->op)) return;
  const yk_tune_record *def = NULL, *best = yk_tune_winner(records, count, &def);
  for (int i = 0; i < count; i++) {
    const yk_tune_record *r = records[i];
    const int ok = r->status == YK_TUNE_OK && r->ms > 0;
    char kernel[64];
    kernel_of(r->spec, kernel, sizeof kernel);
    quoted(s->f, r->op, ",");
    quoted(s->f, r->shape, ",");
    quoted(s->f, kernel, ",");
    fprintf(s->f, "%lld,%lld,", (long long)r->bucket, (long long)r->size);
    quoted(s->f, r->id.gpu, ",");
    quoted(s->f, r->id.arch, ",");
    fprintf(s->f, "%d,", r->id.driver);
    quoted(s->f, r->id.nvrtc, ",");
    quoted(s->f, r->id.yk, ",");
    fprintf(s->f, "%d,%d,%s,%.6g,%.3g,%.1f,%.2f,%.4f,", r->is_default, r == best, yk_tune_status_name(r->status), r->ms,
            r->error, ok && r->bytes > 0 ? r->bytes / r->ms / 1e6 : 0, ok && r->flops > 0 ? r->flops / r->ms / 1e9 : 0,
            ok && def ? def->ms / r->ms : 0);
    quoted(s->f, r->config, ",");
    quoted(s->f, r->spec, "\n");
  }
}

int tune_write_csv(const char *path, yk_ctx *ctx, const yk_tune_db *db, const char *ops) {
  FILE *f = fopen(path, "w");
  if (!f) return 1;
  fprintf(
      f, "op,shape,kernel,bucket,size,gpu,arch,driver,nvrtc,yk,default,best,status,ms,error,gbps,tflops,speedup,config,"
         "spec\n");
  yk_tune_identity gpus[64];
  const int n = tune_gpus(db, gpus, 64);
  csv_state s = {f, ops};
  int failed = 0;
  for (int i = 0; i < n && !failed; i++) failed = yk_tune_groups(ctx, db, &gpus[i], csv_group, &s) != YK_OK;
  failed |= fclose(f) != 0;
  return failed;
}
