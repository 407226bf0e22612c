/* Paged attention on the GPU (yk bench --paged, and part of yk bench): paged decode through the
 * plan/run split at the dense decode's shapes, page sizes 16 and 1 and both table forms, in GB/s
 * of K and V read; a few queries a sequence through the paged prefill call; and issue 5's
 * shared-prefix batch, cascade decode against plain paged decode.
 * Blocks are handed out in shuffled order, as a cache that has run for a while hands them out. */
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "runtime/context.h"

enum { Q_HEADS = 32, KV_HEADS = 8, HEAD_DIM = 128 };

typedef struct paged_bench {
  yk_ctx *ctx;
  yh_tensor q, out, k_cache, v_cache, table, lens, indptr, indices, last, ws;
  yk_paged_kv kv;
  yk_paged_plan *plan;
  /* cascade */
  yk_paged_kv shared;
  yh_tensor shared_table, shared_len;
  int cascade;
  /* paged prefill of a few queries a sequence: ragged (cu_q) or dense; ws the split's when given */
  yh_tensor cu_q;
  int queries, dense_q;
} paged_bench;

static yk_status run(void *p) {
  paged_bench *b = p;
  if (b->cascade) {
    yk_attention_params params = {.workspace = &b->ws.dl};
    return yk_cascade_attention_decode(b->ctx, &b->q.dl, &b->shared, &b->kv, &params, &b->out.dl, NULL, NULL);
  }
  if (b->queries) {
    yk_attention_params params = {.causal = 1, .workspace = b->ws.numel ? &b->ws.dl : NULL};
    if (!b->dense_q) params.cu_seqlens_q = &b->cu_q.dl, params.max_seqlen_q = b->queries;
    return yk_paged_attention_prefill(b->ctx, &b->q.dl, &b->kv, &params, &b->out.dl, NULL, NULL);
  }
  return yk_paged_decode_run(b->plan, &b->q.dl, &b->kv, &b->out.dl, NULL, b->ws.numel ? &b->ws.dl : NULL, NULL);
}

static void free_bench(paged_bench *b) {
  yh_tensor *all[] = {&b->q,       &b->out,  &b->k_cache, &b->v_cache,      &b->table,      &b->lens, &b->indptr,
                      &b->indices, &b->last, &b->ws,      &b->shared_table, &b->shared_len, &b->cu_q};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
  yk_paged_plan_destroy(b->plan);
}

static int index_tensor(yh_tensor *t, yk_ctx *ctx, int ndim, const int64_t *shape, const int32_t *values) {
  if (yh_tensor_init(t, ctx, YK_I32, ndim, shape, NULL, 1)) return 1;
  memcpy(t->host, values, (size_t)t->numel * sizeof(int32_t));
  return yh_upload(t);
}

/* batch sequences of len tokens each, or of seq_lens[i] (the longest len; no shared prefix), the
 * first prefix of them shared, in the same blocks, over a cache of exactly the blocks they need,
 * handed out shuffled; float8: a float8_e4m3fn cache. */
