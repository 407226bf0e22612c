/* The radix tree (kv/radix_tree.h) in long random runs at page sizes 1, 4 and 16, checked after
 * every step against a brute-force model (an uncompressed trie of whole pages), which the fake
 * page owner of radix_support.h tells of every release. */
#include "tests/radix_support.h"

#define MAX_SEQ_PAGES 12
#define MAX_ENTRIES (MAX_PAGES + 1)

/* The model is an uncompressed trie with one entry per cached page (entry 0 is the root), found
 * by walking sibling lists: nothing of the tree's compression, splitting or heap. Each entry
 * keeps its lock count and its last access time on the same logical clock as the tree (one tick
 * per match and insert), so the model knows exactly which leaf least-recently-used eviction
 * must take. */
typedef struct entry {
  int32_t parent, first_child, next_sibling, page;
  int64_t locks;
  uint64_t time, generation;
  int alive;
  int32_t tokens[YK_RADIX_MAX_PAGE_SIZE];
} entry;

typedef struct model {
  int ps;
  entry *e;
  int32_t high;                  /* entries used so far */
  int32_t page_entry[MAX_PAGES]; /* the entry caching a page, or -1 */
  uint64_t clock;
  int64_t pages, locked_pages;
  uint64_t seed;
  int step;
} model;

static int32_t model_child(const model *m, int32_t parent, const int32_t *page) {
  for (int32_t c = m->e[parent].first_child; c >= 0; c = m->e[c].next_sibling)
    if (!memcmp(m->e[c].tokens, page, (size_t)m->ps * sizeof *page)) return c;
  return -1;
}

/* Whole pages of tokens[0..n) found; *end gets the entry of the last. */
static int64_t model_walk(const model *m, const int32_t *tokens, int64_t n, int32_t *end) {
  int32_t at = 0;
  int64_t k = 0;
  for (int32_t c; (k + 1) * m->ps <= n && (c = model_child(m, at, tokens + k * m->ps)) >= 0; k++) at = c;
  *end = at;
  return k;
}

static void model_touch(model *m, int32_t end) {
  for (; end > 0; end = m->e[end].parent) m->e[end].time = m->clock;
}

static void model_lock(model *m, int32_t end, int delta) {
  for (; end > 0; end = m->e[end].parent) {
    entry *x = &m->e[end];
    if (x->locks == 0 && delta > 0) m->locked_pages++;
    x->locks += delta;
    cr_assert(x->locks >= 0, "model lock below zero (seed %llu)", (unsigned long long)m->seed);
    if (x->locks == 0 && delta < 0) m->locked_pages--;
  }
}

static int32_t model_add(model *m, int32_t parent, const int32_t *page, int32_t page_id) {
  int32_t i = 1;
  while (i < m->high && m->e[i].alive) i++;
  if (i == m->high) m->high++;
  cr_assert(i < MAX_ENTRIES);
  entry *x = &m->e[i];
  const uint64_t generation = x->generation + 1;
  memset(x, 0, sizeof *x);
  *x = (entry){.parent = parent,
               .first_child = -1,
               .next_sibling = m->e[parent].first_child,
               .page = page_id,
               .time = m->clock,
               .generation = generation,
               .alive = 1};
  memcpy(x->tokens, page, (size_t)m->ps * sizeof *page);
  m->e[parent].first_child = i;
  m->page_entry[page_id] = i;
  m->pages++;
  return i;
}

/* The LRU leaf the tree must evict next has no time later than any other unlocked leaf. */
static uint64_t oldest_other_leaf(const model *m, int32_t except) {
  uint64_t oldest = UINT64_MAX;
  for (int32_t i = 1; i < m->high; i++) {
    const entry *x = &m->e[i];
    if (i != except && x->alive && !x->locks && x->first_child < 0 && x->time < oldest) oldest = x->time;
  }
  return oldest;
}

