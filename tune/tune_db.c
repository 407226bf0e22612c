#include "tune/tune_db.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/error.h"
#include "tune/tune_json.h"

#define CORRUPT_WARNINGS_MAX 5 /* then one line with the count: a garbled file must not flood the log */

static const char *const status_names[YK_TUNE_STATUS_COUNT] = {"ok", "wrong", "compile_failed", "launch_failed"};

const char *yk_tune_status_name(yk_tune_status s) { return (unsigned)s < YK_TUNE_STATUS_COUNT ? status_names[s] : "?"; }

void yk_tune_db_free(yk_tune_db *db) {
  free(db->records);
  *db = (yk_tune_db){0};
}

int64_t yk_tune_bucket(int64_t size) {
  if (size < 2) return 1;
  const int f = 63 - __builtin_clzll((unsigned long long)size);
  /* below 2^f * sqrt(2) the lower power is nearer in log distance: size^2 < 2^f * 2^(f+1) */
  return (double)size * (double)size < ldexp(1.0, 2 * f + 1) ? (int64_t)1 << f : (int64_t)2 << f;
}

/* ---- one line ---- */

typedef enum { TEXT, INTEGER, NUMBER, FLAG } field_kind;

/* The members of a line, in the order they are written; `required` ones must be present. */
typedef struct {
  const char *key;
  field_kind kind;
  size_t offset, size; /* into yk_tune_record; size: of a text field's array */
  int required;
} record_field;

#define TEXT_FIELD(key, member, required)                                                                              \
  { key, TEXT, offsetof(yk_tune_record, member), sizeof(((yk_tune_record *)0)->member), required }
static const record_field fields[] = {
    TEXT_FIELD("op", op, 1),
    TEXT_FIELD("spec", spec, 1),
    {"bucket", INTEGER, offsetof(yk_tune_record, bucket), 0, 1},
    {"size", INTEGER, offsetof(yk_tune_record, size), 0, 0},
    TEXT_FIELD("shape", shape, 0),
    TEXT_FIELD("gpu", id.gpu, 1),
    TEXT_FIELD("arch", id.arch, 1),
    {"driver", INTEGER, offsetof(yk_tune_record, id.driver), 0, 1},
    TEXT_FIELD("nvrtc", id.nvrtc, 1),
    TEXT_FIELD("yk", id.yk, 1),
    TEXT_FIELD("config", config, 1),
    {"default", FLAG, offsetof(yk_tune_record, is_default), 0, 1},
    {"status", TEXT, 0, 0, 1}, /* by name, below */
    {"ms", NUMBER, offsetof(yk_tune_record, ms), 0, 1},
    {"error", NUMBER, offsetof(yk_tune_record, error), 0, 0},
    {"bytes", NUMBER, offsetof(yk_tune_record, bytes), 0, 0},
    {"flops", NUMBER, offsetof(yk_tune_record, flops), 0, 0},
    TEXT_FIELD("note", note, 0),
};
#undef TEXT_FIELD

static int parse_status(const char *name, yk_tune_status *out) {
  for (int s = 0; s < YK_TUNE_STATUS_COUNT; s++)
    if (!strcmp(status_names[s], name)) return *out = (yk_tune_status)s, 0;
  return 1;
}

static int parse_field(const record_field *f, const yk_json_member *m, yk_tune_record *r, char *why, size_t n) {
  char *at = (char *)r + f->offset;
  switch (f->kind) {
  case TEXT:
    if (m->type != YK_JSON_STRING) return snprintf(why, n, "\"%s\" is not a string", f->key), 1;
    if (!strcmp(f->key, "status")) {
      if (parse_status(m->string, &r->status)) return snprintf(why, n, "unknown status \"%s\"", m->string), 1;
      return 0;
    }
    if (strlen(m->string) >= f->size) return snprintf(why, n, "\"%s\" is longer than %zu", f->key, f->size - 1), 1;
    memcpy(at, m->string, strlen(m->string) + 1);
    return 0;
  case INTEGER: {
    if (m->type != YK_JSON_NUMBER || m->number != floor(m->number) || fabs(m->number) > 9e15)
      return snprintf(why, n, "\"%s\" is not an integer", f->key), 1;
    if (!strcmp(f->key, "driver"))
      r->id.driver = (int)m->number;
    else
      *(int64_t *)(void *)at = (int64_t)m->number;
    return 0;
  }
  case NUMBER:
    if (m->type == YK_JSON_NULL) return *(double *)(void *)at = 0, 0; /* a failed configuration's time */
    if (m->type != YK_JSON_NUMBER || m->number < 0) return snprintf(why, n, "\"%s\" is not a number >= 0", f->key), 1;
    *(double *)(void *)at = m->number;
    return 0;
  default:
    if (m->type != YK_JSON_BOOL) return snprintf(why, n, "\"%s\" is not true or false", f->key), 1;
    *(int *)(void *)at = m->number != 0;
    return 0;
  }
}

int yk_tune_record_parse(const char *line, yk_tune_record *r, char *why, size_t why_size) {
  yk_json_object *o = malloc(sizeof *o); /* 5 KB: too much for the stack of a caller's thread */
  if (!o) return snprintf(why, why_size, "out of memory"), 1;
  memset(r, 0, sizeof *r);
  int bad = yk_json_parse_flat(line, o, why, why_size);
  for (size_t i = 0; !bad && i < sizeof fields / sizeof fields[0]; i++) {
    const yk_json_member *m = yk_json_get(o, fields[i].key);
    if (!m) {
      if (fields[i].required) bad = (snprintf(why, why_size, "no \"%s\"", fields[i].key), 1);
      continue;
    }
    bad = parse_field(&fields[i], m, r, why, why_size);
  }
  if (!bad && r->bucket < 1) bad = (snprintf(why, why_size, "bucket %lld is not positive", (long long)r->bucket), 1);
  free(o);
  return bad;
}

