/* The radix tree's structure: the node pool, the walk down a token sequence, the page-aligned
 * split, match_prefix and insert. Locks, eviction and checks are kv/radix_evict.c.
 *
 * Every mutating call allocates what it needs before it changes anything (a match splits at most
 * one node; an insert splits at most one and adds at most one leaf), so a failure leaves the tree
 * as it was. */
#include <stdlib.h>
#include <string.h>

#include "kv/radix_internal.h"
#include "runtime/error.h"

int radix_compare_page(const int32_t *a, const int32_t *b, int page_size) {
  for (int i = 0; i < page_size; i++)
    if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

int32_t radix_find_child(const yk_radix_tree *tree, int32_t node, const int32_t *page, int32_t *position) {
  const radix_node *n = &tree->nodes[node];
  int32_t lo = 0, hi = n->child_count;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (radix_compare_page(tree->nodes[n->children[mid]].tokens, page, tree->page_size) < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (position) *position = lo;
  if (lo < n->child_count && !radix_compare_page(tree->nodes[n->children[lo]].tokens, page, tree->page_size))
    return n->children[lo];
  return RADIX_NONE;
}

/* Tokens equal at the start of a and b, up to n; memcmp over blocks first, since a 4k-token
 * prefix is mostly equal and glibc's memcmp is vectorised. */
static int64_t common_prefix(const int32_t *a, const int32_t *b, int64_t n) {
  enum { BLOCK = 64 };
  int64_t i = 0;
  while (i + BLOCK <= n && !memcmp(a + i, b + i, BLOCK * sizeof *a)) i += BLOCK;
  while (i < n && a[i] == b[i]) i++;
  return i;
}

/* Makes sure `count` free slots exist; slots never move once taken except by this realloc, so
 * callers take pointers into tree->nodes only after it. Nonzero when out of memory. */
static int reserve_slots(yk_radix_tree *tree, int32_t count) {
  if (tree->free_count >= count) return 0;
  const int64_t old = tree->node_capacity;
  int64_t capacity = old ? 2 * old : 64;
  if (capacity < old + count) capacity = old + count;
  if (capacity > INT32_MAX) return 1;
  radix_node *nodes = realloc(tree->nodes, (size_t)capacity * sizeof *nodes);
  if (!nodes) return 1;
  tree->nodes = nodes;
  int32_t *heap = realloc(tree->heap, (size_t)capacity * sizeof *heap);
  if (!heap) return 1; /* the larger node array stays; the capacity says what is usable */
  tree->heap = heap;
  for (int64_t i = capacity - 1; i >= old; i--) {
    nodes[i] = (radix_node){.parent = tree->free_slot, .heap_index = RADIX_NONE};
    tree->free_slot = (int32_t)i;
  }
  tree->free_count += (int32_t)(capacity - old);
  tree->node_capacity = (int32_t)capacity;
  return 0;
}

static int32_t take_slot(yk_radix_tree *tree, int32_t parent, int32_t *tokens, int64_t len) {
  const int32_t index = tree->free_slot;
  radix_node *n = &tree->nodes[index];
  tree->free_slot = n->parent;
  tree->free_count--;
  const uint32_t generation = n->generation;
  *n = (radix_node){.tokens = tokens, .len = len, .parent = parent, .heap_index = RADIX_NONE};
  n->generation = generation;
  n->alive = 1;
  return index;
}

void radix_node_free(yk_radix_tree *tree, int32_t node) {
  radix_node *n = &tree->nodes[node];
  free(n->tokens);
  free(n->children);
  const uint32_t generation = n->generation + 1;
  *n = (radix_node){.parent = tree->free_slot, .heap_index = RADIX_NONE, .generation = generation};
  tree->free_slot = node;
  tree->free_count++;
}

yk_status yk_radix_create(yk_ctx *ctx, int page_size, const yk_radix_page_owner *owner, yk_radix_tree **out) {
  if (!out) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "radix create: out is NULL");
  *out = NULL;
  if (page_size < 1 || page_size > YK_RADIX_MAX_PAGE_SIZE)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "radix create: page_size %d is outside 1..%d", page_size,
                    YK_RADIX_MAX_PAGE_SIZE);
  if (!owner || !owner->retain || !owner->release)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "radix create: the page owner needs retain and release");
  yk_radix_tree *tree = calloc(1, sizeof *tree);
  if (tree) tree->free_slot = RADIX_NONE;
  if (!tree || reserve_slots(tree, 1)) {
    if (tree) free(tree->nodes), free(tree->heap);
    free(tree);
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "radix create: out of memory");
  }
  tree->ctx = ctx;
  tree->page_size = page_size;
  tree->owner = *owner;
  take_slot(tree, RADIX_NONE, NULL, 0); /* the first slot taken: RADIX_ROOT */
  *out = tree;
  return YK_OK;
}

