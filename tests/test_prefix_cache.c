/* The prefix cache (include/yk/radix.h): the radix tree joined to a CPU KV cache. Hand-written
 * cases at page sizes 1, 16 and 5: sharing by reference, copy-on-write of a cached block,
 * eviction when the pool is full, refusal with nothing changed when eviction cannot help, two
 * requests computing the same prefix (the second's copies switched to the tree's blocks when it
 * caches, with forks, pending copies and swapping in the way), bad input. Every block's contents
 * name the tokens they were computed from (tests/prefix_support.h). The long random run is
 * test_prefix_cache_random.c. */
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

static fixture make(int page_size, int64_t blocks, int64_t host_blocks) {
  fixture f;
  f.cache = kv_cpu_cache(&f.ctx, 2, 2, 4, page_size, blocks, host_blocks);
  f.pc = ps_create(f.cache);
  f.ps = page_size;
  return f;
}

/* Every sequence is gone by now: once the tree lets go, no block may stay taken. */
static void done(fixture *f) {
  ps_validate(f->pc);
  yk_prefix_cache_destroy(f->pc);
  const yk_kv_cache_info info = kv_info(f->cache);
  cr_assert_eq(info.sequences, 0);
  cr_assert_eq(info.free_blocks, info.num_blocks, "blocks leaked");
  kv_done(f->ctx, f->cache);
}

/* tokens[i] = base + i * step */
static void token_run(int32_t *tokens, int64_t n, int32_t base, int32_t step) {
  for (int64_t i = 0; i < n; i++) tokens[i] = base + (int32_t)i * step;
}

/* A request's prompt: start, blocks for what is not cached, the copies, then the KV of the new
 * tokens written into their slots. *cached gets the tokens found cached. */
