/* Paged attention's bad input: block ids out of range, contexts longer than their tables,
 * last_page_len past the page size, CSR offsets that decrease or run past the indices, both table
 * forms or neither, misshaped or mistyped tensors, pageable tables beside device caches, float8
 * caches with wrong scales or types. Each call is refused with its status and a message naming the
 * problem, and writes nothing; the repaired call then runs. The scenarios are tests/paged_support.h's. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "tests/paged_support.h"

/* Each call is refused with its status and a message naming the problem, and writes nothing. */
static void expect_rejected(yk_ctx *ctx, const scenario *s, paged_tensors *t, yh_tensor *cu_q, yk_status want,
                            const char *needle) {
  void *out = yh_snapshot(&t->out), *lse = yh_snapshot(&t->lse);
  ts_assert_rejected(ctx, run_paged(ctx, s, t, cu_q, 0), want, needle);
  cr_assert_eq(yh_bytes_changed(&t->out, out), 0, "a rejected call (%s) wrote out", needle);
  cr_assert_eq(yh_bytes_changed(&t->lse, lse), 0, "a rejected call (%s) wrote lse", needle);
  free(out), free(lse);
}

/* Tables the host can read: CPU tensors, or pinned ones beside device caches. */
static void bad_tables(yk_ctx *ctx, int on_device, uint64_t seed) {
  yh_rng rng = {seed};
  static const paged_case c = {3, {40, 17, 64}, {5, 17, 1}, 8, 2, 64, 16};
  for (int decode = 0; decode <= 1; decode++)
    for (int csr = 0; csr <= 1; csr++) {
      scenario s;
      make_scenario(&s, &c, decode, 1, csr, YK_KV_NHD, &rng);
      paged_tensors t;
      yh_tensor cu_q;
      make_tensors(&t, ctx, &s, YK_F16, on_device);
      cu_q_tensor(&cu_q, ctx, &s, on_device);
      yh_poison(&t.out), yh_poison(&t.lse);
      /* tables in pinned memory, which the host reads and checks */
      yh_tensor *tables[] = {&t.table, &t.lens, &t.indptr, &t.indices, &t.last};
      void *pinned[5] = {NULL};
      for (int i = 0; i < 5; i++)
        if (on_device && tables[i]->numel) {
          const size_t bytes = (size_t)tables[i]->numel * sizeof(int32_t);
          cr_assert_eq(ctx->cu.cuMemAllocHost(&pinned[i], bytes), CUDA_SUCCESS);
          memcpy(pinned[i], tables[i]->host, bytes);
          tables[i]->dl.data = pinned[i], tables[i]->dl.device.device_type = kDLCUDAHost;
        }
      int32_t *entries = (csr ? t.indices : t.table).dl.data, *lens = (csr ? t.last : t.lens).dl.data;
      const int32_t saved_entry = entries[1], saved_len = lens[1];
      entries[1] = (int32_t)s.num_blocks; /* block id out of range */
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "outside the");
      entries[1] = saved_entry;
      if (csr) {
        lens[1] = 17; /* last_page_len past the page size */
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "outside 1..page_size");
        lens[1] = saved_len;
        int32_t *indptr = t.indptr.dl.data;
        const int32_t saved = indptr[2];
        indptr[2] = indptr[1] - 1;
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "decreases");
        indptr[2] = saved;
        indptr[3] = (int32_t)s.nnz + 1;
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "past the");
        indptr[3] = s.indptr[3];
      } else {
        lens[1] = (int32_t)(s.max_blocks * 16 + 1); /* a context longer than its table */
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "outside 0..");
        lens[1] = -1;
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "outside 0..");
        lens[1] = saved_len;
      }
      /* both forms, neither */
      yk_paged_kv saved_kv = t.kv;
      if (csr)
        t.kv.block_tables = &t.indices.dl, t.kv.context_lens = &t.last.dl;
      else
        t.kv.block_tables = NULL, t.kv.context_lens = NULL;
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "one page table");
      t.kv = saved_kv;
      /* still accepted once repaired */
      cr_assert_eq(run_paged(ctx, &s, &t, &cu_q, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
      cr_assert_eq(yh_sync(ctx), 0);
      for (int i = 0; i < 5; i++)
        if (pinned[i]) {
          ctx->cu.cuMemFreeHost(pinned[i]);
          tables[i]->dl.data = (void *)(uintptr_t)tables[i]->device, tables[i]->dl.device.device_type = kDLCUDA;
        }
      yh_tensor_free(&cu_q), free_tensors(&t), free_scenario(&s);
    }
}

