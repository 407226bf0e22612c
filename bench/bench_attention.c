/* Attention benchmarks at the peers' shapes (../shared/anchors/peers.py, bench/peers_extra.py):
 * prefill and backward in TFLOP/s (4 B H S^2 D for the forward, 2.5 times that backward, halved
 * when causal), decode in GB/s of K and V read; and the cold compile of each attention kernel. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "gen/attention.h"
#include "runtime/context.h"

typedef struct {
  yk_ctx *ctx;
  yh_tensor q, k, v, out, lse, dout, dq, dk, dv, cu_k, cu_q;
  yk_attention_params params;
  int backward, decode;
} attention_case;

static yk_status call(void *p) {
  attention_case *c = p;
  if (c->decode) return yk_attention_decode(c->ctx, &c->q.dl, &c->k.dl, &c->v.dl, &c->params, &c->out.dl, NULL, NULL);
  if (c->backward)
    return yk_flash_attention_backward(c->ctx, &c->dout.dl, &c->q.dl, &c->k.dl, &c->v.dl, &c->out.dl, &c->lse.dl,
                                       &c->params, &c->dq.dl, &c->dk.dl, &c->dv.dl, NULL);
  return yk_flash_attention_forward(c->ctx, &c->q.dl, &c->k.dl, &c->v.dl, &c->params, &c->out.dl, &c->lse.dl, NULL);
}

static void free_case(attention_case *c) {
  yh_tensor *all = &c->q;
  for (int i = 0; i < 11; i++) yh_tensor_free(&all[i]);
}

/* A dense prefill (or backward) case; a backward's out and lse come from the forward, run here. */
static int dense(attention_case *c, yk_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                 int64_t dim, int causal, int backward, yh_rng *rng) {
  memset(c, 0, sizeof *c);
  c->ctx = ctx, c->params.causal = causal;
  const int64_t qd[4] = {batch, seq, heads, dim}, kd[4] = {batch, seq, kv_heads, dim}, ld[3] = {batch, heads, seq};
  if (yh_tensor_init(&c->q, ctx, YK_BF16, 4, qd, NULL, 1) || yh_tensor_init(&c->k, ctx, YK_BF16, 4, kd, NULL, 1) ||
      yh_tensor_init(&c->v, ctx, YK_BF16, 4, kd, NULL, 1) || yh_tensor_init(&c->out, ctx, YK_BF16, 4, qd, NULL, 1) ||
      yh_tensor_init(&c->lse, ctx, YK_F32, 3, ld, NULL, 1))
    return 1;
  yh_fill_uniform(&c->q, rng, -1, 1), yh_fill_uniform(&c->k, rng, -1, 1), yh_fill_uniform(&c->v, rng, -1, 1);
  if (backward &&
      (yh_tensor_init(&c->dout, ctx, YK_BF16, 4, qd, NULL, 1) || yh_tensor_init(&c->dq, ctx, YK_BF16, 4, qd, NULL, 1) ||
       yh_tensor_init(&c->dk, ctx, YK_BF16, 4, kd, NULL, 1) || yh_tensor_init(&c->dv, ctx, YK_BF16, 4, kd, NULL, 1)))
    return 1;
  if (backward) {
    yh_fill_uniform(&c->dout, rng, -1, 1);
    call(c);
    c->backward = 1;
  }
  return 0;
}

/* 4 B H S^2 D for the forward, 2.5 times that for the backward, halved when causal. */
static double attention_flops(int64_t batch, int64_t heads, int64_t seq, int64_t dim, int causal, int backward) {
  return 4.0 * batch * heads * (double)seq * seq * dim / (causal ? 2 : 1) * (backward ? 2.5 : 1);
}

