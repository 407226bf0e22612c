#include "cpu_fallback/rope.h"

#include "cpu_fallback/half.h"

static int64_t position(const yk_rope_args *a, int64_t t) {
  const int64_t at = t / a->seq * a->positions_batch_stride + t % a->seq * a->positions_seq_stride;
  return a->positions_64 ? ((const int64_t *)a->positions)[at] : ((const int32_t *)a->positions)[at];
}

static void rotate_head(const yk_rope_args *a, char *head, const float *cos, const float *sin) {
  const int64_t half = a->rotary_dim / 2;
  float v[YK_CPU_CHUNK]; /* rotary_dim <= YK_CPU_CHUNK, checked by the op */
  yk_load_floats(a->dtype, head, v, a->rotary_dim);
  if (a->neox) {
    for (int64_t i = 0; i < half; i++) {
      float x = v[i], y = v[i + half];
      v[i] = x * cos[i] - y * sin[i];
      v[i + half] = y * cos[i] + x * sin[i];
    }
  } else {
    for (int64_t i = 0; i < half; i++) {
      float x = v[2 * i], y = v[2 * i + 1];
      v[2 * i] = x * cos[i] - y * sin[i];
      v[2 * i + 1] = y * cos[i] + x * sin[i];
    }
  }
  yk_store_floats(a->dtype, head, v, a->rotary_dim);
}

static void tokens(void *p, int64_t begin, int64_t end) {
  const yk_rope_args *a = p;
  const int64_t es = (int64_t)yk_dtype_size((yk_dtype)a->dtype);
  const int64_t cs = (int64_t)yk_dtype_size((yk_dtype)a->cache_dtype), half = a->rotary_dim / 2;
  float cos[YK_CPU_CHUNK / 2], sin[YK_CPU_CHUNK / 2];
  for (int64_t t = begin; t < end; t++) {
    const int64_t row = position(a, t) * a->table_row_stride * cs;
    yk_load_floats(a->cache_dtype, a->cos + row, cos, half);
    yk_load_floats(a->cache_dtype, a->sin + row, sin, half);
    const int64_t b = t / a->seq, s = t % a->seq;
    for (int64_t h = 0; h < a->q_heads; h++)
      rotate_head(a, a->q + (b * a->q_batch_stride + s * a->q_seq_stride + h * a->q_head_stride) * es, cos, sin);
    for (int64_t h = 0; h < a->kv_heads; h++)
      rotate_head(a, a->k + (b * a->k_batch_stride + s * a->k_seq_stride + h * a->k_head_stride) * es, cos, sin);
  }
}

int64_t yk_cpu_rope(yk_thread_pool *pool, const yk_rope_args *args) {
  for (int64_t t = 0; t < args->tokens; t++) {
    int64_t pos = position(args, t);
    if (pos < 0 || pos >= args->max_position) return t;
  }
  int64_t per_token = (args->q_heads + args->kv_heads) * args->rotary_dim;
  int64_t grain = 32768 / (per_token > 0 ? per_token : 1);
  yk_parallel_for(pool, args->tokens, grain > 0 ? grain : 1, tokens, (void *)args);
  return -1;
}

static void reference_head(int neox, int64_t rotary_dim, double *h, const double *cos, const double *sin) {
  const int64_t half = rotary_dim / 2;
  for (int64_t i = 0; i < half; i++) {
    const int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const double x = h[a], y = h[b];
    h[a] = x * cos[i] - y * sin[i];
    h[b] = y * cos[i] + x * sin[i];
  }
}

void yk_reference_rope(int neox, int64_t tokens, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                       int64_t rotary_dim, double *q, double *k, const double *cache, const int64_t *positions) {
  for (int64_t t = 0; t < tokens; t++) {
    const double *cos = cache + positions[t] * rotary_dim, *sin = cos + rotary_dim / 2;
    for (int64_t h = 0; h < q_heads; h++) reference_head(neox, rotary_dim, q + (t * q_heads + h) * head_dim, cos, sin);
    for (int64_t h = 0; h < kv_heads; h++)
      reference_head(neox, rotary_dim, k + (t * kv_heads + h) * head_dim, cos, sin);
  }
}