/* Shapes, types and parameters. */
static void bad_shapes(yk_ctx *ctx, int on_device, uint64_t seed) {
  yh_rng rng = {seed};
  static const paged_case c = {2, {40, 17}, {5, 17}, 8, 2, 64, 16};
  for (int decode = 0; decode <= 1; decode++) {
    scenario s;
    make_scenario(&s, &c, decode, 0, 0, YK_KV_NHD, &rng);
    paged_tensors t;
    yh_tensor cu_q;
    make_tensors(&t, ctx, &s, YK_BF16, on_device);
    cu_q_tensor(&cu_q, ctx, &s, on_device);
    yh_poison(&t.out), yh_poison(&t.lse);
    DLTensor q = t.q.dl, k = t.k_cache.dl, lens = t.lens.dl;
    int64_t shape[4];

    memcpy(shape, q.shape, 3 * sizeof *shape), shape[1] = 7, t.q.dl.shape = shape; /* 2 kv heads do not divide 7 */
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "do not divide");
    memcpy(shape, q.shape, 3 * sizeof *shape), shape[2] = 32, t.q.dl.shape = shape;
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "head_dim");
    t.q.dl = q;
    t.q.dl.dtype = (DLDataType){kDLFloat, 16, 1};
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "");
    t.q.dl = q;
    if (decode) {
      memcpy(shape, q.shape, 3 * sizeof *shape), shape[0] = 1, t.q.dl.shape = shape;
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "batch");
      t.q.dl = q;
    }
    t.kv.layout = (yk_kv_layout)5;
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "layout");
    t.kv.layout = YK_KV_NHD;
    memcpy(shape, k.shape, 4 * sizeof *shape), shape[1] = 129, t.k_cache.dl.shape = shape;
    t.kv.v_cache = &t.k_cache.dl; /* same shape for both */
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_UNSUPPORTED, "page_size");
    t.k_cache.dl = k, t.kv.v_cache = &t.v_cache.dl;
    t.lens.dl.dtype = (DLDataType){kDLInt, 64, 1};
    expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "int32");
    t.lens.dl = lens;
    if (decode) { /* cu_seqlens_k with paged keys; decode with cu_seqlens_q; splits; overlaps; no kv */
      yk_attention_params p = {.cu_seqlens_k = &cu_q.dl};
      ts_assert_rejected(ctx, yk_paged_attention_decode(ctx, &t.q.dl, &t.kv, &p, &t.out.dl, &t.lse.dl, NULL),
                         YK_ERR_INVALID_ARGUMENT, "cu_seqlens_k must be NULL");
      p = (yk_attention_params){.cu_seqlens_q = &cu_q.dl};
      ts_assert_rejected(ctx, yk_paged_attention_decode(ctx, &t.q.dl, &t.kv, &p, &t.out.dl, &t.lse.dl, NULL),
                         YK_ERR_INVALID_ARGUMENT, "cu_seqlens_q must be NULL");
      p = (yk_attention_params){.num_splits = -1};
      ts_assert_rejected(ctx, yk_paged_attention_decode(ctx, &t.q.dl, &t.kv, &p, &t.out.dl, &t.lse.dl, NULL),
                         YK_ERR_INVALID_ARGUMENT, "num_splits");
      /* out overlapping q */
      p = (yk_attention_params){0};
      ts_assert_rejected(ctx, yk_paged_attention_decode(ctx, &t.q.dl, &t.kv, &p, &t.q.dl, NULL, NULL),
                         YK_ERR_INVALID_ARGUMENT, "");
      ts_assert_rejected(ctx, yk_paged_attention_decode(ctx, &t.q.dl, NULL, &p, &t.out.dl, NULL, NULL),
                         YK_ERR_INVALID_ARGUMENT, "kv is NULL");
    }
    if (on_device) {
      /* a table in pageable host memory beside device caches */
      DLTensor host_lens = t.lens.dl;
      host_lens.data = t.lens.host, host_lens.device = (DLDevice){kDLCPU, 0};
      t.kv.context_lens = &host_lens;
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "pageable");
      t.kv.context_lens = &t.lens.dl;
      if (decode) { /* device tables without a bound on the lengths */
        t.kv.max_context_len = 0;
        expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "max_context_len");
      }
    }
    yh_tensor_free(&cu_q), free_tensors(&t), free_scenario(&s);
  }
}