enum { PREFILL = 1, BACKWARD = 2 };
/* head_dim: 0 every head dim, else that one alone (yk bench --head-dim). */
static void prefill_and_backward(bench_timer *t, bench_results *r, int quick, int which, int head_dim) {
  yh_rng rng = {21};
  for (int backward = !(which & PREFILL); backward <= !!(which & BACKWARD); backward++)
    for (int d = 64; d <= (backward ? 128 : 256); d *= 2) /* 256 (Gemma's): the forward alone */
      for (int seq = 1024; seq <= 16384; seq *= 4)
        for (int causal = 0; causal <= 1; causal++) {
          if ((quick || backward) && seq == 1024) continue;
          if (head_dim && d != head_dim) continue;
          const int64_t batch = 16384 / seq, heads = 2048 / d;
          attention_case c;
          char name[96];
          snprintf(name, sizeof name, "%s D%d S%d B%lld H%lld causal=%d", backward ? "backward" : "prefill", d, seq,
                   (long long)batch, (long long)heads, causal);
          if (dense(&c, t->ctx, batch, seq, heads, heads, d, causal, backward, &rng)) {
            fprintf(stderr, "  %s: cannot allocate\n", name);
            free_case(&c);
            continue;
          }
          const double flops = attention_flops(batch, heads, seq, d, causal, backward);
          /* the backward twice: by default (dq added up in float32 on Hopper), then deterministic */
          for (int det = 0; det <= backward; det++) {
            c.params.deterministic = det;
            if (det) strncat(name, " deterministic", sizeof name - strlen(name) - 1);
            const double ms = bench_median_ms(t, call, &c);
            if (ms > 0) {
              bench_add(r, name, ms, 0, flops / ms / 1e9, "TFLOP/s");
              fprintf(stderr, "  %-58s %9.3f ms %7.1f TFLOP/s\n", name, ms, flops / ms / 1e9);
            } else {
              fprintf(stderr, "  %s failed: %s\n", name, yk_ctx_last_error(t->ctx));
            }
          }
          free_case(&c);
        }
}

/* A decode case at 32 q heads, 8 kv heads, head dim 128, with the engine's workspace (an
 * allocation on the stream would be timed otherwise). K and V are [batch, len, 8, 128] views:
 * token-major (NHD, as a KV cache is written token by token), or head-major (HND: the memory of
 * [batch, 8, len, 128], the peers' contiguous SDPA layout). */
static int decode_case(attention_case *c, yh_tensor *ws, yk_ctx *ctx, int64_t batch, int64_t len, int head_major,
                       yh_rng *rng) {
  memset(c, 0, sizeof *c);
  memset(ws, 0, sizeof *ws);
  c->ctx = ctx, c->decode = 1;
  const int64_t qd[3] = {batch, 32, 128}, kd[4] = {batch, len, 8, 128};
  const int64_t hnd[4] = {len * 8 * 128, 128, len * 128, 1};
  const int64_t *ks = head_major ? hnd : NULL;
  if (yh_tensor_init(&c->q, ctx, YK_BF16, 3, qd, NULL, 1) || yh_tensor_init(&c->k, ctx, YK_BF16, 4, kd, ks, 1) ||
      yh_tensor_init(&c->v, ctx, YK_BF16, 4, kd, ks, 1) || yh_tensor_init(&c->out, ctx, YK_BF16, 3, qd, NULL, 1))
    return 1;
  yh_fill_uniform(&c->q, rng, -1, 1), yh_fill_uniform(&c->k, rng, -1, 1), yh_fill_uniform(&c->v, rng, -1, 1);
  const int64_t floats = (int64_t)yk_attention_decode_workspace_floats(ctx, batch, 32, 8, 128, len, 0, 128);
  if (yh_tensor_init(ws, ctx, YK_F32, 1, &floats, NULL, 1)) return 1;
  c->params.workspace = &ws->dl;
  return 0;
}

static const int64_t decode_shapes[][2] = {{64, 4096}, {1, 32768}, {256, 1024}};

/* Ragged batches as an engine's decode step has them: k and v [total, 8, 128] with cu_seqlens_k in
 * device memory and max_seqlen_k, as FlashAttention's varlen callers pass them. The split is
 * chosen from the batch and k's rows (balanced), or given as the batch alone would choose it (the
 * rule before ragged batches were balanced; where that is 1 split, exactly the old launch). */
static const int32_t lens_spread[] = {32768, 256, 4096, 1024};
const bench_ragged bench_ragged_shapes[] = {
    {"1x32768+31x512", 32, 32768, 1, 512, NULL},          {"4x16384+60x1024", 64, 16384, 4, 1024, NULL},
    {"1x32768+15x2048", 16, 32768, 1, 2048, NULL},        {"2x8192+126x256", 128, 8192, 2, 256, NULL},
    {"32768+256+4096+1024", 4, 32768, 0, 0, lens_spread}, {"32x4096 (equal)", 32, 4096, 32, 4096, NULL},
};
const int bench_ragged_count = (int)(sizeof bench_ragged_shapes / sizeof bench_ragged_shapes[0]);

int32_t bench_ragged_len(const bench_ragged *s, int64_t b) {
  if (s->lens) return s->lens[b];
  return (int32_t)(b % (s->batch / s->long_count) == 0 ? s->longest : s->short_len);
}