/* Called by the fake owner for each release: one evicted node, whole, from its top page down. */
static void model_released(void *watcher, const int32_t *pages, int64_t count) {
  model *m = watcher;
  int32_t chain[MAX_SEQ_PAGES + 1];
  cr_assert(count <= MAX_SEQ_PAGES, "released %lld pages at once", (long long)count);
  for (int64_t i = 0; i < count; i++) {
    const int32_t at = m->page_entry[pages[i]];
    cr_assert(at > 0, "step %d: released page %d, which is not cached (seed %llu)", m->step, pages[i],
              (unsigned long long)m->seed);
    cr_assert_eq(m->e[at].locks, 0, "step %d: released page %d while locked (seed %llu)", m->step, pages[i],
                 (unsigned long long)m->seed);
    cr_assert(i == 0 || m->e[at].parent == chain[i - 1], "step %d: a release is not one run of a path", m->step);
    cr_assert_eq(m->e[at].time, m->e[m->page_entry[pages[0]]].time, "step %d: one node, two access times", m->step);
    chain[i] = at;
  }
  const int32_t leaf = chain[count - 1];
  cr_assert_lt(m->e[leaf].first_child, 0, "step %d: evicted page %d has cached pages below it (seed %llu)", m->step,
               m->e[leaf].page, (unsigned long long)m->seed);
  cr_assert(m->e[leaf].time <= oldest_other_leaf(m, leaf), "step %d: evicted a leaf used at %llu before an older one",
            m->step, (unsigned long long)m->e[leaf].time);
  for (int64_t i = count - 1; i >= 0; i--) {
    entry *x = &m->e[chain[i]];
    int32_t *link = &m->e[x->parent].first_child;
    while (*link != chain[i]) link = &m->e[*link].next_sibling;
    *link = x->next_sibling;
    x->alive = 0;
    m->page_entry[x->page] = -1;
    m->pages--;
  }
}

typedef struct request {
  int32_t tokens[MAX_SEQ_PAGES * 16 + 15];
  int64_t n;
  int32_t pages[MAX_SEQ_PAGES]; /* whole pages; the request holds a reference to each */
  int64_t page_count, matched;
  yk_radix_node node;
  int32_t end; /* the model entry where its match ended */
  uint64_t end_generation;
  int locked, inserted;
} request;

typedef struct run {
  model m;
  owner o;
  yk_radix_tree *tree;
  yh_rng rng;
  int32_t stems[6][MAX_SEQ_PAGES * 16 + 15];
  request live[24];
  int live_count;
  request dead[8]; /* freed requests, for unlocks that must fail */
  int dead_count;
  int32_t next_page;
  int64_t duplicates, failed_unlocks;
} run;

static int64_t below(run *r, int64_t n) { return (int64_t)(yh_next(&r->rng) % (uint64_t)n); }

/* Sequences that share prefixes: a stem's start, then tokens from a tiny alphabet, so prefixes
 * agree for a while and part within pages as well as between them. */
static int64_t random_tokens(run *r, int32_t *out) {
  const int ps = r->m.ps;
  const int64_t n = 1 + below(r, MAX_SEQ_PAGES * ps + ps - 1);
  const int64_t stem = below(r, n + 1);
  const int32_t *s = r->stems[below(r, 6)];
  for (int64_t i = 0; i < n; i++) out[i] = i < stem ? s[i] : (int32_t)below(r, 3);
  return n;
}

static int32_t allocate_page(run *r) {
  for (int tries = 0; tries < 2; tries++) {
    for (int32_t k = 0; k < MAX_PAGES; k++) {
      const int32_t p = (r->next_page + k) % MAX_PAGES;
      if (!r->o.tree_refs[p] && !r->o.request_refs[p]) {
        r->next_page = p + 1;
        r->o.request_refs[p] = 1;
        return p;
      }
    }
    int64_t freed;
    cr_assert_eq(yk_radix_evict(r->tree, 64, &freed), YK_OK);
  }
  cr_assert_fail("out of pages (seed %llu)", (unsigned long long)r->m.seed);
  return -1;
}

static void start_request(run *r) {
  request *q = &r->live[r->live_count++];
  q->n = random_tokens(r, q->tokens);
  q->page_count = q->n / r->m.ps;
  yk_radix_match got;
  cr_assert_eq(yk_radix_match_prefix(r->tree, q->tokens, q->n, q->pages, q->page_count, &got), YK_OK);
  r->m.clock++;
  const int64_t want = model_walk(&r->m, q->tokens, q->n, &q->end);
  model_touch(&r->m, q->end);
  cr_assert_eq(got.matched_tokens, want * r->m.ps, "step %d: matched %lld tokens, model %lld (seed %llu)", r->m.step,
               (long long)got.matched_tokens, (long long)(want * r->m.ps), (unsigned long long)r->m.seed);
  for (int32_t x = q->end, k = (int32_t)want - 1; x > 0; x = r->m.e[x].parent, k--)
    cr_assert_eq(q->pages[k], r->m.e[x].page, "step %d: page %d of the match", r->m.step, k);
  q->matched = want;
  q->node = got.node;
  q->end_generation = r->m.e[q->end].generation;
  for (int64_t k = 0; k < want; k++) r->o.request_refs[q->pages[k]]++;
  q->inserted = 0;
  q->locked = below(r, 4) != 0; /* most lock; some rely on their own references only */
  if (q->locked) {
    cr_assert_eq(yk_radix_lock(r->tree, q->node), YK_OK, "%s", yk_ctx_last_error(NULL));
    model_lock(&r->m, q->end, +1);
  }
  for (int64_t k = want; k < q->page_count; k++) q->pages[k] = allocate_page(r); /* may evict */
}

