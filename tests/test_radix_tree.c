/* The radix tree (kv/radix_tree.h): hand-written cases at page sizes 1, 4 and 16, and bad input,
 * with the fake page owner of radix_support.h counting every reference. The long random run
 * against a brute-force model is test_radix_tree_random.c. */
#include "tests/radix_support.h"

Test(radix_tree, page_size_1_insert_match_split) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, 1);
  const int32_t a[5] = {1, 2, 3, 4, 5}, a_pages[5] = {10, 11, 12, 13, 14};
  yk_radix_insert_result ins;
  cr_assert_eq(yk_radix_insert(tree, a, 5, a_pages, NULL, &ins), YK_OK);
  cr_assert_eq(ins.cached_tokens, 0);
  cr_assert_eq(ins.inserted_tokens, 5);
  cr_assert_eq(ins.duplicate_count, 0);
  yk_radix_stats s = stats_of(tree);
  cr_assert_eq(s.cached_tokens, 5);
  cr_assert_eq(s.nodes, 1);
  cr_assert_eq(s.evictable_pages, 5);

  const int32_t q[4] = {1, 2, 3, 9};
  int32_t pages[4] = {-1, -1, -1, -1};
  yk_radix_match m;
  cr_assert_eq(yk_radix_match_prefix(tree, q, 4, pages, 4, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, 3);
  cr_assert(pages[0] == 10 && pages[1] == 11 && pages[2] == 12 && pages[3] == -1);
  s = stats_of(tree);
  cr_assert_eq(s.nodes, 2, "the match ending inside a node splits it");
  cr_assert_eq(s.cached_tokens, 5);

  /* a second sequence through the split point: only its new tail is retained */
  const int32_t b[5] = {1, 2, 3, 7, 8}, b_pages[5] = {10, 11, 12, 23, 24};
  cr_assert_eq(yk_radix_insert(tree, b, 5, b_pages, NULL, &ins), YK_OK);
  cr_assert_eq(ins.cached_tokens, 3);
  cr_assert_eq(ins.inserted_tokens, 2);
  cr_assert_eq(ins.duplicate_count, 0);
  cr_assert_eq(o.tree_refs[23] + o.tree_refs[24] + o.tree_refs[10], 3);
  s = stats_of(tree);
  cr_assert_eq(s.cached_tokens, 7);
  cr_assert_eq(s.nodes, 3);

  int64_t len;
  cr_assert_eq(yk_radix_prefix_length(tree, b, 5, &len), YK_OK);
  cr_assert_eq(len, 5);
  cr_assert_eq(yk_radix_prefix_length(tree, b, 4, &len), YK_OK);
  cr_assert_eq(len, 4);
  cr_assert_eq(stats_of(tree).nodes, 3, "prefix_length never splits");
  cr_assert_eq(yk_radix_match_prefix(tree, q, 0, NULL, 0, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, 0);
  cr_assert_eq(held_pages(&o), 7);
  destroy_tree(tree, &o);
}

/* Page size 4 and 16: only whole pages are cached and shared; a match ending inside a page is cut
 * back to the page before it. */
static void check_paged(int ps) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, ps);
  int32_t a[3 * 16 + 5], pages[8];
  const int64_t n = 2 * ps + ps / 2 + 1; /* two pages and part of a third */
  for (int64_t i = 0; i < n; i++) a[i] = (int32_t)(100 + i);
  page_run(pages, 3, 40);
  yk_radix_insert_result ins;
  cr_assert_eq(yk_radix_insert(tree, a, n, pages, NULL, &ins), YK_OK);
  cr_assert_eq(ins.inserted_tokens, 2 * ps, "the partial page at the end is not cached");
  cr_assert_eq(o.tree_refs[42], 0, "the partial page's page is not retained");
  yk_radix_stats s = stats_of(tree);
  cr_assert_eq(s.cached_tokens, 2 * ps);
  cr_assert_eq(s.cached_pages, 2);

  /* the same tokens: the whole cached part matches, the tail does not */
  int32_t got[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
  yk_radix_match m;
  cr_assert_eq(yk_radix_match_prefix(tree, a, n, got, 8, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, 2 * ps);
  cr_assert(got[0] == 40 && got[1] == 41 && got[2] == -1);

  /* differing in the middle of the second page: one page shared, and the node split after it */
  int32_t b[3 * 16 + 5];
  memcpy(b, a, sizeof b);
  b[ps + ps / 2] = -7;
  cr_assert_eq(yk_radix_match_prefix(tree, b, n, got, 8, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, ps);
  cr_assert_eq(got[0], 40);
  cr_assert_eq(stats_of(tree).nodes, 2);

  /* differing in the first page: nothing shared, though ps - 1 tokens agree */
  b[ps - 1] = -8;
  cr_assert_eq(yk_radix_match_prefix(tree, b, n, got, 8, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, 0);

  /* b's own pages: the first page is cached already under page 40 (b passes 50: a duplicate) */
  memcpy(b, a, sizeof b);
  b[ps + 1] = -9;
  int32_t b_pages[3] = {50, 51, 52}, dup[3] = {-1, -1, -1};
  cr_assert_eq(yk_radix_insert(tree, b, 2 * ps, b_pages, dup, &ins), YK_OK);
  cr_assert_eq(ins.cached_tokens, ps);
  cr_assert_eq(ins.inserted_tokens, ps);
  cr_assert_eq(ins.duplicate_count, 1);
  cr_assert_eq(dup[0], 50);
  cr_assert_eq(o.tree_refs[50], 0, "a duplicate is not retained");
  cr_assert_eq(o.tree_refs[51], 1);
  s = stats_of(tree);
  cr_assert_eq(s.cached_pages, 3);
  cr_assert_eq(s.nodes, 3);
  /* a query shorter than a page matches nothing */
  cr_assert_eq(yk_radix_match_prefix(tree, a, ps - 1, got, 8, &m), YK_OK);
  cr_assert_eq(m.matched_tokens, 0);
  destroy_tree(tree, &o);
}

Test(radix_tree, page_size_4_whole_pages_only) { check_paged(4); }
Test(radix_tree, page_size_16_whole_pages_only) { check_paged(16); }

Test(radix_tree, insert_of_cached_prefix_returns_duplicates) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, 2);
  const int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int32_t first[4] = {0, 1, 2, 3}, again[4] = {0, 9, 2, 11};
  cr_assert_eq(yk_radix_insert(tree, t, 6, first, NULL, NULL), YK_OK);
  int32_t dup[4] = {-1, -1, -1, -1};
  yk_radix_insert_result ins;
  cr_assert_eq(yk_radix_insert(tree, t, 8, again, dup, &ins), YK_OK);
  cr_assert_eq(ins.cached_tokens, 6);
  cr_assert_eq(ins.inserted_tokens, 2);
  cr_assert_eq(ins.duplicate_count, 1, "page 0 and 2 are the tree's own; 9 duplicates 1");
  cr_assert_eq(dup[0], 9);
  cr_assert_eq(dup[1], -1);
  cr_assert_eq(o.tree_refs[9], 0);
  cr_assert_eq(o.tree_refs[11], 1);
  cr_assert_eq(o.tree_refs[1], 1);
  /* all of it cached: nothing retained, every differing page returned */
  const int32_t third[4] = {20, 21, 22, 23};
  cr_assert_eq(yk_radix_insert(tree, t, 8, third, dup, &ins), YK_OK);
  cr_assert_eq(ins.inserted_tokens, 0);
  cr_assert_eq(ins.duplicate_count, 4);
  cr_assert(dup[0] == 20 && dup[1] == 21 && dup[2] == 22 && dup[3] == 23);
  cr_assert_eq(held_pages(&o), 4);
  /* an insert ending inside a node splits it there */
  cr_assert_eq(yk_radix_insert(tree, t, 4, first, NULL, &ins), YK_OK);
  cr_assert_eq(ins.cached_tokens, 4);
  cr_assert_eq(stats_of(tree).nodes, 3);
  /* the owner refusing: the insert fails and changes nothing */
  const int32_t u[4] = {1, 2, 9, 9}, u_pages[2] = {0, 30};
  /* The message: the owner's own when it left one, else the insert's, whatever an earlier failed
   * call left; a retain that succeeds leaves that earlier message alone. */
  o.refuse = 1;
  cr_assert_eq(yk_radix_insert(NULL, u, 4, u_pages, NULL, &ins), YK_ERR_INVALID_ARGUMENT, "an earlier message");
  cr_assert_eq(yk_radix_insert(tree, u, 4, u_pages, NULL, &ins), YK_ERR_OUT_OF_MEMORY);
  cr_assert_str_eq(yk_ctx_last_error(NULL), "radix insert: the page owner refused 1 pages");
  o.refuse = 2;
  cr_assert_eq(yk_radix_insert(tree, u, 4, u_pages, NULL, &ins), YK_ERR_OUT_OF_MEMORY);
  cr_assert_str_eq(yk_ctx_last_error(NULL), "radix get_stats: tree is NULL", "the owner's message, passed on");
  o.refuse = 0;
  cr_assert_eq(stats_of(tree).cached_pages, 4);
  cr_assert_eq(o.tree_refs[30], 0);
  cr_assert_eq(yk_radix_insert(NULL, u, 4, u_pages, NULL, &ins), YK_ERR_INVALID_ARGUMENT);
  char before[256];
  snprintf(before, sizeof before, "%s", yk_ctx_last_error(NULL));
  cr_assert_eq(yk_radix_insert(tree, u, 4, u_pages, NULL, &ins), YK_OK);
  cr_assert_eq(ins.inserted_tokens, 2, "page 30 retained");
  cr_assert_eq(o.tree_refs[30], 1);
  cr_assert_str_eq(yk_ctx_last_error(NULL), before, "the last failed call's message is still there");
  cr_assert_eq(yk_radix_insert(tree, t, 8, third, NULL, &ins), YK_OK, "nothing new: the owner not called");
  cr_assert_str_eq(yk_ctx_last_error(NULL), before);
  destroy_tree(tree, &o);
}

Test(radix_tree, lock_prevents_eviction) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, 4);
  int32_t a[8] = {1, 1, 1, 1, 2, 2, 2, 2}, b[8] = {3, 3, 3, 3, 4, 4, 4, 4};
  const int32_t a_pages[2] = {0, 1}, b_pages[2] = {2, 3};
  cr_assert_eq(yk_radix_insert(tree, a, 8, a_pages, NULL, NULL), YK_OK);
  cr_assert_eq(yk_radix_insert(tree, b, 8, b_pages, NULL, NULL), YK_OK);
  yk_radix_match m;
  cr_assert_eq(yk_radix_match_prefix(tree, a, 4, NULL, 0, &m), YK_OK); /* splits a after one page */
  cr_assert_eq(yk_radix_lock(tree, m.node), YK_OK);
  cr_assert_eq(yk_radix_lock(tree, m.node), YK_OK);
  yk_radix_stats s = stats_of(tree);
  cr_assert_eq(s.locked_pages, 1);
  cr_assert_eq(s.evictable_pages, 3);
  int64_t freed;
  cr_assert_eq(yk_radix_evict(tree, 100, &freed), YK_OK);
  cr_assert_eq(freed, 3, "everything but the locked page goes");
  cr_assert_eq(o.tree_refs[0], 1);
  s = stats_of(tree);
  cr_assert_eq(s.cached_pages, 1);
  cr_assert_eq(s.evictable_pages, 0);
  cr_assert_eq(s.locked_pages, 1);
  cr_assert_eq(yk_radix_unlock(tree, m.node), YK_OK);
  cr_assert_eq(yk_radix_evict(tree, 100, &freed), YK_OK);
  cr_assert_eq(freed, 0, "still locked once");
  cr_assert_eq(yk_radix_unlock(tree, m.node), YK_OK);
  ts_assert_rejected(NULL, yk_radix_unlock(tree, m.node), YK_ERR_INVALID_ARGUMENT, "not locked");
  cr_assert_eq(yk_radix_evict(tree, 1, &freed), YK_OK);
  cr_assert_eq(freed, 1);
  /* the node is gone: its handle is stale, whatever reuses the slot */
  cr_assert_eq(yk_radix_insert(tree, b, 8, b_pages, NULL, NULL), YK_OK);
  ts_assert_rejected(NULL, yk_radix_lock(tree, m.node), YK_ERR_INVALID_ARGUMENT, "not in the tree");
  ts_assert_rejected(NULL, yk_radix_unlock(tree, m.node), YK_ERR_INVALID_ARGUMENT, "not in the tree");
  /* the root: locking it does nothing, unlocking it below zero fails */
  const yk_radix_node root = {0, 0};
  ts_assert_rejected(NULL, yk_radix_unlock(tree, root), YK_ERR_INVALID_ARGUMENT, "not locked");
  cr_assert_eq(yk_radix_lock(tree, root), YK_OK);
  cr_assert_eq(yk_radix_unlock(tree, root), YK_OK);
  destroy_tree(tree, &o);
}