static int64_t prompt(fixture *f, const int32_t *tokens, int64_t n, int64_t *cached) {
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
static void check_contents(fixture *f, int64_t seq, const int32_t *tokens) {
  const yk_kv_seq_info info = kv_seq(f->cache, seq);
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(tokens, info.tokens, hashes);
  for (int64_t t = 0; t < info.tokens; t++)
    cr_assert_eq(ps_token(f->cache, info.swapped_out, info.table[t / f->ps], t % f->ps, hashes[t], 0), 0,
                 "token %lld of sequence %lld holds another prefix's KV", (long long)t, (long long)seq);
}

static void finish(fixture *f, int64_t seq, const int32_t *tokens, int64_t n) {
  cr_assert_eq(yk_prefix_cache_finish(f->pc, seq, tokens, n), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  ps_validate(f->pc);
}

static int32_t refs(fixture *f, int32_t block) { return f->cache->device.refs[block]; }

static void reuses_matched_blocks_by_reference(int page_size) {
  fixture f = make(page_size, 64, 0);
  const int64_t ps = f.ps, n_a = 3 * ps + ps / 2;
  int32_t a[MAX_TOKENS], b[MAX_TOKENS], a_blocks[8];
  token_run(a, n_a, 1, 7);
  int64_t cached;
  const int64_t seq_a = prompt(&f, a, n_a, &cached);
  cr_assert_eq(cached, 0);
  const int64_t blocks_a = (n_a + ps - 1) / ps;
  memcpy(a_blocks, kv_seq(f.cache, seq_a).table, (size_t)blocks_a * sizeof *a_blocks);
  finish(&f, seq_a, a, n_a);
  yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.cached_blocks, 3, "the whole pages are cached, the part page is not");
  cr_assert_eq(s.free_blocks, 64 - 3, "the part page went back to the pool");
  cr_assert_eq(s.requests, 0);
  for (int i = 0; i < 3; i++) cr_assert_eq(refs(&f, a_blocks[i]), 1, "the tree's reference only");

  /* B shares A's three pages, then goes its own way for two */
  memcpy(b, a, (size_t)(3 * ps) * sizeof *b);
  token_run(b + 3 * ps, 2 * ps, 5000, 3);
  int64_t seq_b;
  cr_assert_eq(yk_prefix_cache_start(f.pc, b, 5 * ps, &seq_b, &cached), YK_OK);
  cr_assert_eq(cached, 3 * ps);
  yk_kv_seq_info info = kv_seq(f.cache, seq_b);
  cr_assert_eq(info.tokens, 3 * ps);
  for (int i = 0; i < 3; i++) {
    cr_assert_eq(info.table[i], a_blocks[i], "page %d is A's block, shared", i);
    cr_assert_eq(refs(&f, a_blocks[i]), 2, "the tree and B");
  }
  cr_assert_eq(kv_info(f.cache).free_blocks, 61, "starting takes no block");
  check_contents(&f, seq_b, b); /* the shared blocks hold B's prefix's KV: it is A's */
  s = ps_stats(f.pc);
  cr_assert_eq(s.locked_blocks, 3);
  cr_assert_eq(s.evictable_blocks, 0);
  cr_assert_eq(s.requests, 1);
  ps_validate(f.pc);

  int64_t slots[MAX_TOKENS];
  cr_assert_eq(yk_prefix_cache_append(f.pc, seq_b, 2 * ps, slots), YK_OK);
  cr_assert_eq(kv_info(f.cache).free_blocks, 59, "only the two new pages are allocated");
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(b, 5 * ps, hashes);
  for (int64_t t = 3 * ps; t < 5 * ps; t++)
    ps_token(f.cache, 0, slots[t - 3 * ps] / ps, slots[t - 3 * ps] % ps, hashes[t], 1);
  check_contents(&f, seq_b, b);
  s = ps_stats(f.pc);
  cr_assert_eq(s.requested_tokens, n_a + 5 * ps);
  cr_assert_eq(s.hit_tokens, 3 * ps);
  finish(&f, seq_b, b, 5 * ps);
  s = ps_stats(f.pc);
  cr_assert_eq(s.cached_blocks, 5);
  cr_assert_eq(s.free_blocks, 59);
  for (int i = 0; i < 3; i++) cr_assert_eq(refs(&f, a_blocks[i]), 1);

  /* C leaves A in the middle of A's second page: only whole pages before it are shared */
  int32_t c[MAX_TOKENS];
  memcpy(c, a, (size_t)n_a * sizeof *c);
  c[ps + ps / 2] = -1;
  int64_t seq_c;
  cr_assert_eq(yk_prefix_cache_start(f.pc, c, n_a, &seq_c, &cached), YK_OK);
  cr_assert_eq(cached, ps);
  check_contents(&f, seq_c, c);
  finish(&f, seq_c, NULL, 0);
  cr_assert_eq(ps_stats(f.pc).cached_blocks, 5, "finishing with n = 0 caches nothing");
  done(&f);
}

AT_PAGE_SIZES(reuses_matched_blocks_by_reference)

/* What a failed call must leave as it was. */
typedef struct snapshot {
  int32_t refs[64], holds[64];
  yk_prefix_cache_stats stats;
  yk_kv_cache_info info;
} snapshot;

static snapshot take_snapshot(fixture *f) {
  snapshot s;
  memset(&s, 0, sizeof s);
  memcpy(s.refs, f->cache->device.refs, (size_t)f->cache->device.count * sizeof *s.refs);
  memcpy(s.holds, f->cache->device.holds, (size_t)f->cache->device.count * sizeof *s.holds);
  s.stats = ps_stats(f->pc);
  s.info = kv_info(f->cache);
  return s;
}

static void assert_unchanged(fixture *f, const snapshot *before) {
  const snapshot now = take_snapshot(f);
  cr_assert(!memcmp(now.refs, before->refs, sizeof now.refs), "reference counts changed");
  cr_assert(!memcmp(now.holds, before->holds, sizeof now.holds), "holds changed");
  cr_assert(!memcmp(&now.stats, &before->stats, sizeof now.stats), "prefix cache statistics changed");
  cr_assert(!memcmp(&now.info, &before->info, sizeof now.info), "the KV cache changed");
  ps_validate(f->pc);
}

/* A sequence over cached blocks whose last one it only partly uses (the manager's shared add)
 * appends into that block: it must get a copy, and the cached block must keep its KV. */
static void copy_on_write_keeps_cached_block_intact(int page_size) {
  fixture f = make(page_size, 16, 0);
  const int64_t ps = f.ps;
  int32_t a[MAX_TOKENS];
  token_run(a, 2 * ps, 11, 5);
  const int64_t seq_a = prompt(&f, a, 2 * ps, NULL);
  int32_t cached[2];
  memcpy(cached, kv_seq(f.cache, seq_a).table, sizeof cached);
  finish(&f, seq_a, a, 2 * ps);

  int64_t seq, need, slot;
  cr_assert_eq(yk_kv_seq_add_shared(f.cache, cached, 2, 2 * ps - 3, &seq), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  cr_assert_eq(refs(&f, cached[1]), 2);
  cr_assert_eq(yk_kv_seq_blocks_needed(f.cache, seq, 1, &need), YK_OK);
  cr_assert_eq(need, 1, "a copy of the cached block");
  cr_assert_eq(yk_prefix_cache_append(f.pc, seq, 1, &slot), YK_OK);
  const yk_kv_seq_info info = kv_seq(f.cache, seq);
  cr_assert_eq(info.table[0], cached[0], "the full block stays shared");
  cr_assert_neq(info.table[1], cached[1], "the block appended into is a private copy");
  cr_assert_eq(slot / ps, info.table[1]);
  cr_assert_eq(kv_info(f.cache).pending_copies, 1);
  cr_assert_eq(refs(&f, cached[1]), 1, "the tree's only");
  cr_assert_eq(f.cache->device.holds[cached[1]], 1, "held until copied");
  ps_validate(f.pc);
  /* both cached blocks are evictable, but evicting them frees nothing yet: one is the sequence's
   * too, the other the pending copy's source */
  const snapshot before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 14), YK_ERR_OUT_OF_MEMORY, "at most 0");
  assert_unchanged(&f, &before);
  cr_assert_eq(yk_kv_cache_copy_blocks(f.cache, NULL), YK_OK);
  int32_t b[MAX_TOKENS];
  memcpy(b, a, sizeof b);
  b[2 * ps - 3] = -5; /* the new token differs from what the cached block holds there */
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(b, 2 * ps - 2, hashes);
  ps_token(f.cache, 0, slot / ps, slot % ps, hashes[2 * ps - 3], 1);
  check_contents(&f, seq, b);

  int64_t again, got;
  cr_assert_eq(yk_prefix_cache_start(f.pc, a, 2 * ps, &again, &got), YK_OK);
  cr_assert_eq(got, 2 * ps);
  cr_assert_eq(kv_seq(f.cache, again).table[1], cached[1]);
  check_contents(&f, again, a); /* every token of the cached block as A computed it */
  finish(&f, again, NULL, 0);
  cr_assert_eq(yk_kv_seq_free(f.cache, seq), YK_OK);
  done(&f);
}

Test(prefix_cache, copy_on_write_keeps_cached_block_intact_page_16) { copy_on_write_keeps_cached_block_intact(16); }
Test(prefix_cache, copy_on_write_keeps_cached_block_intact_page_5) { copy_on_write_keeps_cached_block_intact(5); }

