/* flash_attention_backward: the float64 reference's gradients against finite differences, the CPU
 * fallback against the reference (the same bytes on any number of threads), and the GPU's
 * backward kernels against the fallback. */
#include "tests/attention_support.h"

/* loss = sum(out * dout) through the float64 forward. */
static double loss(const attn_data *a, double *out) {
  yk_reference_attention_forward(&a->shape, a->q, a->k, a->v, out, NULL);
  double sum = 0;
  for (int64_t i = 0; i < a->total_q * a->c.q_heads * a->c.head_dim; i++) sum += out[i] * a->dout[i];
  return sum;
}

/* The float64 backward against central differences of the float64 forward, on tiny shapes. */
Test(attention_backward, reference_backward_matches_finite_differences) {
  const uint64_t seed = ts_seed("attention.finite_differences");
  yh_rng rng = {seed};
  static const int32_t lq[] = {2, 3, 4}, lk[] = {4, 2, 0};
  static const attn_case cases[] = {{1, 2, 1, 4, 3, 5}, {2, 2, 1, 3, 5, 3}, {3, 2, 1, 4, 0, 0, lq, lk}};
  const double step = 1e-5;
  for (int i = 0; i < 3; i++)
    for (int causal = 0; causal <= 1; causal++) {
      attn_data a;
      make_data(&a, cases[i], causal, 0, &rng);
      const int64_t nq = a.total_q * a.c.q_heads * a.c.head_dim, nk = a.total_k * a.c.kv_heads * a.c.head_dim;
      double *grad[3] = {malloc(sizeof(double) * (size_t)nq), malloc(sizeof(double) * (size_t)(nk + 1)),
                         malloc(sizeof(double) * (size_t)(nk + 1))};
      double *numeric = malloc(sizeof(double) * (size_t)(nq + 1)), *out = malloc(sizeof(double) * (size_t)nq);
      yk_reference_attention_backward(&a.shape, a.q, a.k, a.v, a.dout, grad[0], grad[1], grad[2]);
      double *inputs[3] = {a.q, a.k, a.v};
      const int64_t sizes[3] = {nq, nk, nk};
      static const char *const names[3] = {"dq", "dk", "dv"};
      for (int w = 0; w < 3; w++) {
        for (int64_t e = 0; e < sizes[w]; e++) {
          const double x = inputs[w][e];
          inputs[w][e] = x + step;
          const double up = loss(&a, out);
          inputs[w][e] = x - step;
          const double down = loss(&a, out);
          inputs[w][e] = x;
          numeric[e] = (up - down) / (2 * step);
        }
        const double err = yh_rel_error(grad[w], numeric, sizes[w]);
        cr_assert(err < 1e-6, "case %d causal %d: %s differs from finite differences by %.3g (seed %llu)", i, causal,
                  names[w], err, (unsigned long long)seed);
      }
      free(grad[0]), free(grad[1]), free(grad[2]), free(numeric), free(out);
      free_data(&a);
    }
}

static const int32_t lens_bw_q[] = {5, 33, 1}, lens_bw_k[] = {40, 20, 1};
static const attn_case backward_cases[] = {
    {2, 4, 4, 64, 24, 24},
    {1, 8, 2, 80, 16, 45},
    {2, 4, 1, 128, 30, 12},
    {2, 2, 2, 64, 20, 33, .pad = 8},
    {3, 4, 1, 64, 0, 0, lens_bw_q, lens_bw_k},
    {1, 3, 1, 20, 37, 29}, /* head_dim 20: the transposes' columns past whole vectors; rows that see no key */
};
#define BACKWARD_CASES (int)(sizeof backward_cases / sizeof backward_cases[0])

typedef struct attn_grads {
  double *dq, *dk, *dv;
} attn_grads;

static attn_grads reference_grads(const attn_data *a) {
  const int64_t nq = a->total_q * a->c.q_heads * a->c.head_dim, nk = a->total_k * a->c.kv_heads * a->c.head_dim;
  attn_grads g = {malloc(sizeof(double) * (size_t)(nq + 1)), malloc(sizeof(double) * (size_t)(nk + 1)),
                  malloc(sizeof(double) * (size_t)(nk + 1))};
  cr_assert(g.dq && g.dk && g.dv);
  yk_reference_attention_backward(&a->shape, a->q, a->k, a->v, a->dout, g.dq, g.dk, g.dv);
  return g;
}

/* dq, dk, dv of t against want: on the CPU against want rounded to dtype, on the GPU (want is the
 * CPU fallback's, already in dtype) with the GPU's norm and bound. */
