/* flash_attention_forward: the CPU fallback against the float64 reference, the GPU's prefill
 * kernels (and the decode kernel's few queries a sequence) against the fallback; bad input to
 * every attention call. The backward, decode and merge have files of their own. */
#include "tests/attention_support.h"

#ifdef __x86_64__
#include <cpuid.h>
#endif

/* ---- the CPU fallback against float64 ---- */

static const int32_t lens_long[] = {1, 17, 128, 1000};
static const int32_t lens_q_mixed[] = {17, 1, 128, 0, 5}, lens_k_mixed[] = {1, 1000, 17, 64, 128};
static const int32_t lens_q_wide[] = {128, 17, 1}, lens_k_wide[] = {17, 128, 40};
/* a few queries a sequence (at most 256 (token, q head) rows a kv head): on the GPU the decode
 * kernel's tiles, split by the keys and merged (speculative decoding's verification step) */
static const int32_t lens_q_few[] = {4, 1, 8, 0}, lens_k_few[] = {3000, 17, 8, 5};
static const int32_t lens_q_few2[] = {16, 3, 2}, lens_k_few2[] = {700, 2, 1000};
static const int32_t lens_q_few3[] = {3, 4}, lens_k_few3[] = {513, 40};
static const int32_t lens_q_few4[] = {2, 5}, lens_k_few4[] = {1000, 300};

/* Every head_dim the GPU builds and a few only the CPU takes; GQA 1, 4, 8; seq_q equal to, below
 * and above seq_k (causal rows that see nothing); ragged batches; padded (strided) views. Batches
 * of more than 256 (token, q head) rows a kv head take the prefill kernels (their tile tails: 37,
 * 17, 50 rows); those of fewer the decode kernel, past 64 rows in blocks of 8 row tiles (4 at
 * head_dim 256): 80 rows, 256 (two whole blocks), 68 at 256 (two of 4), 72 padded. */
static const attn_case forward_cases[] = {
    {2, 16, 2, 64, 37, 37},
    {1, 8, 2, 80, 20, 75},
    {2, 8, 1, 96, 50, 19},
    {3, 4, 1, 128, 64, 64},
    {1, 16, 1, 256, 17, 130},
    {1, 4, 1, 256, 17, 130},
    {2, 8, 1, 128, 9, 40, .pad = 8},
    {1, 4, 2, 128, 300, 777}, /* many key tiles: each pipeline stage is reused, its barriers' phases wrap */
    {2, 2, 1, 128, 520, 520, .pad = 8},
    /* past 4096 queries: causal at head_dim 64 on three warpgroups, most rows seeing no key */
    {1, 1, 1, 64, 4100, 160},
    {2, 8, 8, 64, 24, 24, .pad = 3, .scale = 0.3f, .cpu_only = 1},
    {1, 2, 1, 7, 5, 9, .cpu_only = 1},
    {1, 1, 1, 1024, 6, 70, .cpu_only = 1},
    {4, 1, 1, 64, 0, 0, lens_long, lens_long},
    {5, 8, 1, 80, 0, 0, lens_q_mixed, lens_k_mixed},
    {3, 12, 4, 256, 0, 0, lens_q_wide, lens_k_wide, .pad = 8},
    {4, 8, 2, 128, 0, 0, lens_q_few, lens_k_few},
    {3, 4, 1, 64, 0, 0, lens_q_few2, lens_k_few2},
    {2, 16, 16, 80, 0, 0, lens_q_few3, lens_k_few3, .pad = 8},
    {2, 8, 2, 256, 0, 0, lens_q_few4, lens_k_few4},
    /* dense few queries: split long keys, a padded group of one, 64 rows (4 tiles) of head dim 80,
     * head dim 256, and causal rows that see no key (12 queries, 5 keys) */
    {2, 8, 2, 128, 4, 3000},
    {3, 4, 4, 64, 16, 700, .pad = 8},
    {2, 16, 2, 80, 8, 40},
    {1, 2, 1, 256, 5, 2000},
    {2, 4, 1, 128, 12, 5},
    /* head dims whose AMX tiles pad their dims (112 to 128, 240 to 256), over several key tiles
     * with tails */
    {1, 4, 2, 112, 70, 300, .cpu_only = 1},
    {2, 2, 1, 240, 33, 150, .pad = 8, .cpu_only = 1},
    /* narrow rows, 8 and 24 words: Q's transpose by its tail alone, and by one block and a tail */
    {1, 4, 1, 16, 40, 90, .cpu_only = 1},
    {2, 2, 2, 48, 19, 33, .pad = 8, .cpu_only = 1},
};
#define FORWARD_CASES (int)(sizeof forward_cases / sizeof forward_cases[0])

Test(attention, cpu_forward_matches_reference) {
  char label[64];
  for (int build = 0; build < CPU_BUILDS; build++) {
    if (build_repeats(build)) continue;
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    const uint64_t seed = ts_seed("attention.cpu_forward");
    yh_rng rng = {seed};
    for (int i = 0; i < FORWARD_CASES; i++)
      for (int causal = 0; causal <= 1; causal++) {
        attn_data a;
        make_data(&a, forward_cases[i], causal, 0, &rng);
        attn_ref want = reference(&a);
        for (int ty = 0; ty < 3; ty++) {
          attn_tensors t;
          make_tensors(&t, ctx, &a, ts_float_types[ty], 0, 0);
          void *q_before = yh_snapshot(&t.q), *out_before = yh_snapshot(&t.out);
          cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
          check_forward(&t, &a, ts_float_types[ty], &want, 0, build_label(label, sizeof label, "cpu forward", build),
                        seed);
          cr_assert_eq(yh_bytes_changed(&t.q, q_before), 0, "forward wrote into q (seed %llu)",
                       (unsigned long long)seed);
          cr_assert_eq(yh_gap_bytes_changed(&t.out, out_before), 0, "forward wrote between rows of out");
          free(q_before), free(out_before);
          free_tensors(&t);
        }
        free_ref(&want);
        free_data(&a);
      }
    yk_ctx_destroy(ctx);
  }
}