void yk_radix_destroy(yk_radix_tree *tree) {
  if (!tree) return;
  for (int32_t i = 0; i < tree->node_capacity; i++) {
    radix_node *n = &tree->nodes[i];
    if (!n->alive) continue;
    if (n->len) tree->owner.release(tree->owner.user, radix_pages(n), n->len / tree->page_size);
    free(n->tokens);
    free(n->children);
  }
  free(tree->nodes);
  free(tree->heap);
  free(tree);
}

/* Where tokens[0..n) (n page-aligned) leaves the tree: `node` is matched whole; `child`, when not
 * RADIX_NONE, is its child matched for `partial` tokens (0 < partial < its len, page-aligned). */
typedef struct radix_walk {
  int32_t node, child;
  int64_t partial, matched;
} radix_walk;

static radix_walk walk(const yk_radix_tree *tree, const int32_t *tokens, int64_t n) {
  radix_walk w = {RADIX_ROOT, RADIX_NONE, 0, 0};
  while (w.matched < n) {
    const int32_t c = radix_find_child(tree, w.node, tokens + w.matched, NULL);
    if (c == RADIX_NONE) break;
    const radix_node *child = &tree->nodes[c];
    const int64_t rest = n - w.matched, most = child->len < rest ? child->len : rest;
    int64_t same = common_prefix(child->tokens, tokens + w.matched, most);
    same -= same % tree->page_size; /* at least one page: the first page matched */
    w.matched += same;
    if (same < child->len) {
      w.child = c, w.partial = same;
      break;
    }
    w.node = c;
  }
  return w;
}

/* What a split needs, allocated before anything changes. */
typedef struct radix_split_memory {
  int32_t *tokens, *children;
} radix_split_memory;

static int alloc_split(const yk_radix_tree *tree, int64_t partial, radix_split_memory *m) {
  m->tokens = malloc((size_t)(partial + partial / tree->page_size) * sizeof *m->tokens);
  m->children = malloc(2 * sizeof *m->children); /* the rest of the split node, and a new leaf */
  if (m->tokens && m->children) return 0;
  free(m->tokens), free(m->children);
  return 1;
}

/* child's first `partial` tokens become a new node between it and its parent, which takes its
 * locks and access time; child keeps its identity (so its handles) as the rest. The new node
 * replaces child at the same place in the parent's sorted children: their first page is the
 * same. Statistics are unchanged. Needs one reserved slot. */
static int32_t split(yk_radix_tree *tree, int32_t child, int64_t partial, radix_split_memory m) {
  const int ps = tree->page_size;
  radix_node *c = &tree->nodes[child];
  const int64_t rest = c->len - partial;
  memcpy(m.tokens, c->tokens, (size_t)partial * sizeof *m.tokens);
  memcpy(m.tokens + partial, radix_pages(c), (size_t)(partial / ps) * sizeof *m.tokens);
  const int32_t *old_pages = radix_pages(c);
  memmove(c->tokens, c->tokens + partial, (size_t)rest * sizeof *c->tokens);
  memmove(c->tokens + rest, old_pages + partial / ps, (size_t)(rest / ps) * sizeof *c->tokens);
  c->len = rest;
  const int32_t parent = c->parent;
  const int32_t mid = take_slot(tree, parent, m.tokens, partial);
  c = &tree->nodes[child];
  radix_node *n = &tree->nodes[mid];
  n->children = m.children;
  n->children[0] = child;
  n->child_count = 1, n->child_capacity = 2;
  n->lock_ref = c->lock_ref;
  n->last_access = c->last_access;
  c->parent = mid;
  tree->stats.nodes++;
  radix_node *p = &tree->nodes[parent];
  for (int32_t i = 0; i < p->child_count; i++)
    if (p->children[i] == child) p->children[i] = mid;
  return mid;
}

/* Marks the path from node up to the root as used at the current clock. */
static void touch(yk_radix_tree *tree, int32_t node) {
  for (; node != RADIX_ROOT; node = tree->nodes[node].parent) {
    tree->nodes[node].last_access = tree->clock;
    radix_heap_refresh(tree, node);
  }
}

