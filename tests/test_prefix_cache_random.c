/* Thousands of random operations on a prefix cache over a small CPU KV cache (requests started
 * from token streams that share a few stems, prefill and decode appends, forks, inserts while
 * running, finishes, frees, reserves, swaps, sequences over partly used cached blocks), against a
 * brute-force model: a plain list of cached pages (the tokens up to each page's end, its block),
 * each sequence's expected block table, and the pending copies. After every step each block's
 * reference count must equal what the model counts by hand (tables + cached pages) and its holds
 * the pending copies; free + referenced = total on both sides; the tree holds exactly the model's
 * pages, locked exactly where running requests matched; and every token of every sequence and of
 * every cached page reads back the KV of its own prefix. Page sizes 1, 16 and 5.
 *
 * Concurrent duplicates: half the requests start on the tokens of a live sequence that
 * has cached none or only part of them, so both compute the same pages; whichever inserts
 * second must find its table switched to the tree's blocks for them (the model switches its
 * expected table and counts the switch against duplicate_blocks), its copies free unless a fork
 * or a pending copy still holds them, and a running request's table must equal the tree's blocks
 * along its locked path (until a swap gives it new blocks, and again after its next insert). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/prefix_support.h"

#define SEQS 12
#define BLOCKS 64
#define HOST_BLOCKS 32
#define MAX_TOKENS 192 /* 24 pages of 1, 8 of 16, 24 of 5: whatever the page size, tables fit */
#define MAX_ENTRIES BLOCKS
#define STEMS 3

typedef struct mseq {
  int live, request, swapped; /* request: started through the prefix cache, so it holds a lock */
  int64_t id, tokens, locked; /* locked: the tokens its locked path covers */
  int64_t synced;             /* a request's table holds the tree's blocks for tokens[0..synced) */
  int32_t tok[MAX_TOKENS];
  uint16_t hash[MAX_TOKENS];
  int32_t blocks[MAX_TOKENS]; /* its table as the model expects it */
} mseq;

typedef struct entry { /* one cached page: the tokens up to its end, and its block */
  int64_t len;
  int32_t tok[MAX_TOKENS];
  int32_t block;
} entry;

typedef struct model {
  yk_ctx *ctx;
  yk_kv_cache *cache;
  yk_prefix_cache *pc;
  int64_t ps, max_tokens;
  mseq seqs[SEQS];
  entry cached[MAX_ENTRIES];
  int64_t cached_count;
  int32_t copies[2 * SEQS * 2]; /* pending copies, (source, destination) */
  int64_t copy_count;
  int32_t refs[BLOCKS], holds[BLOCKS], host_refs[HOST_BLOCKS]; /* counted by hand from the above */
  int32_t stems[STEMS][MAX_TOKENS];
  yh_rng rng;
  uint64_t seed;
  int step;
  int64_t evicted, refused, copied, hits, duplicates, swaps, early_frees;
  int64_t twins, early_inserts, shared_duplicates; /* concurrent starts; inserts while copies pend; switched
                                                     copies a fork still held */
} model;

#define AT "step %d (seed %llu): "
#define WHERE m->step, (unsigned long long)m->seed

static int64_t below(model *m, int64_t n) { return (int64_t)(yh_next(&m->rng) % (uint64_t)n); }

/* ---- the model ---- */

static int64_t find_entry(const model *m, const int32_t *tok, int64_t len) {
  for (int64_t e = 0; e < m->cached_count; e++)
    if (m->cached[e].len == len && !memcmp(m->cached[e].tok, tok, (size_t)len * sizeof *tok)) return e;
  return -1;
}

/* The longest cached prefix of tok[0..n), page by page; blocks gets its blocks. */
static int64_t model_match(const model *m, const int32_t *tok, int64_t n, int32_t *blocks) {
  int64_t k = 0, e;
  while ((k + 1) * m->ps <= n && (e = find_entry(m, tok, (k + 1) * m->ps)) >= 0) blocks[k++] = m->cached[e].block;
  return k * m->ps;
}

