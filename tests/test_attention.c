/* Attention: flash_attention_forward, flash_attention_backward, attention_decode and
 * merge_attention_states. The CPU fallback against the float64 references, the references'
 * gradients against finite differences, the GPU against the fallback, and bad input.
 *
 * Inputs are random multiples of 1/64 in (-2, 2): every dtype holds them exactly, so one float64
 * reference serves f32, f16 and bf16 alike. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/attention.h"
#include "cpu_fallback/half.h"
#include "gen/attention.h"
#include "runtime/context.h"

#ifdef __x86_64__
#include <cpuid.h>
#endif
#include "tests/support.h"

#define MAX_BATCH 8

typedef struct attn_case {
  int64_t batch, q_heads, kv_heads, head_dim, seq_q, seq_k; /* seq_q, seq_k: dense batches */
  const int32_t *lens_q, *lens_k;                           /* ragged: one length a sequence, or NULL (dense) */
  int64_t pad;                                              /* elements after each row of all but lse: strided views */
  float scale;                                              /* 0: 1 / sqrt(head_dim) */
  int cpu_only;                                             /* a head_dim or padding the GPU kernels do not take */
} attn_case;

/* One problem: its offsets, the shape the references take, and its inputs as float64. */
typedef struct attn_data {
  attn_case c;
  int causal, decode;
  int64_t total_q, total_k, max_q, max_k;
  int32_t cu_q[MAX_BATCH + 1], cu_k[MAX_BATCH + 1];
  yk_attention_shape shape;
  double *q, *k, *v, *dout;
} attn_data;

typedef struct attn_tensors {
  yh_tensor q, k, v, out, lse, cu_q, cu_k, dout, dq, dk, dv;
} attn_tensors;

static double *values(yh_rng *rng, int64_t n) {
  double *x = malloc((size_t)(n ? n : 1) * sizeof *x);
  cr_assert_not_null(x);
  for (int64_t i = 0; i < n; i++) x[i] = (double)((int64_t)(yh_next(rng) % 255) - 127) / 64;
  return x;
}

static double *doubles(yh_tensor *t) {
  double *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *d);
  cr_assert_not_null(d);
  yh_to_double(t, d);
  return d;
}

static int64_t offsets(const int32_t *lens, int64_t batch, int64_t dense_len, int32_t *cu, int64_t *longest) {
  cu[0] = 0;
  *longest = lens ? 0 : dense_len;
  for (int64_t b = 0; b < batch; b++) {
    cu[b + 1] = cu[b] + (lens ? lens[b] : (int32_t)dense_len);
    if (lens && lens[b] > *longest) *longest = lens[b];
  }
  return cu[batch];
}

/* decode: one query a sequence (seq_q 1, q dense); the case's lens_q is ignored. */
static void make_data(attn_data *a, attn_case c, int causal, int decode, yh_rng *rng) {
  memset(a, 0, sizeof *a);
  cr_assert(c.batch <= MAX_BATCH);
  if (decode) c.seq_q = 1, c.lens_q = NULL;
  a->c = c, a->causal = causal && !decode, a->decode = decode;
  a->total_q = offsets(c.lens_q, c.batch, c.seq_q, a->cu_q, &a->max_q);
  a->total_k = offsets(c.lens_k, c.batch, c.seq_k, a->cu_k, &a->max_k);
  a->shape = (yk_attention_shape){.dtype = YK_F32,
                                  .batch = c.batch,
                                  .q_heads = c.q_heads,
                                  .kv_heads = c.kv_heads,
                                  .head_dim = c.head_dim,
                                  .cu_seqlens_q = c.lens_q ? a->cu_q : NULL,
                                  .cu_seqlens_k = c.lens_k ? a->cu_k : NULL,
                                  .seq_q = c.seq_q,
                                  .seq_k = c.seq_k,
                                  .causal = a->causal,
                                  .scale = c.scale != 0 ? c.scale : 1.f / sqrtf((float)c.head_dim)};
  a->q = values(rng, a->total_q * c.q_heads * c.head_dim);
  a->dout = values(rng, a->total_q * c.q_heads * c.head_dim);
  a->k = values(rng, a->total_k * c.kv_heads * c.head_dim);
  a->v = values(rng, a->total_k * c.kv_heads * c.head_dim);
}

static void free_data(attn_data *a) { free(a->q), free(a->k), free(a->v), free(a->dout); }

/* The CPU kernels are built three times on x86-64 (cpu_fallback/attention_avx2.c, _avx512.c), the
 * AVX-512 one with AMX tiles for the bfloat16 forward besides: the CPU tests run each build this CPU
 * has, the widest by default (AMX where it has that), then AVX-512 without AMX, then the AVX2 one,
 * then the plain one everywhere (YK_CPU_ISA caps the build). */
enum { CPU_BUILDS = 4 };
static const char *const cpu_builds[CPU_BUILDS] = {"default", "avx512", "avx2", "plain"};

static yk_ctx *cpu_ctx_of(const char *build, int threads) {
  const int capped = strcmp(build, "default") != 0;
  if (capped) setenv("YK_CPU_ISA", build, 1);
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU, o.cache_memory_only = 1, o.cpu_threads = threads;
  yk_ctx *ctx = NULL;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  if (capped) unsetenv("YK_CPU_ISA");
  return ctx;
}