Test(paged_attention, bad_input_cpu) {
  yk_ctx *cpu = ts_cpu_ctx();
  bad_tables(cpu, 0, ts_seed("paged_attention.bad_cpu"));
  bad_shapes(cpu, 0, ts_seed("paged_attention.bad_shapes_cpu"));
  yk_paged_plan *plan;
  cr_assert_eq(yk_paged_plan_create(cpu, &plan), YK_OK);
  const yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, 8, 2, 64, 16, 0, 0, 0};
  const int32_t lens[1] = {5};
  ts_assert_rejected(cpu, yk_paged_decode_plan(plan, &shape, lens, 1, NULL), YK_ERR_NO_DEVICE, "no CUDA device");
  yk_paged_plan_destroy(plan);
  yk_ctx_destroy(cpu);
}

Test(paged_attention, bad_input_gpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  bad_tables(gpu, 1, ts_seed("paged_attention.bad_gpu"));
  bad_shapes(gpu, 1, ts_seed("paged_attention.bad_shapes_gpu"));
  yk_paged_plan *plan;
  cr_assert_eq(yk_paged_plan_create(gpu, &plan), YK_OK);
  yk_paged_plan_shape shape = {{kDLBfloat, 16, 1}, 8, 2, 64, 16, 0, 0, 0};
  const int32_t lens[2] = {5, -1};
  ts_assert_rejected(gpu, yk_paged_decode_plan(plan, &shape, lens, 2, NULL), YK_ERR_INVALID_ARGUMENT, "negative");
  shape.page_size = 0;
  ts_assert_rejected(gpu, yk_paged_decode_plan(plan, &shape, lens, 1, NULL), YK_ERR_UNSUPPORTED, "page_size");
  shape.page_size = 16, shape.head_dim = 72;
  ts_assert_rejected(gpu, yk_paged_decode_plan(plan, &shape, lens, 1, NULL), YK_ERR_UNSUPPORTED, "head_dim");
  yk_paged_plan_destroy(plan);
  yk_ctx_destroy(gpu);
}

/* float8 caches refused with the reason, nothing written: q of float8, caches of two types, scales
 * on 16-bit caches or not positive and finite. */
static void float8_bad_input(yk_ctx *ctx, int on_device) {
  yh_rng rng = {17};
  static const paged_case c = {2, {40, 17}, {5, 17}, 8, 2, 64, 16};
  for (int decode = 0; decode <= 1; decode++) {
    scenario s;
    make_scenario(&s, &c, decode, 0, 0, YK_KV_NHD, &rng);
    float8_scenario(&s, (yk_kv_scales){0.5f, 2.f});
    paged_tensors t;
    yh_tensor cu_q;
    make_tensors(&t, ctx, &s, YK_BF16, on_device);
    cu_q_tensor(&cu_q, ctx, &s, on_device);
    yh_poison(&t.out), yh_poison(&t.lse);
    {
      const DLTensor q = t.q.dl, v = t.v_cache.dl;
      t.q.dl.dtype = (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1};
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "q: expected dtype float32, float16 or bfloat16");
      t.q.dl = q, t.v_cache.dl.dtype = (DLDataType){kDLBfloat, 16, 1};
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "v_cache is bfloat16 but k_cache is float8_e4m3fn");
      t.v_cache.dl = v, t.kv.scales = (yk_kv_scales){-0.5f, 2.f};
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "the k scale -0.5 is not positive and finite");
      t.kv.scales = (yk_kv_scales){0.5f, INFINITY};
      expect_rejected(ctx, &s, &t, &cu_q, YK_ERR_INVALID_ARGUMENT, "the v scale inf is not positive and finite");
      /* 16-bit caches take no scale */
      paged_tensors plain;
      s.float8 = 0;
      make_tensors(&plain, ctx, &s, YK_BF16, on_device);
      plain.kv.scales = (yk_kv_scales){1.f, 0.5f};
      yh_poison(&plain.out), yh_poison(&plain.lse);
      expect_rejected(ctx, &s, &plain, &cu_q, YK_ERR_INVALID_ARGUMENT,
                      "the v scale is 0.5, but scales apply to float8_e4m3fn caches only");
      plain.kv.scales = (yk_kv_scales){1.f, 0};
      cr_assert_eq(run_paged(ctx, &s, &plain, &cu_q, 0), YK_OK, "scales of 1 (or 0) are no scales: %s",
                   yk_ctx_last_error(ctx));
      free_tensors(&plain);
    }
    yh_tensor_free(&cu_q), free_tensors(&t), free_scenario(&s);
  }
}

Test(paged_attention, float8_bad_input_cpu) {
  yk_ctx *cpu = ts_cpu_ctx();
  float8_bad_input(cpu, 0);
  yk_ctx_destroy(cpu);
}

Test(paged_attention, float8_bad_input_gpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  float8_bad_input(gpu, 1);
  yk_ctx_destroy(gpu);
}