static int entry_locked(const model *m, const entry *e) {
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (s->live && s->request && s->locked >= e->len && !memcmp(s->tok, e->tok, (size_t)e->len * sizeof *e->tok))
      return 1;
  }
  return 0;
}

/* References and holds, counted from scratch. */
static void count_by_hand(model *m) {
  memset(m->refs, 0, sizeof m->refs), memset(m->holds, 0, sizeof m->holds);
  memset(m->host_refs, 0, sizeof m->host_refs);
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (!s->live) continue;
    for (int64_t b = 0; b < (s->tokens + m->ps - 1) / m->ps; b++) (s->swapped ? m->host_refs : m->refs)[s->blocks[b]]++;
  }
  for (int64_t e = 0; e < m->cached_count; e++) m->refs[m->cached[e].block]++;
  for (int64_t i = 0; i < 2 * m->copy_count; i++) m->holds[m->copies[i]]++;
}

static int64_t free_by_hand(const model *m) {
  int64_t n = 0;
  for (int b = 0; b < BLOCKS; b++) n += !m->refs[b] && !m->holds[b];
  return n;
}

/* Whether making `want` blocks free through the prefix cache must work: enough free, or enough
 * that evicting every unlocked cached page would free (pages only the tree holds). */
static int can_make_free(model *m, int64_t want) {
  count_by_hand(m);
  int64_t yield = free_by_hand(m);
  for (int64_t e = 0; e < m->cached_count; e++) {
    const int32_t b = m->cached[e].block;
    yield += !entry_locked(m, &m->cached[e]) && m->refs[b] == 1 && !m->holds[b];
  }
  return want <= yield;
}

/* The tree's pages now: the model's less what eviction took. Each page gone must have been
 * evictable, and they must add up to what the statistics say was evicted. */
static void sync_evictions(model *m, int64_t evicted_before, int may_evict) {
  int64_t gone = 0;
  for (int64_t e = 0; e < m->cached_count;) {
    entry *x = &m->cached[e];
    int32_t pages[MAX_TOKENS];
    int64_t matched;
    cr_assert_eq(yk_radix_peek_prefix(m->pc->tree, x->tok, x->len, pages, &matched), YK_OK);
    if (matched == x->len && pages[x->len / m->ps - 1] == x->block) {
      e++;
      continue;
    }
    cr_assert(may_evict, AT "cached page (block %d) gone with no eviction called for", WHERE, x->block);
    cr_assert(!entry_locked(m, x), AT "a locked page (block %d) was evicted", WHERE, x->block);
    *x = m->cached[--m->cached_count];
    gone++;
  }
  cr_assert_eq(ps_stats(m->pc).evicted_blocks - evicted_before, gone, AT "evicted count", WHERE);
  m->evicted += gone;
}

/* How many live sequences' tables (s's among them) hold block b. */
static int64_t tables_holding(const model *m, int32_t b) {
  int64_t n = 0;
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (!s->live || s->swapped) continue;
    for (int64_t k = 0; k < (s->tokens + m->ps - 1) / m->ps; k++) n += s->blocks[k] == b;
  }
  return n;
}

/* Caches s's pages for tok[0..n) as the tree must: pages already there keep their block, and s's
 * table switches to it where s held its own copy. */
static void model_insert(model *m, mseq *s, int64_t n) {
  for (int64_t k = 1; k * m->ps <= n; k++) {
    const int64_t e = find_entry(m, s->tok, k * m->ps);
    if (e >= 0) {
      if (m->cached[e].block != s->blocks[k - 1]) {
        m->duplicates++;
        m->shared_duplicates += tables_holding(m, s->blocks[k - 1]) > 1;
        s->blocks[k - 1] = m->cached[e].block;
      }
      continue;
    }
    cr_assert_lt(m->cached_count, MAX_ENTRIES, AT "more cached pages than blocks", WHERE);
    entry *x = &m->cached[m->cached_count++];
    x->len = k * m->ps;
    memcpy(x->tok, s->tok, (size_t)x->len * sizeof *x->tok);
    x->block = s->blocks[k - 1];
  }
  if (s->request && n - n % m->ps > s->locked) s->locked = n - n % m->ps;
  if (s->request && n - n % m->ps > s->synced) s->synced = n - n % m->ps;
}

