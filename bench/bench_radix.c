/* yk bench --radix: prefix sharing on the host, no GPU (the tree and the block counts are host
 * bookkeeping).
 *  1. The shared-prefix workload through the prefix cache on a KV cache: 64 requests
 *     sharing a 4096-token prompt, 256 tokens of their own each, page 16: blocks in use and
 *     prefill tokens with and without sharing, against the target of at most 1.1x the requests'
 *     own blocks plus one prompt.
 *  2. A request's calls (start, append, finish) a second on 4k-token prompts, under eviction.
 *  3. The bare tree's operations a second on SGLang-sized prefixes: 1000 cached requests of 4096
 *     tokens (16 system prompts of 1024 tokens, each request's own 3072 after), then matches,
 *     inserts, eviction and scheduling over them, with a page owner that only counts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "kv/radix_tree.h"
#include "tools/cli.h"

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

/* ---- the prefix cache on a KV cache ---- */

#define SHARED_REQUESTS 64
#define SHARED_TOKENS 4096
#define OWN_TOKENS 256
#define PAGE 16
#define REQUEST_TOKENS (SHARED_TOKENS + OWN_TOKENS)
#define LLAMA_3_8B_LAYERS 32 /* not in the model presets, which hold what the ops need */

/* Only block counts matter here, so blocks are as small as a cache allows; what they would take
 * for Llama 3 8B (its kv heads and head dim from the presets, bf16) is computed aside. */
static yk_kv_cache *small_cache(yk_ctx *ctx, int64_t blocks) {
  yk_kv_cache_config config;
  yk_kv_cache_config_init(&config);
  config.layers = 1, config.kv_heads = 1, config.head_dim = 1, config.page_size = PAGE, config.num_blocks = blocks;
  yk_kv_cache *cache = NULL;
  return yk_kv_cache_create(ctx, &config, &cache) == YK_OK ? cache : NULL;
}

static double llama_3_8b_block_bytes(void) {
  const yk_model_preset *m = NULL;
  for (int i = 0; i < yk_model_preset_count() && !m; i++)
    if (!strcmp(yk_model_preset_get(i)->name, "llama-3-8b")) m = yk_model_preset_get(i);
  return m ? 2.0 * LLAMA_3_8B_LAYERS * PAGE * m->kv_heads * m->head_dim * 2 : 0;
}

/* Request r's tokens: the shared prompt, then its own (token ids no other request has). */
static void request_tokens(int32_t *tokens, const int32_t *shared, int64_t r) {
  memcpy(tokens, shared, SHARED_TOKENS * sizeof *tokens);
  for (int i = 0; i < OWN_TOKENS; i++) tokens[SHARED_TOKENS + i] = (int32_t)(200000 + r * OWN_TOKENS + i);
}

typedef struct workload_result {
  int64_t blocks_used, prefill_tokens;
} workload_result;

/* Without sharing: every request's own sequence computes and stores the whole prompt. */
static yk_status run_unshared(yk_kv_cache *cache, workload_result *out) {
  int64_t seqs[SHARED_REQUESTS];
  yk_status st = YK_OK;
  int r = 0;
  for (; r < SHARED_REQUESTS && st == YK_OK; r++)
    if ((st = yk_kv_seq_add(cache, &seqs[r])) == YK_OK) st = yk_kv_seq_append(cache, seqs[r], REQUEST_TOKENS, NULL);
  yk_kv_cache_info info;
  yk_kv_cache_get_info(cache, &info);
  *out = (workload_result){info.num_blocks - info.free_blocks, (int64_t)SHARED_REQUESTS * REQUEST_TOKENS};
  while (r-- > 0) yk_kv_seq_free(cache, seqs[r]);
  return st;
}

/* With sharing: request 0 computes the prompt and caches it while it runs (as SGLang keeps a
 * batch's shared prefix to one request); the other 63 start from it and compute their own part. */
static yk_status run_shared(yk_kv_cache *cache, const int32_t *shared, workload_result *out) {
  yk_prefix_cache *pc;
  yk_status st = yk_prefix_cache_create(cache, &pc);
  if (st != YK_OK) return st;
  static int32_t tokens[REQUEST_TOKENS];
  int64_t seqs[SHARED_REQUESTS], cached, prefill = 0;
  int r = 0;
  for (; r < SHARED_REQUESTS && st == YK_OK; r++) {
    request_tokens(tokens, shared, r);
    if ((st = yk_prefix_cache_start(pc, tokens, REQUEST_TOKENS, &seqs[r], &cached)) != YK_OK) break;
    prefill += REQUEST_TOKENS - cached;
    st = yk_prefix_cache_append(pc, seqs[r], REQUEST_TOKENS - cached, NULL);
    if (st == YK_OK && r == 0) st = yk_prefix_cache_insert(pc, seqs[r], tokens, REQUEST_TOKENS);
  }
  yk_prefix_cache_stats s;
  yk_prefix_cache_get_stats(pc, &s);
  *out = (workload_result){s.total_blocks - s.free_blocks, prefill};
  while (r-- > 0) {
    request_tokens(tokens, shared, r);
    if (st == YK_OK) st = yk_prefix_cache_finish(pc, seqs[r], tokens, REQUEST_TOKENS);
  }
  yk_prefix_cache_destroy(pc);
  return st;
}