static void check_grads(attn_tensors *t, const attn_data *a, int dtype, attn_grads want, int gpu, const char *label,
                        uint64_t seed) {
  char what[200];
  describe(a, dtype, what, sizeof what);
  yh_tensor *got_t[3] = {&t->dq, &t->dk, &t->dv};
  double *want_v[3] = {want.dq, want.dk, want.dv};
  static const char *const names[3] = {"dq", "dk", "dv"};
  for (int w = 0; w < 3; w++) {
    const int64_t n = got_t[w]->numel;
    double *got = doubles(got_t[w]), *rounded = malloc(sizeof(double) * (size_t)(n + 1));
    memcpy(rounded, want_v[w], sizeof(double) * (size_t)n);
    if (!gpu) ts_round_to_dtype(dtype, rounded, n);
    const double err = gpu ? ts_gpu_error(got, rounded, n) : yh_rel_error(got, rounded, n);
    const double bound = gpu ? ts_gpu_tolerance(dtype) : ts_reference_tolerance(dtype);
    cr_assert(err < bound, "%s %s: %s rel err %.3g >= %.3g (seed %llu)", label, what, names[w], err, bound,
              (unsigned long long)seed);
    free(got), free(rounded);
  }
}

/* The public backward on host tensors, with out and lse from the CPU forward, against float64;
 * a second run gives the same bytes. */
Test(attention_backward, cpu_backward_matches_reference) {
  char label[64];
  for (int build = 0; build < CPU_BUILDS; build++) {
    if (build_repeats(build)) continue;
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    const uint64_t seed = ts_seed("attention.cpu_backward");
    yh_rng rng = {seed};
    for (int i = 0; i < BACKWARD_CASES; i++)
      for (int causal = 0; causal <= 1; causal++) {
        attn_data a;
        make_data(&a, backward_cases[i], causal, 0, &rng);
        attn_grads want = reference_grads(&a);
        for (int ty = 0; ty < 3; ty++) {
          attn_tensors t;
          make_tensors(&t, ctx, &a, ts_float_types[ty], 0, 1);
          cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
          void *gaps[3] = {yh_snapshot(&t.dq), yh_snapshot(&t.dk), yh_snapshot(&t.dv)};
          cr_assert_eq(backward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
          check_grads(&t, &a, ts_float_types[ty], want, 0, build_label(label, sizeof label, "cpu backward", build),
                      seed);
          cr_assert(yh_gap_bytes_changed(&t.dq, gaps[0]) == 0 && yh_gap_bytes_changed(&t.dk, gaps[1]) == 0 &&
                        yh_gap_bytes_changed(&t.dv, gaps[2]) == 0,
                    "backward wrote between rows of dq, dk or dv");
          free(gaps[0]), free(gaps[1]), free(gaps[2]);
          void *first[3] = {yh_snapshot(&t.dq), yh_snapshot(&t.dk), yh_snapshot(&t.dv)};
          yh_poison(&t.dq), yh_poison(&t.dk), yh_poison(&t.dv);
          cr_assert_eq(backward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
          cr_assert(yh_bytes_changed(&t.dq, first[0]) == 0 && yh_bytes_changed(&t.dk, first[1]) == 0 &&
                        yh_bytes_changed(&t.dv, first[2]) == 0,
                    "case %d: the backward is not deterministic (seed %llu)", i, (unsigned long long)seed);
          free(first[0]), free(first[1]), free(first[2]);
          free_tensors(&t);
        }
        free(want.dq), free(want.dk), free(want.dv);
        free_data(&a);
      }
    yk_ctx_destroy(ctx);
  }
}

/* The GPU backward's workspace: {lse, rowsum(dout * out)} a query row of each q head, and a float32
 * dq where it may be added up by atomics. */
Test(attention_backward, backward_workspace_size) {
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(8, 300, 1, 128, 1), 4800);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(32, 1, 1, 64, 1), 64);
  /* not deterministic: the stats to 16 bytes, then each head's rows padded to whole 64-row blocks
   * with 64 rows a sequence: (total_q + 64 batch + 63) / 64 blocks of 64 x head_dim */
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(8, 300, 1, 128, 0), 4800 + 8 * 6 * 64 * 128);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(32, 1, 1, 64, 0), 64 + 32 * 2 * 64 * 64);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(3, 3, 1, 64, 0), 20 + 3 * 2 * 64 * 64);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(3, 300, 4, 64, 0), 1800 + 3 * 9 * 64 * 64);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(0, 300, 1, 128, 0), 0);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(8, 0, 1, 128, 0), 0);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(8, 300, 0, 128, 1), 0);
  cr_assert_eq(yk_flash_attention_backward_workspace_floats(8, 300, 1, 0, 0), 0);
}

