/* What the attention tests share (test_attention.c: the forward and bad input;
 * test_attention_backward.c, test_attention_decode.c, test_merge_attention_states.c): problems as
 * float64 data, their tensors on the CPU or the GPU, the float64 reference forward and its check.
 *
 * Inputs are random multiples of 1/64 in (-2, 2): every dtype holds them exactly, so one float64
 * reference serves f32, f16 and bf16 alike. */
#ifndef YK_TESTS_ATTENTION_SUPPORT_H
#define YK_TESTS_ATTENTION_SUPPORT_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/attention.h"
#include "cpu_fallback/half.h"
#include "gen/attention.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "tests/support.h"

#define MAX_BATCH 8
#define INVALID YK_ERR_INVALID_ARGUMENT

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

static inline double *doubles(yh_tensor *t) {
  double *d = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *d);
  cr_assert_not_null(d);
  yh_to_double(t, d);
  return d;
}

static inline int64_t offsets(const int32_t *lens, int64_t batch, int64_t dense_len, int32_t *cu, int64_t *longest) {
  cu[0] = 0;
  *longest = lens ? 0 : dense_len;
  for (int64_t b = 0; b < batch; b++) {
    cu[b + 1] = cu[b] + (lens ? lens[b] : (int32_t)dense_len);
    if (lens && lens[b] > *longest) *longest = lens[b];
  }
  return cu[batch];
}

/* decode: one query a sequence (seq_q 1, q dense); the case's lens_q is ignored. */
static inline void make_data(attn_data *a, attn_case c, int causal, int decode, yh_rng *rng) {
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
  a->q = ts_sixty_fourths(rng, a->total_q * c.q_heads * c.head_dim);
  a->dout = ts_sixty_fourths(rng, a->total_q * c.q_heads * c.head_dim);
  a->k = ts_sixty_fourths(rng, a->total_k * c.kv_heads * c.head_dim);
  a->v = ts_sixty_fourths(rng, a->total_k * c.kv_heads * c.head_dim);
}

static inline void free_data(attn_data *a) { free(a->q), free(a->k), free(a->v), free(a->dout); }

/* The CPU kernels are built three times on x86-64 (cpu_fallback/attention_avx2.c, _avx512.c), the
 * AVX-512 one with AMX tiles for the bfloat16 forward besides: the CPU tests run each build this CPU
 * has, the widest by default (AMX where it has that), then AVX-512 without AMX, then the AVX2 one,
 * then the plain one everywhere (YK_CPU_ISA caps the build). */
enum { CPU_BUILDS = 4 };
static const char *const cpu_builds[CPU_BUILDS] = {"default", "avx512", "avx2", "plain"};

