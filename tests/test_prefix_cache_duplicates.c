/* The prefix cache (include/yk/radix.h) when two requests compute the same prefix: the second's
 * copies are switched to the tree's blocks when it caches, with forks, pending copies, swapping
 * and refusals in the way, at page sizes 1, 16 and 5. The other hand-written cases are
 * test_prefix_cache.c. */
#include "tests/prefix_fixture.h"

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