/* Matched lengths of a few token runs, through the scheduling helper. */
static void matched_lengths(fixture *f, const int32_t *const *runs, const int64_t *lengths, int count, int64_t *out) {
  int64_t order[8];
  cr_assert_eq(yk_prefix_cache_order_by_prefix(f->pc, runs, lengths, count, order, out), YK_OK);
}

static void full_pool_evicts_least_recently_used(int page_size) {
  fixture f = make(page_size, 16, 0);
  const int64_t ps = f.ps, n = 4 * ps;
  int32_t a[MAX_TOKENS], b[MAX_TOKENS], c[MAX_TOKENS], d[MAX_TOKENS];
  token_run(a, n, 100, 1), token_run(b, n, 200, 1), token_run(c, n, 300, 1), token_run(d, 2 * n, 400, 1);
  finish(&f, prompt(&f, a, n, NULL), a, n);
  finish(&f, prompt(&f, b, n, NULL), b, n);
  finish(&f, prompt(&f, c, n, NULL), c, n);
  int64_t seq, cached;
  cr_assert_eq(yk_prefix_cache_start(f.pc, a, n, &seq, &cached), YK_OK); /* A is used again: B is the oldest */
  cr_assert_eq(cached, n);
  finish(&f, seq, NULL, 0);
  cr_assert_eq(ps_stats(f.pc).free_blocks, 4);

  seq = prompt(&f, d, 2 * n, &cached); /* 8 blocks with 4 free: B's 4 go */
  cr_assert_eq(cached, 0);
  const yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.evicted_blocks, 4);
  cr_assert_eq(s.cached_blocks, 8);
  cr_assert_eq(s.free_blocks, 0);
  const int32_t *runs[3] = {a, b, c};
  const int64_t lengths[3] = {n, n, n};
  int64_t matched[3];
  matched_lengths(&f, runs, lengths, 3, matched);
  cr_assert(matched[0] == n && matched[1] == 0 && matched[2] == n, "B was evicted, A and C stay");
  check_contents(&f, seq, d);
  finish(&f, seq, d, 2 * n);
  done(&f);
}

AT_PAGE_SIZES(full_pool_evicts_least_recently_used)

static void full_pool_fails_unchanged(int page_size) {
  fixture f = make(page_size, 12, 0);
  const int64_t ps = f.ps, n = 4 * ps;
  int32_t a[MAX_TOKENS], b[MAX_TOKENS], d[MAX_TOKENS];
  token_run(a, n, 100, 1), token_run(b, n, 200, 1), token_run(d, 3 * n, 400, 1);
  finish(&f, prompt(&f, a, n, NULL), a, n);
  finish(&f, prompt(&f, b, n, NULL), b, n);
  int64_t seq_b, seq_a, seq_d, cached;
  cr_assert_eq(yk_prefix_cache_start(f.pc, b, n, &seq_b, &cached), YK_OK); /* B first: A is the newest */
  cr_assert_eq(yk_prefix_cache_start(f.pc, a, n, &seq_a, &cached), YK_OK);
  cr_assert_eq(yk_prefix_cache_start(f.pc, d, 3 * n, &seq_d, &cached), YK_OK);
  cr_assert_eq(cached, 0);
  yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.locked_blocks, 8);
  cr_assert_eq(s.free_blocks, 4);

  /* everything cached is locked: 5 blocks cannot be had, and nothing changes trying */
  snapshot before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_append(f.pc, seq_d, 5 * ps, NULL), YK_ERR_OUT_OF_MEMORY, "evicting");
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 5), YK_ERR_OUT_OF_MEMORY, "4 are free");
  assert_unchanged(&f, &before);
  cr_assert_eq(yk_prefix_cache_reserve(f.pc, 4), YK_OK, "what is free needs no eviction");

  /* B's path unlocked but its blocks still in a fork: evictable, yet evicting it frees nothing */
  int64_t fork;
  cr_assert_eq(yk_kv_seq_fork(f.cache, seq_b, &fork), YK_OK);
  finish(&f, seq_b, NULL, 0);
  finish(&f, seq_a, NULL, 0);
  s = ps_stats(f.pc);
  cr_assert_eq(s.evictable_blocks, 8);
  before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_append(f.pc, seq_d, 9 * ps, NULL), YK_ERR_OUT_OF_MEMORY, "at most 4");
  assert_unchanged(&f, &before);

  /* 8 blocks: B is the least recently used and goes first, freeing nothing; then A, freeing 4 */
  cr_assert_eq(yk_prefix_cache_append(f.pc, seq_d, 8 * ps, NULL), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  s = ps_stats(f.pc);
  cr_assert_eq(s.evicted_blocks, 8);
  cr_assert_eq(s.cached_blocks, 0);
  cr_assert_eq(s.free_blocks, 0);
  const yk_kv_seq_info info = kv_seq(f.cache, fork);
  for (int64_t i = 0; i < info.blocks; i++) cr_assert_eq(refs(&f, info.table[i]), 1, "the fork's own");
  check_contents(&f, fork, b);
  ps_validate(f.pc);
  cr_assert_eq(yk_kv_seq_free(f.cache, fork), YK_OK);
  finish(&f, seq_d, NULL, 0);
  cr_assert_eq(kv_info(f.cache).free_blocks, 12);
  done(&f);
}

AT_PAGE_SIZES(full_pool_fails_unchanged)

/* Two requests compute the same prompt at once; one caches it while still running, and the
 * other's copy is a duplicate that goes back to the pool when it finishes. */
