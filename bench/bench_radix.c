/* yk bench --radix: the radix tree's host operations a second on SGLang-sized prefixes: 1000
 * cached requests of 4096 tokens (16 system prompts of 1024 tokens, each request's own 3072
 * after), then matches, inserts, eviction and scheduling over them. No GPU: the tree is host
 * bookkeeping, and its page owner here only counts references. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "kv/radix_tree.h"

#define REQUESTS 1000
#define PROMPTS 16
#define PROMPT_TOKENS 1024
#define TOKENS 4096

typedef struct counting_owner {
  int64_t held; /* references the tree holds */
} counting_owner;

static yk_status count_retain(void *user, const int32_t *pages, int64_t count) {
  (void)pages;
  ((counting_owner *)user)->held += count;
  return YK_OK;
}

static void count_release(void *user, const int32_t *pages, int64_t count) {
  (void)pages;
  ((counting_owner *)user)->held -= count;
}

static double elapsed_s(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - since->tv_sec) + 1e-9 * (double)(now.tv_nsec - since->tv_nsec);
}

static void row(const char *what, int page_size, double ops, double seconds) {
  char name[96];
  snprintf(name, sizeof name, "%s (page %d)", what, page_size);
  printf("| %-60s | %12.0f | %10.2f |\n", name, ops / seconds, 1e6 * seconds / ops);
}

/* Request r: its prompt's tokens, then its own; token values from a seeded generator. */
static void make_requests(int32_t *tokens, int count, uint64_t seed) {
  yh_rng rng = {seed};
  static int32_t prompts[PROMPTS][PROMPT_TOKENS];
  for (int p = 0; p < PROMPTS; p++)
    for (int i = 0; i < PROMPT_TOKENS; i++) prompts[p][i] = (int32_t)(yh_next(&rng) % 128000);
  for (int r = 0; r < count; r++) {
    int32_t *t = tokens + (int64_t)r * TOKENS;
    memcpy(t, prompts[r % PROMPTS], sizeof prompts[0]);
    for (int i = PROMPT_TOKENS; i < TOKENS; i++) t[i] = (int32_t)(yh_next(&rng) % 128000);
  }
}

/* The i-th request of a round: a stride through the set, so consecutive ones are far apart. */
static const int32_t *pick(const int32_t *requests, int i) {
  return requests + (int64_t)((uint64_t)i * 7919 % REQUESTS) * TOKENS;
}

/* Matches `rounds` requests with their page ids out; counts failures and wrong lengths. */
static int match_rounds(yk_radix_tree *tree, const int32_t *requests, int rounds, int32_t *pages, int64_t capacity,
                        int64_t want) {
  int failures = 0;
  yk_radix_match m;
  for (int i = 0; i < rounds; i++)
    failures += yk_radix_match_prefix(tree, pick(requests, i), TOKENS, pages, capacity, &m) != YK_OK ||
                m.matched_tokens != want;
  return failures;
}

