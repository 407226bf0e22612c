/* The float64 references of attention (cpu_fallback/attention.h): the straightforward
 * softmax(q k^T * scale) v and its gradients, the scores materialised, a row at a time. The tests,
 * the demo and the benchmarks check the fallback and the GPU against them. */
#include <math.h>
#include <stdlib.h>

#include "cpu_fallback/attention.h"
#include "cpu_fallback/attention_sequence.h"

static double dot64(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

static int64_t total_tokens(const yk_attention_shape *s, int keys) {
  const int32_t *cu = keys ? s->cu_seqlens_k : s->cu_seqlens_q;
  return cu ? cu[s->batch] : s->batch * (keys ? s->seq_k : s->seq_q);
}

static void fill(double *x, int64_t n, double value) {
  for (int64_t i = 0; i < n; i++) x[i] = value;
}

/* Probabilities softmax(q_i k^T * scale) over the keys [0, len_k) of the sequence into p, 0 for
 * the keys query i does not see, and their log-sum-exp into *lse (-inf when it sees none). The
 * mask is stated here key by key rather than through keys_seen, so that a slip in the fallback's
 * bounds shows up as a difference. */
static void reference_probs(const yk_attention_shape *s, const seq_span *g, int64_t i, const double *qi,
                            const double *k, int64_t kvh, double *p, double *lse) {
  const int64_t d = s->head_dim;
  double top = -INFINITY, sum = 0;
  for (int64_t j = 0; j < g->len_k; j++) {
    const int seen = !s->causal || j - i <= g->len_k - g->len_q;
    p[j] = seen ? (double)s->scale * dot64(qi, k + ((g->k0 + j) * s->kv_heads + kvh) * d, d) : -INFINITY;
    if (p[j] > top) top = p[j];
  }
  for (int64_t j = 0; j < g->len_k; j++) sum += p[j] = top == -INFINITY ? 0 : exp(p[j] - top);
  for (int64_t j = 0; j < g->len_k; j++) p[j] = sum > 0 ? p[j] / sum : 0;
  *lse = sum > 0 ? top + log(sum) : -INFINITY;
}

void yk_reference_attention_forward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                    double *out, double *lse) {
  const yk_attention_shape *s = shape;
  const int64_t d = s->head_dim, hq = s->q_heads, total_q = total_tokens(s, 0), group = hq / s->kv_heads;
  double *p = malloc((size_t)(longest(s, 1) + 1) * sizeof *p);
  if (!p) { /* no way to report it: make the failure impossible to miss */
    fill(out, total_q * hq * d, NAN);
    if (lse) fill(lse, hq * total_q, NAN);
    return;
  }
  for (int64_t b = 0; b < s->batch; b++) {
    const seq_span g = sequence(s, b, 1);
    for (int64_t h = 0; h < hq; h++)
      for (int64_t i = 0; i < g.len_q; i++) {
        const int64_t row = (g.q0 + i) * hq + h;
        double row_lse, *o = out + row * d;
        reference_probs(s, &g, i, q + row * d, k, h / group, p, &row_lse);
        fill(o, d, 0);
        for (int64_t j = 0; j < g.len_k; j++)
          for (int64_t c = 0; c < d; c++) o[c] += p[j] * v[((g.k0 + j) * s->kv_heads + h / group) * d + c];
        if (lse) lse[h * total_q + g.q0 + i] = row_lse;
      }
  }
  free(p);
}

void yk_reference_attention_backward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                     const double *dout, double *dq, double *dk, double *dv) {
  const yk_attention_shape *s = shape;
  const int64_t d = s->head_dim, hq = s->q_heads, hk = s->kv_heads, group = hq / hk;
  const int64_t total_q = total_tokens(s, 0), total_k = total_tokens(s, 1), most = longest(s, 1) + 1;
  fill(dq, total_q * hq * d, 0);
  fill(dk, total_k * hk * d, 0);
  fill(dv, total_k * hk * d, 0);
  double *p = malloc((size_t)(2 * most) * sizeof *p);
  if (!p) {
    fill(dq, total_q * hq * d, NAN);
    fill(dk, total_k * hk * d, NAN);
    fill(dv, total_k * hk * d, NAN);
    return;
  }
  double *dp = p + most;
  for (int64_t b = 0; b < s->batch; b++) {
    const seq_span g = sequence(s, b, 1);
    for (int64_t h = 0; h < hq; h++)
      for (int64_t i = 0; i < g.len_q; i++) {
        const int64_t row = (g.q0 + i) * hq + h, kvh = h / group;
        const double *qi = q + row * d, *gi = dout + row * d;
        double row_lse, delta = 0; /* sum_j P_ij dP_ij, which equals dout_i . out_i */
        reference_probs(s, &g, i, qi, k, kvh, p, &row_lse);
        for (int64_t j = 0; j < g.len_k; j++) {
          dp[j] = dot64(gi, v + ((g.k0 + j) * hk + kvh) * d, d);
          delta += p[j] * dp[j];
        }
        for (int64_t j = 0; j < g.len_k; j++) {
          const int64_t key = ((g.k0 + j) * hk + kvh) * d;
          const double ds = p[j] * (dp[j] - delta) * (double)s->scale;
          for (int64_t c = 0; c < d; c++) {
            dq[row * d + c] += ds * k[key + c];
            dk[key + c] += ds * qi[c];
            dv[key + c] += p[j] * gi[c];
          }
        }
      }
  }
  free(p);
}