/* Each output has one writer and a fixed order of summation: one thread and five give the same
 * bytes as the default pool. */
Test(attention_backward, cpu_results_do_not_depend_on_threads) {
  const uint64_t seed = ts_seed("attention.threads");
  yh_rng rng = {seed};
  for (int build = 0; build < CPU_BUILDS; build++) {
    if (build_repeats(build)) continue;
    yk_ctx *ctxs[3] = {cpu_ctx_of(cpu_builds[build], 0), cpu_ctx_of(cpu_builds[build], 1),
                       cpu_ctx_of(cpu_builds[build], 5)};
    /* a ragged GQA batch, a batch-1 decode that the threads split into fewer heads a tile, one
     * whose tiles take several kv heads (16 of 20 and then 4 on one thread, 4 a tile on five), and
     * one of three stretches of keys: folded as they go on one thread, a task each on two and five */
    const attn_case cases[] = {
        backward_cases[4], {1, 8, 2, 128, 1, 100}, {1, 20, 20, 256, 1, 100}, {1, 8, 2, 128, 1, 2600}};
    for (int ci = 0; ci < (int)(sizeof cases / sizeof cases[0]); ci++) {
      attn_data a;
      make_data(&a, cases[ci], 1, 0, &rng);
      /* q off the grid of 1/64 that makes every score exact in float32 whatever order its terms are
     * added in: then an order that changed with the threads would show in float32's bytes */
      for (int64_t i = 0; i < a.total_q * cases[ci].q_heads * cases[ci].head_dim; i++) a.q[i] += (double)(i % 7) / 7168;
      for (int ty = 0; ty < 3; ty++) {
        attn_tensors t[3];
        for (int i = 0; i < 3; i++) {
          make_tensors(&t[i], ctxs[i], &a, ts_float_types[ty], 0, 1);
          cr_assert_eq(forward(ctxs[i], &a, &t[i], 0), YK_OK, "%s", yk_ctx_last_error(ctxs[i]));
          cr_assert_eq(backward(ctxs[i], &a, &t[i], 0), YK_OK, "%s", yk_ctx_last_error(ctxs[i]));
        }
        yh_tensor *first[5] = {&t[0].out, &t[0].lse, &t[0].dq, &t[0].dk, &t[0].dv};
        for (int o = 0; o < 5; o++) {
          void *want = yh_snapshot(first[o]);
          for (int i = 1; i < 3; i++) {
            yh_tensor *got[5] = {&t[i].out, &t[i].lse, &t[i].dq, &t[i].dk, &t[i].dv};
            cr_assert_eq(yh_bytes_changed(got[o], want), 0,
                         "%s build, case %d: %s output %d differs with %d threads (seed %llu)", cpu_builds[build], ci,
                         ts_type_name(ts_float_types[ty]), o, i == 1 ? 1 : 5, (unsigned long long)seed);
          }
          free(want);
        }
        for (int i = 0; i < 3; i++) free_tensors(&t[i]);
      }
      free_data(&a);
    }
    for (int i = 0; i < 3; i++) yk_ctx_destroy(ctxs[i]);
  }
}

/* ---- the GPU against the CPU fallback ---- */

static const int32_t lens_gbw_q[] = {5, 70, 1, 128}, lens_gbw_k[] = {40, 33, 1, 128};
static const int32_t lens_gbw_q2[] = {130, 0, 64, 65}, lens_gbw_k2[] = {200, 17, 0, 129};
/* Tails of the kernels' tiles (dq: 128 rows, 64 keys a tile; dk/dv: 128 keys, 64-row query tiles;
 * head_dim 256: 64 rows and 32 keys, 64 keys and 32 rows), causal masks with seq_q above and below
 * seq_k (rows that see no key), GQA and MQA, head dims on each loader path, empty sequences. */
static const attn_case gpu_backward_cases[] = {
    {2, 4, 4, 64, 70, 70},
    {1, 8, 2, 128, 33, 90},
    {2, 4, 1, 256, 40, 17},
    {2, 2, 2, 128, 48, 48, .pad = 8},
    {4, 4, 1, 64, 0, 0, lens_gbw_q, lens_gbw_k},
    {1, 4, 2, 96, 150, 300},
    {2, 2, 1, 80, 260, 130},
    {1, 2, 2, 16, 100, 37},
    {1, 2, 1, 256, 100, 150},
    {4, 4, 2, 128, 0, 0, lens_gbw_q2, lens_gbw_k2},
};