static yk_radix_node handle(const yk_radix_tree *tree, int32_t node) {
  return (yk_radix_node){(uint32_t)node, tree->nodes[node].generation};
}

/* The common checks of the calls that take a token sequence. */
static yk_status check_tokens(const yk_radix_tree *tree, const char *call, const int32_t *tokens, int64_t n,
                              int out_missing) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix %s: tree is NULL", call);
  if (out_missing) return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix %s: out is NULL", call);
  if (n < 0) return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix %s: n is %lld", call, (long long)n);
  if (n > 0 && !tokens) return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix %s: tokens is NULL", call);
  return YK_OK;
}

/* The page ids on the path from the root to end, which covers tokens [0, matched). */
static void copy_path_pages(const yk_radix_tree *tree, int32_t end, int64_t matched, int32_t *pages) {
  const int ps = tree->page_size;
  for (int32_t x = end; x != RADIX_ROOT; x = tree->nodes[x].parent) {
    const radix_node *node = &tree->nodes[x];
    matched -= node->len;
    memcpy(pages + matched / ps, radix_pages(node), (size_t)(node->len / ps) * sizeof *pages);
  }
}

yk_status yk_radix_prefix_length(const yk_radix_tree *tree, const int32_t *tokens, int64_t n, int64_t *matched_tokens) {
  yk_status st = check_tokens(tree, "prefix_length", tokens, n, !matched_tokens);
  if (st != YK_OK) return st;
  *matched_tokens = walk(tree, tokens, n - n % tree->page_size).matched;
  return YK_OK;
}

yk_status yk_radix_match_prefix(yk_radix_tree *tree, const int32_t *tokens, int64_t n, int32_t *pages,
                                int64_t pages_capacity, yk_radix_match *out) {
  yk_status st = check_tokens(tree, "match_prefix", tokens, n, !out);
  if (st != YK_OK) return st;
  const int ps = tree->page_size;
  if (pages && pages_capacity < n / ps)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT,
                    "radix match_prefix: pages holds %lld, not n / page_size = %lld", (long long)pages_capacity,
                    (long long)(n / ps));
  const radix_walk w = walk(tree, tokens, n - n % ps);
  int32_t end = w.node;
  if (w.child != RADIX_NONE) {
    radix_split_memory m;
    if (reserve_slots(tree, 1) || alloc_split(tree, w.partial, &m))
      return yk_error(tree->ctx, YK_ERR_OUT_OF_MEMORY, "radix match_prefix: out of memory splitting a node");
    end = split(tree, w.child, w.partial, m);
  }
  tree->clock++;
  touch(tree, end);
  if (pages) copy_path_pages(tree, end, w.matched, pages);
  *out = (yk_radix_match){w.matched, handle(tree, end)};
  return YK_OK;
}

yk_status yk_radix_peek_prefix(const yk_radix_tree *tree, const int32_t *tokens, int64_t n, int32_t *pages,
                               int64_t *matched_tokens) {
  yk_status st = check_tokens(tree, "peek_prefix", tokens, n, !matched_tokens);
  if (st != YK_OK) return st;
  const int ps = tree->page_size;
  const radix_walk w = walk(tree, tokens, n - n % ps);
  if (pages) {
    if (w.child != RADIX_NONE) /* the part of a node a match would split off */
      memcpy(pages + (w.matched - w.partial) / ps, radix_pages(&tree->nodes[w.child]),
             (size_t)(w.partial / ps) * sizeof *pages);
    copy_path_pages(tree, w.node, w.matched - w.partial, pages);
  }
  *matched_tokens = w.matched;
  return YK_OK;
}

/* The caller's pages on the path from the root to end (covering tokens [0, matched)) that differ
 * from the tree's, in order: counted on one pass up the path, written from the back on a second. */
static int64_t duplicates_on_path(const yk_radix_tree *tree, int32_t end, int64_t matched, const int32_t *pages,
                                  int32_t *duplicates) {
  const int ps = tree->page_size;
  int64_t count = 0;
  for (int pass = 0; pass < (duplicates ? 2 : 1); pass++) {
    int64_t offset = matched / ps, slot = count;
    for (int32_t x = end; x != RADIX_ROOT; x = tree->nodes[x].parent) {
      const radix_node *node = &tree->nodes[x];
      const int32_t *mine = radix_pages(node);
      for (int64_t i = node->len / ps - 1; i >= 0; i--) {
        offset--;
        if (mine[i] == pages[offset]) continue;
        if (pass == 0) count++;
        if (pass == 1) duplicates[--slot] = pages[offset];
      }
    }
  }
  return count;
}