int bench_batch_split(yk_ctx *ctx, int64_t batch, int64_t longest) {
  const size_t floats = yk_attention_decode_workspace_floats(ctx, batch, 32, 8, 128, longest, 0, 0);
  return floats ? (int)(floats / (size_t)(batch * 32 * 129)) : 1;
}

static int ragged_decode_case(attention_case *c, yh_tensor *ws, yk_ctx *ctx, const bench_ragged *shape, int64_t *total,
                              yh_rng *rng) {
  memset(c, 0, sizeof *c);
  memset(ws, 0, sizeof *ws);
  c->ctx = ctx, c->decode = 1;
  const int64_t batch = shape->batch, cu_n = batch + 1;
  int32_t *cu = malloc((size_t)cu_n * sizeof *cu);
  if (!cu) return 1;
  cu[0] = 0;
  for (int64_t b = 0; b < batch; b++) cu[b + 1] = cu[b] + bench_ragged_len(shape, b);
  *total = cu[batch];
  const int64_t qd[3] = {batch, 32, 128}, kd[3] = {*total, 8, 128};
  int bad =
      yh_tensor_init(&c->q, ctx, YK_BF16, 3, qd, NULL, 1) || yh_tensor_init(&c->k, ctx, YK_BF16, 3, kd, NULL, 1) ||
      yh_tensor_init(&c->v, ctx, YK_BF16, 3, kd, NULL, 1) || yh_tensor_init(&c->out, ctx, YK_BF16, 3, qd, NULL, 1) ||
      yh_tensor_init(&c->cu_k, ctx, YK_I32, 1, &cu_n, NULL, 1);
  if (!bad) {
    memcpy(c->cu_k.host, cu, (size_t)cu_n * sizeof *cu);
    bad = yh_upload(&c->cu_k);
  }
  free(cu);
  if (bad) return 1;
  yh_fill_uniform(&c->q, rng, -1, 1), yh_fill_uniform(&c->k, rng, -1, 1), yh_fill_uniform(&c->v, rng, -1, 1);
  c->params.cu_seqlens_k = &c->cu_k.dl;
  c->params.max_seqlen_k = (int)shape->longest;
  const int64_t floats = (int64_t)yk_attention_decode_workspace_floats(ctx, batch, 32, 8, 128, *total, 0, 128);
  if (yh_tensor_init(ws, ctx, YK_F32, 1, &floats, NULL, 1)) return 1;
  c->params.workspace = &ws->dl;
  return 0;
}

/* A few query tokens a sequence against a long key sequence, through the prefill call (causal):
 * speculative decoding's verification step and a chunked prefill's last chunk. Ragged (offsets in
 * device memory) with the split's workspace allocated by the call, as every row before the call
 * took a workspace; ragged and dense with one from yk_flash_attention_forward_workspace_floats (the
 * ragged one only where the call splits: with none its row is the plain one).
 * GB/s of K and V read, as decode's rows, which read the same bytes. */