static int setup(paged_bench *b, yk_ctx *ctx, int64_t batch, int64_t len, const int32_t *seq_lens, int64_t prefix,
                 int page, int csr, int hnd, int float8, yh_rng *rng) {
  memset(b, 0, sizeof *b);
  b->ctx = ctx;
  const int64_t per_seq = (len + page - 1) / page, shared = prefix / page;
  int64_t blocks = shared;
  for (int64_t s = 0; s < batch; s++) blocks += ((seq_lens ? seq_lens[s] : len) + page - 1) / page - shared;
  const int64_t qd[3] = {batch, Q_HEADS, HEAD_DIM}, nhd[4] = {blocks, page, KV_HEADS, HEAD_DIM},
                hnd_shape[4] = {blocks, KV_HEADS, page, HEAD_DIM}, *cd = hnd ? hnd_shape : nhd;
  if (yh_tensor_init(&b->q, ctx, YK_BF16, 3, qd, NULL, 1) || yh_tensor_init(&b->out, ctx, YK_BF16, 3, qd, NULL, 1) ||
      yh_tensor_init(&b->k_cache, ctx, float8 ? YK_E4M3 : YK_BF16, 4, cd, NULL, 1) ||
      yh_tensor_init(&b->v_cache, ctx, float8 ? YK_E4M3 : YK_BF16, 4, cd, NULL, 1))
    return 1;
  yh_fill_uniform(&b->q, rng, -1, 1);
  /* the caches' values do not change the time: a constant (0.5 in every element: bf16 0x3f00 or
   * float8 0x30) instead of a gigabyte of host random numbers */
  const unsigned half = float8 ? 0x30303030u : 0x3f003f00u;
  const size_t words = (size_t)b->k_cache.numel * (size_t)b->k_cache.elem_bytes / 4;
  if (ctx->cu.cuMemsetD32Async(b->k_cache.device, half, words, NULL) ||
      ctx->cu.cuMemsetD32Async(b->v_cache.device, half, words, NULL))
    return 1;
  int32_t *order = malloc((size_t)blocks * sizeof *order), *table = calloc((size_t)(batch * per_seq), sizeof *table);
  int32_t *lens = malloc((size_t)batch * sizeof *lens), *indptr = malloc((size_t)(batch + 1) * sizeof *indptr);
  int32_t *last = malloc((size_t)batch * sizeof *last);
  int32_t *indices = malloc((size_t)(batch * per_seq) * sizeof *indices); /* shared blocks listed by each */
  if (!order || !table || !lens || !indptr || !last || !indices)
    return free(order), free(table), free(lens), free(indptr), free(last), free(indices), 1;
  for (int64_t i = 0; i < blocks; i++) order[i] = (int32_t)i;
  for (int64_t i = blocks - 1; i > 0; i--) {
    const int64_t j = (int64_t)(yh_next(rng) % (uint64_t)(i + 1));
    const int32_t t = order[i];
    order[i] = order[j], order[j] = t;
  }
  int64_t next = shared, nnz = 0;
  for (int64_t s = 0; s < batch; s++) {
    const int64_t len_s = seq_lens ? seq_lens[s] : len, n = (len_s + page - 1) / page;
    indptr[s] = (int32_t)nnz;
    for (int64_t j = 0; j < n; j++) indices[nnz++] = table[s * per_seq + j] = order[j < shared ? j : next++];
    lens[s] = (int32_t)len_s, last[s] = (int32_t)(n ? len_s - (n - 1) * page : 1);
  }
  indptr[batch] = (int32_t)nnz;
  const int64_t td[2] = {batch, per_seq}, n1 = batch + 1;
  int bad;
  if (csr)
    bad = index_tensor(&b->indptr, ctx, 1, &n1, indptr) || index_tensor(&b->indices, ctx, 1, &nnz, indices) ||
          index_tensor(&b->last, ctx, 1, &batch, last);
  else
    bad = index_tensor(&b->table, ctx, 2, td, table) || index_tensor(&b->lens, ctx, 1, &batch, lens);
  b->kv = (yk_paged_kv){.k_cache = &b->k_cache.dl,
                        .v_cache = &b->v_cache.dl,
                        .layout = hnd ? YK_KV_HND : YK_KV_NHD,
                        .max_context_len = (int)len};
  if (csr)
    b->kv.kv_indptr = &b->indptr.dl, b->kv.kv_indices = &b->indices.dl, b->kv.kv_last_page_len = &b->last.dl;
  else
    b->kv.block_tables = &b->table.dl, b->kv.context_lens = &b->lens.dl;
  if (!bad && prefix) { /* the cascade's split: the prefix's table, and each suffix past it */
    const int64_t sd[2] = {1, shared}, one = 1;
    const int32_t prefix_len = (int32_t)prefix;
    for (int64_t s = 0; s < batch; s++) {
      memmove(table + s * (per_seq - shared), table + s * per_seq + shared, (size_t)(per_seq - shared) * sizeof *table);
      lens[s] = (int32_t)(len - prefix);
    }
    const int64_t ud[2] = {batch, per_seq - shared};
    yh_tensor_free(&b->table), yh_tensor_free(&b->lens);
    bad = index_tensor(&b->shared_table, ctx, 2, sd, order) ||
          index_tensor(&b->shared_len, ctx, 1, &one, &prefix_len) || index_tensor(&b->table, ctx, 2, ud, table) ||
          index_tensor(&b->lens, ctx, 1, &batch, lens);
    b->shared = b->kv;
    b->shared.block_tables = &b->shared_table.dl, b->shared.context_lens = &b->shared_len.dl;
    b->shared.max_context_len = (int)prefix;
    b->kv.block_tables = &b->table.dl, b->kv.context_lens = &b->lens.dl, b->kv.max_context_len = (int)(len - prefix);
    const int64_t floats =
        (int64_t)yk_cascade_decode_workspace_floats(ctx, batch, Q_HEADS, KV_HEADS, HEAD_DIM, len - prefix, 0);
    b->cascade = 1;
    bad = bad || yh_tensor_init(&b->ws, ctx, YK_F32, 1, &floats, NULL, 1);
  } else if (!bad) {
    yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, Q_HEADS, KV_HEADS, HEAD_DIM, page, csr, 0, 0};
    if (float8) shape.kv_dtype = (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1};
    size_t floats = 0;
    bad = yk_paged_plan_create(ctx, &b->plan) || yk_paged_decode_plan(b->plan, &shape, lens, batch, &floats);
    const int64_t n = (int64_t)floats;
    if (!bad && n) bad = yh_tensor_init(&b->ws, ctx, YK_F32, 1, &n, NULL, 1);
  }
  free(order), free(table), free(lens), free(indptr), free(last), free(indices);
  return bad;
}