/* dq, dk, dv against the CPU backward given the CPU's out and lse, on n backward kernel sets (a
 * context each, deterministic or not). A second launch, through a caller's workspace, gives the same
 * bytes where deterministic (the same values within the bound otherwise); one a float short is
 * refused before anything runs. The kernel sets are split over several tests, and each test over
 * the dtypes, so that Criterion's workers compile them side by side: cold, each set's kernels take
 * minutes on one core. */
static void gpu_backward_on(int n, yk_ctx *const *gpus, const int *deterministic, const char *const *labels,
                            int dtype) {
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_backward");
  yh_rng rng = {seed};
  for (int i = 0; i < (int)(sizeof gpu_backward_cases / sizeof gpu_backward_cases[0]); i++)
    for (int causal = 0; causal <= 1; causal++) {
      attn_data a;
      make_data(&a, gpu_backward_cases[i], causal, 0, &rng);
      attn_tensors h, d;
      cpu_and_gpu(cpu, gpus[0], &a, dtype, 1, &h, &d);
      cr_assert_eq(backward(cpu, &a, &h, 0), YK_OK, "%s", yk_ctx_last_error(cpu));
      attn_grads want = {doubles(&h.dq), doubles(&h.dk), doubles(&h.dv)}; /* once for every kernel */
      for (int kernel = 0; kernel < n; kernel++) {
        yk_ctx *g = gpus[kernel];
        if (kernel > 0) gpu_copy(g, &a, dtype, 1, &h, &d);
        cr_assert(!yh_tensor_copy(&d.out, &h.out) && !yh_tensor_copy(&d.lse, &h.lse));
        yh_poison(&d.dq), yh_poison(&d.dk), yh_poison(&d.dv);
        const int det = deterministic[kernel];
        cr_assert_eq(backward_with(g, &a, &d, 1, NULL, det), YK_OK, "%s: %s", labels[kernel], yk_ctx_last_error(g));
        cr_assert_eq(yh_sync(g), 0, "%s: kernel failed", labels[kernel]);
        check_grads(&d, &a, dtype, want, 1, labels[kernel], seed);
        void *first[3] = {yh_snapshot(&d.dq), yh_snapshot(&d.dk), yh_snapshot(&d.dv)};
        yh_poison(&d.dq), yh_poison(&d.dk), yh_poison(&d.dv);
        const int64_t floats =
            (int64_t)yk_flash_attention_backward_workspace_floats(a.c.q_heads, a.total_q, a.c.batch, a.c.head_dim, det);
        yh_tensor ws, short_ws;
        /* short of even the stats, whichever kernels the head dim takes */
        const int64_t short_floats =
            (int64_t)yk_flash_attention_backward_workspace_floats(a.c.q_heads, a.total_q, a.c.batch, a.c.head_dim, 1) -
            1;
        cr_assert_eq(yh_tensor_init(&ws, g, YK_F32, 1, &floats, NULL, 1), 0);
        cr_assert_eq(yh_tensor_init(&short_ws, g, YK_F32, 1, &short_floats, NULL, 1), 0);
        yh_poison(&ws); /* the atomic dq must zero its float32 sums itself */
        cr_assert_eq(backward_with(g, &a, &d, 1, &ws.dl, det), YK_OK, "%s", yk_ctx_last_error(g));
        cr_assert_eq(yh_sync(g), 0, "%s: kernel failed", labels[kernel]);
        char what[200];
        if (det)
          cr_assert(yh_bytes_changed(&d.dq, first[0]) == 0 && yh_bytes_changed(&d.dk, first[1]) == 0 &&
                        yh_bytes_changed(&d.dv, first[2]) == 0,
                    "%s, %s: the GPU backward is not deterministic (seed %llu)", labels[kernel],
                    describe(&a, dtype, what, sizeof what), (unsigned long long)seed);
        else /* dk and dv have one writer each still */
          cr_assert(yh_bytes_changed(&d.dk, first[1]) == 0 && yh_bytes_changed(&d.dv, first[2]) == 0,
                    "%s, %s: dk or dv changed on a second run (seed %llu)", labels[kernel],
                    describe(&a, dtype, what, sizeof what), (unsigned long long)seed);
        check_grads(&d, &a, dtype, want, 1, labels[kernel], seed);
        free(first[0]), first[0] = yh_snapshot(&d.dq);
        ts_assert_rejected(g, backward_with(g, &a, &d, 1, &short_ws.dl, det), INVALID,
                           "workspace must be a float32 device vector");
        cr_assert_eq(yh_sync(g), 0, "kernel failed");
        cr_assert(yh_bytes_changed(&d.dq, first[0]) == 0 && yh_bytes_changed(&d.dk, first[1]) == 0 &&
                      yh_bytes_changed(&d.dv, first[2]) == 0,
                  "%s: a refused backward wrote", describe(&a, dtype, what, sizeof what));
        yh_tensor_free(&ws), yh_tensor_free(&short_ws);
        free(first[0]), free(first[1]), free(first[2]);
        free_tensors(&d);
      }
      free(want.dq), free(want.dk), free(want.dv);
      free_tensors(&h);
      free_data(&a);
    }
  yk_ctx_destroy(cpu);
}