static void bench_short_queries(bench_timer *t, bench_results *r) {
  yh_rng rng = {24};
  /* 32 and 64 queries (128 and 256 rows a kv head): past the decode kernel's rows, where the
     prefill kernel takes them */
  static const int64_t shapes[][3] = {{1, 4, 32768}, {1, 8, 32768},  {1, 16, 32768}, {8, 8, 4096},
                                      {64, 8, 4096}, {1, 32, 32768}, {1, 64, 32768}, {16, 32, 4096}};
  static const char *const forms[3] = {"", " ws", " dense ws"};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
    for (int form = 0; form < 3; form++) {
      const int64_t batch = shapes[i][0], nq = shapes[i][1], len = shapes[i][2], cu_n = batch + 1;
      const int dense = form == 2;
      const int64_t floats = form > 0 ? (int64_t)yk_flash_attention_forward_workspace_floats(
                                            t->ctx, batch, batch * nq, nq, 32, 8, 128, len, batch * len, 0)
                                      : 0;
      if (form == 1 && floats == 0) continue; /* no split, no workspace: the plain row again */
      attention_case c;
      yh_tensor ws = {0};
      memset(&c, 0, sizeof c);
      c.ctx = t->ctx, c.params.causal = 1;
      const int64_t qd[4] = {batch * nq, 32, 128}, kd[4] = {batch * len, 8, 128}, ld[3] = {32, batch * nq};
      const int64_t dq[4] = {batch, nq, 32, 128}, dk[4] = {batch, len, 8, 128}, dl[3] = {batch, 32, nq};
      int bad = yh_tensor_init(&c.q, t->ctx, YK_BF16, dense ? 4 : 3, dense ? dq : qd, NULL, 1) ||
                yh_tensor_init(&c.lse, t->ctx, YK_F32, dense ? 3 : 2, dense ? dl : ld, NULL, 1) ||
                yh_tensor_init(&c.k, t->ctx, YK_BF16, dense ? 4 : 3, dense ? dk : kd, NULL, 1) ||
                yh_tensor_init(&c.v, t->ctx, YK_BF16, dense ? 4 : 3, dense ? dk : kd, NULL, 1) ||
                yh_tensor_init(&c.out, t->ctx, YK_BF16, dense ? 4 : 3, dense ? dq : qd, NULL, 1);
      if (!bad && !dense) {
        bad = yh_tensor_init(&c.cu_q, t->ctx, YK_I32, 1, &cu_n, NULL, 1) ||
              yh_tensor_init(&c.cu_k, t->ctx, YK_I32, 1, &cu_n, NULL, 1);
        for (int64_t b = 0; !bad && b <= batch; b++)
          ((int32_t *)c.cu_q.host)[b] = (int32_t)(b * nq), ((int32_t *)c.cu_k.host)[b] = (int32_t)(b * len);
        bad = bad || yh_upload(&c.cu_q) || yh_upload(&c.cu_k);
        c.params.cu_seqlens_q = &c.cu_q.dl, c.params.cu_seqlens_k = &c.cu_k.dl;
        c.params.max_seqlen_q = (int)nq, c.params.max_seqlen_k = (int)len;
      }
      if (!bad && floats > 0) {
        bad = yh_tensor_init(&ws, t->ctx, YK_F32, 1, &floats, NULL, 1);
        c.params.workspace = &ws.dl;
      }
      char name[96];
      snprintf(name, sizeof name, "prefill q%lld of B%lld L%lld causal gqa4 d128%s", (long long)nq, (long long)batch,
               (long long)len, forms[form]);
      if (!bad) {
        yh_fill_uniform(&c.q, &rng, -1, 1), yh_fill_uniform(&c.k, &rng, -1, 1), yh_fill_uniform(&c.v, &rng, -1, 1);
        const double ms = bench_median_ms(t, call, &c), bytes = 2.0 * (double)(batch * len) * 8 * 128 * 2;
        if (ms > 0) {
          bench_add(r, name, ms, bytes / ms / 1e6, bytes / ms / 1e6, "GB/s");
          fprintf(stderr, "  %-52s %9.4f ms %7.0f GB/s\n", name, ms, bytes / ms / 1e6);
        } else {
          fprintf(stderr, "  %s failed: %s\n", name, yk_ctx_last_error(t->ctx));
        }
      } else {
        fprintf(stderr, "  %s: cannot set up: %s\n", name, yk_ctx_last_error(t->ctx));
      }
      free_case(&c);
      yh_tensor_free(&ws);
    }
}

static void bench_decode_ragged(bench_timer *t, bench_results *r) {
  yh_rng rng = {23};
  for (int i = 0; i < bench_ragged_count; i++) {
    const bench_ragged *shape = &bench_ragged_shapes[i];
    attention_case c;
    yh_tensor ws;
    int64_t total = 0;
    if (ragged_decode_case(&c, &ws, t->ctx, shape, &total, &rng)) {
      fprintf(stderr, "  ragged decode %s: cannot set up: %s\n", shape->name, yk_ctx_last_error(t->ctx));
    } else {
      const int batch_rule = bench_batch_split(t->ctx, shape->batch, shape->longest);
      const double bytes = 2.0 * (double)total * 8 * 128 * 2;
      double ms[2];
      for (int by_batch = 0; by_batch < 2; by_batch++) {
        c.params.num_splits = by_batch ? batch_rule : 0;
        char name[128];
        snprintf(name, sizeof name, "decode ragged %s %s", shape->name, by_batch ? "batch's split" : "balanced");
        ms[by_batch] = bench_median_ms(t, call, &c);
        if (ms[by_batch] > 0) {
          bench_add(r, name, ms[by_batch], bytes / ms[by_batch] / 1e6, bytes / ms[by_batch] / 1e6, "GB/s");
          fprintf(stderr, "  %-52s %9.4f ms %7.0f GB/s\n", name, ms[by_batch], bytes / ms[by_batch] / 1e6);
        } else {
          fprintf(stderr, "  %s failed: %s\n", name, yk_ctx_last_error(t->ctx));
        }
      }
      if (ms[0] > 0 && ms[1] > 0) {
        char name[128];
        snprintf(name, sizeof name, "decode ragged %s balanced / batch's split", shape->name);
        bench_add(r, name, 0, 0, ms[1] / ms[0], "x");
        fprintf(stderr, "  %-52s %.2fx (batch's split: %d)\n", name, ms[1] / ms[0], batch_rule);
      }
      /* the longest sequence's splits given, the others in chunks of the same size: what the
         balanced choice picks among */
      for (int splits = 2; splits <= 32; splits *= 2) {
        char name[128];
        snprintf(name, sizeof name, "decode ragged %s splits %d", shape->name, splits);
        c.params.num_splits = splits;
        const double split_ms = bench_median_ms(t, call, &c);
        if (split_ms > 0) {
          bench_add(r, name, split_ms, bytes / split_ms / 1e6, bytes / split_ms / 1e6, "GB/s");
          fprintf(stderr, "  %-52s %9.4f ms %7.0f GB/s\n", name, split_ms, bytes / split_ms / 1e6);
        }
      }
    }
    yh_tensor_free(&ws);
    free_case(&c);
  }
}

