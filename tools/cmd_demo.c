/* yk demo: the README's main job. Runs the ops of one decoder step that exist so far on a small
 * built-in shape, on the GPU where there is one and on the CPU fallback otherwise, through the
 * kernel cache, checks every result, and says what was compiled, found cached, and how long each
 * step took. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/harness.h"
#include "cpu_fallback/act_and_mul.h"
#include "cpu_fallback/attention.h"
#include "cpu_fallback/rms_norm.h"
#include "cpu_fallback/rope.h"
#include "tools/cli.h"

enum { TOKENS = 5, HIDDEN = 512, Q_HEADS = 8, KV_HEADS = 2, HEAD_DIM = 64, INTER = 1376, MAX_POS = 2048 };
#define DTYPE YK_BF16
#define EPS 1e-6f

/* Every tensor of the step, on the device that runs it. */
typedef struct {
  yh_tensor x, residual, w_in, q, k, v, ctx_out, cos_sin, positions, attn, w_post, gate_up, act, w_final, out;
} layer;

static int make_layer(layer *l, yk_ctx *ctx, int on_device) {
  const int64_t hd[2] = {TOKENS, HIDDEN}, h = HIDDEN, qd[3] = {TOKENS, Q_HEADS, HEAD_DIM},
                kd[3] = {TOKENS, KV_HEADS, HEAD_DIM}, cd[2] = {MAX_POS, HEAD_DIM}, t = TOKENS,
                gd[2] = {TOKENS, 2 * INTER}, ad[2] = {TOKENS, INTER};
  int bad = 0;
  bad |= yh_tensor_init(&l->x, ctx, DTYPE, 2, hd, NULL, on_device);
  bad |= yh_tensor_init(&l->residual, ctx, DTYPE, 2, hd, NULL, on_device);
  bad |= yh_tensor_init(&l->w_in, ctx, DTYPE, 1, &h, NULL, on_device);
  bad |= yh_tensor_init(&l->q, ctx, DTYPE, 3, qd, NULL, on_device);
  bad |= yh_tensor_init(&l->k, ctx, DTYPE, 3, kd, NULL, on_device);
  bad |= yh_tensor_init(&l->v, ctx, DTYPE, 3, kd, NULL, on_device);
  bad |= yh_tensor_init(&l->ctx_out, ctx, DTYPE, 3, qd, NULL, on_device);
  bad |= yh_tensor_init(&l->cos_sin, ctx, DTYPE, 2, cd, NULL, on_device);
  bad |= yh_tensor_init(&l->positions, ctx, YK_I64, 1, &t, NULL, on_device);
  bad |= yh_tensor_init(&l->attn, ctx, DTYPE, 2, hd, NULL, on_device);
  bad |= yh_tensor_init(&l->w_post, ctx, DTYPE, 1, &h, NULL, on_device);
  bad |= yh_tensor_init(&l->gate_up, ctx, DTYPE, 2, gd, NULL, on_device);
  bad |= yh_tensor_init(&l->act, ctx, DTYPE, 2, ad, NULL, on_device);
  bad |= yh_tensor_init(&l->w_final, ctx, DTYPE, 1, &h, NULL, on_device);
  bad |= yh_tensor_init(&l->out, ctx, DTYPE, 2, hd, NULL, on_device);
  return bad;
}

static void fill_layer(layer *l, uint64_t seed) {
  yh_rng rng = {seed};
  yh_tensor *uniform[] = {&l->x, &l->residual, &l->q, &l->k, &l->v, &l->attn, &l->gate_up};
  for (size_t i = 0; i < sizeof uniform / sizeof uniform[0]; i++) yh_fill_uniform(uniform[i], &rng, -2, 2);
  yh_fill_uniform(&l->w_in, &rng, 0.5, 1.5), yh_fill_uniform(&l->w_post, &rng, 0.5, 1.5);
  yh_fill_uniform(&l->w_final, &rng, 0.5, 1.5);
  double *cs = malloc(sizeof(double) * MAX_POS * HEAD_DIM);
  for (int p = 0; p < MAX_POS; p++)
    for (int i = 0; i < HEAD_DIM / 2; i++) {
      double angle = p * pow(10000.0, -2.0 * i / HEAD_DIM);
      cs[p * HEAD_DIM + i] = cos(angle), cs[p * HEAD_DIM + HEAD_DIM / 2 + i] = sin(angle);
    }
  yh_from_double(&l->cos_sin, cs);
  free(cs);
  for (int i = 0; i < TOKENS; i++) ((int64_t *)l->positions.host)[i] = 1000 + 7 * i;
  yh_upload(&l->positions);
  yh_poison(&l->act), yh_poison(&l->out), yh_poison(&l->ctx_out);
}