static void same_prefix_computed_twice(int page_size) {
  fixture f = make(page_size, 32, 0);
  const int64_t ps = f.ps, n = 3 * ps + 1, pages = n / ps, blocks = (n + ps - 1) / ps;
  int32_t t[MAX_TOKENS];
  token_run(t, n, 9, 2);
  int64_t cached;
  const int64_t x = prompt(&f, t, n, &cached), y = prompt(&f, t, n, &cached);
  cr_assert_eq(cached, 0, "nothing was cached when Y started");
  cr_assert_eq(kv_info(f.cache).free_blocks, 32 - 2 * blocks);

  cr_assert_eq(yk_prefix_cache_insert(f.pc, x, t, n), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.cached_blocks, pages);
  cr_assert_eq(s.locked_blocks, pages, "X's lock moved to the end of what it cached");
  cr_assert_eq(s.requests, 2);
  ps_validate(f.pc);
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 32 - 2 * blocks + 1), YK_ERR_OUT_OF_MEMORY, "at most 0");

  int32_t y_blocks[8];
  memcpy(y_blocks, kv_seq(f.cache, y).table, (size_t)blocks * sizeof *y_blocks);
  finish(&f, y, t, n);
  for (int64_t i = 0; i < blocks; i++) cr_assert_eq(refs(&f, y_blocks[i]), 0, "Y's page %lld is free", (long long)i);
  cr_assert_eq(kv_info(f.cache).free_blocks, 32 - blocks);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, pages, "finishing switched Y's copies before freeing them");
  const yk_kv_seq_info info = kv_seq(f.cache, x);
  for (int64_t i = 0; i < pages; i++) cr_assert_eq(refs(&f, info.table[i]), 2, "X and the tree");
  check_contents(&f, x, t);
  finish(&f, x, t, n);
  s = ps_stats(f.pc);
  cr_assert_eq(s.locked_blocks, 0);
  cr_assert_eq(s.evictable_blocks, pages);
  cr_assert_eq(s.free_blocks, 32 - pages);
  done(&f);
}

AT_PAGE_SIZES(same_prefix_computed_twice)

/* Whether block is on the free list. */
static int is_free(fixture *f, int32_t block) {
  for (int64_t i = 0; i < f->cache->device.free_count; i++)
    if (f->cache->device.free_ids[i] == block) return 1;
  return 0;
}

/* Writes the KV of tokens[from..from + n) into the slots an append gave them. */
static void write_tokens(fixture *f, const int32_t *tokens, int64_t from, int64_t n, const int64_t *slots) {
  uint16_t hashes[MAX_TOKENS];
  ps_prefix_hashes(tokens, from + n, hashes);
  for (int64_t t = from; t < from + n; t++)
    ps_token(f->cache, 0, slots[t - from] / f->ps, slots[t - from] % f->ps, hashes[t], 1);
}

static void insert(fixture *f, int64_t seq, const int32_t *tokens, int64_t n) {
  cr_assert_eq(yk_prefix_cache_insert(f->pc, seq, tokens, n), YK_OK, "%s", yk_ctx_last_error(f->ctx));
  ps_validate(f->pc);
}

/* Two requests on one prompt, both started before either cached it. X caches first; when Y
 * caches, its table switches to X's blocks for the pages the tree held and its own copies go
 * back to the pool; its partly filled last block stays its own, its lock covers the longer path,
 * its next tokens land in its own blocks, and both finish with nothing leaked. */
static void concurrent_requests_share_after_insert(int page_size) {
  fixture f = make(page_size, 32, 0);
  const int64_t ps = f.ps, n = 3 * ps + 1, pages = n / ps, blocks = (n + ps - 1) / ps, more = 2 * ps;
  int32_t t[MAX_TOKENS], x_blocks[8], y_blocks[8];
  token_run(t, n + more, 9, 2);
  int64_t cached;
  const int64_t x = prompt(&f, t, n, &cached), y = prompt(&f, t, n, &cached);
  cr_assert_eq(cached, 0, "nothing was cached when Y started");
  memcpy(x_blocks, kv_seq(f.cache, x).table, (size_t)blocks * sizeof *x_blocks);
  memcpy(y_blocks, kv_seq(f.cache, y).table, (size_t)blocks * sizeof *y_blocks);
  const int64_t free_before = 32 - 2 * blocks;
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before);

  insert(&f, x, t, n);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, 0, "the tree took X's own blocks");
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before);

  insert(&f, y, t, n);
  const yk_kv_seq_info info = kv_seq(f.cache, y);
  cr_assert_eq(info.tokens, n);
  for (int64_t i = 0; i < pages; i++) {
    cr_assert_eq(info.table[i], x_blocks[i], "Y's page %lld is the tree's (X's) block now", (long long)i);
    cr_assert_eq(refs(&f, x_blocks[i]), 3, "X, Y and the tree");
    cr_assert_eq(refs(&f, y_blocks[i]), 0, "Y's copy of page %lld was released", (long long)i);
    cr_assert(is_free(&f, y_blocks[i]));
  }
  for (int64_t i = pages; i < blocks; i++) {
    cr_assert_eq(info.table[i], y_blocks[i], "the partly filled last block is never switched");
    cr_assert_eq(refs(&f, y_blocks[i]), 1);
  }
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before + pages, "the duplicates went back to the pool");
  yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, pages);
  cr_assert_eq(s.cached_blocks, pages);
  cr_assert_eq(s.locked_blocks, pages);
  cr_assert_eq(s.requests, 2);
  const yk_prefix_request *r = &f.pc->requests[yk_prefix_slot(f.pc, &f.cache->seqs[y & 0xffffffff])];
  cr_assert_eq(r->seq, y);
  cr_assert_eq(r->locked_tokens, pages * ps, "Y's lock covers the path it shares now");
  check_contents(&f, y, t);
  insert(&f, y, t, n);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, pages, "a second insert finds nothing to switch");

  /* Y decodes on: the rest of its last block, then fresh blocks, none of them X's */
  int64_t slots[MAX_TOKENS];
  cr_assert_eq(yk_prefix_cache_append(f.pc, y, more, slots), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  cr_assert_eq(kv_info(f.cache).pending_copies, 0, "no block Y appends into is shared");
  const yk_kv_seq_info grown = kv_seq(f.cache, y);
  for (int64_t k = 0; k < more; k++) {
    const int64_t position = n + k, block = grown.table[position / ps];
    cr_assert_eq(slots[k], block * ps + position % ps, "token %lld's slot", (long long)position);
    if (position / ps < blocks) cr_assert_eq(block, y_blocks[position / ps], "the rest of Y's own last block");
    cr_assert_eq(refs(&f, (int32_t)block), 1, "block %lld is Y's alone", (long long)block);
  }
  for (int64_t i = 0; i < pages; i++) cr_assert_eq(grown.table[i], x_blocks[i]);
  write_tokens(&f, t, n, more, slots);
  check_contents(&f, y, t);
  check_contents(&f, x, t);

  finish(&f, x, t, n);
  s = ps_stats(f.pc);
  cr_assert_eq(s.locked_blocks, pages, "Y still holds the path");
  cr_assert_eq(s.requests, 1);
  finish(&f, y, t, n + more);
  s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, pages);
  cr_assert_eq(s.cached_blocks, (n + more) / ps, "X's pages, then Y's own");
  cr_assert_eq(s.locked_blocks, 0);
  cr_assert_eq(s.free_blocks, 32 - (n + more) / ps, "only the cached pages are taken");
  done(&f);
}

