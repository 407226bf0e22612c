/* yk_radix_validate: every invariant of the tree, checked from scratch, for the tests. */
#include "kv/radix_internal.h"
#include "runtime/error.h"

#define FAIL(...) return yk_error(tree->ctx, YK_ERR_INTERNAL, "radix validate: " __VA_ARGS__)

static yk_status check_node(const yk_radix_tree *tree, int32_t x, yk_radix_stats *sum) {
  const radix_node *n = &tree->nodes[x];
  const int ps = tree->page_size;
  if (x != RADIX_ROOT) {
    if (n->len <= 0 || n->len % ps) FAIL("node %d holds %lld tokens, not whole pages", x, (long long)n->len);
    if (n->parent < 0 || n->parent >= tree->node_capacity || !tree->nodes[n->parent].alive)
      FAIL("node %d has no live parent", x);
    if (radix_find_child(tree, n->parent, n->tokens, NULL) != x) FAIL("node %d is not its parent's child", x);
    /* a cycle would never reach the root */
    int64_t steps = 0;
    for (int32_t up = x; up != RADIX_ROOT; up = tree->nodes[up].parent)
      if (++steps > tree->node_capacity) FAIL("node %d does not lead to the root", x);
    sum->nodes++;
    sum->cached_tokens += n->len;
    sum->cached_pages += n->len / ps;
    if (n->lock_ref)
      sum->locked_pages += n->len / ps;
    else
      sum->evictable_pages += n->len / ps;
    for (int64_t i = 0; i < n->len / ps; i++)
      if (radix_pages(n)[i] < 0) FAIL("node %d holds page %d", x, radix_pages(n)[i]);
  }
  if (n->lock_ref < 0) FAIL("node %d has lock count %lld", x, (long long)n->lock_ref);
  int64_t below = 0;
  for (int32_t i = 0; i < n->child_count; i++) {
    const int32_t c = n->children[i];
    if (c <= RADIX_ROOT || c >= tree->node_capacity || !tree->nodes[c].alive || tree->nodes[c].parent != x)
      FAIL("node %d lists child %d, which is not its", x, c);
    if (i && radix_compare_page(tree->nodes[n->children[i - 1]].tokens, tree->nodes[c].tokens, ps) >= 0)
      FAIL("node %d: children %d and %d are out of order or share a first page", x, i - 1, i);
    below += tree->nodes[c].lock_ref;
  }
  if (below > n->lock_ref)
    FAIL("node %d has lock count %lld below its children's %lld", x, (long long)n->lock_ref, (long long)below);
  const int evictable = x != RADIX_ROOT && !n->child_count && !n->lock_ref;
  if (evictable != (n->heap_index != RADIX_NONE))
    FAIL("node %d is %san unlocked leaf but %sin the eviction heap", x, evictable ? "" : "not ",
         n->heap_index != RADIX_NONE ? "" : "not ");
  return YK_OK;
}

yk_status yk_radix_validate(const yk_radix_tree *tree) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix validate: tree is NULL");
  const radix_node *root = &tree->nodes[RADIX_ROOT];
  if (!root->alive || root->len || root->parent != RADIX_NONE) FAIL("the root is damaged");
  yk_radix_stats sum = {0};
  int32_t alive = 0;
  for (int32_t x = 0; x < tree->node_capacity; x++) {
    if (!tree->nodes[x].alive) continue;
    alive++;
    yk_status st = check_node(tree, x, &sum);
    if (st != YK_OK) return st;
  }
  if (tree->free_count != tree->node_capacity - alive)
    FAIL("%d free slots counted, %d found", tree->free_count, tree->node_capacity - alive);
  const yk_radix_stats *s = &tree->stats;
  if (s->cached_tokens != sum.cached_tokens || s->cached_pages != sum.cached_pages ||
      s->evictable_pages != sum.evictable_pages || s->locked_pages != sum.locked_pages || s->nodes != sum.nodes)
    FAIL("statistics (%lld tokens, %lld pages, %lld evictable, %lld locked, %lld nodes) differ from the nodes' "
         "(%lld, %lld, %lld, %lld, %lld)",
         (long long)s->cached_tokens, (long long)s->cached_pages, (long long)s->evictable_pages,
         (long long)s->locked_pages, (long long)s->nodes, (long long)sum.cached_tokens, (long long)sum.cached_pages,
         (long long)sum.evictable_pages, (long long)sum.locked_pages, (long long)sum.nodes);
  for (int32_t i = 0; i < tree->heap_count; i++) {
    const int32_t x = tree->heap[i];
    if (x <= RADIX_ROOT || x >= tree->node_capacity || tree->nodes[x].heap_index != i)
      FAIL("heap entry %d (node %d) does not point back", i, x);
    const radix_node *a = &tree->nodes[tree->heap[(i - 1) / 2]], *b = &tree->nodes[x];
    if (i && a->last_access > b->last_access) FAIL("heap entry %d is used later than its parent entry", i);
  }
  return YK_OK;
}