static inline yk_ctx *cpu_ctx_of(const char *build, int threads) {
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
static inline int build_repeats(int b) {
  if (b == 0) return 0;
  yk_ctx *ctx = cpu_ctx_of(cpu_builds[b], 1), *prev = cpu_ctx_of(cpu_builds[b - 1], 1);
  const int same = ctx->pool.isa == prev->pool.isa;
  yk_ctx_destroy(ctx), yk_ctx_destroy(prev);
  return same;
}

/* "what, NAME build" for a capped build, what alone for the default one. */
static inline const char *build_label(char *buf, size_t n, const char *what, int build) {
  if (build == 0) return what;
  snprintf(buf, n, "%s, %s build", what, cpu_builds[build]);
  return buf;
}

/* Compact strides except that each row of head_dim takes head_dim + pad elements. */
static inline void padded_strides(int n, const int64_t *shape, int64_t pad, int64_t *strides) {
  strides[n - 1] = 1;
  strides[n - 2] = shape[n - 1] + pad;
  for (int i = n - 3; i >= 0; i--) strides[i] = strides[i + 1] * shape[i + 1];
}

static inline void tensor(yh_tensor *t, yk_ctx *ctx, int type, int n, const int64_t *shape, int64_t pad,
                          int on_device) {
  int64_t strides[4];
  padded_strides(n, shape, pad, strides);
  cr_assert_eq(yh_tensor_init(t, ctx, type, n, shape, strides, on_device), 0, "tensor allocation failed");
  yh_poison(t); /* NaN in the gaps of strided views and in outputs not yet written */
}

static inline void make_tensors(attn_tensors *t, yk_ctx *ctx, const attn_data *a, int dtype, int on_device, int grads) {
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

static inline void free_tensors(attn_tensors *t) {
  yh_tensor *all[] = {&t->q, &t->k, &t->v, &t->out, &t->lse, &t->cu_q, &t->cu_k, &t->dout, &t->dq, &t->dk, &t->dv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
}

/* cu_seqlens where the case is ragged; max_seqlen for device offsets, which the host cannot read. */
static inline yk_attention_params params_of(const attn_data *a, attn_tensors *t, int on_device) {
  yk_attention_params p = {.causal = a->causal, .scale = a->c.scale};
  if (a->c.lens_q && !a->decode) p.cu_seqlens_q = &t->cu_q.dl;
  if (a->c.lens_k) p.cu_seqlens_k = &t->cu_k.dl;
  if (on_device) p.max_seqlen_q = (int)a->max_q, p.max_seqlen_k = (int)a->max_k;
  return p;
}

static inline yk_status forward(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device) {
  yk_attention_params p = params_of(a, t, on_device);
  if (a->decode) return yk_attention_decode(ctx, &t->q.dl, &t->k.dl, &t->v.dl, &p, &t->out.dl, &t->lse.dl, NULL);
  return yk_flash_attention_forward(ctx, &t->q.dl, &t->k.dl, &t->v.dl, &p, &t->out.dl, &t->lse.dl, NULL);
}

/* workspace: params->workspace (NULL: the call allocates its own on the GPU). */
static inline yk_status backward_with(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device,
                                      DLTensor *workspace, int deterministic) {
  yk_attention_params p = params_of(a, t, on_device);
  p.workspace = workspace;
  p.deterministic = deterministic;
  return yk_flash_attention_backward(ctx, &t->dout.dl, &t->q.dl, &t->k.dl, &t->v.dl, &t->out.dl, &t->lse.dl, &p,
                                     &t->dq.dl, &t->dk.dl, &t->dv.dl, NULL);
}

static inline yk_status backward(yk_ctx *ctx, const attn_data *a, attn_tensors *t, int on_device) {
  return backward_with(ctx, a, t, on_device, NULL, 1);
}

static inline const char *describe(const attn_data *a, int dtype, char *buf, size_t size) {
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

static inline attn_ref reference(const attn_data *a) {
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

static inline void free_ref(attn_ref *r) { free(r->out), free(r->lse), free(r->empty); }

/* -inf entries (rows that see no key) must match exactly; the rest by relative norm. */
static inline double lse_error(const double *got, const double *want, int64_t n) {
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

static inline double lse_bound(int dtype) { return dtype == YK_F32 ? 1e-5 : 1e-3; }

/* The CPU's 16-bit outputs computed in float32 miss the reference rounded to their type only where
 * float32's error crosses a rounding boundary: 1.4e-4 at most over seven seeds (bfloat16 on AMX,
 * whose P keeps 16 bits; 1e-4 elsewhere); a P of bfloat16 alone, 1.3e-3. */
#define CPU_HALF_OUT_BOUND 5e-4

/* out and lse against want; out against want rounded to dtype. gpu: the GPU's norm and bound.
 * Rows that see no key must be exactly zero. */
static inline void check_forward(attn_tensors *t, const attn_data *a, int dtype, const attn_ref *want, int gpu,
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

/* ---- the GPU against the CPU fallback on identical inputs ---- */

/* d: the GPU's tensors, holding h's inputs. */
static inline void gpu_copy(yk_ctx *gpu, const attn_data *a, int dtype, int grads, const attn_tensors *h,
                            attn_tensors *d) {
  make_tensors(d, gpu, a, dtype, 1, grads);
  cr_assert(!yh_tensor_copy(&d->q, &h->q) && !yh_tensor_copy(&d->k, &h->k) && !yh_tensor_copy(&d->v, &h->v));
  if (grads) cr_assert(!yh_tensor_copy(&d->dout, &h->dout));
}

/* Host tensors with the CPU fallback's results, and device tensors holding the same inputs. */
static inline void cpu_and_gpu(yk_ctx *cpu, yk_ctx *gpu, const attn_data *a, int dtype, int grads, attn_tensors *h,
                               attn_tensors *d) {
  make_tensors(h, cpu, a, dtype, 0, grads);
  gpu_copy(gpu, a, dtype, grads, h, d);
  cr_assert_eq(forward(cpu, a, h, 0), YK_OK, "%s", yk_ctx_last_error(cpu));
}

/* The CPU's out and lse as an attn_ref (they are what the GPU must match). */
static inline attn_ref cpu_result(attn_tensors *h, const attn_data *a) {
  attn_ref r = {doubles(&h->out), doubles(&h->lse), calloc((size_t)(h->out.numel / a->c.head_dim + 1), 1)};
  cr_assert_not_null(r.empty);
  for (int64_t row = 0; row < h->out.numel / a->c.head_dim; row++) {
    int zero = 1;
    for (int64_t c = 0; c < a->c.head_dim; c++) zero &= r.out[row * a->c.head_dim + c] == 0;
    r.empty[row] = (char)zero; /* all-zero rows on the CPU are rows that see no key: the GPU must give 0 too */
  }
  return r;
}

#endif