static void decode_sweep(bench_timer *t, bench_results *r);

void bench_decode(bench_timer *t, bench_results *r, int sweep) {
  yh_rng rng = {22};
  for (int head_major = 0; head_major < 2; head_major++)
    for (size_t i = 0; i < sizeof decode_shapes / sizeof decode_shapes[0]; i++) {
      const int64_t batch = decode_shapes[i][0], len = decode_shapes[i][1];
      attention_case c;
      yh_tensor ws;
      char name[96];
      snprintf(name, sizeof name, "decode B%lld L%lld gqa4 d128%s", (long long)batch, (long long)len,
               head_major ? " hnd" : "");
      if (!decode_case(&c, &ws, t->ctx, batch, len, head_major, &rng)) {
        const double ms = bench_median_ms(t, call, &c);
        const double bytes = 2.0 * batch * len * 8 * 128 * 2;
        if (ms > 0) {
          bench_add(r, name, ms, bytes / ms / 1e6, bytes / ms / 1e6, "GB/s");
          fprintf(stderr, "  %-44s %9.4f ms %7.0f GB/s\n", name, ms, bytes / ms / 1e6);
        } else {
          fprintf(stderr, "  %s failed: %s\n", name, yk_ctx_last_error(t->ctx));
        }
      }
      yh_tensor_free(&ws);
      free_case(&c);
    }
  bench_decode_ragged(t, r);
  bench_short_queries(t, r);
  if (sweep) decode_sweep(t, r);
}

/* The Hopper prefill's tiles and loops: block_n, stages, warpgroups (three only at 64-key tiles or
 * head dim 64: registers; at 256 only 64-key tiles, and three stages only with one warpgroup),
 * pipeline (FlashAttention-3's producer warpgroup, and that with the consumers' MMAs in turn; the
 * plain loop 0, slower at every shape on the H200, is left out) and tma (the producer's loads).
 * Configurations a rule refuses print as invalid. */
static void prefill_configs(bench_timer *t, bench_results *r, const char *shape, attention_case *c, double flops) {
  static const int block_n[] = {64, 128}, stages[] = {2, 3}, groups[] = {1, 2, 3};
  char config[96];
  for (int p = 1; p <= 2; p++)
    for (int tma = 0; tma <= 1; tma++)
      for (int b = 0; b < 2; b++)
        for (int st = 0; st < 2; st++)
          for (int g = 0; g < 3; g++) {
            if (p == 2 && groups[g] != 2) continue; /* pipeline 2 takes turns between two warpgroups */
            snprintf(config, sizeof config, "block_n=%d,stages=%d,warpgroups=%d,pipeline=%d,tma=%d", block_n[b],
                     stages[st], groups[g], p, tma);
            bench_sweep_one(t, r, shape, "attention_prefill_sm90", config, call, c, flops, "TFLOP/s");
          }
}