#if defined(__x86_64__) && defined(YK_CPU_HAS_AMX)
/* AMX-TILE and AMX-BF16 by CPUID, their state enabled in XCR0. */
static int cpu_has_amx(void) {
  unsigned eax, ebx, ecx, edx, xcr0_lo, xcr0_hi;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || (edx >> 22 & 5) != 5) return 0; /* bits 22 and 24 */
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo >> 17 & 3) == 3;
}
#endif

/* The widest build the CPU runs: AMX where the library was built with it and the CPU and OS run it
 * besides AVX-512F (whether Linux lets the process use it is asked at the first call that would),
 * AVX-512 with AVX-512F besides AVX2, FMA and F16C, AVX2 with those three alone, else plain;
 * YK_CPU_ISA caps it, and yk_ctx_info names it. */
Test(attention, cpu_build_follows_the_cpu) {
  if (getenv("YK_CPU_ISA")) cr_skip_test("YK_CPU_ISA is set: the default is not the CPU's choice");
  yk_cpu_isa want = YK_CPU_PLAIN;
#ifdef __x86_64__
  __builtin_cpu_init();
  unsigned eax, ebx, ecx, edx;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) &&
      (ecx & bit_F16C))
    want = __builtin_cpu_supports("avx512f") ? YK_CPU_AVX512 : YK_CPU_AVX2;
#ifdef YK_CPU_HAS_AMX
  if (want == YK_CPU_AVX512 && cpu_has_amx()) want = YK_CPU_AMX;
#endif
#endif
  static const char *const names[] = {"plain", "avx2", "avx512", "amx"};
  static const yk_cpu_isa caps[CPU_BUILDS] = {YK_CPU_AMX, YK_CPU_AVX512, YK_CPU_AVX2, YK_CPU_PLAIN};
  for (int build = 0; build < CPU_BUILDS; build++) {
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    const yk_cpu_isa cap = caps[build];
    const yk_cpu_isa expect = want < cap ? want : cap;
    cr_assert_eq(ctx->pool.isa, expect, "%s: the %s build runs where the %s build should", cpu_builds[build],
                 names[ctx->pool.isa], names[expect]);
    yk_ctx_info info;
    cr_assert_eq(yk_ctx_get_info(ctx, &info), YK_OK);
    cr_assert_str_eq(info.cpu_kernels, names[expect], "yk_ctx_info names another build");
    yk_ctx_destroy(ctx);
  }
}

/* Float8 key and value rows load exactly in every build: every byte as its value times 2^-8 (the
 * tile kernels fold 2^8 into their scales), the sign of zero kept, NaN as NaN; rows of many lengths
 * and alignments (the x86-64 builds convert 16 at a time, then the tail). */
Test(attention, cpu_float8_rows_load_exactly) {
  uint8_t bytes[256 + 64];
  for (int i = 0; i < 256 + 64; i++) bytes[i] = (uint8_t)(i * 5 + 3); /* every value in the first 256 */
  for (int build = 0; build < CPU_BUILDS; build++) {
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    for (int n = 1; n <= 256; n += n < 40 ? 1 : 27) {
      const uint8_t *row = bytes + n % 64;
      float got[256];
      yk_cpu_kv_row_floats(&ctx->pool, YK_E4M3, row, got, n);
      for (int i = 0; i < n; i++) {
        const float want = yk_e4m3_to_float(row[i]) * 0x1p-8f;
        cr_assert(isnan(want) ? isnan(got[i]) : got[i] == want && signbit(got[i]) == signbit(want),
                  "%s build, row of %d: byte 0x%02x loads as %g, not %g", cpu_builds[build], n, row[i], (double)got[i],
                  (double)want);
      }
    }
    yk_ctx_destroy(ctx);
  }
}

/* A known answer that shares no code with the library: with q = 0 every score is 0, so out is the
 * mean of the v rows a query sees and lse the log of their count. Pins the bottom-right mask for
 * seq_q below, equal to and above seq_k, and GQA's head mapping (each kv head's v is offset by
 * its index). */
Test(attention, cpu_known_answer_mask_and_heads) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {ts_seed("attention.known_answer")};
  static const int64_t lengths[3][2] = {{3, 7}, {5, 5}, {7, 3}};
  for (int l = 0; l < 3; l++)
    for (int causal = 0; causal <= 1; causal++) {
      const int64_t sq = lengths[l][0], sk = lengths[l][1], hq = 4, hk = 2, d = 8;
      attn_data a;
      make_data(&a, (attn_case){1, hq, hk, d, sq, sk}, causal, 0, &rng);
      memset(a.q, 0, sizeof(double) * (size_t)(sq * hq * d));
      for (int64_t j = 0; j < sk; j++)
        for (int64_t h = 0; h < hk; h++)
          for (int64_t c = 0; c < d; c++)
            a.v[(j * hk + h) * d + c] = (double)(j + 1) / 8 + (double)h * 4 + (double)c / 64;
      attn_tensors t;
      make_tensors(&t, ctx, &a, YK_F32, 0, 0);
      cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
      double *out = doubles(&t.out), *lse = doubles(&t.lse);
      for (int64_t i = 0; i < sq; i++)
        for (int64_t h = 0; h < hq; h++) {
          const int64_t seen = causal ? (i + sk - sq + 1 < 0 ? 0 : i + sk - sq + 1 > sk ? sk : i + sk - sq + 1) : sk;
          const double want_lse = seen ? log((double)seen) : -INFINITY;
          cr_assert(fabs(lse[h * sq + i] - want_lse) < 1e-6 || lse[h * sq + i] == want_lse,
                    "seq_q %lld seq_k %lld causal %d: lse of query %lld head %lld is %g, want %g", (long long)sq,
                    (long long)sk, causal, (long long)i, (long long)h, lse[h * sq + i], want_lse);
          for (int64_t c = 0; c < d; c++) {
            /* mean over j < seen of (j + 1) / 8, plus the kv head's offset and the column's */
            const double want = seen ? (double)(seen + 1) / 16 + (double)(h / 2) * 4 + (double)c / 64 : 0;
            cr_assert(fabs(out[(i * hq + h) * d + c] - want) < 1e-5,
                      "seq_q %lld seq_k %lld causal %d: out[%lld, %lld, %lld] = %g, want %g", (long long)sq,
                      (long long)sk, causal, (long long)i, (long long)h, (long long)c, out[(i * hq + h) * d + c], want);
          }
        }
      /* the reference agrees */
      attn_ref ref = reference(&a);
      cr_assert(yh_rel_error(out, ref.out, sq * hq * d) < 1e-6, "the reference disagrees with the known answer");
      free_ref(&ref);
      free(out), free(lse);
      free_tensors(&t);
      free_data(&a);
    }
  yk_ctx_destroy(ctx);
}