AT_PAGE_SIZES(concurrent_requests_share_after_insert)

/* Y's copies of pages X cached are also held by Y's fork and by a pending copy-on-write copy:
 * Y's insert switches its table and releases its references, yet each copy stays valid for its
 * other holder, and becomes free only when that holder lets go. */
static void duplicates_held_elsewhere_stay_valid(int page_size) {
  fixture f = make(page_size, 32, 0);
  const int64_t ps = f.ps, n = 3 * ps, part = 2 * ps + 2;
  int32_t t[MAX_TOKENS], u[MAX_TOKENS], x_blocks[3], y_blocks[3];
  token_run(t, n, 40, 3);
  memcpy(u, t, sizeof u);
  u[part] = -9; /* the fork goes its own way after Y's first part */
  int64_t cached, fork, slots[MAX_TOKENS];
  const int64_t x = prompt(&f, t, n, &cached), y = prompt(&f, t, part, &cached);
  cr_assert_eq(cached, 0);
  cr_assert_eq(yk_kv_seq_fork(f.cache, y, &fork), YK_OK);
  memcpy(x_blocks, kv_seq(f.cache, x).table, sizeof x_blocks);
  memcpy(y_blocks, kv_seq(f.cache, y).table, sizeof y_blocks);
  insert(&f, x, t, n);

  /* the fork appends into the shared last block first: it gets a copy of it, and Y, alone on the
   * block now, fills it in place, both before the copy is performed */
  int64_t fork_slot;
  cr_assert_eq(yk_prefix_cache_append(f.pc, fork, 1, &fork_slot), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  const int32_t fork_last = kv_seq(f.cache, fork).table[2];
  cr_assert_neq(fork_last, y_blocks[2]);
  cr_assert_eq(yk_prefix_cache_append(f.pc, y, n - part, slots), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  cr_assert_eq(kv_seq(f.cache, y).table[2], y_blocks[2], "filled in place");
  cr_assert_eq(kv_info(f.cache).pending_copies, 1);
  cr_assert_eq(f.cache->device.holds[y_blocks[2]], 1, "the pending copy's source");
  write_tokens(&f, t, part, n - part, slots);

  const int64_t free_before = kv_info(f.cache).free_blocks;
  insert(&f, y, t, n);
  const yk_kv_seq_info info = kv_seq(f.cache, y);
  for (int i = 0; i < 3; i++) cr_assert_eq(info.table[i], x_blocks[i], "Y's page %d is the tree's block", i);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, 3);
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before, "nothing freed: every copy has another holder");
  for (int i = 0; i < 2; i++) cr_assert_eq(refs(&f, y_blocks[i]), 1, "page %d stays the fork's", i);
  cr_assert_eq(refs(&f, y_blocks[2]), 0, "Y's last page: no table holds it ...");
  cr_assert_eq(f.cache->device.holds[y_blocks[2]], 1, "... but the copy still reads it");
  cr_assert(!is_free(&f, y_blocks[2]), "a pending copy's source is not handed out");
  const yk_kv_seq_info fork_info = kv_seq(f.cache, fork);
  cr_assert(fork_info.table[0] == y_blocks[0] && fork_info.table[1] == y_blocks[1] && fork_info.table[2] == fork_last,
            "the fork's table is its own business");

  cr_assert_eq(yk_kv_cache_copy_blocks(f.cache, NULL), YK_OK);
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before + 1, "the copy done, Y's last copy is free");
  cr_assert(is_free(&f, y_blocks[2]));
  write_tokens(&f, u, part, 1, &fork_slot);
  check_contents(&f, fork, u);
  check_contents(&f, y, t);
  check_contents(&f, x, t);

  /* the fork caches too: its copies of the first two pages switch and, the last holder gone, are
   * freed; its own last page joins the tree under its own tokens */
  insert(&f, fork, u, part + 1);
  const yk_kv_seq_info fork_after = kv_seq(f.cache, fork);
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(fork_after.table[i], x_blocks[i]);
    cr_assert_eq(refs(&f, y_blocks[i]), 0);
  }
  cr_assert_eq(fork_after.table[2], fork_last, "partly filled: not cached, not switched");
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before + 3);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, 5);
  check_contents(&f, fork, u);
  cr_assert_eq(yk_kv_seq_free(f.cache, fork), YK_OK);
  finish(&f, y, t, n);
  finish(&f, x, t, n);
  cr_assert_eq(ps_stats(f.pc).cached_blocks, 3);
  done(&f);
}