static void prefill_sweep(bench_timer *t, bench_results *r, int only_head_dim) {
  yh_rng rng = {23};
  /* the lengths, 16k tokens a batch, and 2048 between them: short causal grids at head dim
   * 64 take fewer warpgroups (yk_attention_prefill_sm90_spec: one up to 1024 queries, two under 4096) */
  static const int64_t seqs[] = {1024, 2048, 4096, 16384};
  for (int i = 0; i < 24; i++) { /* head dims 64, 128 and 256, each at every length, without and with the mask */
    const int64_t head_dim = 64 << (i / 8), seq = seqs[i / 2 % 4], batch = 16384 / seq;
    if (only_head_dim && head_dim != only_head_dim) continue;
    /* a head dim the calls do not route to the Hopper kernel would time mma.sync under its pins */
    if (!yk_attention_prefill_sm90_head_dim((int)head_dim)) continue;
    const int64_t heads = 2048 / head_dim;
    const int causal = i % 2;
    attention_case c;
    char shape[64];
    snprintf(shape, sizeof shape, "prefill D%lld S%lld causal=%d", (long long)head_dim, (long long)seq, causal);
    if (!dense(&c, t->ctx, batch, seq, heads, heads, head_dim, causal, 0, &rng))
      prefill_configs(t, r, shape, &c, attention_flops(batch, heads, seq, head_dim, causal, 0));
    free_case(&c);
  }
}

/* The backward's tiles at head dims 64 and 128, S4096. On sm_90 both kernels are the wgmma ones
 * (attention_backward_sm90): its rows pin the loads (tma=0: cp.async) and warpgroups (64 owned rows
 * each) of both, and the stages or walked tile of one part (part=dq: keys; part=dkdv: query rows);
 * mma_sync runs attention_backward's kernels instead (their tiles: NOTES.md items 20 and 22). */
static void backward_sweep(bench_timer *t, bench_results *r, int only_head_dim) {
  yh_rng rng = {29};
  static const int dims[] = {64, 128};
  for (int di = 0; di < 2; di++)
    for (int causal = 0; causal <= 1; causal++) {
      if (only_head_dim && dims[di] != only_head_dim) continue;
      const int64_t seq = 4096, batch = 4, heads = 2048 / dims[di];
      attention_case c;
      char shape[64];
      snprintf(shape, sizeof shape, "backward D%d S%lld causal=%d", dims[di], (long long)seq, causal);
      if (!dense(&c, t->ctx, batch, seq, heads, heads, dims[di], causal, 1, &rng)) {
        const double flops = attention_flops(batch, heads, seq, dims[di], causal, 1);
        bench_sweep_one(t, r, shape, NULL, "default", call, &c, flops, "TFLOP/s");
        /* the dk/dv kernel that adds dq up (the default), then the deterministic pair (tma=0
         * pins both of its kernels; the dq rows exist only there) */
        static const char *const atomic[] = {"part=dkdv,tma=0",
                                             "part=dkdv,stages=2",
                                             "part=dkdv,stages=3",
                                             "part=dkdv,tile=128",
                                             "part=dkdv,dq_sum=behind,tile=64",
                                             "part=dkdv,dq_sum=block",
                                             "part=dkdv,dq_sum=warpgroup",
                                             "part=dkdv,dq_sum=warpgroup,tile=64"};
        for (size_t i = 0; i < sizeof atomic / sizeof atomic[0]; i++)
          bench_sweep_one(t, r, shape, "attention_backward_sm90", atomic[i], call, &c, flops, "TFLOP/s");
        c.params.deterministic = 1;
        bench_sweep_one(t, r, shape, NULL, "deterministic", call, &c, flops, "TFLOP/s");
        static const char *const hopper[] = {"tma=0", "warpgroups=1", "part=dq,stages=3", "part=dq,tile=64"};
        for (size_t i = 0; i < sizeof hopper / sizeof hopper[0]; i++)
          bench_sweep_one(t, r, shape, "attention_backward_sm90", hopper[i], call, &c, flops, "TFLOP/s");
        const int was = t->ctx->backward_mma_sync;
        t->ctx->backward_mma_sync = 1;
        bench_sweep_one(t, r, shape, NULL, "mma_sync", call, &c, flops, "TFLOP/s");
        t->ctx->backward_mma_sync = was;
      }
      free_case(&c);
    }
}

/* Decode over split counts (every batch: at batch 64 a grid of 512 blocks is 1.94 waves of two a
 * SM, which splits turn into more, shorter blocks), the tiles of one team's pipeline, and its
 * shared-memory layout with the L2 hints of its loads. */