/* lse is optional; without it out is the same bytes. */
Test(attention, cpu_forward_without_lse) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {ts_seed("attention.no_lse")};
  attn_data a;
  make_data(&a, forward_cases[1], 1, 0, &rng);
  attn_tensors t, u;
  make_tensors(&t, ctx, &a, YK_BF16, 0, 0);
  make_tensors(&u, ctx, &a, YK_BF16, 0, 0);
  yk_attention_params p = params_of(&a, &u, 0);
  cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yk_flash_attention_forward(ctx, &u.q.dl, &u.k.dl, &u.v.dl, &p, &u.out.dl, NULL, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
  void *want = yh_snapshot(&t.out);
  cr_assert_eq(yh_bytes_changed(&u.out, want), 0, "out differs without lse");
  free(want);
  free_tensors(&t), free_tensors(&u);
  free_data(&a);
  yk_ctx_destroy(ctx);
}

/* ---- bad input: a status, a message naming the problem, and nothing written ---- */

#define FWD(q_, k_, v_, p_, out_, lse_) yk_flash_attention_forward(ctx, q_, k_, v_, p_, out_, lse_, NULL)
#define DECODE(q_, k_, v_, p_, out_, lse_) yk_attention_decode(ctx, q_, k_, v_, p_, out_, lse_, NULL)
#define MERGE(oa_, la_, ob_, lb_, o_, l_) yk_merge_attention_states(ctx, oa_, la_, ob_, lb_, o_, l_, NULL)

static DLTensor reshaped(const yh_tensor *t, int64_t *shape, int dim, int64_t size) {
  DLTensor x = t->dl;
  memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->dl.ndim);
  shape[dim] = size;
  x.shape = shape;
  return x;
}

static DLTensor retyped(const yh_tensor *t, uint8_t code, uint8_t bits) {
  DLTensor x = t->dl;
  x.dtype.code = code, x.dtype.bits = bits;
  return x;
}