/* sm_90: by default the stats, the dk/dv kernel adding dq by atomics and dq's conversion, with TMA
 * loads; deterministic, the wgmma pair */
ParameterizedTestParameters(attention_backward, gpu_backward_matches_cpu) { return ts_gpu_dtype_params(); }
ParameterizedTest(int *dtype, attention_backward, gpu_backward_matches_cpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *const gpus[2] = {gpu, gpu};
  static const int deterministic[2] = {0, 1};
  static const char *const labels[2] = {"gpu backward (default kernels, atomic dq)", "gpu backward (deterministic)"};
  gpu_backward_on(2, gpus, deterministic, labels, *dtype);
  yk_ctx_destroy(gpu);
}

/* mma.sync forced, which is always deterministic; the Hopper kernels with one warpgroup, 3 stages and
 * cp.async loads, both ways of adding dq */
ParameterizedTestParameters(attention_backward, gpu_backward_other_kernels_match_cpu) { return ts_gpu_dtype_params(); }
ParameterizedTest(int *dtype, attention_backward, gpu_backward_other_kernels_match_cpu) {
  setenv("YK_BACKWARD_KERNEL", "mma_sync", 1);
  yk_ctx *mma = ts_gpu_ctx();
  unsetenv("YK_BACKWARD_KERNEL");
  TS_REQUIRE_GPU(mma);
  yk_ctx *one_wg = ts_gpu_ctx_forcing("attention_backward_sm90", "warpgroups=1,stages=3,tma=0");
  cr_assert_not_null(one_wg);
  yk_ctx *const gpus[3] = {mma, one_wg, one_wg};
  static const int deterministic[3] = {1, 0, 1};
  static const char *const labels[3] = {"gpu backward (mma.sync)",
                                        "gpu backward (sm90, 1 warpgroup, cp.async, atomic dq)",
                                        "gpu backward (sm90, 1 warpgroup, cp.async)"};
  gpu_backward_on(3, gpus, deterministic, labels, *dtype);
  yk_ctx_destroy(mma), yk_ctx_destroy(one_wg);
}

/* the dk/dv kernel's orders of dq's sums, which a sweep may choose whatever each head dim's default
 * (behind at head dim 128, block at 64) */
ParameterizedTestParameters(attention_backward, gpu_backward_dq_sums_match_cpu) { return ts_gpu_dtype_params(); }
ParameterizedTest(int *dtype, attention_backward, gpu_backward_dq_sums_match_cpu) {
  yk_ctx *behind = ts_gpu_ctx_forcing("attention_backward_sm90", "part=dkdv,dq_sum=behind,tile=64");
  TS_REQUIRE_GPU(behind);
  yk_ctx *block = ts_gpu_ctx_forcing("attention_backward_sm90", "part=dkdv,dq_sum=block");
  yk_ctx *own = ts_gpu_ctx_forcing("attention_backward_sm90", "part=dkdv,dq_sum=warpgroup");
  cr_assert(block && own);
  yk_ctx *const gpus[3] = {behind, block, own};
  static const int deterministic[3] = {0, 0, 0};
  static const char *const labels[3] = {"gpu backward (sm90, dq issued behind dk/dv)",
                                        "gpu backward (sm90, dq issued once the block met)",
                                        "gpu backward (sm90, dq summed a warpgroup)"};
  gpu_backward_on(3, gpus, deterministic, labels, *dtype);
  yk_ctx_destroy(behind), yk_ctx_destroy(block), yk_ctx_destroy(own);
}