static void insert_request(run *r, request *q) {
  const int ps = r->m.ps;
  int32_t dup[MAX_SEQ_PAGES];
  yk_radix_insert_result got;
  cr_assert_eq(yk_radix_insert(r->tree, q->tokens, q->n, q->pages, dup, &got), YK_OK, "%s", yk_ctx_last_error(NULL));
  r->m.clock++;
  int32_t at = 0;
  int64_t k = 0, dups = 0;
  for (int32_t c; k < q->page_count && (c = model_child(&r->m, at, q->tokens + k * ps)) >= 0; k++) {
    at = c;
    if (r->m.e[c].page != q->pages[k]) {
      cr_assert_eq(dup[dups], q->pages[k], "step %d: duplicate %lld (seed %llu)", r->m.step, (long long)dups,
                   (unsigned long long)r->m.seed);
      dups++;
    }
  }
  cr_assert_eq(got.cached_tokens, k * ps, "step %d: insert found %lld cached, model %lld (seed %llu)", r->m.step,
               (long long)got.cached_tokens, (long long)(k * ps), (unsigned long long)r->m.seed);
  cr_assert_eq(got.duplicate_count, dups, "step %d: duplicates", r->m.step);
  r->duplicates += dups;
  cr_assert_eq(got.inserted_tokens, (q->page_count - k) * ps);
  for (; k < q->page_count; k++) at = model_add(&r->m, at, q->tokens + k * ps, q->pages[k]);
  model_touch(&r->m, at);
  q->inserted = 1;
}

static void free_request(run *r, int index) {
  request *q = &r->live[index];
  if (q->locked) {
    cr_assert_eq(yk_radix_unlock(r->tree, q->node), YK_OK, "step %d: %s", r->m.step, yk_ctx_last_error(NULL));
    model_lock(&r->m, q->end, -1);
  }
  for (int64_t k = 0; k < q->page_count; k++) cr_assert(r->o.request_refs[q->pages[k]]-- > 0);
  if (q->locked && q->matched) r->dead[r->dead_count++ % 8] = *q;
  r->live[index] = r->live[--r->live_count];
}

/* A freed request's handle: unlocking it again must fail, unless another request still locks
 * the same node (then the tree cannot tell, and the test does not ask). */
static void unlock_again(run *r) {
  if (!r->dead_count) return;
  const request *q = &r->dead[below(r, r->dead_count < 8 ? r->dead_count : 8)];
  const entry *x = &r->m.e[q->end];
  if (x->alive && x->generation == q->end_generation && x->locks) return;
  cr_assert_eq(yk_radix_unlock(r->tree, q->node), YK_ERR_INVALID_ARGUMENT, "step %d: unlocked a freed request's node",
               r->m.step);
  r->failed_unlocks++;
}

static void evict(run *r) {
  const int64_t want = below(r, 10);
  const int64_t before = r->o.released_count;
  int64_t freed;
  cr_assert_eq(yk_radix_evict(r->tree, want, &freed), YK_OK);
  cr_assert_eq(freed, r->o.released_count - before, "step %d: evict's count and the releases differ", r->m.step);
  cr_assert(freed >= want || r->m.pages == r->m.locked_pages,
            "step %d: freed %lld of %lld with unlocked pages left (seed %llu)", r->m.step, (long long)freed,
            (long long)want, (unsigned long long)r->m.seed);
}

static void order_some(run *r) {
  int32_t seqs[5][MAX_SEQ_PAGES * 16 + 15];
  const int32_t *ptrs[5];
  int64_t lens[5], order[5], matched[5];
  for (int i = 0; i < 5; i++) lens[i] = random_tokens(r, seqs[i]), ptrs[i] = seqs[i];
  cr_assert_eq(yk_radix_order_by_prefix(r->tree, ptrs, lens, 5, order, matched), YK_OK);
  for (int i = 0; i < 5; i++) {
    int32_t end;
    cr_assert_eq(matched[i], model_walk(&r->m, seqs[i], lens[i], &end) * r->m.ps, "step %d: order's match", r->m.step);
    if (i)
      cr_assert(matched[order[i - 1]] > matched[order[i]] ||
                    (matched[order[i - 1]] == matched[order[i]] && order[i - 1] < order[i]),
                "step %d: order is not longest first and stable", r->m.step);
  }
}

