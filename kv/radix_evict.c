/* The radix tree's locks and eviction: lock counts along a path, the heap of unlocked leaves in
 * least-recently-used order, eviction through the page owner, and the statistics they keep.
 *
 * The heap holds exactly the unlocked leaves, kept in place as locks, children and access times
 * change (radix_heap_refresh), so an eviction pops in O(log nodes) rather than gathering every
 * leaf first as SGLang's evict() does. */
#include <string.h>

#include "kv/radix_internal.h"
#include "runtime/error.h"

/* Least recently used first; the index breaks ties so the order never depends on the heap's
 * history. */
static int heap_less(const yk_radix_tree *tree, int32_t a, int32_t b) {
  const uint64_t ta = tree->nodes[a].last_access, tb = tree->nodes[b].last_access;
  return ta < tb || (ta == tb && a < b);
}

static void heap_place(yk_radix_tree *tree, int32_t position, int32_t node) {
  tree->heap[position] = node;
  tree->nodes[node].heap_index = position;
}

static void sift_up(yk_radix_tree *tree, int32_t position) {
  const int32_t node = tree->heap[position];
  while (position > 0) {
    const int32_t up = (position - 1) / 2;
    if (!heap_less(tree, node, tree->heap[up])) break;
    heap_place(tree, position, tree->heap[up]);
    position = up;
  }
  heap_place(tree, position, node);
}

static void sift_down(yk_radix_tree *tree, int32_t position) {
  const int32_t node = tree->heap[position];
  for (;;) {
    int32_t c = 2 * position + 1;
    if (c >= tree->heap_count) break;
    if (c + 1 < tree->heap_count && heap_less(tree, tree->heap[c + 1], tree->heap[c])) c++;
    if (!heap_less(tree, tree->heap[c], node)) break;
    heap_place(tree, position, tree->heap[c]);
    position = c;
  }
  heap_place(tree, position, node);
}

static void heap_remove(yk_radix_tree *tree, int32_t node) {
  const int32_t position = tree->nodes[node].heap_index;
  tree->nodes[node].heap_index = RADIX_NONE;
  const int32_t last = tree->heap[--tree->heap_count];
  if (position == tree->heap_count) return;
  heap_place(tree, position, last);
  sift_up(tree, position);
  sift_down(tree, tree->nodes[last].heap_index);
}

void radix_heap_refresh(yk_radix_tree *tree, int32_t node) {
  radix_node *n = &tree->nodes[node];
  const int evictable = node != RADIX_ROOT && n->child_count == 0 && n->lock_ref == 0;
  if (!evictable) {
    if (n->heap_index != RADIX_NONE) heap_remove(tree, node);
    return;
  }
  if (n->heap_index == RADIX_NONE) heap_place(tree, tree->heap_count++, node);
  sift_up(tree, n->heap_index);
  sift_down(tree, n->heap_index);
}

static yk_status find_node(const yk_radix_tree *tree, const char *call, yk_radix_node handle, int32_t *out) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix %s: tree is NULL", call);
  const radix_node *n = handle.index < (uint32_t)tree->node_capacity ? &tree->nodes[handle.index] : NULL;
  if (!n || !n->alive || n->generation != handle.generation)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT,
                    "radix %s: node %u (generation %u) is not in the tree: evicted, or from another tree", call,
                    handle.index, handle.generation);
  *out = (int32_t)handle.index;
  return YK_OK;
}

/* The root counts locks too (it has no pages), so unlocking it more often than locked is caught
 * like any other node. */
yk_status yk_radix_lock(yk_radix_tree *tree, yk_radix_node handle) {
  int32_t node;
  yk_status st = find_node(tree, "lock", handle, &node);
  if (st != YK_OK) return st;
  for (int32_t x = node; x != RADIX_NONE; x = tree->nodes[x].parent) {
    radix_node *n = &tree->nodes[x];
    if (n->lock_ref++ > 0) continue;
    tree->stats.evictable_pages -= n->len / tree->page_size;
    tree->stats.locked_pages += n->len / tree->page_size;
    radix_heap_refresh(tree, x);
  }
  return YK_OK;
}

yk_status yk_radix_unlock(yk_radix_tree *tree, yk_radix_node handle) {
  int32_t node;
  yk_status st = find_node(tree, "unlock", handle, &node);
  if (st != YK_OK) return st;
  if (tree->nodes[node].lock_ref <= 0)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix unlock: node %u is not locked", handle.index);
  for (int32_t x = node; x != RADIX_NONE; x = tree->nodes[x].parent) {
    radix_node *n = &tree->nodes[x];
    if (--n->lock_ref > 0) continue;
    tree->stats.evictable_pages += n->len / tree->page_size;
    tree->stats.locked_pages -= n->len / tree->page_size;
    radix_heap_refresh(tree, x);
  }
  return YK_OK;
}

yk_status yk_radix_evict(yk_radix_tree *tree, int64_t num_pages, int64_t *freed_pages) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix evict: tree is NULL");
  if (num_pages < 0)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix evict: num_pages is %lld", (long long)num_pages);
  int64_t freed = 0;
  while (freed < num_pages && tree->heap_count > 0) {
    const int32_t node = tree->heap[0];
    radix_node *n = &tree->nodes[node];
    const int64_t pages = n->len / tree->page_size;
    heap_remove(tree, node);
    tree->owner.release(tree->owner.user, radix_pages(n), pages);
    const int32_t parent = n->parent;
    radix_node *p = &tree->nodes[parent];
    int32_t position;
    radix_find_child(tree, parent, n->tokens, &position);
    memmove(p->children + position, p->children + position + 1,
            (size_t)(p->child_count - position - 1) * sizeof *p->children);
    p->child_count--;
    tree->stats.cached_tokens -= n->len;
    tree->stats.cached_pages -= pages;
    tree->stats.evictable_pages -= pages;
    tree->stats.nodes--;
    radix_node_free(tree, node);
    radix_heap_refresh(tree, parent);
    freed += pages;
  }
  if (freed_pages) *freed_pages = freed;
  return YK_OK;
}

yk_status yk_radix_get_stats(const yk_radix_tree *tree, yk_radix_stats *out) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix get_stats: tree is NULL");
  if (!out) return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix get_stats: out is NULL");
  *out = tree->stats;
  return YK_OK;
}

int64_t yk_radix_count_pages(const yk_radix_tree *tree, int unlocked_only, int (*counts)(void *user, int32_t page),
                             void *user, int64_t enough) {
  int64_t total = 0;
  for (int32_t x = RADIX_ROOT + 1; x < tree->node_capacity && total < enough; x++) {
    const radix_node *n = &tree->nodes[x];
    if (!n->alive || (unlocked_only && n->lock_ref)) continue;
    for (int64_t i = 0; i < n->len / tree->page_size; i++) total += counts(user, radix_pages(n)[i]) != 0;
  }
  return total;
}
