/* The radix tree (kv/radix_tree.h): hand-written cases at page sizes 1, 4 and 16, bad input, and
 * a long random run checked after every step against a brute-force model (an uncompressed trie of
 * whole pages) with a fake page owner that counts every reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/radix_tree.h"
#include "tests/support.h"

#define MAX_PAGES 4096
#define MAX_SEQ_PAGES 12
#define MAX_ENTRIES (MAX_PAGES + 1)

typedef struct model model;

/* The fake page owner: the references the tree holds, per page, and a log of releases. */
typedef struct owner {
  int32_t tree_refs[MAX_PAGES];
  int32_t request_refs[MAX_PAGES];
  int32_t released[MAX_PAGES]; /* the order pages were released in (hand-written cases) */
  int64_t released_count, retain_calls, release_calls;
  int refuse;   /* retain answers YK_ERR_OUT_OF_MEMORY; 2: after a yk_ call of its own failed */
  model *model; /* checks each release against the model (random run) */
} owner;

static void model_released(model *m, const int32_t *pages, int64_t count);

static yk_status fake_retain(void *user, const int32_t *pages, int64_t count) {
  owner *o = user;
  if (o->refuse == 2) cr_assert_eq(yk_radix_get_stats(NULL, NULL), YK_ERR_INVALID_ARGUMENT);
  if (o->refuse) return YK_ERR_OUT_OF_MEMORY;
  o->retain_calls++;
  for (int64_t i = 0; i < count; i++) {
    cr_assert(pages[i] >= 0 && pages[i] < MAX_PAGES, "retained page %d", pages[i]);
    cr_assert_eq(o->tree_refs[pages[i]]++, 0, "page %d retained by the tree twice", pages[i]);
  }
  return YK_OK;
}

static void fake_release(void *user, const int32_t *pages, int64_t count) {
  owner *o = user;
  o->release_calls++;
  cr_assert(count > 0, "released %lld pages", (long long)count);
  for (int64_t i = 0; i < count; i++) {
    cr_assert(pages[i] >= 0 && pages[i] < MAX_PAGES, "released page %d", pages[i]);
    cr_assert_eq(o->tree_refs[pages[i]]--, 1, "page %d released without a reference", pages[i]);
    o->released[o->released_count++ % MAX_PAGES] = pages[i];
  }
  if (o->model) model_released(o->model, pages, count);
}

static yk_radix_tree *make_tree(owner *o, int page_size) {
  memset(o, 0, sizeof *o);
  yk_radix_page_owner po = {fake_retain, fake_release, o};
  yk_radix_tree *tree = NULL;
  cr_assert_eq(yk_radix_create(NULL, page_size, &po, &tree), YK_OK, "%s", yk_ctx_last_error(NULL));
  return tree;
}

static yk_radix_stats stats_of(const yk_radix_tree *tree) {
  yk_radix_stats s;
  cr_assert_eq(yk_radix_get_stats(tree, &s), YK_OK);
  cr_assert_eq(yk_radix_validate(tree), YK_OK, "%s", yk_ctx_last_error(NULL));
  return s;
}

static int64_t held_pages(const owner *o) {
  int64_t n = 0;
  for (int i = 0; i < MAX_PAGES; i++) n += o->tree_refs[i];
  return n;
}

static void destroy_tree(yk_radix_tree *tree, owner *o) {
  yk_radix_destroy(tree);
  cr_assert_eq(held_pages(o), 0, "the tree kept references after destroy");
}

/* pages[i] = base + i */
static void page_run(int32_t *pages, int64_t n, int32_t base) {
  for (int64_t i = 0; i < n; i++) pages[i] = base + (int32_t)i;
}

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

/* ---- the random run against a brute-force model ----
 * The model is an uncompressed trie with one entry per cached page (entry 0 is the root), found
 * by walking sibling lists: nothing of the tree's compression, splitting or heap. Each entry
 * keeps its lock count and its last access time on the same logical clock as the tree (one tick
 * per match and insert), so the model knows exactly which leaf least-recently-used eviction
 * must take. */
typedef struct entry {
  int32_t parent, first_child, next_sibling, page;
  int64_t locks;
  uint64_t time, generation;
  int alive;
  int32_t tokens[YK_RADIX_MAX_PAGE_SIZE];
} entry;

