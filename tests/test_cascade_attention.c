/* Cascade decode: requests sharing a prefix of pages, against paged decode over each request's
 * whole pages, on the CPU and the GPU, the prefix on the decode kernel (a few requests) or on the
 * prefill kernel's chunks (more); the caller's workspace (the same bytes; one float short refused,
 * nothing written); a shared table of more than one sequence refused; float8 caches on the CPU,
 * whose shared and unique scales must agree. (Its fuzzed bad input: test_bad_input_fuzz.c.) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "tests/paged_support.h"

/* Every sequence of s begins with the same prefix_pages pages (sequence 0's blocks, and its keys). */
static void share_prefix(scenario *s, int prefix_pages) {
  const int64_t P = s->c.page_size, row = s->c.kv_heads * s->c.head_dim;
  for (int b = 1; b < s->c.batch; b++) {
    for (int j = 0; j < prefix_pages; j++)
      s->table[b * s->max_blocks + j] = s->indices[s->indptr[b] + j] = s->indices[j];
    memcpy(s->k + s->cu_k[b] * row, s->k, (size_t)(prefix_pages * P * row) * sizeof *s->k);
    memcpy(s->v + s->cu_k[b] * row, s->v, (size_t)(prefix_pages * P * row) * sizeof *s->v);
  }
  place_tokens(s);
}

/* Requests sharing a prefix of 1024 keys: five of 8 q heads on 2 kv heads (20 rows of (request, q
 * head) a kv head: the prefix on the GPU's decode kernel, its keys split in 4) or of 16 on 1 (80
 * rows: a block of 8 row tiles), nine of 16 on 1 (144 rows, past the decode kernel's 128 for a
 * cascade: in 4 chunks on the prefill kernel). */
static const paged_case cascade_few = {5, {1024 + 37, 1024 + 1, 1024, 1024 + 200, 1024 + 16}, {0}, 8, 2, 128, 16},
                        cascade_many = {5, {1024 + 37, 1024 + 1, 1024, 1024 + 200, 1024 + 16}, {0}, 16, 1, 128, 16},
                        cascade_wide = {9, {1061, 1025, 1024, 1224, 1040, 1029, 1123, 1088, 1174}, {0}, 16, 1, 128, 16};