static double time_case(bench_timer *t, bench_results *r, paged_bench *b, const char *name, double bytes) {
  const double ms = bench_median_ms(t, run, b);
  if (ms <= 0) {
    fprintf(stderr, "  %s failed: %s\n", name, yk_ctx_last_error(t->ctx));
    return -1;
  }
  bench_add(r, name, ms, bytes ? bytes / ms / 1e6 : 0, bytes ? bytes / ms / 1e6 : ms * 1e3, bytes ? "GB/s" : "us");
  if (bytes)
    fprintf(stderr, "  %-48s %9.4f ms %7.0f GB/s\n", name, ms, bytes / ms / 1e6);
  else
    fprintf(stderr, "  %-48s %9.4f ms\n", name, ms);
  return ms;
}

/* The K and V bytes a decode over these rows reads: float8 rows are one byte a value. */
static double kv_bytes(int64_t batch, int64_t len, int float8) {
  return 2.0 * (double)batch * (double)len * KV_HEADS * HEAD_DIM * (float8 ? 1 : 2);
}

/* batch requests sharing a prefix of `prefix` tokens, `suffix` of their own each: plain paged
 * decode against cascade decode, timed (us) or in GB/s of the K and V each reads. */
static void bench_cascade(bench_timer *t, bench_results *r, int64_t batch, int64_t prefix, int64_t suffix, int in_bytes,
                          yh_rng *rng) {
  paged_bench plain, cascade;
  double plain_ms = -1, cascade_ms = -1;
  char name[96], shape[48];
  snprintf(shape, sizeof shape, "shared prefix %lld+%lld x%lld", (long long)prefix, (long long)suffix,
           (long long)batch);
  snprintf(name, sizeof name, "%s: paged decode", shape);
  if (!setup(&plain, t->ctx, batch, prefix + suffix, NULL, 0, 16, 0, 0, 0, rng))
    plain_ms = time_case(t, r, &plain, name, in_bytes ? kv_bytes(batch, prefix + suffix, 0) : 0);
  snprintf(name, sizeof name, "%s: cascade decode", shape);
  if (!setup(&cascade, t->ctx, batch, prefix + suffix, NULL, prefix, 16, 0, 0, 0, rng))
    cascade_ms = time_case(t, r, &cascade, name, in_bytes ? kv_bytes(1, prefix, 0) + kv_bytes(batch, suffix, 0) : 0);
  else
    fprintf(stderr, "  %s: cannot set up: %s\n", name, yk_ctx_last_error(t->ctx));
  if (plain_ms > 0 && cascade_ms > 0) {
    snprintf(name, sizeof name, "%s: cascade speed-up", shape);
    bench_add(r, name, 0, 0, plain_ms / cascade_ms, "x");
    fprintf(stderr, "  %s: cascade decode is %.2fx plain paged decode%s\n", shape, plain_ms / cascade_ms,
            batch == 64 && prefix == 4096 ? " (target 3x)" : "");
  }
  free_bench(&plain), free_bench(&cascade);
}

/* A decode step of a ragged batch through the plan (page 16, both table forms): the split the plan
 * takes from the lengths, against the one the batch alone would take (planned with num_splits).
 * The two most skewed of yk bench --decode's ragged batches. */