/* ---- the checks ---- */

static void check_references(model *m) {
  count_by_hand(m);
  const yk_block_allocator *d = &m->cache->device, *h = &m->cache->host;
  for (int b = 0; b < BLOCKS; b++) {
    cr_assert_eq(d->refs[b], m->refs[b], AT "block %d has %d references, the model counts %d", WHERE, b, d->refs[b],
                 m->refs[b]);
    cr_assert_eq(d->holds[b], m->holds[b], AT "block %d has %d holds, the model %d", WHERE, b, d->holds[b],
                 m->holds[b]);
  }
  for (int b = 0; b < HOST_BLOCKS; b++) cr_assert_eq(h->refs[b], m->host_refs[b], AT "host block %d", WHERE, b);
  cr_assert_eq(d->free_count, free_by_hand(m), AT "free + referenced != total", WHERE);
  for (int64_t i = 0; i < d->free_count; i++)
    cr_assert(!m->refs[d->free_ids[i]] && !m->holds[d->free_ids[i]], AT "block %d is free while referenced", WHERE,
              d->free_ids[i]);
  int64_t host_free = 0;
  for (int b = 0; b < HOST_BLOCKS; b++) host_free += !m->host_refs[b];
  cr_assert_eq(h->free_count, host_free, AT "host free + referenced != total", WHERE);
}

static void check_all(model *m) {
  check_references(m);
  int64_t requests = 0, locked = 0;
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (!s->live) continue;
    requests += s->request;
    const yk_kv_seq_info info = kv_seq(m->cache, s->id);
    cr_assert_eq(info.tokens, s->tokens, AT "sequence %d", WHERE, i);
    cr_assert_eq(info.swapped_out, s->swapped);
    cr_assert_eq(info.blocks, (s->tokens + m->ps - 1) / m->ps);
    for (int64_t b = 0; b < info.blocks; b++)
      cr_assert_eq(info.table[b], s->blocks[b], AT "sequence %d block %lld", WHERE, i, (long long)b);
    for (int64_t t = 0; t < s->tokens; t++)
      cr_assert_eq(ps_token(m->cache, s->swapped, s->blocks[t / m->ps], t % m->ps, s->hash[t], 0), 0,
                   AT "sequence %d token %lld reads another prefix's KV", WHERE, i, (long long)t);
    if (!s->request) continue;
    cr_assert_leq(s->synced, s->locked, AT "the model's request %d", WHERE, i);
    for (int64_t k = 1; k * m->ps <= s->synced; k++) {
      const int64_t e = find_entry(m, s->tok, k * m->ps);
      cr_assert(e >= 0 && m->cached[e].block == s->blocks[k - 1],
                AT "request %d page %lld: block %d, not the tree's block on its locked path", WHERE, i,
                (long long)k - 1, s->blocks[k - 1]);
    }
  }
  for (int64_t e = 0; e < m->cached_count; e++) {
    const entry *x = &m->cached[e];
    locked += entry_locked(m, x);
    int32_t pages[MAX_TOKENS];
    int64_t matched;
    cr_assert_eq(yk_radix_peek_prefix(m->pc->tree, x->tok, x->len, pages, &matched), YK_OK);
    cr_assert(matched == x->len && pages[x->len / m->ps - 1] == x->block, AT "the tree lost block %d", WHERE, x->block);
    uint16_t hash[MAX_TOKENS];
    ps_prefix_hashes(x->tok, x->len, hash);
    for (int64_t j = 0; j < m->ps; j++)
      cr_assert_eq(ps_token(m->cache, 0, x->block, j, hash[x->len - m->ps + j], 0), 0,
                   AT "cached block %d offset %lld was overwritten", WHERE, x->block, (long long)j);
  }
  const yk_prefix_cache_stats st = ps_stats(m->pc);
  cr_assert_eq(st.cached_blocks, m->cached_count, AT "the tree holds %lld pages, the model %lld", WHERE,
               (long long)st.cached_blocks, (long long)m->cached_count);
  cr_assert_eq(st.locked_blocks, locked, AT "locked pages", WHERE);
  cr_assert_eq(st.requests, requests);
  cr_assert_eq(st.free_blocks, m->cache->device.free_count);
  cr_assert_eq(st.duplicate_blocks, m->duplicates, AT "%lld duplicates switched, the model %lld", WHERE,
               (long long)st.duplicate_blocks, (long long)m->duplicates);
  cr_assert_eq(yk_prefix_cache_validate(m->pc), YK_OK, AT "%s", WHERE, yk_ctx_last_error(m->ctx));
}