Test(radix_tree, evicts_least_recently_used_leaves_first) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, 1);
  /* [1 2] with children [3 4] and [5 6], then [7 8] and [9] */
  const int32_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 5, 6}, c[2] = {7, 8}, d[1] = {9};
  const int32_t ap[4] = {0, 1, 2, 3}, bp[4] = {0, 1, 4, 5}, cp[2] = {6, 7}, dp[1] = {8};
  cr_assert_eq(yk_radix_insert(tree, a, 4, ap, NULL, NULL), YK_OK);
  cr_assert_eq(yk_radix_insert(tree, b, 4, bp, NULL, NULL), YK_OK);
  cr_assert_eq(yk_radix_insert(tree, c, 2, cp, NULL, NULL), YK_OK);
  cr_assert_eq(yk_radix_insert(tree, d, 1, dp, NULL, NULL), YK_OK);
  yk_radix_match m;
  cr_assert_eq(yk_radix_match_prefix(tree, a, 4, NULL, 0, &m), YK_OK); /* a is now the newest */
  cr_assert_eq(yk_radix_match_prefix(tree, c, 2, NULL, 0, &m), YK_OK); /* then c */
  /* by age: [5 6] (b's tail), [9], then [3 4], and [1 2] only once both children are gone, then c */
  const int32_t want[9] = {4, 5, 8, 2, 3, 0, 1, 6, 7};
  int64_t freed, total = 0;
  for (int step = 0; step < 5; step++) {
    cr_assert_eq(yk_radix_evict(tree, 1, &freed), YK_OK);
    total += freed;
    cr_assert_eq(o.released_count, total);
  }
  cr_assert_eq(total, 9);
  for (int i = 0; i < 9; i++)
    cr_assert_eq(o.released[i], want[i], "release %d: page %d, want %d", i, o.released[i], want[i]);
  cr_assert_eq(yk_radix_evict(tree, 1, &freed), YK_OK);
  cr_assert_eq(freed, 0);
  yk_radix_stats s = stats_of(tree);
  cr_assert_eq(s.nodes, 0);
  cr_assert_eq(s.cached_tokens, 0);
  destroy_tree(tree, &o);
}