Test(prefix_cache, duplicates_held_elsewhere_stay_valid_page_16) { duplicates_held_elsewhere_stay_valid(16); }
Test(prefix_cache, duplicates_held_elsewhere_stay_valid_page_5) { duplicates_held_elsewhere_stay_valid(5); }

/* A swapped-out request holds host blocks: inserting it refuses with nothing changed. Swapped
 * back in, its table has new device blocks, the matched prefix's too; its next insert switches
 * them back to the tree's. */
static void insert_after_swapping(int page_size) {
  fixture f = make(page_size, 32, 16);
  const int64_t ps = f.ps, n = 4 * ps;
  int32_t t[MAX_TOKENS], x_blocks[3];
  token_run(t, n, 70, 1);
  const int64_t x = prompt(&f, t, 3 * ps, NULL);
  memcpy(x_blocks, kv_seq(f.cache, x).table, sizeof x_blocks);
  finish(&f, x, t, 3 * ps);
  int64_t cached;
  const int64_t y = prompt(&f, t, n, &cached);
  cr_assert_eq(cached, 3 * ps);
  cr_assert_eq(yk_kv_seq_swap_out(f.cache, y, NULL), YK_OK, "%s", yk_ctx_last_error(f.ctx));

  const snapshot before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, y, t, n), YK_ERR_INVALID_ARGUMENT, "swapped out");
  assert_unchanged(&f, &before);
  cr_assert_eq(yk_prefix_cache_insert(f.pc, y, t, ps - 1), YK_OK, "under a page: nothing to cache");
  assert_unchanged(&f, &before);

  cr_assert_eq(yk_kv_seq_swap_in(f.cache, y, NULL), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  yk_kv_seq_info info = kv_seq(f.cache, y);
  for (int i = 0; i < 3; i++) cr_assert_neq(info.table[i], x_blocks[i], "swapped in to new blocks");
  const int64_t free_before = kv_info(f.cache).free_blocks;
  check_contents(&f, y, t);
  insert(&f, y, t, n);
  info = kv_seq(f.cache, y);
  for (int i = 0; i < 3; i++) cr_assert_eq(info.table[i], x_blocks[i], "back on the tree's block");
  cr_assert_eq(kv_info(f.cache).free_blocks, free_before + 3);
  const yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, 3);
  cr_assert_eq(s.cached_blocks, 4);
  cr_assert_eq(s.locked_blocks, 4);
  check_contents(&f, y, t);
  finish(&f, y, t, n);
  done(&f);
}

AT_PAGE_SIZES(insert_after_swapping)

/* An insert that cannot switch a duplicate (the tree's block at its reference limit) or whose new
 * pages the tree cannot take refuses with the precise reason and changes nothing. */
Test(prefix_cache, failed_insert_changes_nothing) {
  fixture f = make(4, 16, 0);
  int32_t t[16], x_blocks[2], y_blocks[3];
  token_run(t, 12, 5, 1);
  const int64_t x = prompt(&f, t, 8, NULL), y = prompt(&f, t, 12, NULL);
  memcpy(x_blocks, kv_seq(f.cache, x).table, sizeof x_blocks);
  memcpy(y_blocks, kv_seq(f.cache, y).table, sizeof y_blocks);
  insert(&f, x, t, 8);

  /* the counts are forced to their limit around each call, and put back before comparing */
  snapshot before = take_snapshot(&f);
  int32_t *count = &f.cache->device.refs[x_blocks[0]];
  const int32_t was = *count;
  *count = INT32_MAX; /* the tree's block for Y's first page can take no more */
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, y, t, 12), YK_ERR_UNSUPPORTED, "2^31 - 1 references");
  *count = was;
  cr_assert(!memcmp(kv_seq(f.cache, y).table, y_blocks, sizeof y_blocks), "Y's table changed");
  cr_assert_eq(ps_stats(f.pc).nodes, 1, "the tree did not take Y's third page");
  assert_unchanged(&f, &before);

  count = &f.cache->device.refs[y_blocks[2]];
  *count = INT32_MAX; /* Y's third page cannot join the tree: the page owner refuses it */
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, y, t, 12), YK_ERR_UNSUPPORTED, "tree retaining blocks");
  *count = 1;
  cr_assert(strstr(yk_ctx_last_error(f.ctx), "2^31 - 1 references"), "the owner's message, not a generic one");
  cr_assert(!memcmp(kv_seq(f.cache, y).table, y_blocks, sizeof y_blocks), "Y's table changed");
  assert_unchanged(&f, &before);

  insert(&f, y, t, 12);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, 2);
  cr_assert_eq(kv_seq(f.cache, y).table[2], y_blocks[2]);
  finish(&f, y, t, 12);
  finish(&f, x, t, 8);
  done(&f);
}

/* Y's prompt starts on a page Z cached (shared from the start), then runs on over pages X computes
 * at the same time and caches first, then over pages of its own. Y's inserts switch only its
 * copies, only whole pages up to the n it passes, its shared page and its own pages stay; bad
 * input and an eviction its lock forbids change nothing; once both finish, eviction frees every
 * cached block exactly once, the copies released earlier not again. */