/* ---- the operations ---- */

static int pick(model *m, int live, int swapped, int request) {
  int found[SEQS], n = 0;
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (s->live == live && (!live || swapped < 0 || s->swapped == swapped) &&
        (!live || request < 0 || s->request == request))
      found[n++] = i;
  }
  return n ? found[below(m, n)] : -1;
}

/* Tokens from..from + n of s: a stem's up to a random point (often past the end), then a tiny
 * alphabet, so that streams agree for a while and part inside pages as well as between them. */
static void draw_tokens(model *m, mseq *s, int64_t from, int64_t n) {
  const int32_t *stem = m->stems[below(m, STEMS)];
  const int64_t part = below(m, 3) ? from + below(m, 2 * n + 1) : from;
  for (int64_t t = from; t < from + n; t++) s->tok[t] = t < part ? stem[t] : (int32_t)below(m, 3);
}

static void reserve(model *m);
static void insert(model *m, int i);

/* Ends sequence i one way or another, as a scheduler might mid-step. */
static void drop(model *m, int i) {
  mseq *s = &m->seqs[i];
  if (s->request)
    cr_assert_eq(yk_prefix_cache_finish(m->pc, s->id, NULL, 0), YK_OK);
  else
    cr_assert_eq(yk_kv_seq_free(m->cache, s->id), YK_OK);
  s->live = 0;
}

/* Appends tok[tokens..tokens + n) to sequence i through the prefix cache, as the model says it
 * must go: refused with nothing changed, or blocks (evicting as needed), copies, then the KV. */
