#include "tune/tune_table.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/error.h"
#include "tune/tune_key.h"
#include "tune/tune_select.h"

#define DROP_WARNINGS_MAX 5

typedef struct {
  yk_kernel_key key;
  yk_tune_entry entry;
} winner;

typedef struct {
  yk_ctx *ctx;
  winner *list;
  int count, capacity;
  int dropped, out_of_memory;
} collect_state;

/* The winner of one group as a key and values, after checking that they make a valid spec. */
static void collect(void *user, const yk_tune_record *const *records, int count) {
  collect_state *s = user;
  const yk_tune_record *best = yk_tune_winner(records, count, NULL);
  if (!best || s->out_of_memory) return;
  winner w;
  memset(&w, 0, sizeof w);
  w.entry.bucket = best->bucket;
  char why[512];
  yk_spec spec;
  int bad = yk_tune_key_parse(best->spec, &w.key.spec, why, sizeof why) ||
            yk_tune_config_parse(w.key.spec.op, best->config, w.entry.v, why, sizeof why);
  if (!bad) {
    spec = w.key.spec;
    yk_tune_entry_apply(&w.entry, &spec);
    bad = yk_spec_check(&spec, why, sizeof why);
  }
  if (bad) {
    if (++s->dropped <= DROP_WARNINGS_MAX)
      yk_warn(s->ctx, "tuning database: %s at %lld with %s: %s; not used", best->spec, (long long)best->bucket,
              best->config, why);
    return;
  }
  if (s->count == s->capacity) {
    const int capacity = s->capacity ? 2 * s->capacity : 32;
    winner *grown = realloc(s->list, (size_t)capacity * sizeof *grown);
    if (!grown) {
      s->out_of_memory = 1;
      return;
    }
    s->list = grown, s->capacity = capacity;
  }
  s->list[s->count++] = w;
}

/* by key bytes, then bucket: each key's entries end up together and ascending */
static int compare_winners(const void *pa, const void *pb) {
  const winner *a = pa, *b = pb;
  int c = memcmp(&a->key, &b->key, sizeof a->key);
  if (c) return c;
  return (a->entry.bucket > b->entry.bucket) - (a->entry.bucket < b->entry.bucket);
}

static yk_tune_slot *probe(const yk_tune_table *t, const yk_kernel_key *key, uint64_t hash) {
  for (uint64_t i = hash & t->mask;; i = (i + 1) & t->mask) {
    yk_tune_slot *s = &t->slots[i];
    if (!s->count || (s->hash == hash && yk_kernel_key_equal(&s->key, key))) return s;
  }
}

yk_status yk_tune_table_build(yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id, yk_tune_table **out) {
  *out = NULL;
  collect_state s = {.ctx = ctx};
  yk_status st = yk_tune_groups(ctx, db, id, collect, &s);
  if (st == YK_OK && s.out_of_memory) st = yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tuning table: out of memory");
  if (s.dropped > DROP_WARNINGS_MAX)
    yk_warn(ctx, "tuning database: %d tuned configurations not used in all", s.dropped);
  yk_tune_table *t = st == YK_OK ? calloc(1, sizeof *t) : NULL;
  if (st == YK_OK && !t) st = yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tuning table: out of memory");
  if (st != YK_OK) {
    free(s.list);
    return st;
  }
  if (s.count) qsort(s.list, (size_t)s.count, sizeof *s.list, compare_winners); /* NULL when empty */
  int keys = 0;
  for (int i = 0; i < s.count; i++) keys += !i || memcmp(&s.list[i].key, &s.list[i - 1].key, sizeof s.list[i].key);
  uint64_t slots = 8;
  while (slots < 2 * (uint64_t)keys) slots *= 2;
  t->slots = calloc(slots, sizeof *t->slots);
  t->entries = malloc((size_t)(s.count ? s.count : 1) * sizeof *t->entries);
  if (!t->slots || !t->entries) {
    free(s.list);
    yk_tune_table_free(t);
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tuning table: out of memory");
  }
  t->mask = slots - 1;
  t->keys = keys, t->entry_count = s.count, t->dropped = s.dropped;
  atomic_init(&t->rejected, 0);
  for (int i = 0; i < s.count; i++) {
    t->entries[i] = s.list[i].entry;
    const uint64_t hash = yk_kernel_key_hash(&s.list[i].key);
    yk_tune_slot *slot = probe(t, &s.list[i].key, hash);
    if (!slot->count) slot->key = s.list[i].key, slot->hash = hash, slot->first = i;
    slot->count++;
  }
  free(s.list);
  *out = t;
  return YK_OK;
}

void yk_tune_table_free(yk_tune_table *t) {
  if (!t) return;
  free(t->slots), free(t->entries), free(t);
}

const yk_tune_entry *yk_tune_table_lookup(const yk_tune_table *t, const yk_spec *spec, int64_t size) {
  if (size < 1 || !t->keys) return NULL;
  yk_kernel_key key;
  memset(key.target, 0, sizeof key.target);
  key.spec = *spec;
  const yk_tune_slot *s = probe(t, &key, yk_kernel_key_hash(&key));
  if (!s->count) return NULL;
  const yk_tune_entry *e = &t->entries[s->first], *end = e + s->count;
  while (e < end && e->bucket < size) e++;
  if (e == end) return e - 1;                                    /* above every bucket */
  if (e->bucket == size || e == &t->entries[s->first]) return e; /* exact, or below every bucket */
  /* between lo = e[-1] and hi = e: lo is nearer in log distance when size / lo < hi / size */
  return (double)size * (double)size < (double)e[-1].bucket * (double)e->bucket ? e - 1 : e;
}

const yk_tune_entry *yk_tune_entry_valid_with(yk_tune_table *t, const yk_tune_entry *e, const yk_spec *spec) {
  yk_spec tuned = *spec;
  yk_tune_entry_apply(e, &tuned);
  char why[256];
  if (yk_spec_check(&tuned, why, sizeof why) == 0) return e;
  atomic_fetch_add_explicit(&t->rejected, 1, memory_order_relaxed);
  return NULL;
}
