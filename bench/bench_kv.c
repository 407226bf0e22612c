/* yk bench --kv: the KV cache manager's host operations a second, what a scheduler pays every
 * step for every sequence. Runs on a CPU context (the bookkeeping is the same on a GPU one; block
 * bytes are kept tiny so memory plays no part). */
#include <stdio.h>
#include <time.h>

#include "bench/bench.h"
#include "tools/cli.h"

#define SEQS 256
#define PAGE 16

static double seconds_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void report(const char *what, double ops, double seconds) {
  printf("| %-56s | %12.0f | %8.1f |\n", what, ops / seconds, 1e9 * seconds / ops);
}

/* Decode steps: one token appended to each of SEQS sequences of 1000 tokens, slots filled. */
static yk_status decode_steps(yk_kv_cache *cache, int steps) {
  int64_t seqs[SEQS], slot;
  yk_status st = YK_OK;
  for (int i = 0; i < SEQS && st == YK_OK; i++)
    if (!(st = yk_kv_seq_add(cache, &seqs[i]))) st = yk_kv_seq_append(cache, seqs[i], 1000, NULL);
  const double t0 = seconds_now();
  for (int s = 0; s < steps && st == YK_OK; s++)
    for (int i = 0; i < SEQS && st == YK_OK; i++) st = yk_kv_seq_append(cache, seqs[i], 1, &slot);
  const double t = seconds_now() - t0;
  if (st == YK_OK) report("append 1 token (decode step, 256 sequences)", (double)steps * SEQS, t);
  static int32_t tables[SEQS * 256], lens[SEQS], indptr[SEQS + 1], indices[SEQS * 256], last[SEQS];
  const double t1 = seconds_now();
  for (int s = 0; s < steps / 16 && st == YK_OK; s++)
    if (!(st = yk_kv_cache_block_tables(cache, seqs, SEQS, tables, 256, lens)))
      st = yk_kv_cache_csr(cache, seqs, SEQS, indptr, indices, SEQS * 256, last);
  if (st == YK_OK)
    report("both page tables of 256 sequences (per sequence)", (double)(steps / 16) * SEQS, seconds_now() - t1);
  for (int i = 0; i < SEQS; i++) yk_kv_seq_free(cache, seqs[i]);
  return st;
}

/* A request's life: add, a 500-token prompt, 20 decode tokens, free. */
static yk_status lifetimes(yk_kv_cache *cache, int rounds) {
  yk_status st = YK_OK;
  int64_t seq, slots[500];
  const double t0 = seconds_now();
  for (int r = 0; r < rounds && st == YK_OK; r++) {
    if ((st = yk_kv_seq_add(cache, &seq)) || (st = yk_kv_seq_append(cache, seq, 500, slots))) break;
    for (int i = 0; i < 20 && st == YK_OK; i++) st = yk_kv_seq_append(cache, seq, 1, slots);
    if (st == YK_OK) st = yk_kv_seq_free(cache, seq);
  }
  if (st == YK_OK)
    report("add + 500-token prefill + 20 appends + free (per call)", (double)rounds * 23, seconds_now() - t0);
  return st;
}

/* Parallel sampling: fork 4 children of a 100-token prompt, each appends (a copy-on-write),
 * copies flushed, all freed. */
static yk_status forks(yk_kv_cache *cache, int rounds) {
  yk_status st = YK_OK;
  int64_t parent, child[4], slot;
  const double t0 = seconds_now();
  for (int r = 0; r < rounds && st == YK_OK; r++) {
    if ((st = yk_kv_seq_add(cache, &parent)) || (st = yk_kv_seq_append(cache, parent, 100, NULL))) break;
    for (int i = 0; i < 4 && st == YK_OK; i++)
      if (!(st = yk_kv_seq_fork(cache, parent, &child[i]))) st = yk_kv_seq_append(cache, child[i], 1, &slot);
    if (st == YK_OK) st = yk_kv_cache_copy_blocks(cache, NULL);
    for (int i = 0; i < 4 && st == YK_OK; i++) st = yk_kv_seq_free(cache, child[i]);
    if (st == YK_OK) st = yk_kv_seq_free(cache, parent);
  }
  if (st == YK_OK)
    report("fork + copy-on-write append + free (per call, 4 forks)", (double)rounds * 15, seconds_now() - t0);
  return st;
}

int bench_kv(int quick) {
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  yk_kv_cache_config config;
  yk_kv_cache_config_init(&config);
  config.layers = 1, config.kv_heads = 1, config.head_dim = 8, config.page_size = PAGE;
  config.num_blocks = 65536;
  yk_kv_cache *cache = NULL;
  yk_status st = yk_kv_cache_create(ctx, &config, &cache);
  if (st == YK_OK) {
    printf("| %-56s | %12s | %8s |\n", "KV cache manager (host, page 16, 65536 blocks)", "ops/s", "ns/op");
    printf("|----------------------------------------------------------|--------------|----------|\n");
    const int scale = quick ? 1 : 10;
    if (!(st = decode_steps(cache, 200 * scale)) && !(st = lifetimes(cache, 2000 * scale)))
      st = forks(cache, 2000 * scale);
  }
  if (st != YK_OK) cli_fail("bench --kv", "%s", yk_ctx_last_error(ctx));
  yk_kv_cache_destroy(cache);
  yk_ctx_destroy(ctx);
  return st != YK_OK;
}