static void bench_paged_ragged(bench_timer *t, bench_results *r, yh_rng *rng) {
  for (int i = 0; i < 2; i++) {
    const bench_ragged *ragged = &bench_ragged_shapes[i];
    const int batch = (int)ragged->batch;
    int32_t lens[64];
    int64_t total = 0;
    for (int b = 0; b < batch; b++) total += lens[b] = bench_ragged_len(ragged, b);
    const int batch_rule = bench_batch_split(t->ctx, batch, ragged->longest);
    for (int csr = 0; csr <= 1; csr++) {
      paged_bench b;
      char name[128];
      double ms[2] = {-1, -1};
      if (setup(&b, t->ctx, batch, ragged->longest, lens, 0, 16, csr, 0, 0, rng)) {
        fprintf(stderr, "  paged ragged %s: cannot set up: %s\n", ragged->name, yk_ctx_last_error(t->ctx));
      } else {
        yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, Q_HEADS, KV_HEADS, HEAD_DIM, 16, csr, 0, 0};
        for (int by_batch = 0; by_batch < 2; by_batch++) {
          shape.num_splits = by_batch ? batch_rule : 0;
          snprintf(name, sizeof name, "paged decode ragged %s page16 %s %s", ragged->name, csr ? "csr" : "table",
                   by_batch ? "batch's split" : "balanced");
          /* the balanced plan splits at least as far as the batch's, so its workspace serves both */
          if (yk_paged_decode_plan(b.plan, &shape, lens, batch, NULL))
            fprintf(stderr, "  %s: %s\n", name, yk_ctx_last_error(t->ctx));
          else
            ms[by_batch] = time_case(t, r, &b, name, 2.0 * (double)total * KV_HEADS * HEAD_DIM * 2);
        }
        if (ms[0] > 0 && ms[1] > 0) {
          snprintf(name, sizeof name, "paged decode ragged %s page16 %s balanced / batch's split", ragged->name,
                   csr ? "csr" : "table");
          bench_add(r, name, 0, 0, ms[1] / ms[0], "x");
          fprintf(stderr, "  %-48s %.2fx (batch's split: %d)\n", name, ms[1] / ms[0], batch_rule);
        }
      }
      free_bench(&b);
    }
  }
}

/* batch sequences of len keys (page 16, a block table) with nq queries each for the paged prefill
 * call: setup's decode tensors with q and out of nq tokens a sequence, ragged with cu_seqlens_q in
 * device memory (form 0, 1) or dense [batch, nq, ...] (form 2); the split's workspace from
 * yk_flash_attention_forward_workspace_floats (form 1, 2) or allocated by each call (form 0). */
static int setup_queries(paged_bench *b, yk_ctx *ctx, int64_t batch, int64_t nq, int64_t len, int float8, int form,
                         yh_rng *rng) {
  if (batch > 64 || setup(b, ctx, batch, len, NULL, 0, 16, 0, 0, float8, rng)) return 1;
  const int64_t qd[4] = {batch * nq, Q_HEADS, HEAD_DIM}, dense[4] = {batch, nq, Q_HEADS, HEAD_DIM}, n1 = batch + 1;
  int32_t cu[65];
  for (int64_t s = 0; s <= batch; s++) cu[s] = (int32_t)(s * nq);
  yh_tensor_free(&b->q), yh_tensor_free(&b->out), yh_tensor_free(&b->ws);
  b->dense_q = form == 2;
  if (yh_tensor_init(&b->q, ctx, YK_BF16, b->dense_q ? 4 : 3, b->dense_q ? dense : qd, NULL, 1) ||
      yh_tensor_init(&b->out, ctx, YK_BF16, b->dense_q ? 4 : 3, b->dense_q ? dense : qd, NULL, 1) ||
      index_tensor(&b->cu_q, ctx, 1, &n1, cu))
    return 1;
  const int64_t floats = form ? (int64_t)yk_flash_attention_forward_workspace_floats(
                                    ctx, batch, batch * nq, nq, Q_HEADS, KV_HEADS, HEAD_DIM, len, batch * len, 0)
                              : 0;
  if (floats && yh_tensor_init(&b->ws, ctx, YK_F32, 1, &floats, NULL, 1)) return 1;
  yh_fill_uniform(&b->q, rng, -1, 1);
  b->queries = (int)nq;
  return 0;
}

/* A few queries a sequence through the paged prefill call (causal, page 16, tables and cu_seqlens_q
 * in device memory with max_context_len given): speculative decoding's verification over a paged
 * cache, as yk bench --decode's dense rows. GB/s of K and V read. */
static const struct {
  int64_t batch, queries, len;
  int float8;
} query_shapes[] = {{1, 4, 32768, 0}, {1, 8, 32768, 0},  {1, 16, 32768, 0}, {8, 8, 4096, 0},  {64, 8, 4096, 0},
                    {1, 8, 32768, 1}, {1, 32, 32768, 0}, {1, 64, 32768, 0}, {16, 32, 4096, 0}};