static void bad_inputs(yk_ctx *ctx, int on_device) {
  yh_rng rng = {11};
  static const int32_t lq[] = {2, 4}, lk[] = {3, 7};
  attn_data da, ra, dec;
  make_data(&da, (attn_case){2, 4, 2, 64, 6, 10}, 1, 0, &rng);
  make_data(&ra, (attn_case){2, 4, 2, 64, 0, 0, lq, lk}, 0, 0, &rng);
  make_data(&dec, (attn_case){2, 4, 2, 64, 1, 10}, 0, 1, &rng);
  attn_tensors t, r, dd;
  make_tensors(&t, ctx, &da, YK_BF16, on_device, 1);
  make_tensors(&r, ctx, &ra, YK_BF16, on_device, 0);
  make_tensors(&dd, ctx, &dec, YK_BF16, on_device, 0);
  yh_tensor *outs[] = {&t.out, &t.lse, &t.dq, &t.dk, &t.dv, &r.out, &r.lse, &dd.out, &dd.lse};
  enum { OUTS = sizeof outs / sizeof outs[0] };
  void *before[OUTS];
  for (int i = 0; i < OUTS; i++) before[i] = yh_snapshot(outs[i]);
  const yk_attention_params p = params_of(&da, &t, on_device), pr = params_of(&ra, &r, on_device),
                            pd = params_of(&dec, &dd, on_device);
  yk_attention_params p2;
  DLTensor *q = &t.q.dl, *k = &t.k.dl, *v = &t.v.dl, *out = &t.out.dl, *lse = &t.lse.dl, x, y, z, w;
  int64_t s1[4], s2[4], s3[4], s4[4];

  cr_assert_eq(yk_flash_attention_forward(NULL, q, k, v, &p, out, lse, NULL), INVALID);
  ts_assert_rejected(ctx, FWD(NULL, k, v, &p, out, lse), INVALID, "flash_attention_forward: q is NULL");
  ts_assert_rejected(ctx, FWD(q, NULL, v, &p, out, lse), INVALID, "flash_attention_forward: k is NULL");
  ts_assert_rejected(ctx, FWD(q, k, NULL, &p, out, lse), INVALID, "flash_attention_forward: v is NULL");
  ts_assert_rejected(ctx, FWD(q, k, v, &p, NULL, lse), INVALID, "flash_attention_forward: out is NULL");
  ts_assert_rejected(ctx, FWD(q, k, v, NULL, out, lse), INVALID, "flash_attention_forward: params is NULL");
  x = reshaped(&t.v, s1, 1, 9);
  ts_assert_rejected(ctx, FWD(q, k, &x, &p, out, lse), INVALID, "v has shape [2, 9, 2, 64], expected [2, 10, 2, 64]");
  x = reshaped(&t.k, s1, 3, 32), y = reshaped(&t.v, s2, 3, 32);
  ts_assert_rejected(ctx, FWD(q, &x, &y, &p, out, lse), INVALID, "k has head_dim 32, q has 64");
  x = reshaped(&t.k, s1, 0, 1), y = reshaped(&t.v, s2, 0, 1);
  ts_assert_rejected(ctx, FWD(q, &x, &y, &p, out, lse), INVALID, "k has batch 1, q has 2");
  x = reshaped(&t.q, s1, 2, 3), y = reshaped(&t.out, s2, 2, 3);
  ts_assert_rejected(ctx, FWD(&x, k, v, &p, &y, lse), INVALID, "2 kv heads do not divide 3 q heads");
  x = retyped(&t.k, kDLFloat, 16), y = retyped(&t.v, kDLFloat, 16);
  ts_assert_rejected(ctx, FWD(q, &x, &y, &p, out, lse), INVALID, "k is float16 but q is bfloat16");
  x = reshaped(&t.q, s1, 3, 0), y = reshaped(&t.k, s2, 3, 0), z = reshaped(&t.v, s3, 3, 0),
  w = reshaped(&t.out, s4, 3, 0);
  ts_assert_rejected(ctx, FWD(&x, &y, &z, &p, &w, lse), YK_ERR_UNSUPPORTED,
                     on_device ? "head_dim 0 is not built for the GPU" : "head_dim 0 is outside 1..1024");
  {
    const int64_t wide[4] = {1, 2, 1, 2000};
    yh_tensor wq, wk, wv, wo;
    tensor(&wq, ctx, YK_BF16, 4, wide, 0, on_device), tensor(&wk, ctx, YK_BF16, 4, wide, 0, on_device);
    tensor(&wv, ctx, YK_BF16, 4, wide, 0, on_device), tensor(&wo, ctx, YK_BF16, 4, wide, 0, on_device);
    const yk_attention_params pw = {0};
    void *wo_before = yh_snapshot(&wo);
    ts_assert_rejected(ctx, FWD(&wq.dl, &wk.dl, &wv.dl, &pw, &wo.dl, NULL), YK_ERR_UNSUPPORTED,
                       on_device ? "head_dim 2000 is not built for the GPU" : "head_dim 2000 is outside 1..1024");
    cr_assert_eq(yh_bytes_changed(&wo, wo_before), 0, "a rejected call wrote to out");
    free(wo_before);
    yh_tensor_free(&wq), yh_tensor_free(&wk), yh_tensor_free(&wv), yh_tensor_free(&wo);
  }
  p2 = p, p2.scale = -1;
  ts_assert_rejected(ctx, FWD(q, k, v, &p2, out, lse), INVALID, "scale must be finite and positive");
  p2.scale = NAN;
  ts_assert_rejected(ctx, FWD(q, k, v, &p2, out, lse), INVALID, "scale must be finite and positive");
  x = reshaped(&t.lse, s1, 2, 5);
  ts_assert_rejected(ctx, FWD(q, k, v, &p, out, &x), INVALID, "lse dimension 2 is 5, expected 6");
  x = retyped(&t.lse, kDLBfloat, 16);
  ts_assert_rejected(ctx, FWD(q, k, v, &p, out, &x), INVALID, "lse must be float32");
  x = reshaped(&t.out, s1, 1, 5);
  ts_assert_rejected(ctx, FWD(q, k, v, &p, &x, lse), INVALID, "out has shape [2, 5, 4, 64], expected [2, 6, 4, 64]");
  {
    int64_t strides[4];
    memcpy(strides, t.out.dl.strides ? t.out.dl.strides : (int64_t[]){6 * 4 * 64, 4 * 64, 64, 1}, sizeof strides);
    strides[2] = 0; /* every head of a row in one place: the writes would race */
    x = t.out.dl, x.strides = strides;
    ts_assert_rejected(ctx, FWD(q, k, v, &p, &x, lse), INVALID, "out: elements overlap (dimension 2 has stride 0");
  }
  ts_assert_rejected(ctx, FWD(q, k, v, &p, k, lse), INVALID, "out has shape");
  ts_assert_rejected(ctx, FWD(q, k, v, &p, q, lse), INVALID, "out overlaps q, which the call still reads");

  /* ragged batches */
  DLTensor *rq = &r.q.dl, *rk = &r.k.dl, *rv = &r.v.dl, *ro = &r.out.dl, *rl = &r.lse.dl;
  p2 = pr, p2.cu_seqlens_k = NULL;
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, "give both cu_seqlens_q and cu_seqlens_k, or neither");
  p2 = pr, p2.cu_seqlens_q = NULL;
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, "give both cu_seqlens_q and cu_seqlens_k, or neither");
  x = retyped(&r.cu_q, kDLFloat, 32), p2 = pr, p2.cu_seqlens_q = &x;
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, "cu_seqlens_q: expected dtype int32 or int64");
  x = retyped(&r.cu_q, kDLInt, 64); /* rejected before anything reads past the int32 buffer */
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, "cu_seqlens_q must be int32");
  x = reshaped(&r.cu_k, s1, 0, 2), p2 = pr, p2.cu_seqlens_k = &x;
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, "cu_seqlens_k has 2 entries for 2 sequences");
  x = reshaped(&r.lse, s1, 1, 5);
  ts_assert_rejected(ctx, FWD(rq, rk, rv, &pr, ro, &x), INVALID, "lse dimension 1 is 5, expected 6");
  if (!on_device) { /* offsets the host can read are checked before anything runs */
    static const int32_t bad[4][3] = {{0, 3, 2}, {0, 2, 40}, {1, 3, 7}, {0, 5, 3}};
    static const char *const why[4] = {"cu_seqlens_q decreases at 1 (3 then 2)",
                                       "cu_seqlens_q ends at 40, past the 6 tokens of the tensor",
                                       "cu_seqlens_k[0] is 1, not 0", "cu_seqlens_k decreases at 1 (5 then 3)"};
    for (int i = 0; i < 4; i++) {
      yh_tensor cu;
      const int64_t three = 3;
      cr_assert_eq(yh_tensor_init(&cu, ctx, YK_I32, 1, &three, NULL, 0), 0);
      memcpy(cu.host, bad[i], sizeof bad[i]);
      p2 = pr;
      if (i < 2)
        p2.cu_seqlens_q = &cu.dl;
      else
        p2.cu_seqlens_k = &cu.dl;
      ts_assert_rejected(ctx, FWD(rq, rk, rv, &p2, ro, rl), INVALID, why[i]);
      yh_tensor_free(&cu);
    }
  }

  /* decode */
  DLTensor *dq_ = &dd.q.dl, *dk_ = &dd.k.dl, *dv_ = &dd.v.dl, *do_ = &dd.out.dl, *dl_ = &dd.lse.dl;
  p2 = pd, p2.cu_seqlens_q = &r.cu_q.dl;
  ts_assert_rejected(ctx, DECODE(dq_, dk_, dv_, &p2, do_, dl_), INVALID,
                     "decode takes one query a sequence; cu_seqlens_q must be NULL");
  p2 = pd, p2.num_splits = 200;
  ts_assert_rejected(ctx, DECODE(dq_, dk_, dv_, &p2, do_, dl_), INVALID, "num_splits 200 is outside 0..128");
  ts_assert_rejected(ctx, DECODE(q, dk_, dv_, &pd, do_, dl_), INVALID, "attention_decode: q: expected 3 dimensions");
  ts_assert_rejected(ctx, DECODE(dq_, dk_, dv_, &pd, do_, lse), INVALID, "lse: expected 2 dimensions, got 3");
  x = reshaped(&dd.k, s1, 0, 3), y = reshaped(&dd.v, s2, 0, 3);
  ts_assert_rejected(ctx, DECODE(dq_, &x, &y, &pd, do_, dl_), INVALID, "k has batch 3, q has 2");
  ts_assert_rejected(ctx, DECODE(dq_, dk_, dv_, NULL, do_, dl_), INVALID, "attention_decode: params is NULL");

  /* backward */
  const DLTensor *g = &t.dout.dl;
  DLTensor *gq = &t.dq.dl, *gk = &t.dk.dl, *gv = &t.dv.dl;
