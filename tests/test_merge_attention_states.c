/* merge_attention_states: the merge of attention over two halves of the keys equals attention over
 * the whole, on the CPU and the GPU, and rows that one or both halves leave empty. */
#include "tests/attention_support.h"

/* Decode of t's queries against keys [first, first + count) of its dense k and v (views). */
static void decode_keys(yk_ctx *ctx, attn_tensors *t, int64_t first, int64_t count, yh_tensor *out, yh_tensor *lse) {
  DLTensor k = t->k.dl, v = t->v.dl;
  int64_t shape[4];
  memcpy(shape, t->k.shape, sizeof shape);
  shape[1] = count;
  k.shape = v.shape = shape;
  k.byte_offset = v.byte_offset = (uint64_t)(first * t->k.strides[1] * t->k.elem_bytes);
  yk_attention_params p = {0};
  cr_assert_eq(yk_attention_decode(ctx, &t->q.dl, &k, &v, &p, &out->dl, &lse->dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
}

/* Attention over keys [0, n) is the merge of the attentions over [0, m) and [m, n), into a fresh
 * output and into o_a itself. */
static void merge_halves(yk_ctx *ctx, int dtype, int on_device, yh_rng *rng, uint64_t seed) {
  const attn_case c = {3, 8, 2, 128, 1, 300};
  const int64_t m = 120, od[3] = {c.batch, c.q_heads, c.head_dim}, ld[2] = {c.batch, c.q_heads};
  attn_data a;
  make_data(&a, c, 0, 1, rng);
  attn_tensors t;
  make_tensors(&t, ctx, &a, dtype, on_device, 0);
  cr_assert_eq(forward(ctx, &a, &t, on_device), YK_OK, "%s", yk_ctx_last_error(ctx));
  yh_tensor oa, la, ob, lb, om, lm;
  tensor(&oa, ctx, dtype, 3, od, 0, on_device), tensor(&ob, ctx, dtype, 3, od, 0, on_device);
  tensor(&om, ctx, dtype, 3, od, 0, on_device);
  tensor(&la, ctx, YK_F32, 2, ld, 0, on_device), tensor(&lb, ctx, YK_F32, 2, ld, 0, on_device);
  tensor(&lm, ctx, YK_F32, 2, ld, 0, on_device);
  decode_keys(ctx, &t, 0, m, &oa, &la);
  decode_keys(ctx, &t, m, c.seq_k - m, &ob, &lb);
  cr_assert_eq(yk_merge_attention_states(ctx, &oa.dl, &la.dl, &ob.dl, &lb.dl, &om.dl, &lm.dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "kernel failed");
  double *whole = doubles(&t.out), *whole_lse = doubles(&t.lse), *merged = doubles(&om), *merged_lse = doubles(&lm);
  const int64_t n = om.numel;
  const double err = on_device ? ts_gpu_error(merged, whole, n) : yh_rel_error(merged, whole, n);
  const double bound = on_device ? ts_gpu_tolerance(dtype) : ts_reference_tolerance(dtype);
  cr_assert(err < bound, "%s merge of halves: out rel err %.3g (seed %llu)", ts_type_name(dtype), err,
            (unsigned long long)seed);
  const double lerr = lse_error(merged_lse, whole_lse, lm.numel);
  cr_assert(lerr < 1e-5, "%s merge of halves: lse rel err %.3g (seed %llu)", ts_type_name(dtype), lerr,
            (unsigned long long)seed);
  /* in place: out_o is o_a and out_lse is lse_a */
  void *want_o = yh_snapshot(&om), *want_l = yh_snapshot(&lm);
  cr_assert_eq(yk_merge_attention_states(ctx, &oa.dl, &la.dl, &ob.dl, &lb.dl, &oa.dl, &la.dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "kernel failed");
  cr_assert(yh_bytes_changed(&oa, want_o) == 0 && yh_bytes_changed(&la, want_l) == 0,
            "%s merge into o_a differs from a merge into a fresh tensor", ts_type_name(dtype));
  free(want_o), free(want_l), free(whole), free(whole_lse), free(merged), free(merged_lse);
  yh_tensor *all[] = {&oa, &la, &ob, &lb, &om, &lm};
  for (int i = 0; i < 6; i++) yh_tensor_free(all[i]);
  free_tensors(&t);
  free_data(&a);
}

/* Rows with one or both lse -inf: the other state as it is, or o = 0 and lse = -inf. */
static void merge_empty_rows(yk_ctx *ctx, int dtype, int on_device, yh_rng *rng, uint64_t seed) {
  enum { D = 64, ROWS = 4 };
  const int64_t od[3] = {2, 2, D}, ld[2] = {2, 2};
  const double lse_a[ROWS] = {-INFINITY, -INFINITY, 1.5, 0.25}, lse_b[ROWS] = {-INFINITY, 0.75, -INFINITY, 2};
  yh_tensor oa, ob, la, lb, om, lm;
  tensor(&oa, ctx, dtype, 3, od, 0, on_device), tensor(&ob, ctx, dtype, 3, od, 0, on_device);
  tensor(&om, ctx, dtype, 3, od, 0, on_device);
  tensor(&la, ctx, YK_F32, 2, ld, 0, on_device), tensor(&lb, ctx, YK_F32, 2, ld, 0, on_device);
  tensor(&lm, ctx, YK_F32, 2, ld, 0, on_device);
  double *a = ts_sixty_fourths(rng, ROWS * D), *b = ts_sixty_fourths(rng, ROWS * D), want[ROWS * D], want_lse[ROWS];
  yh_from_double(&oa, a), yh_from_double(&ob, b), yh_from_double(&la, lse_a), yh_from_double(&lb, lse_b);
  for (int r = 0; r < ROWS; r++) {
    const double top = fmax(lse_a[r], lse_b[r]);
    const double wa = top == -INFINITY ? 0 : exp(lse_a[r] - top), wb = top == -INFINITY ? 0 : exp(lse_b[r] - top);
    want_lse[r] = top == -INFINITY ? -INFINITY : top + log(wa + wb);
    for (int c = 0; c < D; c++)
      want[r * D + c] = top == -INFINITY ? 0 : (wa * a[r * D + c] + wb * b[r * D + c]) / (wa + wb);
  }
  ts_round_to_dtype(dtype, want, ROWS * D);
  cr_assert_eq(yk_merge_attention_states(ctx, &oa.dl, &la.dl, &ob.dl, &lb.dl, &om.dl, &lm.dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "kernel failed");
  double *got = doubles(&om), *got_lse = doubles(&lm);
  const double err = on_device ? ts_gpu_error(got, want, ROWS * D) : yh_rel_error(got, want, ROWS * D);
  cr_assert(err < (on_device ? ts_gpu_tolerance(dtype) : ts_reference_tolerance(dtype)),
            "%s merge with -inf rows: rel err %.3g (seed %llu)", ts_type_name(dtype), err, (unsigned long long)seed);
  cr_assert(lse_error(got_lse, want_lse, ROWS) < 1e-6, "%s merge with -inf rows: lse %g %g %g %g", ts_type_name(dtype),
            got_lse[0], got_lse[1], got_lse[2], got_lse[3]);
  for (int c = 0; c < D; c++) cr_assert(got[c] == 0, "both lse -inf: out[%d] = %g, not 0", c, got[c]);
  free(a), free(b), free(got), free(got_lse);
  yh_tensor *all[] = {&oa, &la, &ob, &lb, &om, &lm};
  for (int i = 0; i < 6; i++) yh_tensor_free(all[i]);
}

Test(merge_attention_states, cpu_merge_halves_equal_whole) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.cpu_merge");
  yh_rng rng = {seed};
  for (int ty = 0; ty < 3; ty++) {
    merge_halves(ctx, ts_float_types[ty], 0, &rng, seed);
    merge_empty_rows(ctx, ts_float_types[ty], 0, &rng, seed);
  }
  yk_ctx_destroy(ctx);
}

Test(merge_attention_states, gpu_merge_halves_equal_whole) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  const uint64_t seed = ts_seed("attention.gpu_merge");
  yh_rng rng = {seed};
  for (int dtype = YK_F16; dtype <= YK_BF16; dtype++) {
    merge_halves(gpu, dtype, 1, &rng, seed);
    merge_empty_rows(gpu, dtype, 1, &rng, seed);
  }
  yk_ctx_destroy(gpu);
}
