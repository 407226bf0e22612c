/* The runtime's view of the tuning database: for this GPU, the winning configuration of each key
 * (tune/tune_key.h) and shape bucket, built once when the context is created and never changed,
 * so the launch path reads it with no lock and no allocation.
 *
 * Layout: an open-addressed hash table of keys (the kernel cache's hash over the key's bytes),
 * each pointing at its buckets in ascending order. A lookup hashes 88 bytes, probes, compares,
 * and walks the few buckets of its key for the nearest in log distance. */
#ifndef YK_TUNE_TABLE_H
#define YK_TUNE_TABLE_H

#include <stdatomic.h>

#include "cache/kernel_cache.h"
#include "tune/tune_db.h"

typedef struct yk_tune_entry {
  int64_t bucket;
  int32_t v[YK_SPEC_MAX_FIELDS]; /* the tuned values; YK_UNSET for fields the tuner left alone */
} yk_tune_entry;

typedef struct yk_tune_slot {
  yk_kernel_key key; /* the key spec, target empty */
  uint64_t hash;
  int first, count; /* its entries; count 0: an empty slot */
} yk_tune_slot;

typedef struct yk_tune_table {
  yk_tune_slot *slots;
  uint64_t mask; /* slots - 1, a power of two at least twice the keys */
  yk_tune_entry *entries;
  int keys, entry_count;
  int dropped;          /* winners that broke their op's rules when the table was built */
  atomic_uint rejected; /* tuned values a spec override made invalid at launch */
} yk_tune_table;

/* Builds the table of db's winners (tune/tune_select.h) on id's GPU. A winner whose values break
 * its op's rules is dropped with a warning and counted in ->dropped. */
yk_status yk_tune_table_build(yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id, yk_tune_table **out);
void yk_tune_table_free(yk_tune_table *t);

/* The entry for a spec as its call site built it and the problem size of the launch: the key's
 * bucket nearest size in log distance (ties to the larger). NULL when the key was never tuned or
 * size < 1. */
const yk_tune_entry *yk_tune_table_lookup(const yk_tune_table *t, const yk_spec *key, int64_t size);

/* Sets the fields of spec that are still unset to the entry's values. */
static inline void yk_tune_entry_apply(const yk_tune_entry *e, yk_spec *spec) {
  for (int i = 0; i < YK_SPEC_MAX_FIELDS; i++)
    if (spec->v[i] == YK_UNSET && e->v[i] != YK_UNSET) spec->v[i] = e->v[i];
}

/* e, if its values still make a valid spec with the fields an override set in spec; else NULL,
 * counted in t->rejected. Off the hot path: only with a spec override (sweeps, tools). */
const yk_tune_entry *yk_tune_entry_valid_with(yk_tune_table *t, const yk_tune_entry *e, const yk_spec *spec);

#endif