static void query_shape_name(char *name, size_t n, size_t i) {
  snprintf(name, n, "paged prefill q%lld of B%lld L%lld causal page16 table%s", (long long)query_shapes[i].queries,
           (long long)query_shapes[i].batch, (long long)query_shapes[i].len, query_shapes[i].float8 ? " float8" : "");
}

static void bench_paged_queries(bench_timer *t, bench_results *r, yh_rng *rng) {
  static const char *const forms[3] = {"", " ws", " dense ws"};
  for (size_t i = 0; i < sizeof query_shapes / sizeof query_shapes[0]; i++)
    for (int form = 0; form < (i == 1 || i == 3 ? 3 : 1); form++) { /* 8 queries of B1 and B8: each form */
      paged_bench b;
      char name[112];
      query_shape_name(name, sizeof name, i);
      strncat(name, forms[form], sizeof name - strlen(name) - 1);
      if (setup_queries(&b, t->ctx, query_shapes[i].batch, query_shapes[i].queries, query_shapes[i].len,
                        query_shapes[i].float8, form, rng))
        fprintf(stderr, "  %s: cannot set up: %s\n", name, yk_ctx_last_error(t->ctx));
      else
        time_case(t, r, &b, name, kv_bytes(query_shapes[i].batch, query_shapes[i].len, query_shapes[i].float8));
      free_bench(&b);
    }
}

int bench_paged(bench_timer *t, bench_results *r) {
  yh_rng rng = {31};
  /* float8 rows: GB/s of the bytes read (half the bfloat16 ones), so the same GB/s is twice the tokens */
  static const struct {
    int64_t batch, len;
    int page, csr, hnd, float8;
  } shapes[] = {{64, 4096, 16, 0, 0, 0},  {64, 4096, 16, 1, 0, 0},  {64, 4096, 1, 0, 0, 0},  {64, 4096, 16, 0, 1, 0},
                {1, 32768, 16, 0, 0, 0},  {1, 32768, 1, 0, 0, 0},   {1, 32768, 16, 0, 1, 0}, {256, 1024, 16, 0, 0, 0},
                {256, 1024, 1, 0, 0, 0},  {256, 1024, 16, 0, 1, 0}, {64, 4096, 16, 0, 0, 1}, {1, 32768, 16, 0, 0, 1},
                {256, 1024, 16, 0, 0, 1}, {16, 4096, 16, 0, 0, 0}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    paged_bench b;
    char name[96];
    snprintf(name, sizeof name, "paged decode B%lld L%lld page%d %s%s%s", (long long)shapes[i].batch,
             (long long)shapes[i].len, shapes[i].page, shapes[i].csr ? "csr" : "table", shapes[i].hnd ? " hnd" : "",
             shapes[i].float8 ? " float8" : "");
    if (setup(&b, t->ctx, shapes[i].batch, shapes[i].len, NULL, 0, shapes[i].page, shapes[i].csr, shapes[i].hnd,
              shapes[i].float8, &rng))
      fprintf(stderr, "  %s: cannot set up: %s\n", name, yk_ctx_last_error(t->ctx));
    else
      time_case(t, r, &b, name, kv_bytes(shapes[i].batch, shapes[i].len, shapes[i].float8));
    free_bench(&b);
  }
  bench_paged_ragged(t, r, &rng);
  bench_paged_queries(t, r, &rng);
  /* 64 requests sharing a 4096-token prefix, 256 tokens of their own each (issue 5's, in us); 8, 16
     and 32 sharing 32768 (parallel sampling of a long prompt: the prefix on the decode kernel; in GB/s
     of the K and V each call reads, the prefix once for cascade) */
  bench_cascade(t, r, 64, 4096, 256, 0, &rng);
  bench_cascade(t, r, 8, 32768, 256, 1, &rng);
  bench_cascade(t, r, 16, 32768, 256, 1, &rng);
  bench_cascade(t, r, 32, 32768, 256, 1, &rng);
  return 0;
}

/* Paged batch 1 x 32768, page 16, under the knobs that moved its rate: teams a block and their
 * stages (8 of 2 the default; 4 of 3 the dense default), 32-key tiles, the L2 hint. Then a few
 * queries a sequence through the paged prefill call and decode of batch 16 (one block an SM, no
 * split) under the teams and hints, and float8 caches at the three shapes under their tile and
 * pipeline knobs (32-key tiles the default). */