static void append(model *m, int i, int64_t n) {
  mseq *s = &m->seqs[i];
  const int64_t ps = m->ps, t = s->tokens, had = (t + ps - 1) / ps;
  count_by_hand(m);
  const int shared_last = n > 0 && t % ps && m->refs[s->blocks[had - 1]] > 1;
  const int64_t need = (t + n + ps - 1) / ps - had + shared_last, free_before = free_by_hand(m);
  int64_t blocks_needed;
  cr_assert_eq(yk_kv_seq_blocks_needed(m->cache, s->id, n, &blocks_needed), YK_OK);
  cr_assert_eq(blocks_needed, need, AT "blocks needed", WHERE);
  const int feasible = can_make_free(m, need);
  const int64_t evicted_before = ps_stats(m->pc).evicted_blocks;
  int64_t slots[MAX_TOKENS];
  const yk_status st = yk_prefix_cache_append(m->pc, s->id, n, slots);
  if (!feasible) {
    cr_assert_eq(st, YK_ERR_OUT_OF_MEMORY, AT "an append that cannot fit returned %d", WHERE, st);
    m->refused++;
    check_all(m); /* nothing changed, so everything still agrees */
    return;
  }
  cr_assert_eq(st, YK_OK, AT "%s", WHERE, yk_ctx_last_error(m->ctx));
  sync_evictions(m, evicted_before, need > free_before);
  count_by_hand(m); /* eviction may have left the last block to s alone: no copy then */
  const int copies = n > 0 && t % ps && m->refs[s->blocks[had - 1]] > 1;
  const yk_kv_seq_info info = kv_seq(m->cache, s->id);
  for (int64_t b = 0; b < had - copies; b++) cr_assert_eq(info.table[b], s->blocks[b], AT "table changed", WHERE);
  for (int64_t b = had - copies; b < info.blocks; b++)
    cr_assert(!m->refs[info.table[b]] && !m->holds[info.table[b]], AT "block %d handed out while in use", WHERE,
              info.table[b]);
  if (copies) {
    m->copies[2 * m->copy_count] = s->blocks[had - 1];
    m->copies[2 * m->copy_count++ + 1] = info.table[had - 1];
    m->copied++;
  }
  if (info.blocks) memcpy(s->blocks, info.table, (size_t)info.blocks * sizeof *s->blocks); /* no table: NULL */
  s->tokens += n; /* counted now; the KV of the new tokens is written below, after the copies */
  /* Sometimes another sequence goes, or blocks are reserved, before the copies are done: the
   * copies' holds must keep both ends. */
  const int other = pick(m, 1, -1, -1);
  if (m->copy_count && other >= 0 && other != i && below(m, 3) == 0) {
    drop(m, other);
    m->early_frees++;
    check_references(m);
  }
  if (m->copy_count && below(m, 3) == 0) {
    reserve(m);
    check_references(m);
  }
  /* or another sequence caches its pages, switching its copies (a pending copy's source among
   * them, possibly) to the tree's blocks */
  const int early = pick(m, 1, -1, -1);
  if (m->copy_count && early >= 0 && early != i && below(m, 3) == 0) {
    insert(m, early);
    m->early_inserts++;
    check_references(m);
  }
  cr_assert_eq(yk_kv_cache_copy_blocks(m->cache, NULL), YK_OK);
  m->copy_count = 0;
  uint64_t h = 0; /* s->hash keeps 16 bits of each: the chain is rebuilt from the tokens */
  for (int64_t k = 0; k < t; k++) h = ps_prefix_hash(h, s->tok[k]);
  for (int64_t k = t; k < t + n; k++) {
    s->hash[k] = (uint16_t)(h = ps_prefix_hash(h, s->tok[k]));
    ps_token(m->cache, 0, slots[k - t] / ps, slots[k - t] % ps, s->hash[k], 1);
  }
}

/* A live sequence on the device with at least a page of tokens the tree does not hold, or -1:
 * a request starting on its tokens computes those pages a second time. */
static int pick_twin(model *m) {
  int found[SEQS], n = 0;
  int32_t blocks[MAX_TOKENS];
  for (int i = 0; i < SEQS; i++) {
    const mseq *s = &m->seqs[i];
    if (s->live && s->tokens >= m->ps && model_match(m, s->tok, s->tokens, blocks) < s->tokens - s->tokens % m->ps)
      found[n++] = i;
  }
  return n ? found[below(m, n)] : -1;
}