/* float8: over a float8 cache (CPU only), where shared and unique must carry the same scales. */
static void cascade_matches_paged(yk_ctx *ctx, const paged_case *cp, uint64_t seed, int float8) {
  yh_rng rng = {seed};
  const int gpu = ctx->device == YK_DEVICE_CUDA, prefix_pages = 64;
  const paged_case c = *cp;
  scenario s;
  make_scenario(&s, &c, 1, 0, 0, YK_KV_NHD, &rng);
  share_prefix(&s, prefix_pages);
  if (float8) float8_scenario(&s, (yk_kv_scales){0.5f, 3.f});
  for (int dtype = gpu ? YK_F16 : YK_F32; dtype <= YK_BF16; dtype++) {
    paged_tensors t;
    make_tensors(&t, ctx, &s, dtype, gpu);
    yk_attention_params p = {0};
    cr_assert_eq(yk_paged_attention_decode(ctx, &t.q.dl, &t.kv, &p, &t.out.dl, &t.lse.dl, NULL), YK_OK, "%s",
                 yk_ctx_last_error(ctx));
    double *want = as_doubles(&t.out), *want_lse = as_doubles(&t.lse);
    /* the prefix as a table of one sequence; the suffixes as tables past it */
    yh_tensor shared_table, shared_len, unique_table, unique_lens;
    const int64_t one[2] = {1, prefix_pages}, n1 = 1, rows[2] = {c.batch, s.max_blocks}, nb = c.batch;
    const int32_t prefix_len = (int32_t)(prefix_pages * c.page_size);
    int32_t suffix_table[MAX_BATCH * 80], suffix_lens[MAX_BATCH];
    for (int b = 0; b < c.batch; b++) {
      suffix_lens[b] = c.lens_k[b] - prefix_len;
      for (int64_t j = 0; j < s.max_blocks; j++)
        suffix_table[b * s.max_blocks + j] =
            j + prefix_pages < s.max_blocks ? s.table[b * s.max_blocks + j + prefix_pages] : 0;
    }
    index_tensor(&shared_table, ctx, 2, one, s.table, gpu);
    index_tensor(&shared_len, ctx, 1, &n1, &prefix_len, gpu);
    index_tensor(&unique_table, ctx, 2, rows, suffix_table, gpu);
    index_tensor(&unique_lens, ctx, 1, &nb, suffix_lens, gpu);
    yk_paged_kv shared = t.kv, unique = t.kv;
    shared.block_tables = &shared_table.dl, shared.context_lens = &shared_len.dl, shared.max_context_len = prefix_len;
    unique.block_tables = &unique_table.dl, unique.context_lens = &unique_lens.dl, unique.max_context_len = 200;
    yh_poison(&t.out), yh_poison(&t.lse);
    cr_assert_eq(yk_cascade_attention_decode(ctx, &t.q.dl, &shared, &unique, &p, &t.out.dl, &t.lse.dl, NULL), YK_OK,
                 "%s", yk_ctx_last_error(ctx));
    cr_assert_eq(yh_sync(ctx), 0);
    double *got = as_doubles(&t.out);
    const double err = ts_gpu_error(got, want, t.out.numel), tol = dtype == YK_F32 ? 1e-5 : ts_gpu_tolerance(dtype);
    cr_assert(err < tol, "cascade %s %s, %d q heads on %d: error %.3g against paged decode (seed %llu)",
              gpu ? "gpu" : "cpu", ts_type_name(dtype), c.q_heads, c.kv_heads, err, (unsigned long long)seed);
    check_lse(&t.lse, want_lse, 1e-3, "cascade lse", seed);
    if (gpu) { /* the prefix's kernel: the decode kernel's with several queries for up to 128 rows */
      const int few = c.batch * (c.q_heads / c.kv_heads) <= 128;
      cr_assert_eq(ts_kernels_like(ctx, "attention_decode:", "queries=1") > 0, few,
                   "cascade of %d q heads on %d: the prefix %s the decode kernel", c.q_heads, c.kv_heads,
                   few ? "missed" : "took");
    }
    /* the caller's workspace, in the tensors' memory: the same bytes, nothing allocated; one
     * element short is refused with nothing written */
    const int64_t floats =
        (int64_t)yk_cascade_decode_workspace_floats(ctx, c.batch, c.q_heads, c.kv_heads, c.head_dim, 200, 0);
    cr_assert_gt(floats, 0);
    yh_tensor ws, ws_short;
    const int64_t short_floats = floats - 1;
    cr_assert_eq(yh_tensor_init(&ws, ctx, YK_F32, 1, &floats, NULL, gpu), 0);
    cr_assert_eq(yh_tensor_init(&ws_short, ctx, YK_F32, 1, &short_floats, NULL, gpu), 0);
    yh_poison(&ws);
    void *first = yh_snapshot(&t.out);
    yh_poison(&t.out);
    yk_attention_params with_ws = p;
    yk_status st;
    with_ws.workspace = &ws.dl;
    st = yk_cascade_attention_decode(ctx, &t.q.dl, &shared, &unique, &with_ws, &t.out.dl, &t.lse.dl, NULL);
    cr_assert_eq(st, YK_OK, "%s", yk_ctx_last_error(ctx));
    cr_assert_eq(yh_sync(ctx), 0);
    cr_assert_eq(yh_bytes_changed(&t.out, first), 0, "cascade with the caller's workspace differs");
    with_ws.workspace = &ws_short.dl;
    st = yk_cascade_attention_decode(ctx, &t.q.dl, &shared, &unique, &with_ws, &t.out.dl, NULL, NULL);
    ts_assert_rejected(ctx, st, YK_ERR_INVALID_ARGUMENT, "workspace must be a float32");
    cr_assert_eq(yh_bytes_changed(&t.out, first), 0, "a refused call wrote out");
    free(first), yh_tensor_free(&ws), yh_tensor_free(&ws_short);
    /* a shared table of more than one sequence is refused */
    ts_assert_rejected(ctx, yk_cascade_attention_decode(ctx, &t.q.dl, &unique, &unique, &p, &t.out.dl, NULL, NULL),
                       YK_ERR_INVALID_ARGUMENT, "the prefix is one");
    if (float8) {
      void *kept = yh_snapshot(&t.out);
      shared.scales.v = 2.f;
      ts_assert_rejected(ctx, yk_cascade_attention_decode(ctx, &t.q.dl, &shared, &unique, &p, &t.out.dl, NULL, NULL),
                         YK_ERR_INVALID_ARGUMENT, "shared's scales (0.5, 2) are not unique's (0.5, 3)");
      cr_assert_eq(yh_bytes_changed(&t.out, kept), 0, "a refused call wrote out");
      free(kept);
    }
    free(want), free(want_lse), free(got);
    yh_tensor_free(&shared_table), yh_tensor_free(&shared_len), yh_tensor_free(&unique_table);
    yh_tensor_free(&unique_lens), free_tensors(&t);
  }
  free_scenario(&s);
}

Test(cascade_attention, cpu_matches_paged_decode) {
  yk_ctx *cpu = ts_cpu_ctx();
  cascade_matches_paged(cpu, &cascade_few, ts_seed("cascade_attention.cpu"), 0);
  cascade_matches_paged(cpu, &cascade_many, ts_seed("cascade_attention.cpu_many"), 0);
  cascade_matches_paged(cpu, &cascade_few, ts_seed("cascade_attention.cpu_float8"), 1);
  yk_ctx_destroy(cpu);
}

Test(cascade_attention, gpu_matches_paged_decode) {
  yk_ctx *probe = ts_gpu_ctx();
  TS_REQUIRE_GPU(probe);
  yk_ctx_destroy(probe);
  /* a context each: which kernels the prefix compiled is read from the context's own */
  static const struct {
    const paged_case *c;
    const char *seed;
  } cases[] = {{&cascade_wide, "cascade_attention.gpu_wide"},
               {&cascade_many, "cascade_attention.gpu_many"},
               {&cascade_few, "cascade_attention.gpu"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    yk_ctx *gpu = ts_gpu_ctx();
    cr_assert_not_null(gpu);
    cascade_matches_paged(gpu, cases[i].c, ts_seed(cases[i].seed), 0);
    yk_ctx_destroy(gpu);
  }
}