/* The owner's retain. Its message on a refusal is the precise one (the prefix cache's names the
 * block and why), so it is passed on; a generic one is written only when the owner left none on
 * the tree's ctx, which yk_error_mark tells without touching the message. */
static yk_status retain_new_pages(yk_radix_tree *tree, const int32_t *pages, int64_t count) {
  const unsigned long mark = yk_error_mark(tree->ctx);
  const yk_status st = tree->owner.retain(tree->owner.user, pages, count);
  if (st != YK_OK && yk_error_mark(tree->ctx) == mark)
    return yk_error(tree->ctx, st, "radix insert: the page owner refused %lld pages", (long long)count);
  return st;
}

yk_status yk_radix_insert(yk_radix_tree *tree, const int32_t *tokens, int64_t n, const int32_t *pages,
                          int32_t *duplicates, yk_radix_insert_result *out) {
  yk_status st = check_tokens(tree, "insert", tokens, n, 0);
  if (st != YK_OK) return st;
  const int ps = tree->page_size;
  const int64_t aligned = n - n % ps;
  if (aligned && !pages) return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix insert: pages is NULL");
  for (int64_t i = 0; i < aligned / ps; i++)
    if (pages[i] < 0)
      return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix insert: pages[%lld] is %d", (long long)i, pages[i]);

  const radix_walk w = walk(tree, tokens, aligned);
  const int need_split = w.child != RADIX_NONE, need_leaf = w.matched < aligned;
  const int64_t rest = aligned - w.matched;
  radix_split_memory m = {NULL, NULL};
  int32_t *leaf_tokens = NULL;
  int failed = reserve_slots(tree, need_split + need_leaf) || (need_split && alloc_split(tree, w.partial, &m));
  if (!failed && need_leaf) {
    failed = !(leaf_tokens = malloc((size_t)(rest + rest / ps) * sizeof *leaf_tokens));
    radix_node *parent = &tree->nodes[w.node];
    if (!failed && !need_split && parent->child_count == parent->child_capacity) {
      const int32_t capacity = parent->child_capacity ? 2 * parent->child_capacity : 2;
      int32_t *children = realloc(parent->children, (size_t)capacity * sizeof *children);
      if (!(failed = !children)) parent->children = children, parent->child_capacity = capacity;
    }
  }
  if (failed) {
    free(m.tokens), free(m.children), free(leaf_tokens);
    return yk_error(tree->ctx, YK_ERR_OUT_OF_MEMORY, "radix insert: out of memory");
  }
  if (need_leaf && (st = retain_new_pages(tree, pages + w.matched / ps, rest / ps)) != YK_OK) {
    free(m.tokens), free(m.children), free(leaf_tokens);
    return st;
  }

  const int32_t cached_end = need_split ? split(tree, w.child, w.partial, m) : w.node;
  int32_t end = cached_end;
  if (need_leaf) {
    memcpy(leaf_tokens, tokens + w.matched, (size_t)rest * sizeof *leaf_tokens);
    memcpy(leaf_tokens + rest, pages + w.matched / ps, (size_t)(rest / ps) * sizeof *leaf_tokens);
    end = take_slot(tree, cached_end, leaf_tokens, rest);
    radix_node *parent = &tree->nodes[cached_end];
    int32_t position;
    radix_find_child(tree, cached_end, leaf_tokens, &position);
    memmove(parent->children + position + 1, parent->children + position,
            (size_t)(parent->child_count - position) * sizeof *parent->children);
    parent->children[position] = end;
    parent->child_count++;
    tree->stats.cached_tokens += rest;
    tree->stats.cached_pages += rest / ps;
    tree->stats.evictable_pages += rest / ps;
    tree->stats.nodes++;
    radix_heap_refresh(tree, cached_end); /* no longer a leaf */
  }
  tree->clock++;
  touch(tree, end);
  const int64_t dup = duplicates_on_path(tree, cached_end, w.matched, pages, duplicates);
  if (out) *out = (yk_radix_insert_result){w.matched, rest, dup};
  return YK_OK;
}