#define BWD(g_, l_, gq_, gk_, gv_) yk_flash_attention_backward(ctx, g_, q, k, v, out, l_, &p, gq_, gk_, gv_, NULL)
  ts_assert_rejected(ctx, BWD(g, NULL, gq, gk, gv), INVALID, "flash_attention_backward: lse is NULL");
  ts_assert_rejected(ctx, BWD(NULL, lse, gq, gk, gv), INVALID, "flash_attention_backward: dout is NULL");
  ts_assert_rejected(ctx, BWD(g, lse, NULL, gk, gv), INVALID, "flash_attention_backward: dq is NULL");
  ts_assert_rejected(ctx, BWD(g, lse, gq, gq, gv), INVALID, "dk has shape [2, 6, 4, 64], expected [2, 10, 2, 64]");
  x = retyped(&t.dout, kDLFloat, 16);
  ts_assert_rejected(ctx, BWD(&x, lse, gq, gk, gv), INVALID, "dout is float16 but q is bfloat16");
  x = reshaped(&t.lse, s1, 1, 2);
  ts_assert_rejected(ctx, BWD(g, &x, gq, gk, gv), INVALID, "lse dimension 1 is 2, expected 4");
  /* outputs over inputs: pass two would read q after pass one wrote dq over it */
  ts_assert_rejected(ctx, BWD(g, lse, q, gk, gv), INVALID, "dq overlaps q, which the call still reads");
  ts_assert_rejected(ctx, BWD(g, lse, gq, k, gv), INVALID, "dk overlaps k, which the call still reads");
  ts_assert_rejected(ctx, BWD(g, lse, gq, gk, gk), INVALID, "dv overlaps dk, which the call still reads");
#undef BWD

  /* merge: o [2, 4, 64], lse [2, 4] */
  ts_assert_rejected(ctx, MERGE(NULL, dl_, dq_, dl_, do_, dl_), INVALID, "merge_attention_states: o_a is NULL");
  x = reshaped(&dd.q, s1, 1, 3);
  ts_assert_rejected(ctx, MERGE(do_, dl_, &x, dl_, do_, dl_), INVALID, "o_b has shape [2, 3, 64], expected [2, 4, 64]");
  x = reshaped(&dd.lse, s1, 1, 3);
  ts_assert_rejected(ctx, MERGE(do_, dl_, dq_, &x, do_, dl_), INVALID, "lse_b must be [tokens, heads] = [2, 4]");
  x = retyped(&dd.lse, kDLBfloat, 16);
  ts_assert_rejected(ctx, MERGE(do_, &x, dq_, dl_, do_, dl_), INVALID, "lse_a must be float32");
  x = retyped(&dd.q, kDLFloat, 16);
  ts_assert_rejected(ctx, MERGE(do_, dl_, dq_, dl_, &x, dl_), INVALID, "out_o is float16 but o_a is bfloat16");
  x = reshaped(&dd.out, s1, 2, 32);
  ts_assert_rejected(ctx, MERGE(do_, dl_, dq_, dl_, &x, dl_), INVALID, "out_o has shape [2, 4, 32]");

  for (int i = 0; i < OUTS; i++) {
    cr_assert_eq(yh_bytes_changed(outs[i], before[i]), 0, "a rejected call wrote to output %d", i);
    free(before[i]);
  }
  free_tensors(&t), free_tensors(&r), free_tensors(&dd);
  free_data(&da), free_data(&ra), free_data(&dec);
}

/* The Hopper prefill's warpgroups by the queries' length (no GPU needed): causal grids of short
 * sequences at head dim 64 on two (128-row blocks), longer or unmasked ones, and head dim 128, on
 * complete()'s choice; and the warm-up matrix holds both forms a causal call at head dim 64 takes. */
typedef struct warm_forms {
  int causal[4], plain[4]; /* specs by warpgroups */
} warm_forms;

static void count_forms(void *user, const yk_spec *s) {
  warm_forms *f = user;
  const int groups = yk_attention_prefill_sm90_rows(s) / 64;
  cr_assert(groups >= 1 && groups <= 3, "warpgroups %d", groups);
  (s->v[4] ? f->causal : f->plain)[groups]++; /* field 4: causal */
}

