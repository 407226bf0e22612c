/* Thousands of random operations (add, append, fork, free, swap out, swap in) on a CPU cache,
 * against a model that knows each sequence's tokens. After every operation: reference counts equal
 * the number of tables holding each block, free + used = total on both sides, the free lists hold
 * exactly the unused blocks, tables have the right length, and every token still reads back the
 * value written for it (through copy-on-write copies and swaps). At the end nothing is leaked. */
#include <stdlib.h>
#include <string.h>

#include "tests/kv_support.h"

#define MAX_SEQS 24
#define MAX_TOKENS 4096

typedef struct {
  int64_t id;
  int live;
  int64_t tokens;
  uint16_t tag[MAX_TOKENS]; /* what every element of the token's K and V rows holds */
} model_seq;

typedef struct {
  yk_kv_cache *cache;
  model_seq seqs[MAX_SEQS];
  uint16_t next_tag;
  uint64_t seed;
  int step;
  int copies, swaps, refused, early_frees; /* how often each path ran: the run must reach them all */
} model;

static void for_token(model *m, int host, int64_t block, int64_t offset, uint16_t *write, uint16_t want) {
  const yk_kv_cache_config *k = &m->cache->config;
  for (int l = 0; l < k->layers; l++)
    for (int kv = 0; kv < 2; kv++)
      for (int h = 0; h < k->kv_heads; h++)
        for (int d = 0; d < k->head_dim; d++) {
          uint16_t *e = kv_element(m->cache, host, l, kv, block, offset, h, d);
          if (write)
            *e = (uint16_t)(*write + l * 7 + kv * 3 + h + d);
          else
            cr_assert_eq(*e, (uint16_t)(want + l * 7 + kv * 3 + h + d),
                         "step %d: block %lld offset %lld layer %d %s head %d dim %d (seed %llu)", m->step,
                         (long long)block, (long long)offset, l, kv ? "V" : "K", h, d, (unsigned long long)m->seed);
        }
}

static void check_invariants(model *m) {
  yk_kv_cache *c = m->cache;
  const int64_t page = c->config.page_size;
  int32_t *device_refs = calloc((size_t)c->device.count, sizeof *device_refs);
  int32_t *host_refs = calloc((size_t)(c->host.count ? c->host.count : 1), sizeof *host_refs);
  int64_t live = 0;
  for (int i = 0; i < MAX_SEQS; i++) {
    model_seq *s = &m->seqs[i];
    if (!s->live) continue;
    live++;
    const yk_kv_seq_info info = kv_seq(c, s->id);
    cr_assert_eq(info.tokens, s->tokens, "step %d seq %d", m->step, i);
    cr_assert_eq(info.blocks, (s->tokens + page - 1) / page, "step %d seq %d", m->step, i);
    int32_t *refs = info.swapped_out ? host_refs : device_refs;
    for (int64_t b = 0; b < info.blocks; b++) {
      for (int64_t e = 0; e < b; e++)
        cr_assert_neq(info.table[e], info.table[b], "step %d: a table holds a block twice", m->step);
      refs[info.table[b]]++;
    }
    for (int64_t t = 0; t < s->tokens; t++)
      for_token(m, info.swapped_out, info.table[t / page], t % page, NULL, s->tag[t]);
  }
  cr_assert_eq(kv_info(c).sequences, live);
  const yk_block_allocator *sides[2] = {&c->device, &c->host};
  const int32_t *model_refs[2] = {device_refs, host_refs};
  for (int side = 0; side < 2; side++) {
    const yk_block_allocator *a = sides[side];
    int64_t unused = 0;
    for (int64_t b = 0; b < a->count; b++) {
      cr_assert_eq(a->refs[b], model_refs[side][b], "step %d: %s block %lld has %d references, %d tables hold it",
                   m->step, side ? "host" : "device", (long long)b, a->refs[b], model_refs[side][b]);
      cr_assert_geq(a->holds[b], 0);
      unused += a->refs[b] == 0 && a->holds[b] == 0;
    }
    cr_assert_eq(a->free_count, unused, "step %d: free + used != total on the %s side", m->step,
                 side ? "host" : "device");
    for (int64_t i = 0; i < a->free_count; i++)
      cr_assert(a->refs[a->free_ids[i]] == 0 && a->holds[a->free_ids[i]] == 0, "step %d: a used block is free",
                m->step);
  }
  free(device_refs);
  free(host_refs);
}