static int shared_prefix_workload(yk_ctx *ctx, const int32_t *shared) {
  yk_kv_cache *cache = small_cache(ctx, (int64_t)SHARED_REQUESTS * REQUEST_TOKENS / PAGE);
  if (!cache) return 1;
  workload_result without, with;
  yk_status st = run_unshared(cache, &without);
  if (st == YK_OK) st = run_shared(cache, shared, &with);
  yk_kv_cache_destroy(cache);
  if (st != YK_OK) return 1;
  const double gib = llama_3_8b_block_bytes() / (1024.0 * 1024 * 1024);
  const int64_t own_blocks = (int64_t)SHARED_REQUESTS * OWN_TOKENS / PAGE, prompt_blocks = SHARED_TOKENS / PAGE;
  const double target = 1.1 * (double)own_blocks + (double)prompt_blocks;
  printf("| %-66s | %12s | %12s |\n", "shared prefix: 64 requests, 4096 shared + 256 own tokens, page 16", "no sharing",
         "prefix cache");
  printf("|--------------------------------------------------------------------|--------------|--------------|\n");
  printf("| %-66s | %12lld | %12lld |\n", "KV blocks in use, all 64 running", (long long)without.blocks_used,
         (long long)with.blocks_used);
  printf("| %-66s | %12.2f | %12.2f |\n", "  as Llama 3 8B KV (32 layers, 8 kv heads, dim 128, bf16), GiB",
         (double)without.blocks_used * gib, (double)with.blocks_used * gib);
  printf("| %-66s | %12lld | %12lld |\n", "prefill tokens computed", (long long)without.prefill_tokens,
         (long long)with.prefill_tokens);
  const int met = (double)with.blocks_used <= target;
  printf("target: blocks with sharing <= 1.1 x %lld own + %lld prompt = %.0f: %s (%lld, %.3fx the own blocks "
         "plus one prompt); prefill work %.1f%% of unshared\n\n",
         (long long)own_blocks, (long long)prompt_blocks, target, met ? "met" : "NOT MET", (long long)with.blocks_used,
         (double)(with.blocks_used - prompt_blocks) / (double)own_blocks,
         100.0 * (double)with.prefill_tokens / (double)without.prefill_tokens);
  return !met;
}

/* A request's calls a second: start (match the 4k prompt, share its 256 blocks, lock), append
 * its own 256 tokens (16 blocks), finish (cache those 16, unlock, free). The pool holds the
 * prompt and about 120 requests' own blocks, so once full every append evicts the least recently
 * used request's. */
static int lifecycle_rates(yk_ctx *ctx, const int32_t *shared, int quick) {
  const int64_t pool = SHARED_TOKENS / PAGE + 120 * OWN_TOKENS / PAGE;
  yk_kv_cache *cache = small_cache(ctx, pool);
  yk_prefix_cache *pc = NULL;
  if (!cache || yk_prefix_cache_create(cache, &pc) != YK_OK) {
    yk_kv_cache_destroy(cache);
    return 1;
  }
  const int rounds = quick ? 1000 : 10000;
  static int32_t tokens[REQUEST_TOKENS];
  double spent[3] = {0, 0, 0};
  int failures = 0;
  struct timespec t0;
  for (int r = 0; r < rounds; r++) {
    request_tokens(tokens, shared, r);
    int64_t seq, cached = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    failures += yk_prefix_cache_start(pc, tokens, REQUEST_TOKENS, &seq, &cached) != YK_OK;
    spent[0] += elapsed_s(&t0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    failures += yk_prefix_cache_append(pc, seq, REQUEST_TOKENS - cached, NULL) != YK_OK;
    spent[1] += elapsed_s(&t0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    failures += yk_prefix_cache_finish(pc, seq, tokens, REQUEST_TOKENS) != YK_OK;
    spent[2] += elapsed_s(&t0);
    failures += r > 0 && cached != SHARED_TOKENS;
  }
  yk_prefix_cache_stats s;
  yk_prefix_cache_get_stats(pc, &s);
  printf("| %-60s | %12s | %10s |\n", "prefix cache requests (host; 4352 tokens, 4096 cached)", "ops/s", "us/op");
  printf("|--------------------------------------------------------------|--------------|------------|\n");
  row("start: match 4096, share 256 blocks, lock", PAGE, rounds, spent[0]);
  row("append 256 tokens, 16 blocks, evicting when full", PAGE, rounds, spent[1]);
  row("finish: cache 16 blocks, unlock, free", PAGE, rounds, spent[2]);
  row("a whole request", PAGE, rounds, spent[0] + spent[1] + spent[2]);
  printf("| %-60s | %12lld | %10lld |\n\n", "  then: blocks evicted, cached", (long long)s.evicted_blocks,
         (long long)s.cached_blocks);
  failures += s.evicted_blocks == 0;
  yk_prefix_cache_destroy(pc);
  yk_kv_cache_destroy(cache);
  return failures;
}

static int prefix_cache_benchmarks(int quick) {
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  int32_t *shared = malloc(SHARED_TOKENS * sizeof *shared);
  int failures = !shared;
  if (shared) {
    yh_rng rng = {7};
    for (int i = 0; i < SHARED_TOKENS; i++) shared[i] = (int32_t)(yh_next(&rng) % 128000);
    if (shared_prefix_workload(ctx, shared))
      failures++, fprintf(stderr, "yk bench --radix: shared-prefix workload failed or missed its target: %s\n",
                          yk_ctx_last_error(ctx));
    failures += lifecycle_rates(ctx, shared, quick);
  }
  free(shared);
  yk_ctx_destroy(ctx);
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
  int failures = prefix_cache_benchmarks(quick);
  printf("| %-60s | %12s | %10s |\n", "radix tree (host; 1000 requests of 4096 tokens cached)", "ops/s", "us/op");
  printf("|--------------------------------------------------------------|--------------|------------|\n");
  const int sizes[2] = {1, 16};
  for (int i = 0; i < 2; i++) failures += run(sizes[i], quick, cached, fresh, pages);
  free(cached), free(fresh), free(pages);
  if (failures) fprintf(stderr, "yk bench --radix: %d operations failed\n", failures);
  return failures ? 1 : 0;
}