Test(attention, prefill_sm90_warpgroups_follow_the_length) {
  const int index = yk_registry_find("attention_prefill_sm90");
  cr_assert_geq(index, 0);
  const yk_op_def *op = yk_registry_op(index);
  cr_assert_str_eq(op->fields[4].name, "causal");
  cr_assert_str_eq(op->fields[1].name, "block_n");
  /* head dim 64, causal: one warpgroup of 64-key tiles up to 1024 queries (two for paged keys), two
   * below 4096, three from there and without the mask; head dim 128 always two */
  static const struct {
    int head_dim, causal, paged;
    int64_t queries;
    int rows, block_n;
  } cases[] = {{64, 1, 0, 1, 64, 64},      {64, 1, 0, 1024, 64, 64},    {64, 1, 0, 1025, 128, 128},
               {64, 1, 0, 4095, 128, 128}, {64, 1, 0, 4096, 192, 128},  {64, 1, 0, 16384, 192, 128},
               {64, 0, 0, 1024, 192, 128}, {64, 1, 1, 1024, 128, 128},  {64, 1, 2, 1, 128, 128},
               {64, 1, 1, 4096, 192, 128}, {128, 1, 0, 1024, 128, 128}, {128, 0, 0, 16384, 128, 128}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    yk_spec s;
    yk_attention_prefill_sm90_spec(&s, YK_BF16, cases[i].head_dim, cases[i].causal, 0, cases[i].paged,
                                   cases[i].paged ? 16 : 0, cases[i].queries);
    op->complete(&s);
    cr_assert(yk_attention_prefill_sm90_rows(&s) == cases[i].rows && s.v[1] == cases[i].block_n,
              "head_dim %d causal %d paged %d, %lld queries: %d rows a block, block_n %d", cases[i].head_dim,
              cases[i].causal, cases[i].paged, (long long)cases[i].queries, yk_attention_prefill_sm90_rows(&s), s.v[1]);
  }
  const yk_model_preset d64 = {"d64", 2048, 32, 32, 64, 8192, "silu"}, *models[] = {&d64};
  const yk_warm_request req = {1u << YK_BF16, models, 1};
  warm_forms f = {0};
  op->warm_specs(&req, count_forms, &f);
  /* ragged or not, each paging (none, block table, CSR): six specs of each mask on three warpgroups;
   * causal also on two (every paging, a short sequence's paged form and a longer one's contiguous
   * form) and, contiguous only, on one */
  cr_assert(f.plain[3] == 6 && f.plain[2] == 0 && f.plain[1] == 0, "unmasked: %d / %d / %d on three / two / one",
            f.plain[3], f.plain[2], f.plain[1]);
  cr_assert(f.causal[3] == 6 && f.causal[2] == 6 && f.causal[1] == 2, "causal: %d / %d / %d on three / two / one",
            f.causal[3], f.causal[2], f.causal[1]);
}

Test(attention, bad_input_cpu) {
  yk_ctx *ctx = ts_cpu_ctx();
  bad_inputs(ctx, 0);
  yk_ctx_destroy(ctx);
}

Test(attention, bad_input_gpu) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  bad_inputs(ctx, 1);
  yk_ctx_destroy(ctx);
}

/* What only the GPU refuses: head dims it does not build, float32, rows off 16-byte boundaries,
 * offsets it cannot read, and device offsets without the bounds the grid needs. */
Test(attention, bad_input_gpu_only) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  yh_rng rng = {12};
  static const int32_t lq[] = {2, 4}, lk[] = {3, 7};
  attn_data odd, plain, padded, ragged, dec;
  make_data(&odd, (attn_case){1, 4, 2, 72, 4, 8}, 0, 0, &rng);
  make_data(&plain, (attn_case){1, 4, 2, 64, 4, 8}, 0, 0, &rng);
  make_data(&padded, (attn_case){1, 4, 2, 64, 4, 8, .pad = 4}, 0, 0, &rng);
  make_data(&ragged, (attn_case){2, 4, 2, 64, 0, 0, lq, lk}, 0, 0, &rng);
  make_data(&dec, (attn_case){2, 4, 2, 72, 1, 8}, 0, 1, &rng);
  attn_tensors to, tf, tp, tr, td;
  make_tensors(&to, ctx, &odd, YK_BF16, 1, 0);
  make_tensors(&tf, ctx, &plain, YK_F32, 1, 0);
  make_tensors(&tp, ctx, &padded, YK_F16, 1, 0);
  make_tensors(&tr, ctx, &ragged, YK_BF16, 1, 0);
  make_tensors(&td, ctx, &dec, YK_BF16, 1, 0);
  void *before[5] = {yh_snapshot(&to.out), yh_snapshot(&tf.out), yh_snapshot(&tp.out), yh_snapshot(&tr.out),
                     yh_snapshot(&td.out)};
  ts_assert_rejected(ctx, forward(ctx, &odd, &to, 1), YK_ERR_UNSUPPORTED, "head_dim 72 is not built for the GPU");
  ts_assert_rejected(ctx, forward(ctx, &dec, &td, 1), YK_ERR_UNSUPPORTED, "head_dim 72 is not built for the GPU");
  ts_assert_rejected(ctx, forward(ctx, &plain, &tf, 1), YK_ERR_UNSUPPORTED, "float16 or bfloat16, not float32");
  ts_assert_rejected(ctx, forward(ctx, &padded, &tp, 1), YK_ERR_UNSUPPORTED, "16-byte boundaries");
  yh_tensor host_cu[2];
  const int64_t three = 3;
  for (int i = 0; i < 2; i++) {
    cr_assert_eq(yh_tensor_init(&host_cu[i], ctx, YK_I32, 1, &three, NULL, 0), 0);
    memcpy(host_cu[i].host, i ? ragged.cu_k : ragged.cu_q, 3 * sizeof(int32_t));
  }
  yk_attention_params p = params_of(&ragged, &tr, 1);
  p.cu_seqlens_q = &host_cu[0].dl, p.cu_seqlens_k = &host_cu[1].dl;
  ts_assert_rejected(ctx, yk_flash_attention_forward(ctx, &tr.q.dl, &tr.k.dl, &tr.v.dl, &p, &tr.out.dl, NULL, NULL),
                     INVALID, "cu_seqlens_q is in pageable host memory");
  p = params_of(&ragged, &tr, 1), p.max_seqlen_q = 0;
  ts_assert_rejected(ctx, yk_flash_attention_forward(ctx, &tr.q.dl, &tr.k.dl, &tr.v.dl, &p, &tr.out.dl, NULL, NULL),
                     INVALID, "cu_seqlens_q is in device memory; give max_seqlen_q");
  p = params_of(&ragged, &tr, 1), p.max_seqlen_k = 0;
  ts_assert_rejected(ctx, yk_flash_attention_forward(ctx, &tr.q.dl, &tr.k.dl, &tr.v.dl, &p, &tr.out.dl, NULL, NULL),
                     INVALID, "give max_seqlen_k");
  yh_tensor *outs[5] = {&to.out, &tf.out, &tp.out, &tr.out, &td.out};
  for (int i = 0; i < 5; i++) {
    cr_assert_eq(yh_bytes_changed(outs[i], before[i]), 0, "a rejected call wrote to out %d", i);
    free(before[i]);
  }
  yh_tensor_free(&host_cu[0]), yh_tensor_free(&host_cu[1]);
  free_tensors(&to), free_tensors(&tf), free_tensors(&tp), free_tensors(&tr), free_tensors(&td);
  free_data(&odd), free_data(&plain), free_data(&padded), free_data(&ragged), free_data(&dec);
  yk_ctx_destroy(ctx);
}