static void decode_sweep(bench_timer *t, bench_results *r) {
  yh_rng rng = {23};
  for (size_t i = 0; i < sizeof decode_shapes / sizeof decode_shapes[0]; i++) {
    const int64_t batch = decode_shapes[i][0], len = decode_shapes[i][1];
    attention_case c;
    yh_tensor ws;
    char shape[64], config[96];
    snprintf(shape, sizeof shape, "decode B%lld L%lld", (long long)batch, (long long)len);
    const double bytes = 2.0 * batch * len * 8 * 128 * 2;
    if (!decode_case(&c, &ws, t->ctx, batch, len, 0, &rng)) {
      static const int long_splits[] = {0, 8, 16, 24, 32, 33, 48, 64, 128}, short_splits[] = {0, 1, 2, 3, 4};
      const int *splits = batch == 1 ? long_splits : short_splits;
      const int count = batch == 1 ? 9 : 5;
      for (int s = 0; s < count; s++) {
        c.params.num_splits = splits[s]; /* a parameter of the call, not a spec field */
        snprintf(config, sizeof config, "num_splits=%d", splits[s]);
        bench_sweep_one(t, r, shape, NULL, config, call, &c, bytes, "GB/s");
      }
      c.params.num_splits = 0;
      static const int warps[] = {4, 8, 16}, stages[] = {2, 3, 4, 6}, block_n[] = {16, 32};
      for (int w = 0; w < 3; w++)
        for (int st = 0; st < 4; st++)
          for (int b = 0; b < 2; b++) {
            snprintf(config, sizeof config, "warps=%d,stages=%d,block_n=%d", warps[w], stages[st], block_n[b]);
            bench_sweep_one(t, r, shape, "attention_decode", config, call, &c, bytes, "GB/s");
          }
      static const char *const hints[] = {"none", "prefetch128", "prefetch256", "evict_first"};
      for (int sw = 0; sw < 2; sw++)
        for (int h = 0; h < 4; h++) {
          snprintf(config, sizeof config, "swizzle=%d,kv_hint=%s", sw, hints[h]);
          bench_sweep_one(t, r, shape, "attention_decode", config, call, &c, bytes, "GB/s");
        }
    }
    yh_tensor_free(&ws);
    free_case(&c);
  }
  bench_decode_lengths(t, r);
}

/* Knobs that would move batch-1 decode's fixed cost or its steady rate: deeper pipelines, more
 * teams a block (more tiles in flight an SM), the L2 hint. */
static const char *const b1_knobs[] = {"stages=4", "warps=8",          "kv_hint=none",
                                       "warps=6",  "warps=8,stages=2", "warps=12,stages=2"};

/* batch 1 over lengths: time = fixed cost + bytes / steady rate, the two parts of B1's figure,
 * for the default and each knob, with the head-major layout the peers read; then paged keys */
void bench_decode_lengths(bench_timer *t, bench_results *r) {
  yh_rng rng = {24};
  static const int64_t lengths[] = {8192, 32768, 131072};
  for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++)
    for (int head_major = 0; head_major < 2; head_major++) {
      attention_case c;
      yh_tensor ws;
      char shape[64], config[32];
      snprintf(shape, sizeof shape, "decode B1 L%lld%s", (long long)lengths[i], head_major ? " hnd" : "");
      const double bytes = 2.0 * lengths[i] * 8 * 128 * 2;
      if (!decode_case(&c, &ws, t->ctx, 1, lengths[i], head_major, &rng)) {
        static const int splits[] = {0, 32, 33, 64};
        for (int s = 0; s < (head_major ? 1 : 4); s++) {
          c.params.num_splits = splits[s];
          snprintf(config, sizeof config, "num_splits=%d", splits[s]);
          bench_sweep_one(t, r, shape, NULL, config, call, &c, bytes, "GB/s");
        }
        c.params.num_splits = 0;
        for (int k = 0; k < (head_major ? 0 : (int)(sizeof b1_knobs / sizeof b1_knobs[0])); k++)
          bench_sweep_one(t, r, shape, "attention_decode", b1_knobs[k], call, &c, bytes, "GB/s");
        /* more splits in blocks small enough that several share an SM in one wave (a plain read of
         * these bytes ran fastest at four blocks an SM: NOTES.md item 62; the decode did not, item 63) */
        static const int more_splits[] = {32, 48, 64};
        static const char *const small_blocks[] = {"warps=2,stages=3", "warps=2,stages=2", "warps=3,stages=2",
                                                   "warps=4,stages=2"};
        for (int s = 0; lengths[i] == 32768 && !head_major && s < 3; s++)
          for (int k = 0; k < 4; k++) {
            c.params.num_splits = more_splits[s];
            char shape_splits[96];
            snprintf(shape_splits, sizeof shape_splits, "%s num_splits=%d", shape, more_splits[s]);
            bench_sweep_one(t, r, shape_splits, "attention_decode", small_blocks[k], call, &c, bytes, "GB/s");
          }
        c.params.num_splits = 0;
      }
      yh_tensor_free(&ws);
      free_case(&c);
    }
  bench_paged_knobs(t, r);
}