/* Whether build b runs the kernels build b - 1 ran (a CPU without AVX-512 runs AVX2's by default). */
static int build_repeats(int b) {
  if (b == 0) return 0;
  yk_ctx *ctx = cpu_ctx_of(cpu_builds[b], 1), *prev = cpu_ctx_of(cpu_builds[b - 1], 1);
  const int same = ctx->pool.isa == prev->pool.isa;
  yk_ctx_destroy(ctx), yk_ctx_destroy(prev);
  return same;
}

/* "what, NAME build" for a capped build, what alone for the default one. */
static const char *build_label(char *buf, size_t n, const char *what, int build) {
  if (build == 0) return what;
  snprintf(buf, n, "%s, %s build", what, cpu_builds[build]);
  return buf;
}

/* Compact strides except that each row of head_dim takes head_dim + pad elements. */
static void padded_strides(int n, const int64_t *shape, int64_t pad, int64_t *strides) {
  strides[n - 1] = 1;
  strides[n - 2] = shape[n - 1] + pad;
  for (int i = n - 3; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
}

static void tensor(yh_tensor *t, yk_ctx *ctx, int type, int n, const int64_t *shape, int64_t pad, int on_device) {
  int64_t strides[4];
  padded_strides(n, shape, pad, strides);
  cr_assert_eq(yh_tensor_init(t, ctx, type, n, shape, strides, on_device), 0, "tensor allocation failed");
  yh_poison(t); /* NaN in the gaps of strided views and in outputs not yet written */
}

static void make_tensors(attn_tensors *t, yk_ctx *ctx, const attn_data *a, int dtype, int on_device, int grads) {
  memset(t, 0, sizeof *t);
  const attn_case *c = &a->c;
  const int64_t d = c->head_dim, b = c->batch, hq = c->q_heads, hk = c->kv_heads;
  const int ragged_q = c->lens_q != NULL, ragged_k = c->lens_k != NULL;
  const int qn = a->decode || ragged_q ? 3 : 4, kn = ragged_k ? 3 : 4, ln = a->decode || ragged_q ? 2 : 3;
  const int64_t q3[3] = {a->decode ? b : a->total_q, hq, d}, q4[4] = {b, c->seq_q, hq, d};
  const int64_t k3[3] = {a->total_k, hk, d}, k4[4] = {b, c->seq_k, hk, d};
  const int64_t l2[2] = {a->decode ? b : hq, a->decode ? hq : a->total_q}, l3[3] = {b, hq, c->seq_q};
  const int64_t *qs = qn == 3 ? q3 : q4, *ks = kn == 3 ? k3 : k4;
  tensor(&t->q, ctx, dtype, qn, qs, c->pad, on_device);
  tensor(&t->k, ctx, dtype, kn, ks, c->pad, on_device);
  tensor(&t->v, ctx, dtype, kn, ks, c->pad, on_device);
  tensor(&t->out, ctx, dtype, qn, qs, c->pad, on_device);
  tensor(&t->lse, ctx, YK_F32, ln, ln == 2 ? l2 : l3, 0, on_device);
  yh_from_double(&t->q, a->q), yh_from_double(&t->k, a->k), yh_from_double(&t->v, a->v);
  if (grads) {
    tensor(&t->dout, ctx, dtype, qn, qs, c->pad, on_device);
    tensor(&t->dq, ctx, dtype, qn, qs, c->pad, on_device);
    tensor(&t->dk, ctx, dtype, kn, ks, c->pad, on_device);
    tensor(&t->dv, ctx, dtype, kn, ks, c->pad, on_device);
    yh_from_double(&t->dout, a->dout);
  }
  const int64_t entries = b + 1;
  double cu[MAX_BATCH + 1];
  for (int side = 0; side < 2; side++) {
    if (!(side ? ragged_k : ragged_q && !a->decode)) continue;
    yh_tensor *ct = side ? &t->cu_k : &t->cu_q;
    cr_assert_eq(yh_tensor_init(ct, ctx, YK_I32, 1, &entries, NULL, on_device), 0);
    for (int64_t i = 0; i < entries; i++) cu[i] = side ? a->cu_k[i] : a->cu_q[i];
    yh_from_double(ct, cu);
  }
}

static void free_tensors(attn_tensors *t) {
  yh_tensor *all[] = {&t->q, &t->k, &t->v, &t->out, &t->lse, &t->cu_q, &t->cu_k, &t->dout, &t->dq, &t->dk, &t->dv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
}

/* cu_seqlens where the case is ragged; max_seqlen for device offsets, which the host cannot read. */
static yk_attention_params params_of(const attn_data *a, attn_tensors *t, int on_device) {
  yk_attention_params p = {.causal = a->causal, .scale = a->c.scale};
  if (a->c.lens_q && !a->decode) p.cu_seqlens_q = &t->cu_q.dl;
  if (a->c.lens_k) p.cu_seqlens_k = &t->cu_k.dl;
  if (on_device) p.max_seqlen_q = (int)a->max_q, p.max_seqlen_k = (int)a->max_k;
  return p;
}

static yk_status forward(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device) {
  yk_attention_params p = params_of(a, t, on_device);
  if (a->decode) return yk_attention_decode(ctx, &t->q.dl, &t->k.dl, &t->v.dl, &p, &t->out.dl, &t->lse.dl, NULL);
  return yk_flash_attention_forward(ctx, &t->q.dl, &t->k.dl, &t->v.dl, &p, &t->out.dl, &t->lse.dl, NULL);
}

/* workspace: params->workspace (NULL: the call allocates its own on the GPU). */
static yk_status backward_with(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device, DLTensor *workspace,
                               int deterministic) {
  yk_attention_params p = params_of(a, t, on_device);
  p.workspace = workspace;
  p.deterministic = deterministic;
  return yk_flash_attention_backward(ctx, &t->dout.dl, &t->q.dl, &t->k.dl, &t->v.dl, &t->out.dl, &t->lse.dl, &p,
                                     &t->dq.dl, &t->dk.dl, &t->dv.dl, NULL);
}

static yk_status backward(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device) {
  return backward_with(ctx, a, t, on_device, NULL, 1);
}

static const char *describe(const attn_data *a, int dtype, char *buf, size_t size) {
  const attn_case *c = &a->c;
  snprintf(buf, size, "%s%s b%lld hq%lld/kv%lld d%lld %s q%lld k%lld pad%lld%s", a->decode ? "decode " : "",
           ts_type_name(dtype), (long long)c->batch, (long long)c->q_heads, (long long)c->kv_heads,
           (long long)c->head_dim, c->lens_q || c->lens_k ? "ragged" : "dense", (long long)a->max_q,
           (long long)a->max_k, (long long)c->pad, a->causal ? " causal" : "");
  return buf;
}

/* The float64 forward: out [total_q, q_heads, d], lse in the order of the lse tensor, and which
 * rows of out see no key. */
typedef struct attn_ref {
  double *out, *lse;
  char *empty;
} attn_ref;

static attn_ref reference(const attn_data *a) {
  const int64_t hq = a->c.q_heads, n = a->total_q * hq;
  attn_ref r = {malloc((size_t)(n * a->c.head_dim + 1) * sizeof(double)), malloc((size_t)(n + 1) * sizeof(double)),
                malloc((size_t)(n + 1))};
  double *ref_lse = malloc((size_t)(n + 1) * sizeof *ref_lse);
  cr_assert(r.out && r.lse && r.empty && ref_lse);
  yk_reference_attention_forward(&a->shape, a->q, a->k, a->v, r.out, ref_lse);
  /* the reference's lse is [q_heads, total_q]; dense and decode tensors are [batch, q_heads, seq] */
  const int64_t seq = a->decode ? 1 : a->c.seq_q;
  for (int64_t h = 0; h < hq; h++)
    for (int64_t i = 0; i < a->total_q; i++) {
      const double x = ref_lse[h * a->total_q + i];
      r.lse[a->c.lens_q && !a->decode ? h * a->total_q + i : (i / seq * hq + h) * seq + i % seq] = x;
      r.empty[i * hq + h] = x == -INFINITY;
    }
  free(ref_lse);
  return r;
}

static void free_ref(attn_ref *r) { free(r->out), free(r->lse), free(r->empty); }

/* -inf entries (rows that see no key) must match exactly; the rest by relative norm. */
static double lse_error(const double *got, const double *want, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; i++) {
    if (got[i] == -INFINITY || want[i] == -INFINITY) {
      if (got[i] != want[i]) return INFINITY;
      continue;
    }
    if (!isfinite(got[i])) return INFINITY;
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

static double lse_bound(int dtype) { return dtype == YK_F32 ? 1e-5 : 1e-3; }

/* The CPU's 16-bit outputs computed in float32 miss the reference rounded to their type only where
 * float32's error crosses a rounding boundary: 1.4e-4 at most over seven seeds (bfloat16 on AMX,
 * whose P keeps 16 bits; 1e-4 elsewhere); a P of bfloat16 alone, 1.3e-3. */
#define CPU_HALF_OUT_BOUND 5e-4

/* out and lse against want; out against want rounded to dtype. gpu: the GPU's norm and bound.
 * Rows that see no key must be exactly zero. */
static void check_forward(attn_tensors *t, const attn_data *a, int dtype, const attn_ref *want, int gpu,
                          const char *label, uint64_t seed) {
  char what[200];
  describe(a, dtype, what, sizeof what);
  const int64_t n = t->out.numel, d = a->c.head_dim;
  double *rounded = malloc((size_t)(n + 1) * sizeof *rounded), *got = doubles(&t->out), *got_lse = doubles(&t->lse);
  cr_assert_not_null(rounded);
  memcpy(rounded, want->out, (size_t)n * sizeof *rounded);
  ts_round_to_dtype(dtype, rounded, n);
  const double err = gpu ? ts_gpu_error(got, rounded, n) : yh_rel_error(got, rounded, n);
  const double bound = gpu               ? ts_gpu_tolerance(dtype)
                       : dtype == YK_F32 ? ts_reference_tolerance(dtype)
                                         : CPU_HALF_OUT_BOUND;
  cr_assert(err < bound, "%s %s: out rel err %.3g >= %.3g (seed %llu)", label, what, err, bound,
            (unsigned long long)seed);
  const double lerr = lse_error(got_lse, want->lse, t->lse.numel);
  cr_assert(lerr < lse_bound(dtype), "%s %s: lse rel err %.3g (seed %llu)", label, what, lerr,
            (unsigned long long)seed);
  for (int64_t r = 0; r < n / d; r++)
    for (int64_t c = 0; want->empty[r] && c < d; c++)
      cr_assert(got[r * d + c] == 0, "%s %s: row %lld sees no key but out[%lld] = %g (seed %llu)", label, what,
                (long long)r, (long long)c, got[r * d + c], (unsigned long long)seed);
  free(rounded), free(got), free(got_lse);
}

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

/* loss = sum(out * dout) through the float64 forward. */
static double loss(const attn_data *a, double *out) {
  yk_reference_attention_forward(&a->shape, a->q, a->k, a->v, out, NULL);
  double sum = 0;
  for (int64_t i = 0; i < a->total_q * a->c.q_heads * a->c.head_dim; i++) sum += out[i] * a->dout[i];
  return sum;
}

/* The float64 backward against central differences of the float64 forward, on tiny shapes. */
Test(attention, reference_backward_matches_finite_differences) {
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
Test(attention, cpu_backward_matches_reference) {
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
Test(attention, backward_workspace_size) {
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

/* How decode cuts its keys, on a context given an H100's 132 SMs: by the batch alone when the
 * lengths are equal or unknown, by the lengths when a ragged batch's are known, and no deeper
 * than a caller's workspace holds. */
Test(attention, decode_splits_follow_the_lengths) {
  yk_ctx *ctx = ts_cpu_ctx();
  ctx->multiprocessors = 132;
  /* batch 1 x 32768, 32 q / 8 kv heads: 8 blocks, 16 splits of 2048 keys; the lengths agree */
  yk_decode_split s = yk_decode_splits(ctx, 1, 32, 8, 32768, 0, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 1, 32, 8, 32768, 32768, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* equal lengths: the batch's rule whether or not they are known (8 x 8 blocks: 2 splits) */
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 8 * 4096, 0).splits, 2);
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 0, 0).splits, 2);
  cr_assert_eq(yk_decode_splits(ctx, 64, 32, 8, 4096, 64 * 4096, 0).splits, 1);
  /* 32 sequences, one of 32768 keys and 31 of 512: 256 blocks fill the SMs, but the long one's 8
   * would hold the batch; 132 x 32768 / (48640 x 8) = 11.1 -> 16 splits of 2048 keys */
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 0);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* 4 of 16384 among 60 of 1024: the share's 2.1 -> 4 splits, then 8 for chunks of 2048 keys */
  s = yk_decode_splits(ctx, 64, 32, 8, 16384, 4 * 16384 + 60 * 1024, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* lengths less than twice apart stay on the batch's rule (2 x 8 blocks: 8 splits) */
  s = yk_decode_splits(ctx, 2, 32, 8, 32768, 32768 + 16384, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 4096, "%d %d", s.splits, s.chunk_keys);
  cr_assert_eq(yk_decode_splits(ctx, 32, 32, 8, 32768, 0, 0).splits, 1);
  /* never chunks below 256 keys (3000 / 256 = 11 -> 8), nor past 128 splits */
  s = yk_decode_splits(ctx, 8, 32, 8, 3000, 3446, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 375, "%d %d", s.splits, s.chunk_keys);
  cr_assert_eq(yk_decode_splits(ctx, 2, 1, 1, 16384, 16385, 0).splits, 64);
  cr_assert_eq(yk_decode_splits(ctx, 4, 1, 1, 1 << 24, (1 << 24) + 3, 0).splits, 128);
  cr_assert_eq(yk_decode_splits(ctx, 4, 1, 1, 4096, 4099, 0).splits, 16);
  /* a total that overstates the keys (k's whole token axis) only falls back to the batch's rule */
  cr_assert_eq(yk_decode_splits(ctx, 8, 32, 8, 4096, 1 << 20, 0).splits, 2);
  /* an explicit count: the longest sequence's splits, the others in chunks of the same size;
   * every sequence in that many chunks where the lengths are unknown */
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 5);
  cr_assert(s.splits == 5 && s.chunk_keys == 6554, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 0, 5);
  cr_assert(s.splits == 5 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 1);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);

  /* a caller's workspace: halved until the partials fit, never below the batch's rule */
  const int64_t per_split = 32 * 32 * 129, room4[1] = {4 * per_split}, room1[1] = {per_split / 2};
  const size_t split_floats = yk_decode_split_floats(32, 32, 128);
  cr_assert_eq(split_floats, (size_t)per_split);
  DLTensor ws = {.ndim = 1, .dtype = {kDLFloat, 32, 1}, .shape = (int64_t *)room4};
  s = yk_decode_splits_within(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 0, &ws, split_floats, 1);
  cr_assert(s.splits == 4 && s.chunk_keys == 8192, "%d %d", s.splits, s.chunk_keys);
  ws.shape = (int64_t *)room1;
  s = yk_decode_splits_within(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 0, &ws, split_floats, 1);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 32, 32, 8, 32768, 32768 + 31 * 512, 0, NULL, split_floats, 1);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  /* batch 1 keeps the batch's 16 splits, however small the workspace; the prefill calls' few
   * queries (keep_batch_split 0) go down to none, an explicit count aside */
  const size_t one_split = yk_decode_split_floats(1, 32, 128);
  s = yk_decode_splits_within(ctx, 1, 32, 8, 32768, 32768, 0, &ws, one_split * 64, 1);
  cr_assert(s.splits == 16 && s.chunk_keys == 2048, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, 32, 8, 32768, 32768, 0, &ws, one_split * 64, 0);
  cr_assert(s.splits == 1 && s.chunk_keys == 0, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, 32, 8, 32768, 32768, 0, &ws, one_split * 4, 0); /* room for 4 */
  cr_assert(s.splits == 4 && s.chunk_keys == 8192, "%d %d", s.splits, s.chunk_keys);
  s = yk_decode_splits_within(ctx, 1, 32, 8, 32768, 32768, 8, &ws, one_split * 64, 0);
  cr_assert(s.splits == 8 && s.chunk_keys == 4096, "%d %d", s.splits, s.chunk_keys);
  /* the few queries' workspace, batch 1 of 32768 keys, 32 q heads on 8: splits x queries x 32 rows
   * of head_dim + 1 floats. 4 queries of 4 q heads a kv head are one tile of 16 rows, 8 blocks (16
   * splits); 8 (32 rows) two blocks of one tile (8); 16 (64 rows) one block of 4 tiles (16); past
   * 64 rows blocks of 8 tiles (4 at head_dim 256): 17 queries (68 rows) one a kv head (16), 50
   * (200 rows) and 64 (256) two (8), at head_dim 256 four (4); 65 queries (260 rows) take the
   * prefill kernel (no workspace) */
  static const struct {
    int queries, head_dim, splits;
  } batch1[] = {{4, 128, 16}, {8, 128, 8},  {16, 128, 16}, {17, 128, 16},
                {50, 128, 8}, {50, 256, 4}, {64, 128, 8},  {65, 128, 0}};
  for (size_t i = 0; i < sizeof batch1 / sizeof batch1[0]; i++) {
    const int64_t q = batch1[i].queries, d = batch1[i].head_dim;
    const size_t got = yk_flash_attention_forward_workspace_floats(ctx, 1, q, q, 32, 8, d, 32768, 32768, 0);
    cr_assert_eq(got, (size_t)batch1[i].splits * (size_t)(q * 32 * (d + 1)), "%lld queries, head_dim %lld: %zu floats",
                 (long long)q, (long long)d, got);
  }
  /* batch 2 (16 blocks): 8 splits, or 3 given */
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 2, 8, 4, 32, 8, 128, 32768, 2 * 32768, 0),
               (size_t)8 * 8 * 32 * 129);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 2, 8, 4, 32, 8, 128, 32768, 2 * 32768, 3),
               (size_t)3 * 8 * 32 * 129);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 64, 256, 4, 32, 8, 128, 4096, 64 * 4096, 0), 0);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 1, 4, 4, 32, 6, 128, 32768, 32768, 0), 0);
  cr_assert_eq(yk_flash_attention_forward_workspace_floats(ctx, 1, 4, 4, 32, 8, 128, 32768, 32768, 129), 0);
  /* the workspace query: the call's own split for a dense batch, or for a ragged one of total_k
   * keys; max_seqlen_k as total_k bounds every ragged batch of that length */
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 1, 32, 8, 128, 32768, 0, 0), (size_t)16 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 0, 0), 0);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768 + 31 * 512, 0),
               (size_t)16 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32 * 32768, 0), 0);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768, 0), (size_t)32 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, 32768, 3), (size_t)3 * 32 * 32 * 129);
  cr_assert_eq(yk_attention_decode_workspace_floats(ctx, 32, 32, 8, 128, 32768, -1, 0), 0);
  yk_ctx_destroy(ctx);
}