void bench_paged_knobs(bench_timer *t, bench_results *r) {
  static const char *const knobs[] = {"warps=4,stages=3",  "warps=6",      "warps=8,stages=3",
                                      "warps=12,stages=2", "kv_hint=none", "warps=4,block_n=32"};
  static const char *const float8_knobs[] = {"block_n=16", "block_n=64", "stages=2", "stages=3", "stages=4"};
  static const int64_t float8_shapes[][2] = {{64, 4096}, {1, 32768}, {256, 1024}};
  yh_rng rng = {32};
  paged_bench b;
  const int64_t len = 32768;
  if (setup(&b, t->ctx, 1, len, NULL, 0, 16, 0, 0, 0, &rng)) {
    fprintf(stderr, "  paged B1: cannot set up: %s\n", yk_ctx_last_error(t->ctx));
  } else {
    const double bytes = kv_bytes(1, len, 0);
    bench_sweep_one(t, r, "paged decode B1 L32768 page16", NULL, "default", run, &b, bytes, "GB/s");
    for (size_t k = 0; k < sizeof knobs / sizeof knobs[0]; k++)
      bench_sweep_one(t, r, "paged decode B1 L32768 page16", "attention_decode", knobs[k], run, &b, bytes, "GB/s");
  }
  free_bench(&b);
  /* a few queries a sequence (the decode kernel, with the split only at batch 1): its teams, stages,
     tiles and hint */
  static const char *const query_knobs[] = {"warps=4,stages=3,kv_hint=none",
                                            "warps=8,stages=2,kv_hint=none",
                                            "warps=8,stages=2",
                                            "warps=8,stages=3",
                                            "warps=4,block_n=32",
                                            "kv_hint=evict_first",
                                            "kv_hint=none"};
  for (size_t i = 1; i < 5; i++) { /* query_shapes 1-4: 8 and 16 queries of B1, 8 of B8 and of B64 */
    char shape[112];
    query_shape_name(shape, sizeof shape, i);
    if (setup_queries(&b, t->ctx, query_shapes[i].batch, query_shapes[i].queries, query_shapes[i].len, 0, 0, &rng)) {
      fprintf(stderr, "  %s: cannot set up: %s\n", shape, yk_ctx_last_error(t->ctx));
    } else {
      const double bytes = kv_bytes(query_shapes[i].batch, query_shapes[i].len, 0);
      bench_sweep_one(t, r, shape, NULL, "default", run, &b, bytes, "GB/s");
      for (size_t k = 0; k < sizeof query_knobs / sizeof query_knobs[0]; k++)
        bench_sweep_one(t, r, shape, "attention_decode", query_knobs[k], run, &b, bytes, "GB/s");
    }
    free_bench(&b);
  }
  /* decode with one block an SM and no split (16 x 8 kv heads): 8 teams of 2 stages by default */
  if (setup(&b, t->ctx, 16, 4096, NULL, 0, 16, 0, 0, 0, &rng)) {
    fprintf(stderr, "  paged B16: cannot set up: %s\n", yk_ctx_last_error(t->ctx));
  } else {
    const double bytes = kv_bytes(16, 4096, 0);
    bench_sweep_one(t, r, "paged decode B16 L4096 page16", NULL, "default", run, &b, bytes, "GB/s");
    for (size_t k = 0; k < sizeof query_knobs / sizeof query_knobs[0]; k++)
      bench_sweep_one(t, r, "paged decode B16 L4096 page16", "attention_decode", query_knobs[k], run, &b, bytes,
                      "GB/s");
  }
  free_bench(&b);
  for (size_t i = 0; i < sizeof float8_shapes / sizeof float8_shapes[0]; i++) {
    const int64_t batch = float8_shapes[i][0], keys = float8_shapes[i][1];
    char shape[64];
    snprintf(shape, sizeof shape, "paged decode B%lld L%lld page16 float8", (long long)batch, (long long)keys);
    if (setup(&b, t->ctx, batch, keys, NULL, 0, 16, 0, 0, 1, &rng)) {
      fprintf(stderr, "  %s: cannot set up: %s\n", shape, yk_ctx_last_error(t->ctx));
    } else {
      const double bytes = kv_bytes(batch, keys, 1);
      bench_sweep_one(t, r, shape, NULL, "default", run, &b, bytes, "GB/s");
      for (size_t k = 0; k < sizeof float8_knobs / sizeof float8_knobs[0]; k++)
        bench_sweep_one(t, r, shape, "attention_decode", float8_knobs[k], run, &b, bytes, "GB/s");
    }
    free_bench(&b);
  }
}