static void free_layer(layer *l) {
  yh_tensor *all = &l->x;
  for (size_t i = 0; i < sizeof *l / sizeof(yh_tensor); i++) yh_tensor_free(&all[i]);
}

typedef struct {
  const char *name;
  const char *spec; /* the kernel this step uses, for the offline compile */
  yk_status (*run)(yk_ctx *, layer *);
  yh_tensor *(*outputs)(layer *, int); /* the tensors to check, by index, NULL after the last */
} step;

static yk_status run_input_norm(yk_ctx *c, layer *l) {
  return yk_fused_add_rms_norm(c, &l->x.dl, &l->residual.dl, &l->w_in.dl, EPS, NULL);
}
static yk_status run_rope(yk_ctx *c, layer *l) {
  return yk_rope(c, &l->q.dl, &l->k.dl, &l->cos_sin.dl, &l->positions.dl, YK_ROPE_NEOX, NULL);
}
/* The step's tokens as one causal sequence: [tokens, heads, dim] seen as [1, tokens, heads, dim]. */
static DLTensor batch_of_one(const yh_tensor *t, int64_t *shape) {
  DLTensor v = t->dl;
  shape[0] = 1, shape[1] = t->shape[0], shape[2] = t->shape[1], shape[3] = t->shape[2];
  v.ndim = 4, v.shape = shape, v.strides = NULL;
  return v;
}
static yk_status run_attention(yk_ctx *c, layer *l) {
  int64_t qs[4], ks[4], vs[4], os[4];
  DLTensor q = batch_of_one(&l->q, qs), k = batch_of_one(&l->k, ks), v = batch_of_one(&l->v, vs),
           o = batch_of_one(&l->ctx_out, os);
  yk_attention_params p = {.causal = 1};
  return yk_flash_attention_forward(c, &q, &k, &v, &p, &o, NULL, NULL);
}
static yk_status run_post_norm(yk_ctx *c, layer *l) {
  return yk_fused_add_rms_norm(c, &l->attn.dl, &l->residual.dl, &l->w_post.dl, EPS, NULL);
}
static yk_status run_mlp_act(yk_ctx *c, layer *l) { return yk_silu_and_mul(c, &l->gate_up.dl, &l->act.dl, NULL); }
static yk_status run_final_norm(yk_ctx *c, layer *l) {
  return yk_rms_norm(c, &l->residual.dl, &l->w_final.dl, EPS, &l->out.dl, NULL);
}
static yh_tensor *out_input_norm(layer *l, int i) { return i == 0 ? &l->x : i == 1 ? &l->residual : NULL; }
static yh_tensor *out_rope(layer *l, int i) { return i == 0 ? &l->q : i == 1 ? &l->k : NULL; }
static yh_tensor *out_attention(layer *l, int i) { return i == 0 ? &l->ctx_out : NULL; }
static yh_tensor *out_post_norm(layer *l, int i) { return i == 0 ? &l->attn : i == 1 ? &l->residual : NULL; }
static yh_tensor *out_mlp_act(layer *l, int i) { return i == 0 ? &l->act : NULL; }
static yh_tensor *out_final_norm(layer *l, int i) { return i == 0 ? &l->out : NULL; }

static const step steps[] = {
    {"input norm (fused_add_rms_norm)", "rms_norm:dtype=bf16,hidden=512,fused_add=1", run_input_norm, out_input_norm},
    {"rope on q and k", "rope:dtype=bf16,head_dim=64", run_rope, out_rope},
    {"causal attention (prefill)", "attention_prefill_sm90:dtype=bf16,head_dim=64,causal=1", run_attention,
     out_attention},
    {"post-attention norm", "rms_norm:dtype=bf16,hidden=512,fused_add=1", run_post_norm, out_post_norm},
    {"silu_and_mul", "act_and_mul:dtype=bf16,d=1376,act=silu", run_mlp_act, out_mlp_act},
    {"final norm (rms_norm)", "rms_norm:dtype=bf16,hidden=512", run_final_norm, out_final_norm},
};
#define STEPS (int)(sizeof steps / sizeof steps[0])

