#include "tune/tune_select.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"

const yk_tune_record *yk_tune_winner(const yk_tune_record *const *records, int count,
                                     const yk_tune_record **default_out) {
  const yk_tune_record *fastest = NULL, *def = NULL;
  for (int i = 0; i < count; i++) {
    const yk_tune_record *r = records[i];
    if (r->status != YK_TUNE_OK || !(r->ms > 0)) continue;
    if (r->is_default) def = r;
    if (!fastest || r->ms < fastest->ms) fastest = r;
  }
  if (default_out) *default_out = def;
  if (!def) return NULL;
  return fastest->ms < def->ms * (1.0 - YK_TUNE_MIN_GAIN) ? fastest : def;
}

typedef struct {
  const yk_tune_record *record;
  int score, line;
} candidate;

static int version_score(const yk_tune_identity *a, const yk_tune_identity *b) {
  return 4 * !strcmp(a->yk, b->yk) + 2 * !strcmp(a->nvrtc, b->nvrtc) + (a->driver == b->driver);
}

static int same_group(const yk_tune_record *a, const yk_tune_record *b) {
  return a->bucket == b->bucket && !strcmp(a->spec, b->spec);
}

/* spec, bucket, config; then the best version match and the latest line first */
static int compare(const void *pa, const void *pb) {
  const candidate *a = pa, *b = pb;
  int c = strcmp(a->record->spec, b->record->spec);
  if (c) return c;
  if (a->record->bucket != b->record->bucket) return a->record->bucket < b->record->bucket ? -1 : 1;
  if ((c = strcmp(a->record->config, b->record->config))) return c;
  if (a->score != b->score) return b->score - a->score;
  return b->line - a->line;
}

yk_status yk_tune_groups(yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id, yk_tune_group_fn fn,
                         void *user) {
  candidate *c = malloc((size_t)(db->count ? db->count : 1) * sizeof *c);
  const yk_tune_record **group = malloc((size_t)(db->count ? db->count : 1) * sizeof *group);
  if (!c || !group) {
    free(c), free(group);
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tuning database: out of memory");
  }
  int n = 0;
  for (int i = 0; i < db->count; i++) {
    const yk_tune_record *r = &db->records[i];
    if (!strcmp(r->id.gpu, id->gpu) && !strcmp(r->id.arch, id->arch))
      c[n++] = (candidate){r, version_score(&r->id, id), i};
  }
  qsort(c, (size_t)n, sizeof *c, compare);
  int size = 0;
  for (int i = 0; i < n; i++) {
    const yk_tune_record *r = c[i].record;
    if (size && !same_group(group[0], r)) {
      fn(user, group, size);
      size = 0;
    }
    if (!size || strcmp(group[size - 1]->config, r->config)) group[size++] = r; /* first of its config only */
  }
  if (size) fn(user, group, size);
  free(c), free(group);
  return YK_OK;
}