static int pick(model *m, yh_rng *rng, int want_live, int want_swapped) {
  int candidates[MAX_SEQS], n = 0;
  for (int i = 0; i < MAX_SEQS; i++) {
    const model_seq *s = &m->seqs[i];
    if (s->live != want_live) continue;
    if (want_live && want_swapped >= 0 && kv_seq(m->cache, s->id).swapped_out != want_swapped) continue;
    candidates[n++] = i;
  }
  return n ? candidates[yh_next(rng) % (uint64_t)n] : -1;
}

static void do_append(model *m, yh_rng *rng, int i) {
  yk_kv_cache *c = m->cache;
  model_seq *s = &m->seqs[i];
  const int64_t page = c->config.page_size, n = (int64_t)(yh_next(rng) % (uint64_t)(2 * page + 2));
  if (s->tokens + n > MAX_TOKENS) return;
  int64_t need, slots[2 * 128 + 2];
  cr_assert_eq(yk_kv_seq_blocks_needed(c, s->id, n, &need), YK_OK);
  const int64_t free_before = kv_info(c).free_blocks;
  const yk_status st = yk_kv_seq_append(c, s->id, n, slots);
  if (need > free_before) {
    cr_assert_eq(st, YK_ERR_OUT_OF_MEMORY, "step %d", m->step);
    cr_assert_eq(kv_info(c).free_blocks, free_before, "step %d: a refused append changed the cache", m->step);
    m->refused++;
    return;
  }
  cr_assert_eq(st, YK_OK, "step %d: %s", m->step, yk_ctx_last_error(c->ctx));
  cr_assert_eq(kv_info(c).free_blocks, free_before - need, "step %d", m->step);
  /* Sometimes the other holder of a copied block goes before the copy is done (its holds keep the
   * blocks), as a scheduler may free a finished beam in the same step. */
  if (yh_next(rng) % 4 == 0) {
    const int other = pick(m, rng, 1, -1);
    if (other >= 0 && other != i) {
      cr_assert_eq(yk_kv_seq_free(c, m->seqs[other].id), YK_OK);
      m->seqs[other].live = 0;
      m->early_frees += kv_info(c).pending_copies > 0;
    }
  }
  m->copies += (int)kv_info(c).pending_copies;
  cr_assert_eq(yk_kv_cache_copy_blocks(c, NULL), YK_OK); /* before the new tokens are written */
  for (int64_t j = 0; j < n; j++) {
    uint16_t tag = m->next_tag++;
    for_token(m, 0, slots[j] / page, slots[j] % page, &tag, 0);
    s->tag[s->tokens + j] = tag;
  }
  s->tokens += n;
}

static void do_move(model *m, int i, int to_host) {
  yk_kv_cache *c = m->cache;
  model_seq *s = &m->seqs[i];
  const yk_kv_cache_info before = kv_info(c);
  const int64_t blocks = kv_seq(c, s->id).blocks;
  const yk_status st = to_host ? yk_kv_seq_swap_out(c, s->id, NULL) : yk_kv_seq_swap_in(c, s->id, NULL);
  if (blocks > (to_host ? before.free_host_blocks : before.free_blocks)) {
    cr_assert_eq(st, YK_ERR_OUT_OF_MEMORY, "step %d", m->step);
    cr_assert_eq(kv_seq(c, s->id).swapped_out, !to_host, "step %d: a refused swap moved the sequence", m->step);
    m->refused++;
    return;
  }
  cr_assert_eq(st, YK_OK, "step %d: %s", m->step, yk_ctx_last_error(c->ctx));
  cr_assert_eq(kv_seq(c, s->id).swapped_out, to_host);
  m->swaps += blocks > 0;
}