Test(radix_tree, orders_waiting_requests_by_longest_prefix) {
  owner o;
  yk_radix_tree *tree = make_tree(&o, 2);
  const int32_t sys[6] = {5, 5, 6, 6, 7, 7}, sys_pages[3] = {0, 1, 2};
  cr_assert_eq(yk_radix_insert(tree, sys, 6, sys_pages, NULL, NULL), YK_OK);
  const int32_t r0[3] = {9, 9, 9}, r1[5] = {5, 5, 6, 6, 1}, r2[8] = {5, 5, 6, 6, 7, 7, 1, 1}, r3[4] = {5, 5, 6, 1},
                r4[5] = {5, 5, 6, 6, 2};
  const int32_t *reqs[5] = {r0, r1, r2, r3, r4};
  const int64_t lens[5] = {3, 5, 8, 4, 5};
  int64_t order[5], matched[5];
  cr_assert_eq(yk_radix_order_by_prefix(tree, reqs, lens, 5, order, matched), YK_OK);
  const int64_t want_order[5] = {2, 1, 4, 3, 0}, want_matched[5] = {0, 4, 6, 2, 4};
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(order[i], want_order[i], "order[%d] = %lld", i, (long long)order[i]);
    cr_assert_eq(matched[i], want_matched[i]);
  }
  cr_assert_eq(stats_of(tree).nodes, 1, "ordering reads the tree only");
  cr_assert_eq(yk_radix_order_by_prefix(tree, reqs, lens, 0, NULL, NULL), YK_OK);
  const int64_t bad_lens[2] = {3, -1};
  ts_assert_rejected(NULL, yk_radix_order_by_prefix(tree, reqs, bad_lens, 2, order, NULL), YK_ERR_INVALID_ARGUMENT,
                     "n is -1");
  ts_assert_rejected(NULL, yk_radix_order_by_prefix(tree, reqs, NULL, 2, order, NULL), YK_ERR_INVALID_ARGUMENT, "NULL");
  destroy_tree(tree, &o);
}