static void start(model *m, int i) {
  mseq *s = &m->seqs[i];
  int64_t prompt = below(m, m->max_tokens - m->ps + 1);
  const int twin = below(m, 2) == 0 ? pick_twin(m) : -1;
  if (twin >= 0) {
    /* the same tokens as a running sequence, up to where it is or past it */
    const mseq *t = &m->seqs[twin];
    const int64_t same = m->ps + below(m, t->tokens - m->ps + 1);
    if (prompt < same) prompt = same;
    memcpy(s->tok, t->tok, (size_t)same * sizeof *s->tok);
    draw_tokens(m, s, same, prompt - same);
    m->twins++;
  } else {
    draw_tokens(m, s, 0, prompt);
  }
  int32_t blocks[MAX_TOKENS];
  const int64_t want = model_match(m, s->tok, prompt, blocks);
  const int64_t hits_before = ps_stats(m->pc).hit_tokens;
  int64_t cached;
  cr_assert_eq(yk_prefix_cache_start(m->pc, s->tok, prompt, &s->id, &cached), YK_OK, AT "%s", WHERE,
               yk_ctx_last_error(m->ctx));
  cr_assert_eq(cached, want, AT "matched %lld tokens, the model %lld", WHERE, (long long)cached, (long long)want);
  cr_assert_eq(ps_stats(m->pc).hit_tokens - hits_before, want);
  s->live = 1, s->request = 1, s->swapped = 0, s->tokens = cached, s->locked = cached, s->synced = cached;
  memcpy(s->blocks, blocks, (size_t)(cached / m->ps) * sizeof *blocks);
  ps_prefix_hashes(s->tok, cached, s->hash);
  m->hits += cached > 0;
  check_all(m); /* the matched blocks hold this request's prefix */
  append(m, i, prompt - cached);
}

static void decode(model *m, int i) {
  mseq *s = &m->seqs[i];
  const int64_t room = m->max_tokens - s->tokens;
  if (room <= 0) return;
  const int64_t n = 1 + below(m, room < m->ps + 1 ? room : m->ps + 1);
  draw_tokens(m, s, s->tokens, n);
  append(m, i, n);
}

static void fork_seq(model *m, int parent, int child) {
  mseq *p = &m->seqs[parent], *c = &m->seqs[child];
  cr_assert_eq(yk_kv_seq_fork(m->cache, p->id, &c->id), YK_OK);
  const int64_t id = c->id;
  *c = *p;
  c->id = id, c->request = 0, c->locked = 0, c->synced = 0;
}

/* n: usually all its tokens, sometimes fewer, sometimes none. */
static int64_t tokens_to_cache(model *m, const mseq *s) {
  const int64_t r = below(m, 4);
  return r == 0 ? 0 : r == 1 ? below(m, s->tokens + 1) : s->tokens;
}

/* Any live sequence: a swapped-out one caches nothing, and refuses a page or more with nothing
 * changed (check_all after the step says so). */
static void insert(model *m, int i) {
  mseq *s = &m->seqs[i];
  const int64_t n = tokens_to_cache(m, s);
  const yk_status st = yk_prefix_cache_insert(m->pc, s->id, s->tok, n);
  if (s->swapped && n >= m->ps) {
    ts_assert_rejected(m->ctx, st, YK_ERR_INVALID_ARGUMENT, "swapped out");
    return;
  }
  cr_assert_eq(st, YK_OK, AT "%s", WHERE, yk_ctx_last_error(m->ctx));
  if (!s->swapped) model_insert(m, s, n);
}

static void finish(model *m, int i) {
  mseq *s = &m->seqs[i];
  const int64_t n = tokens_to_cache(m, s);
  const yk_status st = yk_prefix_cache_finish(m->pc, s->id, s->tok, n);
  if (s->swapped && n >= m->ps) {
    cr_assert_eq(st, YK_ERR_INVALID_ARGUMENT, AT "finish cached a swapped-out sequence", WHERE);
    return;
  }
  cr_assert_eq(st, YK_OK, AT "%s", WHERE, yk_ctx_last_error(m->ctx));
  if (!s->swapped) model_insert(m, s, n);
  s->live = 0;
}

static void reserve(model *m) {
  const int64_t want = below(m, BLOCKS + 1), free_before = m->cache->device.free_count;
  const int feasible = can_make_free(m, want);
  const int64_t evicted_before = ps_stats(m->pc).evicted_blocks;
  const yk_status st = yk_prefix_cache_reserve(m->pc, want);
  cr_assert_eq(st, feasible ? YK_OK : YK_ERR_OUT_OF_MEMORY, AT "reserve %lld: %s", WHERE, (long long)want,
               yk_ctx_last_error(m->ctx));
  m->refused += !feasible;
  sync_evictions(m, evicted_before, feasible && want > free_before);
  if (feasible) cr_assert_geq(m->cache->device.free_count, want);
}