static void run(int page, yk_kv_layout layout, const char *name) {
  yk_ctx *ctx = ts_cpu_ctx();
  model *m = calloc(1, sizeof *m);
  m->seed = ts_seed(name);
  yh_rng rng = {m->seed};
  yk_kv_cache_config config = kv_test_config(2, 2, 2, page, 48, 24);
  config.layout = layout;
  m->cache = kv_test_cache(ctx, &config);
  for (m->step = 0; m->step < 5000; m->step++) {
    const uint64_t r = yh_next(&rng) % 100;
    int i;
    if (r < 12 && (i = pick(m, &rng, 0, -1)) >= 0) {
      m->seqs[i] = (model_seq){.live = 1};
      cr_assert_eq(yk_kv_seq_add(m->cache, &m->seqs[i].id), YK_OK);
    } else if (r < 55 && (i = pick(m, &rng, 1, 0)) >= 0) {
      do_append(m, &rng, i);
    } else if (r < 67 && (i = pick(m, &rng, 1, 0)) >= 0) {
      const int j = pick(m, &rng, 0, -1);
      if (j < 0) continue;
      cr_assert_eq(yk_kv_seq_fork(m->cache, m->seqs[i].id, &m->seqs[j].id), YK_OK);
      m->seqs[j].live = 1;
      m->seqs[j].tokens = m->seqs[i].tokens;
      memcpy(m->seqs[j].tag, m->seqs[i].tag, (size_t)m->seqs[i].tokens * sizeof m->seqs[i].tag[0]);
    } else if (r < 82 && (i = pick(m, &rng, 1, -1)) >= 0) {
      cr_assert_eq(yk_kv_seq_free(m->cache, m->seqs[i].id), YK_OK);
      m->seqs[i].live = 0;
      ts_assert_rejected(ctx, yk_kv_seq_free(m->cache, m->seqs[i].id), YK_ERR_NOT_FOUND, "was freed");
    } else if (r < 92 && (i = pick(m, &rng, 1, 0)) >= 0) {
      do_move(m, i, 1);
    } else if ((i = pick(m, &rng, 1, 1)) >= 0) {
      do_move(m, i, 0);
    }
    check_invariants(m);
  }
  cr_log_info("%s: %d copies, %d swaps, %d refused, %d frees before a copy", name, m->copies, m->swaps, m->refused,
              m->early_frees);
  /* With one token a block the last block is always full: nothing is ever copied. */
  cr_assert(page == 1 || (m->copies >= 20 && m->early_frees >= 3), "no copy-on-write (seed %llu)",
            (unsigned long long)m->seed);
  cr_assert(m->swaps >= 50 && m->refused >= 20, "the run missed a path (seed %llu)", (unsigned long long)m->seed);
  for (int i = 0; i < MAX_SEQS; i++)
    if (m->seqs[i].live) cr_assert_eq(yk_kv_seq_free(m->cache, m->seqs[i].id), YK_OK);
  const yk_kv_cache_info info = kv_info(m->cache);
  cr_assert_eq(info.free_blocks, 48, "device blocks leaked (seed %llu)", (unsigned long long)m->seed);
  cr_assert_eq(info.free_host_blocks, 24, "host blocks leaked (seed %llu)", (unsigned long long)m->seed);
  cr_assert_eq(info.sequences, 0);
  yk_kv_cache_destroy(m->cache);
  free(m);
  yk_ctx_destroy(ctx);
}

Test(kv_random, page_3_nhd) { run(3, YK_KV_NHD, "kv_random.page_3"); }
Test(kv_random, page_16_hnd) { run(16, YK_KV_HND, "kv_random.page_16"); }
Test(kv_random, page_1_nhd) { run(1, YK_KV_NHD, "kv_random.page_1"); }