static void partly_duplicated_prefix_then_eviction(int page_size) {
  fixture f = make(page_size, 32, 0);
  const int64_t ps = f.ps, n = 4 * ps + 1, pages = n / ps, blocks = (n + ps - 1) / ps; /* 4 or 5, 5 */
  int32_t t[MAX_TOKENS], x_blocks[3], y_blocks[8];
  token_run(t, n, 300, 7);
  const int64_t z = prompt(&f, t, ps, NULL);
  const int32_t z0 = kv_seq(f.cache, z).table[0];
  finish(&f, z, t, ps);
  int64_t cached;
  const int64_t x = prompt(&f, t, 3 * ps, &cached);
  cr_assert_eq(cached, ps);
  const int64_t y = prompt(&f, t, n, &cached);
  cr_assert_eq(cached, ps);
  memcpy(x_blocks, kv_seq(f.cache, x).table, sizeof x_blocks);
  memcpy(y_blocks, kv_seq(f.cache, y).table, (size_t)blocks * sizeof *y_blocks);
  cr_assert(x_blocks[0] == z0 && y_blocks[0] == z0, "both share Z's page");
  cr_assert_eq(refs(&f, z0), 3);
  insert(&f, x, t, 3 * ps);
  const int64_t free_start = 32 - 3 - (blocks - 1);
  cr_assert_eq(kv_info(f.cache).free_blocks, free_start);
  cr_assert_eq(ps_stats(f.pc).duplicate_blocks, 0);

  snapshot before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, y, t, n + 1), YK_ERR_INVALID_ARGUMENT, "holds");
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, y, NULL, n), YK_ERR_INVALID_ARGUMENT, "tokens is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_finish(f.pc, y, t, n + 1), YK_ERR_INVALID_ARGUMENT, "holds");
  cr_assert(!memcmp(kv_seq(f.cache, y).table, y_blocks, (size_t)blocks * sizeof *y_blocks), "Y's table changed");
  assert_unchanged(&f, &before);

  /* two pages and a bit: page 1 switches; page 2, a duplicate too, lies past n and stays Y's */
  insert(&f, y, t, 2 * ps + ps / 2);
  yk_kv_seq_info info = kv_seq(f.cache, y);
  cr_assert(info.table[0] == z0 && info.table[1] == x_blocks[1] && info.table[2] == y_blocks[2]);
  for (int64_t i = 3; i < blocks; i++) cr_assert_eq(info.table[i], y_blocks[i]);
  cr_assert_eq(refs(&f, z0), 3, "not a duplicate: no reference gained or lost");
  cr_assert_eq(refs(&f, x_blocks[1]), 3, "X, Y and the tree");
  cr_assert_eq(refs(&f, y_blocks[1]), 0);
  cr_assert(is_free(&f, y_blocks[1]));
  cr_assert_eq(refs(&f, y_blocks[2]), 1, "Y's alone, the tree's is X's");
  cr_assert_eq(kv_info(f.cache).free_blocks, free_start + 1);
  yk_prefix_cache_stats s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, 1);
  cr_assert_eq(s.cached_blocks, 3, "nothing new: the tree had all of it");
  cr_assert_eq(s.nodes, 3, "X's node split where Y's insert ended");
  cr_assert_eq(f.pc->requests[yk_prefix_slot(f.pc, &f.cache->seqs[y & 0xffffffff])].locked_tokens, 2 * ps);

  insert(&f, y, t, n);
  info = kv_seq(f.cache, y);
  for (int i = 0; i < 3; i++) cr_assert_eq(info.table[i], x_blocks[i], "page %d is the tree's", i);
  for (int64_t i = 3; i < blocks; i++) cr_assert_eq(info.table[i], y_blocks[i], "page %lld is Y's own", (long long)i);
  cr_assert_eq(refs(&f, x_blocks[2]), 3);
  cr_assert_eq(refs(&f, y_blocks[2]), 0);
  cr_assert(is_free(&f, y_blocks[2]));
  for (int64_t i = 3; i < pages; i++) cr_assert_eq(refs(&f, y_blocks[i]), 2, "Y and the tree: new to it");
  if (pages < blocks) cr_assert_eq(refs(&f, y_blocks[blocks - 1]), 1, "the part page: Y's alone");
  cr_assert_eq(kv_info(f.cache).free_blocks, 32 - blocks, "Z's page, X's two and Y's own are taken");
  s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, 2);
  cr_assert_eq(s.cached_blocks, pages);
  cr_assert_eq(s.locked_blocks, pages);
  cr_assert_eq(s.evictable_blocks, 0);
  check_contents(&f, y, t);
  check_contents(&f, x, t);

  /* Y's lock keeps the path, its switched pages among them, from eviction */
  before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 32 - blocks + 1), YK_ERR_OUT_OF_MEMORY, "at most 0");
  assert_unchanged(&f, &before);
  finish(&f, x, NULL, 0);
  for (int i = 0; i < 3; i++) cr_assert_eq(refs(&f, x_blocks[i]), 2, "Y and the tree");
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 32 - blocks + 1), YK_ERR_OUT_OF_MEMORY, "at most 0");
  finish(&f, y, t, n);
  s = ps_stats(f.pc);
  cr_assert_eq(s.duplicate_blocks, 2, "nothing left to switch");
  cr_assert_eq(s.evictable_blocks, pages);
  cr_assert_eq(s.free_blocks, 32 - pages);
  for (int i = 0; i < 3; i++) cr_assert_eq(refs(&f, x_blocks[i]), 1, "the tree's alone");

  cr_assert_eq(yk_prefix_cache_reserve(f.pc, 32), YK_OK, "%s", yk_ctx_last_error(f.ctx));
  s = ps_stats(f.pc);
  cr_assert_eq(s.evicted_blocks, pages);
  cr_assert_eq(s.cached_blocks, 0);
  cr_assert_eq(s.nodes, 0);
  cr_assert_eq(s.free_blocks, 32, "every block free, none on the free list twice");
  for (int64_t b = 0; b < 32; b++) cr_assert_eq(refs(&f, (int32_t)b), 0);
  done(&f);
}