enum { PREFILL_KERNELS = 9 };

/* One test a head dim and dtype: the specs of one are none of another's, so Criterion's workers
 * compile them side by side without compiling a kernel twice (in one test this took ~380 s of
 * the H100 host's time, nearly all NVRTC). */
typedef struct forward_shard {
  int64_t head_dim;
  int dtype;
} forward_shard;

/* A shard for each head dim of the GPU cases, in each dtype: derived from the table, so a new
 * case's head dim gets its own. */
ParameterizedTestParameters(attention, gpu_forward_matches_cpu) {
  static forward_shard shards[FORWARD_CASES * 2];
  int n = 0;
  for (int i = 0; i < FORWARD_CASES; i++) {
    int seen = forward_cases[i].cpu_only;
    for (int j = 0; j < n; j++) seen |= shards[j].head_dim == forward_cases[i].head_dim;
    if (seen) continue;
    shards[n++] = (forward_shard){forward_cases[i].head_dim, YK_F16};
    shards[n++] = (forward_shard){forward_cases[i].head_dim, YK_BF16};
  }
  return cr_make_param_array(forward_shard, shards, n);
}

/* Whether a forced loop of the Hopper prefill can be built at this head dim: at 256 (O 128 registers
 * a thread, Q 64 KB) three stages or three warpgroups do not fit, and the generator says so. */
static int sm90_loop_fits(const char *loop, int64_t head_dim) {
  char text[200], why[256];
  yk_spec s;
  snprintf(text, sizeof text, "attention_prefill_sm90:dtype=bf16,head_dim=%d,%s", (int)head_dim, loop);
  return yk_spec_parse(text, &s, why, sizeof why) == 0;
}

/* Every prefill kernel the device has (sm_90: wgmma in each of its loops that fit the head dim, and
 * mma.sync forced). */
ParameterizedTest(forward_shard *shard, attention, gpu_forward_matches_cpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  setenv("YK_PREFILL_KERNEL", "mma_sync", 1);
  yk_ctx *mma = ts_gpu_ctx();
  unsetenv("YK_PREFILL_KERNEL");
  cr_assert_not_null(mma);
  /* the Hopper prefill's other loops, as a tuning sweep would force them (TMA loads unless tma=0) */
  /* (3 stages of 128-key tiles at head_dim 128: 230496 bytes of shared memory, near the 232448 allowed) */
  /* (three warpgroups, the default at head_dim 64: with 64-key tiles at either head dim, as registers allow) */
  static const char *const loops[PREFILL_KERNELS - 2] = {
      "pipeline=1,warpgroups=1,block_n=64", "pipeline=2,warpgroups=2,stages=3",   "pipeline=1,warpgroups=2,tma=0",
      "pipeline=2,warpgroups=2,tma=0",      "pipeline=1,warpgroups=3,block_n=64", "pipeline=1,warpgroups=2,stages=2",
      "pipeline=0,warpgroups=2,tma=0"};
  yk_ctx *gpus[PREFILL_KERNELS] = {gpu, mma};
  int runs[PREFILL_KERNELS] = {1, 1}, forced = 0;
  for (int i = 0; i < PREFILL_KERNELS - 2; i++) {
    runs[2 + i] = yk_attention_prefill_sm90_head_dim((int)shard->head_dim) && sm90_loop_fits(loops[i], shard->head_dim);
    /* 64 and 128 take every loop; 256 the five that fit (one warpgroup, cp.async producers, two stages, no producer) */
    cr_assert(runs[2 + i] || shard->head_dim == 256 || !yk_attention_prefill_sm90_head_dim((int)shard->head_dim),
              "the forced loop %s does not fit head_dim %d", loops[i], (int)shard->head_dim);
    forced += runs[2 + i];
    if (!runs[2 + i]) continue;
    gpus[2 + i] = ts_gpu_ctx_forcing("attention_prefill_sm90", loops[i]);
    cr_assert_not_null(gpus[2 + i]);
  }
  cr_assert(forced >= 5 || !yk_attention_prefill_sm90_head_dim((int)shard->head_dim), "only %d Hopper loops ran",
            forced);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_forward");
  static const char *const labels[PREFILL_KERNELS] = {"gpu forward (default kernel)",
                                                      "gpu forward (mma.sync)",
                                                      "gpu forward (sm90 pipeline 1, 1 warpgroup, 64-key tiles)",
                                                      "gpu forward (sm90 pipeline 2, 3 stages)",
                                                      "gpu forward (sm90 pipeline 1, cp.async producer)",
                                                      "gpu forward (sm90 pipeline 2, cp.async producer)",
                                                      "gpu forward (sm90 three warpgroups, 64-key tiles)",
                                                      "gpu forward (sm90 two warpgroups, 2 stages)",
                                                      "gpu forward (sm90 pipeline 0, no producer)"};
  const int dtype = shard->dtype;
  for (int i = 0; i < FORWARD_CASES; i++)
    for (int causal = 0; causal <= 1; causal++) {
      if (forward_cases[i].cpu_only || forward_cases[i].head_dim != shard->head_dim) continue;
      yh_rng rng = {seed + 0x9E3779B97F4A7C15ull * (uint64_t)(2 * i + causal + 1)}; /* a case's data is its own */
      attn_data a;
      attn_tensors h, d;
      make_data(&a, forward_cases[i], causal, 0, &rng);
      cpu_and_gpu(cpu, gpus[0], &a, dtype, 0, &h, &d);
      attn_ref want = cpu_result(&h, &a); /* once for every kernel: the CPU forward was most of the time */
      for (int kernel = 0; kernel < PREFILL_KERNELS; kernel++) {
        if (!runs[kernel]) continue;
        if (kernel > 0) gpu_copy(gpus[kernel], &a, dtype, 0, &h, &d);
        yh_poison(&d.out), yh_poison(&d.lse);
        void *gaps = yh_snapshot(&d.out);
        cr_assert_eq(forward(gpus[kernel], &a, &d, 1), YK_OK, "%s: %s", labels[kernel],
                     yk_ctx_last_error(gpus[kernel]));
        cr_assert_eq(yh_sync(gpus[kernel]), 0, "%s: kernel failed", labels[kernel]);
        cr_assert_eq(yh_gap_bytes_changed(&d.out, gaps), 0, "%s wrote between rows of out", labels[kernel]);
        free(gaps);
        /* want is already in dtype: rounding it again changes nothing */
        check_forward(&d, &a, dtype, &want, 1, labels[kernel], seed);
        free_tensors(&d);
      }
      free_ref(&want), free_tensors(&h), free_data(&a);
    }
  for (int i = 0; i < PREFILL_KERNELS; i++)
    if (runs[i]) yk_ctx_destroy(gpus[i]);
  yk_ctx_destroy(cpu);
}

