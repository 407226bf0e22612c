/* The radix tree's internal calls, beside its public API (include/yk/radix.h): what the prefix
 * cache (kv/prefix_*.c) and the tests need and an engine does not. */
#ifndef YK_KV_RADIX_TREE_H
#define YK_KV_RADIX_TREE_H

#include <stdint.h>

#include "yk/radix.h"

/* Checks every invariant (child order, page alignment, lock counts, the eviction heap, the
 * statistics) in O(nodes); YK_ERR_INTERNAL with what is wrong. For tests. */
yk_status yk_radix_validate(const yk_radix_tree *tree);

/* yk_radix_prefix_length, with the matched page ids copied to pages (NULL, or room for n / page_size):
 * what yk_radix_match_prefix would give, with nothing changed. */
yk_status yk_radix_peek_prefix(const yk_radix_tree *tree, const int32_t *tokens, int64_t n, int32_t *pages,
                               int64_t *matched_tokens);

/* Cached pages (those of unlocked nodes only, with unlocked_only) for which counts(user, page) is
 * nonzero, in O(nodes + pages), stopping as soon as `enough` are found. With counts answering
 * "only the tree holds it", unlocked_only gives what evicting everything evictable would free. */
int64_t yk_radix_count_pages(const yk_radix_tree *tree, int unlocked_only, int (*counts)(void *user, int32_t page),
                             void *user, int64_t enough);

#endif