static int run(int page_size, int quick, const int32_t *cached, const int32_t *fresh, int32_t *pages) {
  counting_owner owner = {0};
  const yk_radix_page_owner po = {count_retain, count_release, &owner};
  yk_radix_tree *tree;
  if (yk_radix_create(NULL, page_size, &po, &tree) != YK_OK) return 1;
  const int64_t per_request = TOKENS / page_size;
  int failures = 0;
  struct timespec t0;

  /* inserts into a growing tree: the first 1000 requests (each shares its prompt with 1/16) */
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int r = 0; r < REQUESTS; r++) {
    for (int64_t k = 0; k < per_request; k++) pages[k] = (int32_t)(r * per_request + k);
    failures += yk_radix_insert(tree, cached + (int64_t)r * TOKENS, TOKENS, pages, NULL, NULL) != YK_OK;
  }
  row("insert 4k tokens, 3k new (prompt cached)", page_size, REQUESTS, elapsed_s(&t0));

  const int rounds = quick ? 2000 : 20000;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  failures += match_rounds(tree, cached, rounds, pages, per_request, TOKENS);
  row("match_prefix 4k tokens, all cached, page ids out", page_size, rounds, elapsed_s(&t0));
  clock_gettime(CLOCK_MONOTONIC, &t0);
  failures += match_rounds(tree, fresh, rounds, pages, per_request, PROMPT_TOKENS);
  row("match_prefix 4k tokens, 1k cached", page_size, rounds, elapsed_s(&t0));

  yk_radix_match m;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < rounds; i++)
    if (yk_radix_match_prefix(tree, pick(cached, i), TOKENS, NULL, 0, &m) != YK_OK ||
        yk_radix_lock(tree, m.node) != YK_OK || yk_radix_unlock(tree, m.node) != YK_OK)
      failures++;
  row("match_prefix + lock + unlock, 4k cached", page_size, rounds, elapsed_s(&t0));

  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < rounds; i++)
    failures += yk_radix_insert(tree, pick(cached, i), TOKENS, pages, NULL, NULL) != YK_OK;
  row("insert 4k tokens, all cached", page_size, rounds, elapsed_s(&t0));

  int64_t order[64], lengths[64];
  const int32_t *waiting[64];
  for (int i = 0; i < 64; i++)
    waiting[i] = (i % 2 ? cached : fresh) + (int64_t)(i * 13 % REQUESTS) * TOKENS, lengths[i] = TOKENS;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < rounds / 64; i++)
    failures += yk_radix_order_by_prefix(tree, waiting, lengths, 64, order, NULL) != YK_OK;
  row("order_by_prefix, 64 waiting of 4k (per call)", page_size, rounds / 64, elapsed_s(&t0));

  /* steady state under memory pressure: evict a request's own tokens' worth (the least recently
   * used request), insert a fresh request */
  const int cycles = quick ? 200 : REQUESTS;
  int64_t freed;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int r = 0; r < cycles; r++) {
    failures += yk_radix_evict(tree, (TOKENS - PROMPT_TOKENS) / page_size, &freed) != YK_OK;
    for (int64_t k = 0; k < per_request; k++) pages[k] = (int32_t)((REQUESTS + r) * per_request + k);
    failures += yk_radix_insert(tree, fresh + (int64_t)r * TOKENS, TOKENS, pages, NULL, NULL) != YK_OK;
  }
  row("evict 3k tokens (LRU) + insert 3k new", page_size, cycles, elapsed_s(&t0));

  yk_radix_stats s;
  yk_radix_get_stats(tree, &s);
  if (yk_radix_validate(tree) != YK_OK) failures++;
  printf("| %-60s | %12lld | %10lld |\n", "  then: cached tokens, nodes", (long long)s.cached_tokens,
         (long long)s.nodes);
  yk_radix_destroy(tree);
  if (owner.held) failures++;
  return failures;
}

int bench_radix(int quick) {
  int32_t *cached = malloc((size_t)REQUESTS * TOKENS * sizeof *cached);
  int32_t *fresh = malloc((size_t)REQUESTS * TOKENS * sizeof *fresh);
  int32_t *pages = malloc(TOKENS * sizeof *pages);
  if (!cached || !fresh || !pages) {
    free(cached), free(fresh), free(pages);
    fprintf(stderr, "yk bench --radix: out of memory\n");
    return 1;
  }
  make_requests(cached, REQUESTS, 1);
  make_requests(fresh, REQUESTS, 1);
  /* the same prompts, then tokens no cached request has (so a match stops at the prompt) */
  for (int64_t i = 0; i < (int64_t)REQUESTS * TOKENS; i++)
    if (i % TOKENS >= PROMPT_TOKENS) fresh[i] += 128000;
  printf("| %-60s | %12s | %10s |\n", "radix tree (host; 1000 requests of 4096 tokens cached)", "ops/s", "us/op");
  printf("|--------------------------------------------------------------|--------------|------------|\n");
  int failures = 0;
  const int sizes[2] = {1, 16};
  for (int i = 0; i < 2; i++) failures += run(sizes[i], quick, cached, fresh, pages);
  free(cached), free(fresh), free(pages);
  if (failures) fprintf(stderr, "yk bench --radix: %d operations failed\n", failures);
  return failures ? 1 : 0;
}