Test(radix_tree, bad_input) {
  owner o;
  memset(&o, 0, sizeof o);
  yk_radix_page_owner po = {fake_retain, fake_release, &o}, half = {fake_retain, NULL, &o};
  yk_radix_tree *tree = (yk_radix_tree *)&o;
  ts_assert_rejected(NULL, yk_radix_create(NULL, 0, &po, &tree), YK_ERR_INVALID_ARGUMENT, "page_size 0");
  cr_assert_null(tree, "a failed create sets *out to NULL");
  ts_assert_rejected(NULL, yk_radix_create(NULL, 129, &po, &tree), YK_ERR_INVALID_ARGUMENT, "page_size 129");
  ts_assert_rejected(NULL, yk_radix_create(NULL, 4, NULL, &tree), YK_ERR_INVALID_ARGUMENT, "retain and release");
  ts_assert_rejected(NULL, yk_radix_create(NULL, 4, &half, &tree), YK_ERR_INVALID_ARGUMENT, "retain and release");
  ts_assert_rejected(NULL, yk_radix_create(NULL, 4, &po, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");

  /* messages land on the context the tree was made with */
  yk_ctx *ctx = ts_cpu_ctx();
  cr_assert_eq(yk_radix_create(ctx, 4, &po, &tree), YK_OK);
  const int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8}, pages[2] = {0, -3};
  int32_t out_pages[2];
  yk_radix_match m;
  yk_radix_insert_result ins;
  int64_t len;
  ts_assert_rejected(ctx, yk_radix_match_prefix(tree, t, -1, NULL, 0, &m), YK_ERR_INVALID_ARGUMENT, "n is -1");
  ts_assert_rejected(ctx, yk_radix_match_prefix(tree, NULL, 4, NULL, 0, &m), YK_ERR_INVALID_ARGUMENT, "tokens is NULL");
  ts_assert_rejected(ctx, yk_radix_match_prefix(tree, t, 8, NULL, 0, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  ts_assert_rejected(ctx, yk_radix_match_prefix(tree, t, 8, out_pages, 1, &m), YK_ERR_INVALID_ARGUMENT,
                     "pages holds 1");
  ts_assert_rejected(ctx, yk_radix_prefix_length(tree, t, -5, &len), YK_ERR_INVALID_ARGUMENT, "n is -5");
  ts_assert_rejected(ctx, yk_radix_insert(tree, t, 8, NULL, NULL, &ins), YK_ERR_INVALID_ARGUMENT, "pages is NULL");
  ts_assert_rejected(ctx, yk_radix_insert(tree, t, 8, pages, NULL, &ins), YK_ERR_INVALID_ARGUMENT, "pages[1] is -3");
  ts_assert_rejected(ctx, yk_radix_insert(tree, t, -2, pages, NULL, &ins), YK_ERR_INVALID_ARGUMENT, "n is -2");
  ts_assert_rejected(ctx, yk_radix_evict(tree, -1, NULL), YK_ERR_INVALID_ARGUMENT, "num_pages is -1");
  ts_assert_rejected(ctx, yk_radix_get_stats(tree, NULL), YK_ERR_INVALID_ARGUMENT, "out is NULL");
  const yk_radix_node nowhere = {1000000, 0}, root = {0, 0};
  ts_assert_rejected(ctx, yk_radix_lock(tree, nowhere), YK_ERR_INVALID_ARGUMENT, "not in the tree");
  ts_assert_rejected(ctx, yk_radix_unlock(tree, root), YK_ERR_INVALID_ARGUMENT, "not locked");
  cr_assert_eq(held_pages(&o), 0, "nothing retained by a rejected call");
  cr_assert_eq(yk_radix_insert(tree, t, 3, NULL, NULL, &ins), YK_OK, "under a page: nothing to cache");
  cr_assert_eq(ins.inserted_tokens, 0);
  yk_radix_destroy(tree);
  yk_ctx_destroy(ctx);

  /* a NULL tree */
  ts_assert_rejected(NULL, yk_radix_match_prefix(NULL, t, 4, NULL, 0, &m), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_insert(NULL, t, 4, pages, NULL, &ins), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_lock(NULL, root), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_unlock(NULL, root), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_evict(NULL, 1, NULL), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_get_stats(NULL, NULL), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  ts_assert_rejected(NULL, yk_radix_validate(NULL), YK_ERR_INVALID_ARGUMENT, "tree is NULL");
  yk_radix_destroy(NULL);
}