struct model {
  int ps;
  entry *e;
  int32_t high;                  /* entries used so far */
  int32_t page_entry[MAX_PAGES]; /* the entry caching a page, or -1 */
  uint64_t clock;
  int64_t pages, locked_pages;
  uint64_t seed;
  int step;
};

static int32_t model_child(const model *m, int32_t parent, const int32_t *page) {
  for (int32_t c = m->e[parent].first_child; c >= 0; c = m->e[c].next_sibling)
    if (!memcmp(m->e[c].tokens, page, (size_t)m->ps * sizeof *page)) return c;
  return -1;
}

/* Whole pages of tokens[0..n) found; *end gets the entry of the last. */
static int64_t model_walk(const model *m, const int32_t *tokens, int64_t n, int32_t *end) {
  int32_t at = 0;
  int64_t k = 0;
  for (int32_t c; (k + 1) * m->ps <= n && (c = model_child(m, at, tokens + k * m->ps)) >= 0; k++) at = c;
  *end = at;
  return k;
}

static void model_touch(model *m, int32_t end) {
  for (; end > 0; end = m->e[end].parent) m->e[end].time = m->clock;
}

static void model_lock(model *m, int32_t end, int delta) {
  for (; end > 0; end = m->e[end].parent) {
    entry *x = &m->e[end];
    if (x->locks == 0 && delta > 0) m->locked_pages++;
    x->locks += delta;
    cr_assert(x->locks >= 0, "model lock below zero (seed %llu)", (unsigned long long)m->seed);
    if (x->locks == 0 && delta < 0) m->locked_pages--;
  }
}

static int32_t model_add(model *m, int32_t parent, const int32_t *page, int32_t page_id) {
  int32_t i = 1;
  while (i < m->high && m->e[i].alive) i++;
  if (i == m->high) m->high++;
  cr_assert(i < MAX_ENTRIES);
  entry *x = &m->e[i];
  const uint64_t generation = x->generation + 1;
  memset(x, 0, sizeof *x);
  *x = (entry){.parent = parent,
               .first_child = -1,
               .next_sibling = m->e[parent].first_child,
               .page = page_id,
               .time = m->clock,
               .generation = generation,
               .alive = 1};
  memcpy(x->tokens, page, (size_t)m->ps * sizeof *page);
  m->e[parent].first_child = i;
  m->page_entry[page_id] = i;
  m->pages++;
  return i;
}

/* The LRU leaf the tree must evict next has no time later than any other unlocked leaf. */
static uint64_t oldest_other_leaf(const model *m, int32_t except) {
  uint64_t oldest = UINT64_MAX;
  for (int32_t i = 1; i < m->high; i++) {
    const entry *x = &m->e[i];
    if (i != except && x->alive && !x->locks && x->first_child < 0 && x->time < oldest) oldest = x->time;
  }
  return oldest;
}

/* Called by the fake owner for each release: one evicted node, whole, from its top page down. */
static void model_released(model *m, const int32_t *pages, int64_t count) {
  int32_t chain[MAX_SEQ_PAGES + 1];
  cr_assert(count <= MAX_SEQ_PAGES, "released %lld pages at once", (long long)count);
  for (int64_t i = 0; i < count; i++) {
    const int32_t at = m->page_entry[pages[i]];
    cr_assert(at > 0, "step %d: released page %d, which is not cached (seed %llu)", m->step, pages[i],
              (unsigned long long)m->seed);
    cr_assert_eq(m->e[at].locks, 0, "step %d: released page %d while locked (seed %llu)", m->step, pages[i],
                 (unsigned long long)m->seed);
    cr_assert(i == 0 || m->e[at].parent == chain[i - 1], "step %d: a release is not one run of a path", m->step);
    cr_assert_eq(m->e[at].time, m->e[m->page_entry[pages[0]]].time, "step %d: one node, two access times", m->step);
    chain[i] = at;
  }
  const int32_t leaf = chain[count - 1];
  cr_assert_lt(m->e[leaf].first_child, 0, "step %d: evicted page %d has cached pages below it (seed %llu)", m->step,
               m->e[leaf].page, (unsigned long long)m->seed);
  cr_assert(m->e[leaf].time <= oldest_other_leaf(m, leaf), "step %d: evicted a leaf used at %llu before an older one",
            m->step, (unsigned long long)m->e[leaf].time);
  for (int64_t i = count - 1; i >= 0; i--) {
    entry *x = &m->e[chain[i]];
    int32_t *link = &m->e[x->parent].first_child;
    while (*link != chain[i]) link = &m->e[*link].next_sibling;
    *link = x->next_sibling;
    x->alive = 0;
    m->page_entry[x->page] = -1;
    m->pages--;
  }
}

