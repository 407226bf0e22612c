/* The fixture of the prefix cache's hand-written cases (test_prefix_cache.c and
 * test_prefix_cache_duplicates.c): a CPU KV cache with the tree over it, requests whose blocks'
 * contents name the tokens they were computed from, and snapshots of what a failed call must
 * leave as it was. */
#ifndef YK_TESTS_PREFIX_FIXTURE_H
#define YK_TESTS_PREFIX_FIXTURE_H

#include <string.h>

#include "tests/prefix_support.h"

#define MAX_TOKENS 1024

typedef struct fixture {
  yk_ctx *ctx;
  yk_kv_cache *cache;
  yk_prefix_cache *pc;
  int64_t ps;
} fixture;

/* A case at page sizes 1, 16 and 5 (no power of two). */
#define AT_PAGE_SIZES(name)                                                                                            \
  Test(prefix_cache, name##_page_1) { name(1); }                                                                       \
  Test(prefix_cache, name##_page_16) { name(16); }                                                                     \
  Test(prefix_cache, name##_page_5) { name(5); }

static inline fixture make(int page_size, int64_t blocks, int64_t host_blocks) {
  fixture f;
  f.cache = kv_cpu_cache(&f.ctx, 2, 2, 4, page_size, blocks, host_blocks);
  f.pc = ps_create(f.cache);
  f.ps = page_size;
  return f;
}

/* Every sequence is gone by now: once the tree lets go, no block may stay taken. */
static inline void done(fixture *f) {
  ps_validate(f->pc);
  yk_prefix_cache_destroy(f->pc);
  const yk_kv_cache_info info = kv_info(f->cache);
  cr_assert_eq(info.sequences, 0);
  cr_assert_eq(info.free_blocks, info.num_blocks, "blocks leaked");
  kv_done(f->ctx, f->cache);
}

/* tokens[i] = base + i * step */
static inline void token_run(int32_t *tokens, int64_t n, int32_t base, int32_t step) {
  for (int64_t i = 0; i < n; i++) tokens[i] = base + (int32_t)i * step;
}

/* A request's prompt: start, blocks for what is not cached, the copies, then the KV of the new
 * tokens written into their slots. *cached gets the tokens found cached. */
static inline int64_t prompt(fixture *f, const int32_t *tokens, int64_t n, int64_t *cached) {
  int64_t seq, got, slots[MAX_TOKENS];
  cr_assert_eq(yk_prefix_cache_start(f->pc, tokens, n, &seq, &got), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  cr_assert_eq(yk_prefix_cache_append(f->pc, seq, n - got, slots), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  cr_assert_eq(yk_kv_cache_copy_blocks(f->cache, NULL), YK_OK);
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(tokens, n, hashes);
  for (int64_t t = got; t < n; t++) ps_token(f->cache, 0, slots[t - got] / f->ps, slots[t - got] % f->ps, hashes[t], 1);
  if (cached) *cached = got;
  return seq;
}

/* Every token of seq reads back as computed from tokens[0..its position]. */
static inline void check_contents(fixture *f, int64_t seq, const int32_t *tokens) {
  const yk_kv_seq_info info = kv_seq(f->cache, seq);
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(tokens, info.tokens, hashes);
  for (int64_t t = 0; t < info.tokens; t++)
    cr_assert_eq(ps_token(f->cache, info.swapped_out, info.table[t / f->ps], t % f->ps, hashes[t], 0), 0,
                 "token %lld of sequence %lld holds another prefix's KV", (long long)t, (long long)seq);
}

static inline void finish(fixture *f, int64_t seq, const int32_t *tokens, int64_t n) {
  cr_assert_eq(yk_prefix_cache_finish(f->pc, seq, tokens, n), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  ps_validate(f->pc);
}

static inline int32_t refs(fixture *f, int32_t block) { return f->cache->device.refs[block]; }

/* What a failed call must leave as it was. */
typedef struct snapshot {
  int32_t refs[64], holds[64];
  yk_prefix_cache_stats stats;
  yk_kv_cache_info info;
} snapshot;

static inline snapshot take_snapshot(fixture *f) {
  snapshot s;
  memset(&s, 0, sizeof s);
  memcpy(s.refs, f->cache->device.refs, (size_t)f->cache->device.count * sizeof *s.refs);
  memcpy(s.holds, f->cache->device.holds, (size_t)f->cache->device.count * sizeof *s.holds);
  s.stats = ps_stats(f->pc);
  s.info = kv_info(f->cache);
  return s;
}

static inline void assert_unchanged(fixture *f, const snapshot *before) {
  const snapshot now = take_snapshot(f);
  cr_assert(!memcmp(now.refs, before->refs, sizeof now.refs), "reference counts changed");
  cr_assert(!memcmp(now.holds, before->holds, sizeof now.holds), "holds changed");
  cr_assert(!memcmp(&now.stats, &before->stats, sizeof now.stats), "prefix cache statistics changed");
  cr_assert(!memcmp(&now.info, &before->info, sizeof now.info), "the KV cache changed");
  ps_validate(f->pc);
}

/* Whether block is on the free list. */
static inline int is_free(fixture *f, int32_t block) {
  for (int64_t i = 0; i < f->cache->device.free_count; i++)
    if (f->cache->device.free_ids[i] == block) return 1;
  return 0;
}

/* Writes the KV of tokens[from..from + n) into the slots an append gave them. */
static inline void write_tokens(fixture *f, const int32_t *tokens, int64_t from, int64_t n, const int64_t *slots) {
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(tokens, from + n, hashes);
  for (int64_t t = from; t < from + n; t++)
    ps_token(f->cache, 0, slots[t - from] / f->ps, slots[t - from] % f->ps, hashes[t], 1);
}

static inline void insert(fixture *f, int64_t seq, const int32_t *tokens, int64_t n) {
  cr_assert_eq(yk_prefix_cache_insert(f->pc, seq, tokens, n), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  ps_validate(f->pc);
}

#endif