/* Each output has one writer and a fixed order of summation: one thread and five give the same
 * bytes as the default pool. */
Test(attention, cpu_results_do_not_depend_on_threads) {
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

/* ---- decode ---- */

static const int32_t lens_decode[] = {1, 17, 128, 1000, 4100, 513};
static const int32_t lens_decode_long[] = {2049, 1, 1024};
/* one long sequence among short ones (and an empty one): on the GPU the long one splits further
 * than the batch alone would (8 against 2 on 132 SMs), the short ones stay whole */
static const int32_t lens_decode_skewed[] = {3000, 17, 1, 250, 0, 40, 129, 9};
static const attn_case decode_cases[] = {
    {3, 8, 2, 128, 1, 100},
    {2, 4, 4, 64, 1, 1},
    {4, 8, 1, 64, 1, 0, NULL, lens_decode},
    {2, 16, 4, 256, 1, 0, NULL, lens_decode + 1, .pad = 8},
    {1, 2, 2, 80, 1, 300},
    /* keys in stretches of 1024 folded in order (decode_splits): a batch of one on a tail of 552, and
     * lengths each side of a stretch's edge */
    {1, 8, 2, 128, 1, 2600},
    {3, 4, 1, 64, 1, 0, NULL, lens_decode_long},
    /* groups of three (blocks of two rows and one) and of 32 (keys transposed, not read in place) */
    {2, 6, 2, 96, 1, 77},
    {2, 32, 1, 64, 1, 300},
};
#define DECODE_CASES (int)(sizeof decode_cases / sizeof decode_cases[0])

Test(attention, cpu_decode_matches_reference) {
  char label[64];
  for (int build = 0; build < CPU_BUILDS; build++) {
    if (build_repeats(build)) continue;
    yk_ctx *ctx = cpu_ctx_of(cpu_builds[build], 0);
    const uint64_t seed = ts_seed("attention.cpu_decode");
    yh_rng rng = {seed};
    for (int i = 0; i < DECODE_CASES; i++) {
      attn_data a;
      make_data(&a, decode_cases[i], 0, 1, &rng);
      attn_ref want = reference(&a);
      for (int ty = 0; ty < 3; ty++) {
        attn_tensors t;
        make_tensors(&t, ctx, &a, ts_float_types[ty], 0, 0);
        cr_assert_eq(forward(ctx, &a, &t, 0), YK_OK, "%s", yk_ctx_last_error(ctx));
        check_forward(&t, &a, ts_float_types[ty], &want, 0, build_label(label, sizeof label, "cpu decode", build),
                      seed);
        /* causal has no effect on a decode */
        void *plain = yh_snapshot(&t.out);
        yh_poison(&t.out);
        yk_attention_params p = params_of(&a, &t, 0);
        p.causal = 1;
        cr_assert_eq(yk_attention_decode(ctx, &t.q.dl, &t.k.dl, &t.v.dl, &p, &t.out.dl, NULL, NULL), YK_OK, "%s",
                     yk_ctx_last_error(ctx));
        cr_assert_eq(yh_bytes_changed(&t.out, plain), 0, "decode case %d: causal or no lse changed out", i);
        free(plain);
        free_tensors(&t);
      }
      free_ref(&want);
      free_data(&a);
    }
    yk_ctx_destroy(ctx);
  }
}

/* ---- merge ---- */

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
  double *a = values(rng, ROWS * D), *b = values(rng, ROWS * D), want[ROWS * D], want_lse[ROWS];
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

Test(attention, cpu_merge_halves_equal_whole) {
  yk_ctx *ctx = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.cpu_merge");
  yh_rng rng = {seed};
  for (int ty = 0; ty < 3; ty++) {
    merge_halves(ctx, ts_float_types[ty], 0, &rng, seed);
    merge_empty_rows(ctx, ts_float_types[ty], 0, &rng, seed);
  }
  yk_ctx_destroy(ctx);
}

/* ---- bad input: a status, a message naming the problem, and nothing written ---- */

#define INVALID YK_ERR_INVALID_ARGUMENT
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

/* ---- the GPU against the CPU fallback on identical inputs ---- */

/* d: the GPU's tensors, holding h's inputs. */
static void gpu_copy(yk_ctx *gpu, const attn_data *a, int dtype, int grads, const attn_tensors *h, attn_tensors *d) {
  make_tensors(d, gpu, a, dtype, 1, grads);
  cr_assert(!yh_tensor_copy(&d->q, &h->q) && !yh_tensor_copy(&d->k, &h->k) && !yh_tensor_copy(&d->v, &h->v));
  if (grads) cr_assert(!yh_tensor_copy(&d->dout, &h->dout));
}

/* Host tensors with the CPU fallback's results, and device tensors holding the same inputs. */
static void cpu_and_gpu(yk_ctx *cpu, yk_ctx *gpu, const attn_data *a, int dtype, int grads, attn_tensors *h,
                        attn_tensors *d) {
  make_tensors(h, cpu, a, dtype, 0, grads);
  gpu_copy(gpu, a, dtype, grads, h, d);
  cr_assert_eq(forward(cpu, a, h, 0), YK_OK, "%s", yk_ctx_last_error(cpu));
}

/* The CPU's out and lse as an attn_ref (they are what the GPU must match). */
static attn_ref cpu_result(attn_tensors *h, const attn_data *a) {
  attn_ref r = {doubles(&h->out), doubles(&h->lse), calloc((size_t)(h->out.numel / a->c.head_dim + 1), 1)};
  cr_assert_not_null(r.empty);
  for (int64_t row = 0; row < h->out.numel / a->c.head_dim; row++) {
    int zero = 1;
    for (int64_t c = 0; c < a->c.head_dim; c++) zero &= r.out[row * a->c.head_dim + c] == 0;
    r.empty[row] = (char)zero; /* all-zero rows on the CPU are rows that see no key: the GPU must give 0 too */
  }
  return r;
}

enum { PREFILL_KERNELS = 8 };

/* Every prefill kernel the device has (sm_90: wgmma in each of its loops, and mma.sync forced). */
Test(attention, gpu_forward_matches_cpu) {
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
      "pipeline=2,warpgroups=2,tma=0",      "pipeline=1,warpgroups=3,block_n=64", "pipeline=1,warpgroups=2,stages=2"};
  yk_ctx *gpus[PREFILL_KERNELS] = {gpu, mma};
  for (int i = 0; i < PREFILL_KERNELS - 2; i++) {
    gpus[2 + i] = ts_gpu_ctx_forcing("attention_prefill_sm90", loops[i]);
    cr_assert_not_null(gpus[2 + i]);
  }
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_forward");
  yh_rng rng = {seed};
  static const char *const labels[PREFILL_KERNELS] = {"gpu forward (default kernel)",
                                                      "gpu forward (mma.sync)",
                                                      "gpu forward (sm90 pipeline 1, 1 warpgroup, 64-key tiles)",
                                                      "gpu forward (sm90 pipeline 2, 3 stages)",
                                                      "gpu forward (sm90 pipeline 1, cp.async producer)",
                                                      "gpu forward (sm90 pipeline 2, cp.async producer)",
                                                      "gpu forward (sm90 three warpgroups, 64-key tiles)",
                                                      "gpu forward (sm90 two warpgroups, 2 stages)"};
  for (int i = 0; i < FORWARD_CASES; i++)
    for (int causal = 0; causal <= 1; causal++) {
      if (forward_cases[i].cpu_only) continue;
      attn_data a;
      make_data(&a, forward_cases[i], causal, 0, &rng);
      for (int dtype = YK_F16; dtype <= YK_BF16; dtype++) {
        attn_tensors h, d;
        cpu_and_gpu(cpu, gpus[0], &a, dtype, 0, &h, &d);
        attn_ref want = cpu_result(&h, &a); /* once for every kernel: the CPU forward was most of the time */
        for (int kernel = 0; kernel < PREFILL_KERNELS; kernel++) {
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
        free_ref(&want);
        free_tensors(&h);
      }
      free_data(&a);
    }
  for (int i = 0; i < PREFILL_KERNELS; i++) yk_ctx_destroy(gpus[i]);
  yk_ctx_destroy(cpu);
}

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
 * refused before anything runs. The kernel sets are split over several tests so that Criterion's
 * jobs compile them in parallel: cold, each set's kernels take minutes on one core. */
static void gpu_backward_on(int n, yk_ctx *const *gpus, const int *deterministic, const char *const *labels) {
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_backward");
  yh_rng rng = {seed};
  for (int i = 0; i < (int)(sizeof gpu_backward_cases / sizeof gpu_backward_cases[0]); i++)
    for (int causal = 0; causal <= 1; causal++) {
      attn_data a;
      make_data(&a, gpu_backward_cases[i], causal, 0, &rng);
      for (int dtype = YK_F16; dtype <= YK_BF16; dtype++) {
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
          const int64_t floats = (int64_t)yk_flash_attention_backward_workspace_floats(a.c.q_heads, a.total_q,
                                                                                       a.c.batch, a.c.head_dim, det);
          yh_tensor ws, short_ws;
          /* short of even the stats, whichever kernels the head dim takes */
          const int64_t short_floats = (int64_t)yk_flash_attention_backward_workspace_floats(
                                           a.c.q_heads, a.total_q, a.c.batch, a.c.head_dim, 1) -
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
      }
      free_data(&a);
    }
  yk_ctx_destroy(cpu);
}

/* sm_90: by default the stats, the dk/dv kernel adding dq by atomics and dq's conversion, with TMA
 * loads; deterministic, the wgmma pair */
Test(attention, gpu_backward_matches_cpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *const gpus[2] = {gpu, gpu};
  static const int deterministic[2] = {0, 1};
  static const char *const labels[2] = {"gpu backward (default kernels, atomic dq)", "gpu backward (deterministic)"};
  gpu_backward_on(2, gpus, deterministic, labels);
  yk_ctx_destroy(gpu);
}

/* mma.sync forced, which is always deterministic; the Hopper kernels with one warpgroup, 3 stages and
 * cp.async loads, both ways of adding dq */
Test(attention, gpu_backward_other_kernels_match_cpu) {
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
  gpu_backward_on(3, gpus, deterministic, labels);
  yk_ctx_destroy(mma), yk_ctx_destroy(one_wg);
}

/* the dk/dv kernel's orders of dq's sums, which a sweep may choose whatever each head dim's default
 * (behind at head dim 128, block at 64) */
Test(attention, gpu_backward_dq_sums_match_cpu) {
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
  gpu_backward_on(3, gpus, deterministic, labels);
  yk_ctx_destroy(behind), yk_ctx_destroy(block), yk_ctx_destroy(own);
}

static const attn_case gpu_decode_cases[] = {
    {1, 32, 8, 128, 1, 4100},
    {7, 8, 1, 64, 1, 513},
    {6, 4, 4, 256, 1, 0, NULL, lens_decode},
    {3, 16, 4, 64, 1, 0, NULL, lens_decode + 2},
    {2, 64, 8, 256, 1, 2000},
    {4, 8, 8, 128, 1, 0, NULL, lens_decode + 1},
    {8, 32, 8, 128, 1, 0, NULL, lens_decode_skewed},
};

/* num_splits 1, 8 and automatic, each with and without a caller's workspace, against the CPU and
 * against each other. An automatic split count is at most 128, so a workspace sized for 128
 * splits fits it. */
static void decode_matches_cpu(yk_ctx *gpu, yk_ctx *cpu, uint64_t seed, const attn_case *cases, int count) {
  yh_rng rng = {seed};
  static const int splits[3] = {1, 8, 0};
  for (int i = 0; i < count; i++) {
    attn_data a;
    make_data(&a, cases[i], 0, 1, &rng);
    for (int dtype = YK_F16; dtype <= YK_BF16; dtype++) {
      attn_tensors h, d;
      cpu_and_gpu(cpu, gpu, &a, dtype, 0, &h, &d);
      attn_ref want = cpu_result(&h, &a);
      double *one_split = NULL;
      for (int s = 0; s < 3; s++)
        for (int with_workspace = 0; with_workspace <= (splits[s] != 1); with_workspace++) {
          yk_attention_params p = params_of(&a, &d, 1);
          p.num_splits = splits[s];
          yh_tensor ws = {0};
          if (with_workspace) {
            const int64_t floats =
                (int64_t)yk_attention_decode_workspace_floats(gpu, a.c.batch, a.c.q_heads, a.c.kv_heads, a.c.head_dim,
                                                              a.max_k, a.c.lens_k ? a.total_k : 0, splits[s]);
            cr_assert_eq(yh_tensor_init(&ws, gpu, YK_F32, 1, &floats, NULL, 1), 0);
            p.workspace = &ws.dl;
          }
          yh_poison(&d.out), yh_poison(&d.lse);
          cr_assert_eq(yk_attention_decode(gpu, &d.q.dl, &d.k.dl, &d.v.dl, &p, &d.out.dl, &d.lse.dl, NULL), YK_OK, "%s",
                       yk_ctx_last_error(gpu));
          cr_assert_eq(yh_sync(gpu), 0, "kernel failed");
          char label[64];
          snprintf(label, sizeof label, "gpu decode splits %d%s", splits[s], with_workspace ? " workspace" : "");
          check_forward(&d, &a, dtype, &want, 1, label, seed);
          double *got = doubles(&d.out);
          if (!one_split) {
            one_split = got;
          } else {
            const double err = ts_gpu_error(got, one_split, d.out.numel);
            cr_assert(err < 1e-2, "%s case %d: differs from one split by %.3g (seed %llu)", label, i, err,
                      (unsigned long long)seed);
            free(got);
          }
          yh_tensor_free(&ws);
        }
      free(one_split);
      free_ref(&want);
      free_tensors(&h), free_tensors(&d);
    }
    free_data(&a);
  }
}

Test(attention, gpu_decode_matches_cpu) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_decode");
  const int count = (int)(sizeof gpu_decode_cases / sizeof gpu_decode_cases[0]);
  decode_matches_cpu(gpu, cpu, seed, gpu_decode_cases, count);
  yk_ctx_destroy(gpu);
  /* the padded shared-memory layout and no L2 hint, which yk tune may choose */
  gpu = ts_gpu_ctx_forcing("attention_decode", "swizzle=0,kv_hint=none");
  cr_assert_not_null(gpu);
  decode_matches_cpu(gpu, cpu, seed, gpu_decode_cases, count);
  yk_ctx_destroy(cpu), yk_ctx_destroy(gpu);
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

/* The decode's knobs as yk tune and bench --lengths set them (pipeline depth, teams a block, keys
 * a tile, the L2 hint), each forced on two cases with and without splits: whatever a tuning run
 * keeps gives the same answers. Forced to 4 stages, decode with the evict-first hint ran an
 * illegal instruction on the H100 (gen/ops/attention_decode.c); deeper pipelines now load without it. */
Test(attention, gpu_decode_knobs_match_cpu) {
  yk_ctx *probe = ts_gpu_ctx();
  TS_REQUIRE_GPU(probe);
  yk_ctx_destroy(probe);
  static const char *const knobs[] = {
      "stages=4",          "stages=6",         "stages=3,kv_hint=none", "warps=8",    "warps=6",
      "warps=12,stages=2", "warps=2,stages=3", "warps=3,stages=2",      "block_n=32", "block_n=64,warps=2,stages=2",
      "kv_hint=none"};
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("attention.gpu_decode_knobs");
  for (size_t k = 0; k < sizeof knobs / sizeof knobs[0]; k++) {
    yk_ctx *gpu = ts_gpu_ctx_forcing("attention_decode", knobs[k]);
    cr_assert_not_null(gpu);
    cr_log_info("decode forced to %s", knobs[k]);
    decode_matches_cpu(gpu, cpu, seed, gpu_decode_cases, 2);
    yk_ctx_destroy(gpu);
  }
  yk_ctx_destroy(cpu);
}

Test(attention, gpu_merge_halves_equal_whole) {
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