/* The prefill call's few queries a sequence (dense and ragged) through a caller's workspace: of the
 * size yk_flash_attention_forward_workspace_floats gives, the same bytes as one allocated for the
 * call; num_splits 3 in its own size; one float caps the split to none. Each against the CPU; an
 * explicit split the workspace cannot hold is refused before anything runs. The cases take the
 * decode kernel's blocks of 1, 2, 4 and 8 row tiles (row_tiles, gen/ops/attention_decode.c): 16
 * rows or fewer one; 64 (8 queries of 8 q heads, 4 of 16, ragged 16 of 4 with tails) 4; 24 two
 * where 16-row blocks would pass one wave (8 x 10 kv heads x 2 on 132 SMs), a grid the call does
 * not split; 128 (32 queries of 4) one block of 8, 200 (25 of 8, head_dim 80) two with a 72-row
 * tail; 72 at head_dim 256 two blocks of 4. */
static const struct {
  attn_case c;
  int row_tiles, splits; /* splits: whether the call's own choice splits the keys */
} gpu_few_query_cases[] = {
    {{2, 8, 2, 128, 4, 3000}, 1, 1},
    {{4, 8, 2, 128, 0, 0, lens_q_few, lens_k_few}, 1, 1},
    {{1, 2, 1, 256, 5, 2000}, 1, 1},
    {{2, 16, 2, 128, 8, 3000}, 4, 1},
    {{3, 8, 2, 128, 0, 0, lens_q_few2, lens_k_few2}, 4, 1},
    {{1, 16, 1, 256, 4, 1500}, 4, 1},
    {{8, 20, 10, 64, 12, 700}, 2, 0},
    {{1, 32, 8, 128, 32, 3000}, 8, 1},
    {{2, 8, 1, 80, 25, 900}, 8, 1},
    {{1, 16, 2, 256, 9, 1500}, 4, 1},
};

Test(attention, gpu_few_queries_take_workspace_and_splits) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_few_queries");
  yh_rng rng = {seed};
  for (int n = 0; n < 2 * (int)(sizeof gpu_few_query_cases / sizeof gpu_few_query_cases[0]); n++) {
    const int i = n / 2; /* each case causal, then not */
    attn_data a;
    make_data(&a, gpu_few_query_cases[i].c, n % 2 == 0, 0, &rng);
    const int dtype = YK_BF16;
    attn_tensors h, d;
    cpu_and_gpu(cpu, gpu, &a, dtype, 0, &h, &d);
    attn_ref want = cpu_result(&h, &a);
    char what[200];
    describe(&a, dtype, what, sizeof what);
    int64_t floats[3];
    for (int k = 0; k < 3; k++) /* the call's own split, 3 splits, one float */
      floats[k] = k == 2 ? 1
                         : (int64_t)yk_flash_attention_forward_workspace_floats(gpu, a.c.batch, a.total_q, a.max_q,
                                                                                a.c.q_heads, a.c.kv_heads, a.c.head_dim,
                                                                                a.max_k, a.total_k, k == 1 ? 3 : 0);
    cr_assert((floats[0] > 0) == gpu_few_query_cases[i].splits &&
                  floats[1] == 3 * a.total_q * a.c.q_heads * (a.c.head_dim + 1),
              "%s: %lld %lld", what, (long long)floats[0], (long long)floats[1]);
    void *allocated = NULL;
    for (int k = -1; k < 3; k++) {        /* -1: no workspace */
      if (k == 0 && !floats[0]) continue; /* no split: none asked */
      yk_attention_params p = params_of(&a, &d, 1);
      yh_tensor ws = {0};
      if (k >= 0) {
        cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &floats[k], NULL, 1), 0);
        yh_poison(&ws);
        p.workspace = &ws.dl;
      }
      p.num_splits = k == 1 ? 3 : 0;
      yh_poison(&d.out), yh_poison(&d.lse);
      cr_assert_eq(yk_flash_attention_forward(gpu, &d.q.dl, &d.k.dl, &d.v.dl, &p, &d.out.dl, &d.lse.dl, NULL), YK_OK,
                   "%s: %s", what, yk_ctx_last_error(gpu));
      cr_assert_eq(yh_sync(gpu), 0, "%s: kernel failed", what);
      static const char *const labels[4] = {"few queries, allocated workspace", "few queries, the workspace asked",
                                            "few queries, 3 splits", "few queries, one float of workspace"};
      check_forward(&d, &a, dtype, &want, 1, labels[k + 1], seed);
      if (k == -1) allocated = yh_snapshot(&d.out);
      if (k == 0)
        cr_assert_eq(yh_bytes_changed(&d.out, allocated), 0, "%s: a caller's workspace changed the result", what);
      if (k == 2) { /* 3 splits with no room for them: refused, nothing written */
        void *before = yh_snapshot(&d.out);
        p.num_splits = 3;
        ts_assert_rejected(gpu,
                           yk_flash_attention_forward(gpu, &d.q.dl, &d.k.dl, &d.v.dl, &p, &d.out.dl, &d.lse.dl, NULL),
                           INVALID, "workspace");
        cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
        cr_assert_eq(yh_bytes_changed(&d.out, before), 0, "%s: a refused call wrote", what);
        free(before);
      }
      yh_tensor_free(&ws);
    }
    char tiles[32];
    snprintf(tiles, sizeof tiles, "row_tiles=%d", gpu_few_query_cases[i].row_tiles);
    cr_assert_gt(ts_kernels_like(gpu, "attention_decode:", tiles), 0, "%s: no decode kernel of %s", what, tiles);
    free(allocated);
    free_ref(&want);
    free_tensors(&h), free_tensors(&d);
    free_data(&a);
  }
  yk_ctx_destroy(cpu), yk_ctx_destroy(gpu);
}