typedef struct request {
  int32_t tokens[MAX_SEQ_PAGES * 16 + 15];
  int64_t n;
  int32_t pages[MAX_SEQ_PAGES]; /* whole pages; the request holds a reference to each */
  int64_t page_count, matched;
  yk_radix_node node;
  int32_t end; /* the model entry where its match ended */
  uint64_t end_generation;
  int locked, inserted;
} request;

typedef struct run {
  model m;
  owner o;
  yk_radix_tree *tree;
  yh_rng rng;
  int32_t stems[6][MAX_SEQ_PAGES * 16 + 15];
  request live[24];
  int live_count;
  request dead[8]; /* freed requests, for unlocks that must fail */
  int dead_count;
  int32_t next_page;
  int64_t duplicates, failed_unlocks;
} run;

static int64_t below(run *r, int64_t n) { return (int64_t)(yh_next(&r->rng) % (uint64_t)n); }

/* Sequences that share prefixes: a stem's start, then tokens from a tiny alphabet, so prefixes
 * agree for a while and part within pages as well as between them. */
static int64_t random_tokens(run *r, int32_t *out) {
  const int ps = r->m.ps;
  const int64_t n = 1 + below(r, MAX_SEQ_PAGES * ps + ps - 1);
  const int64_t stem = below(r, n + 1);
  const int32_t *s = r->stems[below(r, 6)];
  for (int64_t i = 0; i < n; i++) out[i] = i < stem ? s[i] : (int32_t)below(r, 3);
  return n;
}

static int32_t allocate_page(run *r) {
  for (int tries = 0; tries < 2; tries++) {
    for (int32_t k = 0; k < MAX_PAGES; k++) {
      const int32_t p = (r->next_page + k) % MAX_PAGES;
      if (!r->o.tree_refs[p] && !r->o.request_refs[p]) {
        r->next_page = p + 1;
        r->o.request_refs[p] = 1;
        return p;
      }
    }
    int64_t freed;
    cr_assert_eq(yk_radix_evict(r->tree, 64, &freed), YK_OK);
  }
  cr_assert_fail("out of pages (seed %llu)", (unsigned long long)r->m.seed);
  return -1;
}

static void start_request(run *r) {
  request *q = &r->live[r->live_count++];
  q->n = random_tokens(r, q->tokens);
  q->page_count = q->n / r->m.ps;
  yk_radix_match got;
  cr_assert_eq(yk_radix_match_prefix(r->tree, q->tokens, q->n, q->pages, q->page_count, &got), YK_OK);
  r->m.clock++;
  const int64_t want = model_walk(&r->m, q->tokens, q->n, &q->end);
  model_touch(&r->m, q->end);
  cr_assert_eq(got.matched_tokens, want * r->m.ps, "step %d: matched %lld tokens, model %lld (seed %llu)", r->m.step,
               (long long)got.matched_tokens, (long long)(want * r->m.ps), (unsigned long long)r->m.seed);
  for (int32_t x = q->end, k = (int32_t)want - 1; x > 0; x = r->m.e[x].parent, k--)
    cr_assert_eq(q->pages[k], r->m.e[x].page, "step %d: page %d of the match", r->m.step, k);
  q->matched = want;
  q->node = got.node;
  q->end_generation = r->m.e[q->end].generation;
  for (int64_t k = 0; k < want; k++) r->o.request_refs[q->pages[k]]++;
  q->inserted = 0;
  q->locked = below(r, 4) != 0; /* most lock; some rely on their own references only */
  if (q->locked) {
    cr_assert_eq(yk_radix_lock(r->tree, q->node), YK_OK, "%s", yk_ctx_last_error(NULL));
    model_lock(&r->m, q->end, +1);
  }
  for (int64_t k = want; k < q->page_count; k++) q->pages[k] = allocate_page(r); /* may evict */
}