/* Out to host blocks, or back in (after reserving room through the prefix cache, half the time). */
static void swap(model *m, int i) {
  mseq *s = &m->seqs[i];
  const int64_t blocks = (s->tokens + m->ps - 1) / m->ps;
  const int to_host = !s->swapped;
  if (!to_host && below(m, 2)) {
    const int64_t evicted_before = ps_stats(m->pc).evicted_blocks, free_before = m->cache->device.free_count;
    const int feasible = can_make_free(m, blocks);
    cr_assert_eq(yk_prefix_cache_reserve(m->pc, blocks), feasible ? YK_OK : YK_ERR_OUT_OF_MEMORY);
    sync_evictions(m, evicted_before, feasible && blocks > free_before);
  }
  const int64_t room = to_host ? m->cache->host.free_count : m->cache->device.free_count;
  const yk_status st = to_host ? yk_kv_seq_swap_out(m->cache, s->id, NULL) : yk_kv_seq_swap_in(m->cache, s->id, NULL);
  if (blocks > room) {
    cr_assert_eq(st, YK_ERR_OUT_OF_MEMORY, AT "swap", WHERE);
    m->refused++;
    return;
  }
  cr_assert_eq(st, YK_OK, AT "%s", WHERE, yk_ctx_last_error(m->ctx));
  count_by_hand(m);
  const yk_kv_seq_info info = kv_seq(m->cache, s->id);
  for (int64_t b = 0; b < blocks; b++)
    cr_assert(to_host ? !m->host_refs[info.table[b]] : !m->refs[info.table[b]] && !m->holds[info.table[b]],
              AT "swap took a block in use", WHERE);
  if (blocks) memcpy(s->blocks, info.table, (size_t)blocks * sizeof *s->blocks);
  s->swapped = to_host;
  s->synced = 0; /* new blocks: its own, until its next insert switches them back */
  m->swaps++;
}

/* A sequence over a cached path that ends inside its last page (the manager's shared add): its
 * first append must copy that page. */
static void share_partly(model *m, int i) {
  if (!m->cached_count) return;
  const entry *x = &m->cached[below(m, m->cached_count)];
  mseq *s = &m->seqs[i];
  const int64_t tokens = x->len - below(m, m->ps);
  int32_t blocks[MAX_TOKENS];
  cr_assert_eq(model_match(m, x->tok, x->len, blocks), x->len);
  cr_assert_eq(yk_kv_seq_add_shared(m->cache, blocks, x->len / m->ps, tokens, &s->id), YK_OK, AT "%s", WHERE,
               yk_ctx_last_error(m->ctx));
  s->live = 1, s->request = 0, s->swapped = 0, s->tokens = tokens, s->locked = 0, s->synced = 0;
  memcpy(s->tok, x->tok, (size_t)x->len * sizeof *x->tok);
  memcpy(s->blocks, blocks, (size_t)(x->len / m->ps) * sizeof *blocks);
  ps_prefix_hashes(s->tok, tokens, s->hash);
}

static void order(model *m) {
  mseq probe[4];
  const int32_t *runs[4];
  int64_t lengths[4], got[4], ranks[4];
  int32_t blocks[MAX_TOKENS];
  for (int r = 0; r < 4; r++) {
    lengths[r] = below(m, m->max_tokens + 1);
    draw_tokens(m, &probe[r], 0, lengths[r]);
    runs[r] = probe[r].tok;
  }
  cr_assert_eq(yk_prefix_cache_order_by_prefix(m->pc, runs, lengths, 4, ranks, got), YK_OK);
  for (int r = 0; r < 4; r++)
    cr_assert_eq(got[r], model_match(m, runs[r], lengths[r], blocks), AT "order's matched length", WHERE);
  for (int r = 1; r < 4; r++) cr_assert_geq(got[ranks[r - 1]], got[ranks[r]], AT "not longest first", WHERE);
}

