/* What the radix tree's tests share (test_radix_tree.c, test_radix_tree_random.c): a fake page
 * owner that counts every reference the tree holds, and the tree's create, stats and destroy
 * checked against it. */
#ifndef YK_TESTS_RADIX_SUPPORT_H
#define YK_TESTS_RADIX_SUPPORT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/radix_tree.h"
#include "tests/support.h"

#define MAX_PAGES 4096

/* The fake page owner: the references the tree holds, per page, and a log of releases. */
typedef struct owner {
  int32_t tree_refs[MAX_PAGES];
  int32_t request_refs[MAX_PAGES];
  int32_t released[MAX_PAGES]; /* the order pages were released in (hand-written cases) */
  int64_t released_count, retain_calls, release_calls;
  int refuse; /* retain answers YK_ERR_OUT_OF_MEMORY; 2: after a yk_ call of its own failed */
  /* told of each release after it is counted (the random run checks it against its model) */
  void (*on_release)(void *watcher, const int32_t *pages, int64_t count);
  void *watcher;
} owner;

static inline yk_status fake_retain(void *user, const int32_t *pages, int64_t count) {
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

static inline void fake_release(void *user, const int32_t *pages, int64_t count) {
  owner *o = user;
  o->release_calls++;
  cr_assert(count > 0, "released %lld pages", (long long)count);
  for (int64_t i = 0; i < count; i++) {
    cr_assert(pages[i] >= 0 && pages[i] < MAX_PAGES, "released page %d", pages[i]);
    cr_assert_eq(o->tree_refs[pages[i]]--, 1, "page %d released without a reference", pages[i]);
    o->released[o->released_count++ % MAX_PAGES] = pages[i];
  }
  if (o->on_release) o->on_release(o->watcher, pages, count);
}

static inline yk_radix_tree *make_tree(owner *o, int page_size) {
  memset(o, 0, sizeof *o);
  yk_radix_page_owner po = {fake_retain, fake_release, o};
  yk_radix_tree *tree = NULL;
  cr_assert_eq(yk_radix_create(NULL, page_size, &po, &tree), YK_OK, "%s", yk_ctx_last_error(NULL));
  return tree;
}

static inline yk_radix_stats stats_of(const yk_radix_tree *tree) {
  yk_radix_stats s;
  cr_assert_eq(yk_radix_get_stats(tree, &s), YK_OK);
  cr_assert_eq(yk_radix_validate(tree), YK_OK, "%s", yk_ctx_last_error(NULL));
  return s;
}

static inline int64_t held_pages(const owner *o) {
  int64_t n = 0;
  for (int i = 0; i < MAX_PAGES; i++) n += o->tree_refs[i];
  return n;
}

static inline void destroy_tree(yk_radix_tree *tree, owner *o) {
  yk_radix_destroy(tree);
  cr_assert_eq(held_pages(o), 0, "the tree kept references after destroy");
}

/* pages[i] = base + i */
static inline void page_run(int32_t *pages, int64_t n, int32_t base) {
  for (int64_t i = 0; i < n; i++) pages[i] = base + (int32_t)i;
}

#endif
