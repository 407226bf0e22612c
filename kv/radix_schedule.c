/* The scheduling helper: waiting requests, longest cached prefix first (SGLang's LPM policy).
 * Reads the tree through yk_radix_prefix_length only. */
#include <stdlib.h>

#include "kv/radix_internal.h"
#include "runtime/error.h"

typedef struct ranked {
  int64_t matched, index;
} ranked;

/* Longest first, then by index: qsort is not stable, the index makes it so. */
static int by_prefix(const void *pa, const void *pb) {
  const ranked *a = pa, *b = pb;
  if (a->matched != b->matched) return a->matched > b->matched ? -1 : 1;
  return (a->index > b->index) - (a->index < b->index);
}

yk_status yk_radix_order_by_prefix(const yk_radix_tree *tree, const int32_t *const *tokens, const int64_t *lengths,
                                   int64_t count, int64_t *order, int64_t *matched) {
  if (!tree) return yk_error(NULL, YK_ERR_INVALID_ARGUMENT, "radix order_by_prefix: tree is NULL");
  if (count < 0)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix order_by_prefix: count is %lld", (long long)count);
  if (!count) return YK_OK;
  if (!tokens || !lengths || !order)
    return yk_error(tree->ctx, YK_ERR_INVALID_ARGUMENT, "radix order_by_prefix: tokens, lengths or order is NULL");
  ranked *r = malloc((size_t)count * sizeof *r);
  if (!r) return yk_error(tree->ctx, YK_ERR_OUT_OF_MEMORY, "radix order_by_prefix: out of memory");
  for (int64_t i = 0; i < count; i++) {
    yk_status st = yk_radix_prefix_length(tree, tokens[i], lengths[i], &r[i].matched);
    if (st != YK_OK) {
      free(r);
      return st;
    }
    r[i].index = i;
  }
  qsort(r, (size_t)count, sizeof *r, by_prefix);
  for (int64_t i = 0; i < count; i++) {
    order[i] = r[i].index;
    if (matched) matched[r[i].index] = r[i].matched;
  }
  free(r);
  return YK_OK;
}