int yk_tune_record_format(const yk_tune_record *r, char *buf, size_t size) {
  yk_json_writer w;
  yk_json_begin(&w, buf, size);
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    const record_field *f = &fields[i];
    const char *at = (const char *)r + f->offset;
    if (!strcmp(f->key, "status"))
      yk_json_string(&w, f->key, yk_tune_status_name(r->status));
    else if (!strcmp(f->key, "driver"))
      yk_json_integer(&w, f->key, r->id.driver);
    else if (f->kind == TEXT)
      yk_json_string(&w, f->key, at);
    else if (f->kind == INTEGER)
      yk_json_integer(&w, f->key, (long long)*(const int64_t *)(const void *)at);
    else if (f->kind == NUMBER)
      yk_json_number(&w, f->key, *(const double *)(const void *)at);
    else
      yk_json_bool(&w, f->key, *(const int *)(const void *)at);
  }
  return yk_json_end(&w);
}

/* ---- the set of records ---- */

int yk_tune_record_same(const yk_tune_record *a, const yk_tune_record *b) {
  return a->bucket == b->bucket && a->id.driver == b->id.driver && !strcmp(a->op, b->op) && !strcmp(a->spec, b->spec) &&
         !strcmp(a->config, b->config) && !strcmp(a->id.gpu, b->id.gpu) && !strcmp(a->id.arch, b->id.arch) &&
         !strcmp(a->id.nvrtc, b->id.nvrtc) && !strcmp(a->id.yk, b->id.yk);
}

const yk_tune_record *yk_tune_db_find(const yk_tune_db *db, const yk_tune_record *r) {
  for (int i = 0; i < db->count; i++)
    if (yk_tune_record_same(&db->records[i], r)) return &db->records[i];
  return NULL;
}

yk_status yk_tune_db_put(yk_ctx *ctx, yk_tune_db *db, const yk_tune_record *r) {
  yk_tune_record *same = (yk_tune_record *)yk_tune_db_find(db, r);
  if (same) {
    *same = *r;
    return YK_OK;
  }
  if (db->count == db->capacity) {
    const int capacity = db->capacity ? 2 * db->capacity : 64;
    yk_tune_record *grown = realloc(db->records, (size_t)capacity * sizeof *grown);
    if (!grown) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tuning database: out of memory");
    db->records = grown, db->capacity = capacity;
  }
  db->records[db->count++] = *r;
  return YK_OK;
}

yk_status yk_tune_db_load(yk_ctx *ctx, const char *path, yk_tune_db *db, int *corrupt) {
  if (corrupt) *corrupt = 0;
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) return yk_error(ctx, YK_ERR_NOT_FOUND, "tuning database %s: no such file", path);
    return yk_error(ctx, YK_ERR_IO, "tuning database %s: %s", path, strerror(errno));
  }
  char line[YK_JSON_LINE_MAX + 2], why[256];
  int number = 0, bad = 0;
  yk_status st = YK_OK;
  yk_tune_record r;
  while (st == YK_OK && fgets(line, sizeof line, f)) {
    number++;
    size_t n = strlen(line);
    const int whole = n > 0 && (line[n - 1] == '\n' || feof(f));
    if (!whole) { /* longer than any line we write: skip the rest of it */
      int c;
      while ((c = fgetc(f)) != EOF && c != '\n') {
      }
      snprintf(why, sizeof why, "longer than %d bytes", YK_JSON_LINE_MAX);
    }
    const char *text = line + strspn(line, " \t\r\n");
    if (whole && (!text[0] || text[0] == '#')) continue; /* blank lines and comments */
    if (whole && yk_tune_record_parse(line, &r, why, sizeof why) == 0) {
      st = yk_tune_db_put(ctx, db, &r);
      continue;
    }
    if (++bad <= CORRUPT_WARNINGS_MAX) yk_warn(ctx, "tuning database %s line %d: %s; skipped", path, number, why);
  }
  const int read_error = ferror(f);
  fclose(f);
  if (bad > CORRUPT_WARNINGS_MAX) yk_warn(ctx, "tuning database %s: %d corrupt lines skipped in all", path, bad);
  if (corrupt) *corrupt = bad;
  if (st == YK_OK && read_error) return yk_error(ctx, YK_ERR_IO, "tuning database %s: read error", path);
  return st;
}

yk_status yk_tune_db_save(yk_ctx *ctx, const char *path, const yk_tune_db *db) {
  char tmp[4096 + 32];
  if (snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= (int)sizeof tmp)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "tuning database path is too long");
  FILE *f = fopen(tmp, "w");
  if (!f) return yk_error(ctx, YK_ERR_IO, "tuning database %s: %s", tmp, strerror(errno));
  char line[YK_JSON_LINE_MAX];
  int failed = 0;
  for (int i = 0; i < db->count && !failed; i++) {
    if (yk_tune_record_format(&db->records[i], line, sizeof line)) {
      fclose(f), unlink(tmp);
      return yk_error(ctx, YK_ERR_INTERNAL, "tuning database: record %d does not fit a line", i);
    }
    failed = fprintf(f, "%s\n", line) < 0;
  }
  failed |= fclose(f) != 0;
  if (failed || rename(tmp, path)) {
    const int e = errno;
    unlink(tmp);
    return yk_error(ctx, YK_ERR_IO, "tuning database %s: %s", path, strerror(e));
  }
  return YK_OK;
}
