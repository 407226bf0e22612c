/* The prefix cache (include/yk/radix.h): the radix tree joined to a CPU KV cache. Hand-written
 * cases at page sizes 1, 16 and 5: sharing by reference, copy-on-write of a cached block,
 * eviction when the pool is full, refusal with nothing changed when eviction cannot help, bad
 * input. Every block's contents name the tokens they were computed from (tests/prefix_support.h).
 * Two requests computing the same prefix: test_prefix_cache_duplicates.c; the long random run:
 * test_prefix_cache_random.c. */
#include "tests/prefix_fixture.h"

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