/* The float64 reference of each step, applied to compact double copies of the layer. */
typedef struct {
  double *x, *residual, *w_in, *q, *k, *v, *ctx_out, *cos_sin, *attn, *w_post, *gate_up, *act, *w_final, *out;
  int64_t positions[TOKENS];
} layer64;

static double *as_doubles(yh_tensor *t) {
  double *d = malloc(sizeof(double) * (size_t)t->numel);
  yh_to_double(t, d);
  return d;
}

static void reference_step(int s, layer64 *r) {
  switch (s) {
  case 0: yk_reference_rms_norm(DTYPE, TOKENS, HIDDEN, r->x, r->residual, r->w_in, EPS, r->x); break;
  case 1:
    yk_reference_rope(1, TOKENS, Q_HEADS, KV_HEADS, HEAD_DIM, HEAD_DIM, r->q, r->k, r->cos_sin, r->positions);
    break;
  case 2: {
    const yk_attention_shape shape = {.dtype = DTYPE,
                                      .batch = 1,
                                      .q_heads = Q_HEADS,
                                      .kv_heads = KV_HEADS,
                                      .head_dim = HEAD_DIM,
                                      .seq_q = TOKENS,
                                      .seq_k = TOKENS,
                                      .causal = 1,
                                      .scale = 1.0f / sqrtf((float)HEAD_DIM)};
    yk_reference_attention_forward(&shape, r->q, r->k, r->v, r->ctx_out, NULL);
    break;
  }
  case 3: yk_reference_rms_norm(DTYPE, TOKENS, HIDDEN, r->attn, r->residual, r->w_post, EPS, r->attn); break;
  case 4: yk_reference_act_and_mul(YK_ACT_SILU, TOKENS, INTER, r->gate_up, r->act); break;
  default: yk_reference_rms_norm(DTYPE, TOKENS, HIDDEN, r->residual, NULL, r->w_final, EPS, r->out); break;
  }
}