static void random_run(int page_size, int steps) {
  static model storage;
  model *m = &storage;
  memset(m, 0, sizeof *m);
  char name[64];
  snprintf(name, sizeof name, "prefix_cache.random.%d", page_size);
  m->seed = ts_seed(name);
  m->rng.state = m->seed;
  m->ps = page_size;
  m->max_tokens = page_size == 1 ? 24 : 6 * page_size; /* a few sequences fill the pool */
  m->cache = kv_cpu_cache(&m->ctx, 1, 1, 2, page_size, BLOCKS, HOST_BLOCKS);
  m->pc = ps_create(m->cache);
  for (int s = 0; s < STEMS; s++)
    for (int t = 0; t < MAX_TOKENS; t++) m->stems[s][t] = 100 + (int32_t)below(m, 1000);
  for (m->step = 0; m->step < steps; m->step++) {
    const int64_t op = below(m, 100);
    int i, j;
    if (op < 18 && (i = pick(m, 0, -1, -1)) >= 0)
      start(m, i);
    else if (op < 38 && (i = pick(m, 1, 0, -1)) >= 0)
      decode(m, i);
    else if (op < 44 && (i = pick(m, 1, 0, -1)) >= 0 && (j = pick(m, 0, -1, -1)) >= 0)
      fork_seq(m, i, j);
    else if (op < 52 && (i = pick(m, 1, -1, -1)) >= 0)
      insert(m, i);
    else if (op < 68 && (i = pick(m, 1, -1, -1)) >= 0)
      finish(m, i);
    else if (op < 74 && (i = pick(m, 1, -1, 0)) >= 0)
      drop(m, i);
    else if (op < 82)
      reserve(m);
    else if (op < 88 && (i = pick(m, 1, -1, -1)) >= 0)
      swap(m, i);
    else if (op < 94 && (i = pick(m, 0, -1, -1)) >= 0)
      share_partly(m, i);
    else
      order(m);
    check_all(m);
  }
  cr_log_info("%s: %lld evicted, %lld refused, %lld copies, %lld hits, %lld duplicates (%lld a fork held), %lld "
              "twins, %lld swaps, %lld early frees, %lld early inserts",
              name, (long long)m->evicted, (long long)m->refused, (long long)m->copied, (long long)m->hits,
              (long long)m->duplicates, (long long)m->shared_duplicates, (long long)m->twins, (long long)m->swaps,
              (long long)m->early_frees, (long long)m->early_inserts);
  cr_assert(m->evicted >= 50 && m->refused >= 20 && m->hits >= 50 && m->swaps >= 20,
            "the run missed a path (seed %llu)", (unsigned long long)m->seed);
  cr_assert(m->twins >= 100 && m->duplicates >= 50 && m->shared_duplicates >= 1,
            "too few concurrent duplicates (seed %llu)", (unsigned long long)m->seed);
  cr_assert(page_size == 1 || (m->copied >= 20 && m->early_frees >= 3 && m->early_inserts >= 3),
            "no copy-on-write (seed %llu)", (unsigned long long)m->seed);
  for (int k = 0; k < SEQS; k++)
    if (m->seqs[k].live) drop(m, k);
  check_all(m);
  cr_assert_eq(ps_stats(m->pc).locked_blocks, 0);
  yk_prefix_cache_destroy(m->pc);
  const yk_kv_cache_info info = kv_info(m->cache);
  cr_assert(info.free_blocks == BLOCKS && info.free_host_blocks == HOST_BLOCKS && info.sequences == 0,
            "blocks leaked (seed %llu)", (unsigned long long)m->seed);
  kv_done(m->ctx, m->cache);
}

Test(prefix_cache_random, page_1) { random_run(1, 4000); }
Test(prefix_cache_random, page_16) { random_run(16, 4000); }
Test(prefix_cache_random, page_5) { random_run(5, 4000); }