static void insert_request(run *r, request *q) {
  const int ps = r->m.ps;
  int32_t dup[MAX_SEQ_PAGES];
  yk_radix_insert_result got;
  cr_assert_eq(yk_radix_insert(r->tree, q->tokens, q->n, q->pages, dup, &got), YK_OK, "%s", yk_ctx_last_error(NULL));
  r->m.clock++;
  int32_t at = 0;
  int64_t k = 0, dups = 0;
  for (int32_t c; k < q->page_count && (c = model_child(&r->m, at, q->tokens + k * ps)) >= 0; k++) {
    at = c;
    if (r->m.e[c].page != q->pages[k]) {
      cr_assert_eq(dup[dups], q->pages[k], "step %d: duplicate %lld (seed %llu)", r->m.step, (long long)dups,
                   (unsigned long long)r->m.seed);
      dups++;
    }
  }
  cr_assert_eq(got.cached_tokens, k * ps, "step %d: insert found %lld cached, model %lld (seed %llu)", r->m.step,
               (long long)got.cached_tokens, (long long)(k * ps), (unsigned long long)r->m.seed);
  cr_assert_eq(got.duplicate_count, dups, "step %d: duplicates", r->m.step);
  r->duplicates += dups;
  cr_assert_eq(got.inserted_tokens, (q->page_count - k) * ps);
  for (; k < q->page_count; k++) at = model_add(&r->m, at, q->tokens + k * ps, q->pages[k]);
  model_touch(&r->m, at);
  q->inserted = 1;
}

static void free_request(run *r, int index) {
  request *q = &r->live[index];
  if (q->locked) {
    cr_assert_eq(yk_radix_unlock(r->tree, q->node), YK_OK, "step %d: %s", r->m.step, yk_ctx_last_error(NULL));
    model_lock(&r->m, q->end, -1);
  }
  for (int64_t k = 0; k < q->page_count; k++) cr_assert(r->o.request_refs[q->pages[k]]-- > 0);
  if (q->locked && q->matched) r->dead[r->dead_count++ % 8] = *q;
  r->live[index] = r->live[--r->live_count];
}

/* A freed request's handle: unlocking it again must fail, unless another request still locks
 * the same node (then the tree cannot tell, and the test does not ask). */
static void unlock_again(run *r) {
  if (!r->dead_count) return;
  const request *q = &r->dead[below(r, r->dead_count < 8 ? r->dead_count : 8)];
  const entry *x = &r->m.e[q->end];
  if (x->alive && x->generation == q->end_generation && x->locks) return;
  cr_assert_eq(yk_radix_unlock(r->tree, q->node), YK_ERR_INVALID_ARGUMENT, "step %d: unlocked a freed request's node",
               r->m.step);
  r->failed_unlocks++;
}

static void evict(run *r) {
  const int64_t want = below(r, 10);
  const int64_t before = r->o.released_count;
  int64_t freed;
  cr_assert_eq(yk_radix_evict(r->tree, want, &freed), YK_OK);
  cr_assert_eq(freed, r->o.released_count - before, "step %d: evict's count and the releases differ", r->m.step);
  cr_assert(freed >= want || r->m.pages == r->m.locked_pages,
            "step %d: freed %lld of %lld with unlocked pages left (seed %llu)", r->m.step, (long long)freed,
            (long long)want, (unsigned long long)r->m.seed);
}

static void order_some(run *r) {
  int32_t seqs[5][MAX_SEQ_PAGES * 16 + 15];
  const int32_t *ptrs[5];
  int64_t lens[5], order[5], matched[5];
  for (int i = 0; i < 5; i++) lens[i] = random_tokens(r, seqs[i]), ptrs[i] = seqs[i];
  cr_assert_eq(yk_radix_order_by_prefix(r->tree, ptrs, lens, 5, order, matched), YK_OK);
  for (int i = 0; i < 5; i++) {
    int32_t end;
    cr_assert_eq(matched[i], model_walk(&r->m, seqs[i], lens[i], &end) * r->m.ps, "step %d: order's match", r->m.step);
    if (i)
      cr_assert(matched[order[i - 1]] > matched[order[i]] ||
                    (matched[order[i - 1]] == matched[order[i]] && order[i - 1] < order[i]),
                "step %d: order is not longest first and stable", r->m.step);
  }
}