AT_PAGE_SIZES(partly_duplicated_prefix_then_eviction)

/* Destroying the prefix cache with a request running leaves its sequence whole. */
Test(prefix_cache, destroy_with_requests_running) {
  fixture f = make(4, 16, 0);
  int32_t t[16];
  token_run(t, 16, 1, 1);
  finish(&f, prompt(&f, t, 16, NULL), t, 16);
  int64_t cached;
  const int64_t seq = prompt(&f, t, 16, &cached);
  cr_assert_eq(cached, 16);
  yk_prefix_cache_destroy(f.pc);
  cr_assert_eq(kv_info(f.cache).free_blocks, 12);
  check_contents(&f, seq, t);
  cr_assert_eq(yk_kv_seq_free(f.cache, seq), YK_OK);
  cr_assert_eq(kv_info(f.cache).free_blocks, 16);
  kv_done(f.ctx, f.cache);
}

Test(prefix_cache, bad_input) {
  fixture f = make(4, 16, 8);
  int32_t t[16];
  token_run(t, 16, 1, 1);
  int64_t seq, cached;
  yk_prefix_cache *pc;
  ts_assert_rejected(NULL, yk_prefix_cache_create(NULL, &pc), YK_ERR_INVALID_ARGUMENT, "cache is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_create(f.cache, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  ts_assert_rejected(NULL, yk_prefix_cache_start(NULL, t, 4, &seq, NULL), YK_ERR_INVALID_ARGUMENT, "pc is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_start(f.pc, t, 4, NULL, NULL), YK_ERR_INVALID_ARGUMENT, "seq is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_start(f.pc, t, -1, &seq, NULL), YK_ERR_INVALID_ARGUMENT, "n is -1");
  ts_assert_rejected(f.ctx, yk_prefix_cache_start(f.pc, NULL, 4, &seq, NULL), YK_ERR_INVALID_ARGUMENT, "NULL");
  ts_assert_rejected(NULL, yk_prefix_cache_append(NULL, 1, 1, NULL), YK_ERR_INVALID_ARGUMENT, "pc is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_append(f.pc, 12345, 1, NULL), YK_ERR_NOT_FOUND, "not a sequence");
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, 17), YK_ERR_INVALID_ARGUMENT, "not in 0..16");
  ts_assert_rejected(f.ctx, yk_prefix_cache_reserve(f.pc, -1), YK_ERR_INVALID_ARGUMENT, "not in 0..16");
  ts_assert_rejected(NULL, yk_prefix_cache_get_stats(NULL, NULL), YK_ERR_INVALID_ARGUMENT, "pc is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_get_stats(f.pc, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  ts_assert_rejected(NULL, yk_prefix_cache_order_by_prefix(NULL, NULL, NULL, 0, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
                     "pc is NULL");
  cr_assert_eq(yk_prefix_cache_start(f.pc, t, 0, &seq, &cached), YK_OK, "an empty request");
  cr_assert_eq(cached, 0);
  cr_assert_eq(yk_prefix_cache_append(f.pc, seq, 10, NULL), YK_OK);
  ts_assert_rejected(f.ctx, yk_prefix_cache_finish(f.pc, seq, t, 11), YK_ERR_INVALID_ARGUMENT, "holds 10 tokens");
  ts_assert_rejected(f.ctx, yk_prefix_cache_finish(f.pc, seq, NULL, 8), YK_ERR_INVALID_ARGUMENT, "tokens is NULL");
  ts_assert_rejected(f.ctx, yk_prefix_cache_insert(f.pc, seq, t, -1), YK_ERR_INVALID_ARGUMENT, "n is -1");
  cr_assert_eq(yk_kv_seq_swap_out(f.cache, seq, NULL), YK_OK);
  snapshot before = take_snapshot(&f);
  ts_assert_rejected(f.ctx, yk_prefix_cache_finish(f.pc, seq, t, 8), YK_ERR_INVALID_ARGUMENT, "swapped out");
  assert_unchanged(&f, &before);
  cr_assert_eq(yk_prefix_cache_finish(f.pc, seq, t, 3), YK_OK, "under a page: nothing to cache, swapped out or not");
  ts_assert_rejected(f.ctx, yk_prefix_cache_finish(f.pc, seq, NULL, 0), YK_ERR_NOT_FOUND, "was freed");
  cr_assert_eq(ps_stats(f.pc).requests, 0);
  /* the manager's shared add refuses what it cannot share */
  cr_assert_eq(kv_info(f.cache).free_blocks, 16);
  const int32_t free_block[1] = {3};
  ts_assert_rejected(f.ctx, yk_kv_seq_add_shared(f.cache, free_block, 1, 4, &seq), YK_ERR_INVALID_ARGUMENT, "is free");
  ts_assert_rejected(f.ctx, yk_kv_seq_add_shared(f.cache, free_block, 1, 5, &seq), YK_ERR_INVALID_ARGUMENT,
                     "do not fill");
  const int64_t running = prompt(&f, t, 8, NULL);
  const int32_t in_use = kv_seq(f.cache, running).table[0], twice[2] = {in_use, in_use};
  ts_assert_rejected(f.ctx, yk_kv_seq_add_shared(f.cache, twice, 2, 8, &seq), YK_ERR_INVALID_ARGUMENT, "twice");
  finish(&f, running, t, 8);
  const int32_t out_of_range[1] = {16};
  ts_assert_rejected(f.ctx, yk_kv_blocks_retain(f.cache, "test", out_of_range, 1), YK_ERR_INVALID_ARGUMENT,
                     "not in 0..15");
  cr_assert_eq(yk_kv_blocks_release(f.cache, out_of_range, 1), 1, "skipped, not counted down");
  done(&f);
}