static void check_against_model(run *r) {
  yk_radix_stats s;
  cr_assert_eq(yk_radix_get_stats(r->tree, &s), YK_OK);
  cr_assert_eq(yk_radix_validate(r->tree), YK_OK, "step %d: %s (seed %llu)", r->m.step, yk_ctx_last_error(NULL),
               (unsigned long long)r->m.seed);
  cr_assert_eq(s.cached_pages, r->m.pages, "step %d: %lld pages cached, model %lld (seed %llu)", r->m.step,
               (long long)s.cached_pages, (long long)r->m.pages, (unsigned long long)r->m.seed);
  cr_assert_eq(s.cached_tokens, r->m.pages * r->m.ps);
  cr_assert_eq(s.locked_pages, r->m.locked_pages, "step %d: locked pages (seed %llu)", r->m.step,
               (unsigned long long)r->m.seed);
  cr_assert_eq(s.evictable_pages, r->m.pages - r->m.locked_pages);
  cr_assert(s.nodes <= s.cached_pages);
  for (int32_t p = 0; p < MAX_PAGES; p++)
    cr_assert_eq(r->o.tree_refs[p], r->m.page_entry[p] >= 0,
                 "step %d: page %d held %d times by the tree, cached %d (seed %llu)", r->m.step, p, r->o.tree_refs[p],
                 r->m.page_entry[p] >= 0, (unsigned long long)r->m.seed);
}

static void random_run(int ps, int steps) {
  static run r; /* large: keep it off the stack */
  memset(&r, 0, sizeof r);
  r.m.ps = ps;
  r.m.e = calloc(MAX_ENTRIES, sizeof *r.m.e);
  cr_assert_not_null(r.m.e);
  r.m.e[0] = (entry){.parent = -1, .first_child = -1, .next_sibling = -1, .alive = 1};
  r.m.high = 1;
  for (int p = 0; p < MAX_PAGES; p++) r.m.page_entry[p] = -1;
  char name[64];
  snprintf(name, sizeof name, "radix.random.%d", ps);
  r.m.seed = ts_seed(name);
  r.rng.state = r.m.seed;
  r.tree = make_tree(&r.o, ps);
  r.o.on_release = model_released, r.o.watcher = &r.m;
  for (int s = 0; s < 6; s++)
    for (int i = 0; i < MAX_SEQ_PAGES * 16 + 15; i++) r.stems[s][i] = (int32_t)(yh_next(&r.rng) % 1000);
  for (r.m.step = 0; r.m.step < steps; r.m.step++) {
    const int64_t op = below(&r, 100);
    if (op < 30 && r.live_count < 24) {
      start_request(&r);
    } else if (op < 55 && r.live_count) {
      request *q = &r.live[below(&r, r.live_count)];
      if (!q->inserted) insert_request(&r, q);
    } else if (op < 80 && r.live_count) {
      free_request(&r, (int)below(&r, r.live_count));
    } else if (op < 87) {
      evict(&r);
    } else if (op < 93) {
      order_some(&r);
    } else {
      unlock_again(&r);
    }
    check_against_model(&r);
  }
  /* the run reached what it is for: splits under locks, evictions, duplicates, stale handles */
  cr_assert(r.duplicates > 0 && r.failed_unlocks > 0 && r.o.release_calls > 100 && r.m.pages > 0,
            "a vacuous run: %lld duplicates, %lld failed unlocks, %lld evictions (seed %llu)", (long long)r.duplicates,
            (long long)r.failed_unlocks, (long long)r.o.release_calls, (unsigned long long)r.m.seed);
  while (r.live_count) free_request(&r, 0);
  check_against_model(&r);
  cr_assert_eq(r.m.locked_pages, 0);
  int64_t freed;
  cr_assert_eq(yk_radix_evict(r.tree, MAX_PAGES, &freed), YK_OK);
  cr_assert_eq(r.m.pages, 0, "everything unlocked is evictable (seed %llu)", (unsigned long long)r.m.seed);
  for (int32_t p = 0; p < MAX_PAGES; p++)
    cr_assert(!r.o.tree_refs[p] && !r.o.request_refs[p], "page %d still referenced (seed %llu)", p,
              (unsigned long long)r.m.seed);
  yk_radix_destroy(r.tree);
  free(r.m.e);
}

Test(radix_tree, random_operations_match_model_page_size_1) { random_run(1, 6000); }
Test(radix_tree, random_operations_match_model_page_size_4) { random_run(4, 6000); }
Test(radix_tree, random_operations_match_model_page_size_16) { random_run(16, 4000); }