static void check_against_model(run *r) {
  yk_radix_stats s;
  cr_assert_eq(yk_radix_get_stats(r->tree, &s), YK_OK);
  cr_assert_eq(yk_radix_validate(r->tree), YK_OK, "step %d: %s (seed %llu)", r->m.step, yk_ctx_last_error(NULL),
               (unsigned long long)r->m.seed);
  cr_assert_eq(s.cached_pages, r->m.pages, "step %d: %lld pages cached, model %lld (seed %llu)", r->m.step,
               (long long)s.cached_pages, (long long)r->m.pages, (unsigned long long)r->m.seed);
  cr_assert_eq(s.cached_tokens, r->m.pages * r->m.ps);
  cr_assert_eq(s.locked_pages, r->m.locked_pages, "step %d: locked pages (seed %llu)", r->m.step,
               (unsigned long long)r->m.seed);
  cr_assert_eq(s.evictable_pages, r->m.pages - r->m.locked_pages);
  cr_assert(s.nodes <= s.cached_pages);
  for (int32_t p = 0; p < MAX_PAGES; p++)
    cr_assert_eq(r->o.tree_refs[p], r->m.page_entry[p] >= 0,
                 "step %d: page %d held %d times by the tree, cached %d (seed %llu)", r->m.step, p, r->o.tree_refs[p],
                 r->m.page_entry[p] >= 0, (unsigned long long)r->m.seed);
}

static void random_run(int ps, int steps) {
  static run r; /* large: keep it off the stack */
  memset(&r, 0, sizeof r);
  r.m.ps = ps;
  r.m.e = calloc(MAX_ENTRIES, sizeof *r.m.e);
  cr_assert_not_null(r.m.e);
  r.m.e[0] = (entry){.parent = -1, .first_child = -1, .next_sibling = -1, .alive = 1};
  r.m.high = 1;
  for (int p = 0; p < MAX_PAGES; p++) r.m.page_entry[p] = -1;
  char name[64];
  snprintf(name, sizeof name, "radix.random.%d", ps);
  r.m.seed = ts_seed(name);
  r.rng.state = r.m.seed;
  r.tree = make_tree(&r.o, ps);
  r.o.model = &r.m;
  for (int s = 0; s < 6; s++)
    for (int i = 0; i < MAX_SEQ_PAGES * 16 + 15; i++) r.stems[s][i] = (int32_t)(yh_next(&r.rng) % 1000);
  for (r.m.step = 0; r.m.step < steps; r.m.step++) {
    const int64_t op = below(&r, 100);
    if (op < 30 && r.live_count < 24) {
      start_request(&r);
    } else if (op < 55 && r.live_count) {
      request *q = &r.live[below(&r, r.live_count)];
      if (!q->inserted) insert_request(&r, q);
    } else if (op < 80 && r.live_count) {
      free_request(&r, (int)below(&r, r.live_count));
    } else if (op < 87) {
      evict(&r);
    } else if (op < 93) {
      order_some(&r);
    } else {
      unlock_again(&r);
    }
    check_against_model(&r);
  }
  /* the run reached what it is for: splits under locks, evictions, duplicates, stale handles */
  cr_assert(r.duplicates > 0 && r.failed_unlocks > 0 && r.o.release_calls > 100 && r.m.pages > 0,
            "a vacuous run: %lld duplicates, %lld failed unlocks, %lld evictions (seed %llu)", (long long)r.duplicates,
            (long long)r.failed_unlocks, (long long)r.o.release_calls, (unsigned long long)r.m.seed);
  while (r.live_count) free_request(&r, 0);
  check_against_model(&r);
  cr_assert_eq(r.m.locked_pages, 0);
  int64_t freed;
  cr_assert_eq(yk_radix_evict(r.tree, MAX_PAGES, &freed), YK_OK);
  cr_assert_eq(r.m.pages, 0, "everything unlocked is evictable (seed %llu)", (unsigned long long)r.m.seed);
  for (int32_t p = 0; p < MAX_PAGES; p++)
    cr_assert(!r.o.tree_refs[p] && !r.o.request_refs[p], "page %d still referenced (seed %llu)", p,
              (unsigned long long)r.m.seed);
  yk_radix_destroy(r.tree);
  free(r.m.e);
}

Test(radix_tree, random_operations_match_model_page_size_1) { random_run(1, 6000); }
Test(radix_tree, random_operations_match_model_page_size_4) { random_run(4, 6000); }
Test(radix_tree, random_operations_match_model_page_size_16) { random_run(16, 4000); }
