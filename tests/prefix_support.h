/* What the prefix cache tests share: a prefix cache on a small CPU KV cache, and KV contents that
 * say which tokens they were computed from.
 *
 * A token's K and V at position t stand for everything attention computed them from: the tokens
 * [0..t]. So each position is written with a hash of that whole prefix, and a block shared
 * between two requests reads back right for both only if they agree on every token up to it.
 * That is the check that sharing hands out the right blocks, not merely blocks. */
#ifndef YK_TESTS_PREFIX_SUPPORT_H
#define YK_TESTS_PREFIX_SUPPORT_H

#include "kv/prefix_cache.h"
#include "tests/kv_support.h"

/* The hash of tokens[0..t] from the hash of tokens[0..t - 1] (0 before the first). */
static inline uint64_t ps_prefix_hash(uint64_t before, int32_t token) {
  uint64_t h = (before ^ (uint32_t)token) + 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

/* The hashes of every prefix of tokens[0..n): hashes[t] covers tokens[0..t]. */
static inline void ps_prefix_hashes(const int32_t *tokens, int64_t n, uint16_t *hashes) {
  uint64_t h = 0;
  for (int64_t t = 0; t < n; t++) hashes[t] = (uint16_t)(h = ps_prefix_hash(h, tokens[t]));
}

/* Writes value (write != 0) or returns how many elements differ from it: every layer, K and V,
 * head and dim of one token, each a different function of value. */
static inline int ps_token(yk_kv_cache *c, int host, int64_t block, int64_t offset, uint16_t value, int write) {
  const yk_kv_cache_config *k = &c->config;
  int wrong = 0;
  for (int l = 0; l < k->layers; l++)
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < k->kv_heads; h++)
        for (int d = 0; d < k->head_dim; d++) {
          uint16_t *e = kv_element(c, host, l, kv, block, offset, h, d);
          const uint16_t want = (uint16_t)(value + l * 7 + kv * 3 + h * 5 + d);
          if (write)
            *e = want;
          else
            wrong += *e != want;
        }
  return wrong;
}

static inline yk_prefix_cache *ps_create(yk_kv_cache *cache) {
  yk_prefix_cache *pc = NULL;
  cr_assert_eq(yk_prefix_cache_create(cache, &pc), YK_OK, "%s", yk_ctx_last_error(cache->ctx));
  return pc;
}

static inline yk_prefix_cache_stats ps_stats(const yk_prefix_cache *pc) {
  yk_prefix_cache_stats s;
  cr_assert_eq(yk_prefix_cache_get_stats(pc, &s), YK_OK);
  return s;
}

static inline void ps_validate(const yk_prefix_cache *pc) {
  cr_assert_eq(yk_prefix_cache_validate(pc), YK_OK, "%s", yk_ctx_last_error(pc->cache->ctx));
}

#endif