/* yk bench --sweep: decode over split counts and tile shapes, the prefill and the backward over
 * their tiles. What issue 6's tuner automates; here it chooses the defaults. */
int bench_attention_sweep(bench_timer *t, bench_results *r) {
  decode_sweep(t, r);
  prefill_sweep(t, r, 0);
  backward_sweep(t, r, 0);
  return 0;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Each attention kernel compiled cold, in a memory-only context: NVRTC's time for it, the median of
 * three rounds over every spec (a fresh context a round, so none is a cache hit), since one compile's
 * time moves with whatever else the host runs. */
static void cold_compiles(yk_ctx *gpu, bench_results *r) {
  static const char *const specs[] = {
      "attention_prefill_sm90:dtype=bf16,head_dim=128,causal=1",
      "attention_prefill_sm90:dtype=bf16,head_dim=64",
      "attention_prefill_sm90:dtype=bf16,head_dim=128,causal=1,ragged=1,paged=csr,page_size=16",
      "attention_prefill_sm90:dtype=bf16,head_dim=256,causal=1",
      "attention_prefill:dtype=bf16,head_dim=128",
      "attention_prefill:dtype=bf16,head_dim=256,causal=1",
      "attention_decode:dtype=bf16,head_dim=128",
      "attention_decode:dtype=bf16,head_dim=256,split=1",
      "attention_decode:dtype=bf16,head_dim=128,paged=block_table,page_size=16",
      "attention_decode:dtype=bf16,head_dim=128,paged=block_table,page_size=16,kv_float8=1",
      "attention_backward:dtype=bf16,head_dim=128,part=dq",
      "attention_backward:dtype=bf16,head_dim=256,part=dkdv",
      "attention_backward_sm90:dtype=bf16,head_dim=128,part=dq,causal=1",
      "attention_backward_sm90:dtype=bf16,head_dim=128,part=dkdv,causal=1",
      "attention_backward_sm90:dtype=bf16,head_dim=128,part=dkdv,causal=1,atomic_dq=1",
      "merge_attention_states:dtype=bf16,head_dim=128,in_type=f32,states=0",
  };
  enum { SPECS = sizeof specs / sizeof specs[0], ROUNDS = 3 };
  double ms[SPECS][ROUNDS];
  int done[SPECS] = {0};
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU, o.cache_memory_only = 1;
  for (int round = 0; round < ROUNDS; round++) {
    yk_ctx *ctx;
    if (yk_ctx_create(&o, &ctx) != YK_OK) return;
    for (int i = 0; i < SPECS; i++) {
      int compiled = 0;
      const double t0 = now_ms();
      if (yk_spec_compile(ctx, specs[i], gpu->target, &compiled) != YK_OK || !compiled) continue;
      ms[i][done[i]++] = now_ms() - t0;
    }
    yk_ctx_destroy(ctx);
  }
  for (int i = 0; i < SPECS; i++) {
    if (done[i] < ROUNDS) continue;
    const double m = bench_median(ms[i], ROUNDS); /* sorts ms[i]: its ends are the fastest and slowest rounds */
    char name[128];
    snprintf(name, sizeof name, "jit.cold_compile_ms %s", specs[i]);
    bench_add(r, name, m, 0, m, "ms");
    fprintf(stderr, "  cold compile %-60s %7.1f ms (median of %d; %.1f-%.1f)\n", specs[i], m, ROUNDS, ms[i][0],
            ms[i][ROUNDS - 1]);
  }
}

int bench_attention(bench_timer *t, bench_results *r, int quick) {
  prefill_and_backward(t, r, quick, PREFILL | BACKWARD, 0);
  bench_decode(t, r, 0);
  cold_compiles(t->ctx, r);
  return 0;
}

void bench_prefill(bench_timer *t, bench_results *r, int sweep, int head_dim) {
  prefill_and_backward(t, r, 1, PREFILL, head_dim);
  if (!head_dim) cold_compiles(t->ctx, r);
  if (sweep) prefill_sweep(t, r, head_dim);
}

void bench_backward(bench_timer *t, bench_results *r, int sweep, int head_dim) {
  prefill_and_backward(t, r, 0, BACKWARD, head_dim);
  if (sweep) backward_sweep(t, r, head_dim);
}