static double *reference_output(int s, layer64 *r, int i) {
  double *outs[][2] = {{r->x, r->residual},    {r->q, r->k},   {r->ctx_out, NULL},
                       {r->attn, r->residual}, {r->act, NULL}, {r->out, NULL}};
  return outs[s][i];
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

int cmd_demo(int argc, char **argv) {
  if (argc > 1) {
    printf("usage: yk demo   (YK_DEVICE=cpu forces the CPU fallback)\n");
    return strcmp(argv[1], "--help") ? 2 : 0;
  }
  yk_ctx *ctx = cli_ctx(YK_DEVICE_AUTO);
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  const int gpu = info.device == YK_DEVICE_CUDA;
  printf("yaie-kernels demo: one decoder step, %d tokens, hidden %d, %d/%d heads x %d, intermediate %d, bf16\n", TOKENS,
         HIDDEN, Q_HEADS, KV_HEADS, HEAD_DIM, INTER);
  if (gpu)
    printf("device: %s (%s); results checked against the CPU fallback\n", info.device_name, info.arch);
  else
    printf("device: CPU fallback (%s); results checked against float64 references\n", info.device_note);
  printf("cache:  %s\n\n", info.cache_dir[0] ? info.cache_dir : "memory only");

  layer l;
  if (make_layer(&l, ctx, gpu)) return cli_fail("demo", "cannot allocate the layer's tensors");
  fill_layer(&l, 42);
  layer64 r = {.x = as_doubles(&l.x),
               .residual = as_doubles(&l.residual),
               .w_in = as_doubles(&l.w_in),
               .q = as_doubles(&l.q),
               .k = as_doubles(&l.k),
               .v = as_doubles(&l.v),
               .ctx_out = as_doubles(&l.ctx_out),
               .cos_sin = as_doubles(&l.cos_sin),
               .attn = as_doubles(&l.attn),
               .w_post = as_doubles(&l.w_post),
               .gate_up = as_doubles(&l.gate_up),
               .act = as_doubles(&l.act),
               .w_final = as_doubles(&l.w_final),
               .out = as_doubles(&l.out)};
  for (int i = 0; i < TOKENS; i++) r.positions[i] = ((int64_t *)l.positions.host)[i];
  /* The GPU is checked against the CPU fallback on the same inputs, step by step. */
  yk_ctx *cpu = NULL;
  layer host;
  if (gpu) {
    yk_ctx_options o;
    yk_ctx_options_init(&o);
    o.device = YK_DEVICE_CPU, o.cache_memory_only = 1;
    if (yk_ctx_create(&o, &cpu) != YK_OK || make_layer(&host, cpu, 0)) return cli_fail("demo", "CPU context");
    fill_layer(&host, 42);
  }

  printf("%-34s %-22s %12s %12s  %s\n", "step", "kernel", "first call", "per call", "check");
  int failures = 0;
  for (int s = 0; s < STEPS; s++) {
    yk_ctx_stats before, after;
    yk_ctx_get_stats(ctx, &before);
    char kernel[64] = "CPU fallback";
    double t0 = now_ms();
    yk_status st = steps[s].run(ctx, &l);
    if (st == YK_OK && yh_sync(ctx)) st = YK_ERR_CUDA;
    const double first_ms = now_ms() - t0;
    if (st != YK_OK) {
      printf("%-34s FAILED: %s\n", steps[s].name, yk_ctx_last_error(ctx));
      failures++;
      continue;
    }
    yk_ctx_get_stats(ctx, &after);
    if (gpu) {
      snprintf(kernel, sizeof kernel, "%s",
               after.compiled > before.compiled     ? "compiled (NVRTC)"
               : after.disk_hits > before.disk_hits ? "loaded from disk"
                                                    : "in memory");
    } else { /* no GPU to run on: still build the step's kernel for a GPU, through the cache */
      int compiled = 0;
      double c0 = now_ms();
      if (yk_spec_compile(ctx, steps[s].spec, "sm_90", &compiled) == YK_OK)
        snprintf(kernel, sizeof kernel, "sm_90 %s %.0f ms", compiled ? "compiled" : "cached", now_ms() - c0);
      else
        snprintf(kernel, sizeof kernel, "sm_90: not built");
    }
    /* check the first call's result */
    double worst = 0;
    if (gpu)
      steps[s].run(cpu, &host);
    else
      reference_step(s, &r);
    for (int i = 0; steps[s].outputs(&l, i); i++) {
      yh_tensor *t = steps[s].outputs(&l, i);
      double *got = as_doubles(t), *want = gpu ? as_doubles(steps[s].outputs(&host, i)) : reference_output(s, &r, i);
      double err = yh_rel_error(got, want, t->numel);
      worst = err > worst ? err : worst;
      free(got);
      if (gpu) free(want);
    }
    /* steady state, the kernel in memory; the step's outputs are put back afterwards, since
     * in-place steps applied again would hand the next step other inputs than its check's */
    void *saved[2] = {NULL, NULL};
    for (int i = 0; steps[s].outputs(&l, i); i++) saved[i] = yh_snapshot(steps[s].outputs(&l, i));
    const int reps = 200;
    t0 = now_ms();
    for (int i = 0; i < reps; i++) steps[s].run(ctx, &l);
    yh_sync(ctx);
    const double per_call_us = (now_ms() - t0) * 1e3 / reps;
    for (int i = 0; steps[s].outputs(&l, i); i++) {
      yh_tensor *t = steps[s].outputs(&l, i);
      memcpy(t->host, saved[i], (size_t)t->span * (size_t)t->elem_bytes);
      yh_upload(t);
      free(saved[i]);
      /* the next step's check starts from this step's result */
      if (gpu)
        yh_tensor_copy(steps[s].outputs(&host, i), t);
      else
        yh_to_double(t, reference_output(s, &r, i));
    }
    const int ok = worst < 1e-2;
    failures += !ok;
    printf("%-34s %-22s %9.2f ms %9.1f us  rel err %.1e %s\n", steps[s].name, kernel, first_ms, per_call_us, worst,
           ok ? "ok" : "FAILED");
  }
  yk_ctx_stats stats;
  yk_ctx_get_stats(ctx, &stats);
  printf("\ncache: %llu kernels compiled by NVRTC (%.0f ms), %llu read from disk (%.1f ms), %llu loaded (%.1f ms)\n",
         (unsigned long long)stats.compiled, stats.compile_ms, (unsigned long long)stats.disk_hits, stats.disk_ms,
         (unsigned long long)stats.loads, stats.load_ms);
  printf("%s\n", failures ? "SOME CHECKS FAILED" : "all checks passed");
  double **all = &r.x;
  for (size_t i = 0; i < offsetof(layer64, positions) / sizeof(double *); i++) free(all[i]);
  free_layer(&l);
  if (gpu) free_layer(&host), yk_ctx_destroy(cpu);
  yk_ctx_destroy(ctx);
  return failures ? 1 : 0;
}
