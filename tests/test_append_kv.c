/* append_kv: new tokens written into a yk_kv_cache's pages, read back through the block tables
 * byte for byte, on the CPU and on the GPU (against the CPU fallback); both index forms; padding
 * skipped; RoPE fused equal to yk_rope then append; bad input leaving the cache as it was; and
 * the kernels' specs compiling with NVRTC alone. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/half.h"
#include "runtime/context.h"
#include "tests/kv_support.h"

typedef struct {
  int dtype; /* of k and v: YK_F16 or YK_BF16 (the cache's too, unless float8) */
  yk_kv_layout layout;
  int page, heads, dim;
  int float8;          /* 1: a float8_e4m3fn cache, written with scales */
  yk_kv_scales scales; /* {0, 0}: 1 */
} cache_shape;

#define SEQS 3
static const int64_t prompt[SEQS] = {37, 5, 130}, fresh[SEQS] = {3, 1, 20};
#define LAYER 1 /* of 2: a layer whose pages do not start the block */

/* One engine step on a cache: three sequences with prompts in place get their new tokens,
 * two padding tokens among them (slot -1, position -1). */
typedef struct {
  yk_ctx *ctx;
  yk_kv_cache *cache;
  int on_device;
  DLTensor kc, vc;
  int64_t tokens;
  int seq_of[64];       /* per token: the sequence index, -1 for padding */
  int64_t position[64]; /* per token: its position in the sequence */
  yh_tensor k, v, q;    /* [tokens, heads, dim] with padded rows; q [tokens, 1, dim] for yk_rope */
  yh_tensor slots64, slots32, batch, positions, indptr, indices; /* both index forms */
  yh_tensor table, rope_pos; /* cos_sin_cache [max_position, rot_dim] and rope positions */
  int64_t seqs[SEQS];
  cache_shape shape;
  size_t bytes;          /* of all device blocks */
  unsigned char *before; /* their contents before the step */
} step;

#define MAX_POSITION 512

static void tensor(yh_tensor *t, const step *s, int type, int ndim, const int64_t *shape, const int64_t *strides) {
  cr_assert_eq(yh_tensor_init(t, s->ctx, type, ndim, shape, strides, s->on_device), 0);
}

static void set_index(yh_tensor *t, int64_t i, int64_t value) {
  if (t->type == YK_I64)
    ((int64_t *)t->host)[i] = value;
  else
    ((int32_t *)t->host)[i] = (int32_t)value;
}

static void read_blocks(const step *s, unsigned char *out) {
  if (!s->on_device) {
    memcpy(out, s->cache->device_base, s->bytes);
    return;
  }
  cr_assert_eq(yh_sync(s->ctx), 0, "kernel failed");
  cr_assert_eq(s->ctx->cu.cuMemcpyDtoH(out, (CUdeviceptr)(uintptr_t)s->cache->device_base, s->bytes), CUDA_SUCCESS);
}

static void write_blocks(const step *s, const unsigned char *in) {
  if (!s->on_device)
    memcpy(s->cache->device_base, in, s->bytes);
  else
    cr_assert_eq(s->ctx->cu.cuMemcpyHtoD((CUdeviceptr)(uintptr_t)s->cache->device_base, in, s->bytes), CUDA_SUCCESS);
}

/* rot_dim: the cos_sin_cache's row length (0: head_dim). */
static void step_init(step *s, yk_ctx *ctx, cache_shape sh, int rot_dim, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->ctx = ctx;
  s->on_device = ctx->device == YK_DEVICE_CUDA;
  s->shape = sh;
  yh_rng rng = {seed};
  yk_kv_cache_config config = kv_test_config(2, sh.heads, sh.dim, sh.page, 400 / sh.page + 3 * SEQS, 0);
  config.dtype = sh.float8 ? (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1}
                           : (DLDataType){sh.dtype == YK_BF16 ? kDLBfloat : kDLFloat, 16, 1};
  config.layout = sh.layout;
  s->cache = kv_test_cache(ctx, &config);
  cr_assert_eq(yk_kv_cache_layer(s->cache, LAYER, &s->kc, &s->vc), YK_OK);
  s->bytes = (size_t)config.num_blocks * s->cache->block_bytes;

  int64_t slots[64];
  for (int i = 0; i < SEQS; i++) {
    s->seqs[i] = kv_add(s->cache);
    kv_append(s->cache, s->seqs[i], prompt[i], NULL);
  }
  for (int i = 0; i < SEQS; i++) {
    if (i != 1) s->seq_of[s->tokens] = -1, s->position[s->tokens] = -1, slots[s->tokens++] = -1; /* padding */
    kv_append(s->cache, s->seqs[i], fresh[i], slots + s->tokens);
    for (int j = 0; j < fresh[i]; j++) s->seq_of[s->tokens] = i, s->position[s->tokens++] = prompt[i] + j;
  }
  const int64_t n = s->tokens, padded[3] = {n, sh.heads, sh.dim}, row = sh.heads * sh.dim + 8;
  const int64_t strides[3] = {row, sh.dim, 1}, q_shape[3] = {n, 1, sh.dim}, seqs_plus = SEQS + 1, cap = 256;
  tensor(&s->k, s, sh.dtype, 3, padded, strides);
  tensor(&s->v, s, sh.dtype, 3, padded, strides);
  tensor(&s->q, s, sh.dtype, 3, q_shape, NULL);
  yh_fill_uniform(&s->k, &rng, -2, 2), yh_fill_uniform(&s->v, &rng, -2, 2), yh_fill_uniform(&s->q, &rng, -2, 2);

  tensor(&s->slots64, s, YK_I64, 1, &n, NULL), tensor(&s->slots32, s, YK_I32, 1, &n, NULL);
  tensor(&s->batch, s, YK_I32, 1, &n, NULL), tensor(&s->positions, s, YK_I32, 1, &n, NULL);
  tensor(&s->indptr, s, YK_I32, 1, &seqs_plus, NULL), tensor(&s->indices, s, YK_I32, 1, &cap, NULL);
  tensor(&s->rope_pos, s, YK_I64, 1, &n, NULL);
  for (int64_t t = 0; t < n; t++) {
    set_index(&s->slots64, t, slots[t]), set_index(&s->slots32, t, slots[t]);
    set_index(&s->batch, t, s->seq_of[t] < 0 ? 0 : s->seq_of[t]), set_index(&s->positions, t, s->position[t]);
    set_index(&s->rope_pos, t, (int64_t)(yh_next(&rng) % MAX_POSITION));
  }
  int32_t last[SEQS];
  cr_assert_eq(yk_kv_cache_csr(s->cache, s->seqs, SEQS, s->indptr.host, s->indices.host, cap, last), YK_OK);
  yh_upload(&s->slots64), yh_upload(&s->slots32), yh_upload(&s->batch), yh_upload(&s->positions);
  yh_upload(&s->indptr), yh_upload(&s->indices), yh_upload(&s->rope_pos);

  const int64_t rot = rot_dim ? rot_dim : sh.dim, table_shape[2] = {MAX_POSITION, rot};
  tensor(&s->table, s, YK_F32, 2, table_shape, NULL);
  yh_fill_uniform(&s->table, &rng, -1, 1); /* not a real rotation: the test compares two paths */

  s->before = malloc(s->bytes);
  for (size_t i = 0; i < s->bytes; i++) s->before[i] = (unsigned char)yh_next(&rng); /* poison */
  write_blocks(s, s->before);
}

static void step_free(step *s) {
  yh_tensor *all[] = {&s->k,         &s->v,      &s->q,       &s->slots64, &s->slots32, &s->batch,
                      &s->positions, &s->indptr, &s->indices, &s->table,   &s->rope_pos};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) yh_tensor_free(all[i]);
  free(s->before);
  yk_kv_cache_destroy(s->cache);
}

/* Byte offset of (block, offset in page, head) of layer LAYER's K (is_v 0) or V in the device
 * blocks, from the layout kv.h documents (not from the layer tensor's strides). */
static size_t token_offset(const yk_kv_cache *c, int is_v, int32_t block, int64_t offset, int64_t head) {
  const yk_kv_cache_config *k = &c->config;
  const int64_t in_page = k->layout == YK_KV_NHD ? offset * k->kv_heads + head : head * k->page_size + offset;
  return (size_t)block * c->block_bytes + (size_t)(2 * LAYER + is_v) * c->page_bytes +
         (size_t)(in_page * k->head_dim) * c->elem_bytes;
}

/* A row of k or v as a float8 cache holds it: each value times 1 / scale, rounded (half.h's
 * rounding, which test_half checks against a search of every float8 value). */
static void quantized_row(unsigned char *to, const char *from, int dtype, int64_t n, float scale) {
  const float inv = 1.f / (scale == 0.f ? 1.f : scale);
  for (int64_t i = 0; i < n; i++) {
    float x;
    yk_load_floats(dtype, from + 2 * i, &x, 1);
    to[i] = yk_float_to_e4m3(x * inv);
  }
}

/* The blocks as they must be after appending k (or k_written: a rotated copy) and v: the
 * poisoned contents with every placed token's rows put where its sequence's table says. */
static unsigned char *expected_blocks(step *s, yh_tensor *k_written) {
  unsigned char *out = malloc(s->bytes);
  memcpy(out, s->before, s->bytes);
  yh_download(k_written), yh_download(&s->v);
  const yk_kv_cache_config *c = &s->cache->config;
  const size_t es = 2, row = (size_t)c->head_dim * es;
  const cache_shape *sh = &s->shape;
  for (int64_t t = 0; t < s->tokens; t++) {
    if (s->seq_of[t] < 0) continue;
    const yk_kv_seq_info info = kv_seq(s->cache, s->seqs[s->seq_of[t]]);
    const int32_t block = info.table[s->position[t] / c->page_size];
    const int64_t offset = s->position[t] % c->page_size;
    for (int64_t h = 0; h < c->kv_heads; h++) {
      const size_t in = (size_t)(t * k_written->strides[0] + h * k_written->strides[1]) * es;
      unsigned char *k_at = out + token_offset(s->cache, 0, block, offset, h);
      unsigned char *v_at = out + token_offset(s->cache, 1, block, offset, h);
      if (sh->float8) {
        quantized_row(k_at, (char *)k_written->host + in, sh->dtype, c->head_dim, sh->scales.k);
        quantized_row(v_at, (char *)s->v.host + in, sh->dtype, c->head_dim, sh->scales.v);
        continue;
      }
      memcpy(k_at, (char *)k_written->host + in, row);
      memcpy(v_at, (char *)s->v.host + in, row);
    }
  }
  return out;
}

static yk_status append(step *s, int form, const yk_append_kv_rope *rope) {
  yk_append_kv_index index = {0};
  if (form == 0) index.slot_mapping = &s->slots64.dl;
  if (form == 1) index.slot_mapping = &s->slots32.dl;
  if (form == 2) {
    index.batch_indices = &s->batch.dl, index.positions = &s->positions.dl;
    index.kv_indptr = &s->indptr.dl, index.kv_indices = &s->indices.dl;
  }
  return yk_append_kv(s->ctx, &s->k.dl, &s->v.dl, &s->kc, &s->vc, s->cache->config.layout, &index, rope,
                      s->shape.float8 ? &s->shape.scales : NULL, NULL);
}

static void assert_blocks(step *s, const unsigned char *want, const char *what) {
  unsigned char *got = malloc(s->bytes);
  read_blocks(s, got);
  size_t first = 0;
  while (first < s->bytes && got[first] == want[first]) first++;
  cr_assert_eq(first, s->bytes, "%s: blocks differ from byte %zu on (block %zu)", what, first,
               first / s->cache->block_bytes);
  free(got);
}

static const cache_shape shapes[] = {
    {YK_F16, YK_KV_NHD, 16, 8, 128},  {YK_BF16, YK_KV_HND, 16, 8, 128}, {YK_BF16, YK_KV_NHD, 1, 2, 64},
    {YK_F16, YK_KV_HND, 128, 4, 64},  {YK_BF16, YK_KV_NHD, 7, 3, 80},   {YK_F16, YK_KV_HND, 7, 2, 5},
    {YK_BF16, YK_KV_NHD, 128, 1, 33}, {YK_F16, YK_KV_NHD, 16, 1, 256},
};
#define SHAPE_COUNT (int)(sizeof shapes / sizeof shapes[0])

/* float8 caches: k and v of either 16-bit type, scales of 1 (given as 0), below 1 (values up to
 * 2 / 0.25 = 8) and above (values down to 2^-9 x 3 read as 0 more often). */
static const cache_shape float8_shapes[] = {
    {YK_BF16, YK_KV_NHD, 16, 8, 128, 1, {0, 0}},         {YK_F16, YK_KV_HND, 16, 8, 128, 1, {0.25f, 0.5f}},
    {YK_BF16, YK_KV_NHD, 1, 2, 64, 1, {3.f, 0.75f}},     {YK_F16, YK_KV_HND, 7, 2, 5, 1, {1.5f, 1.f}},
    {YK_BF16, YK_KV_NHD, 128, 1, 33, 1, {0.01f, 100.f}},
};
#define FLOAT8_SHAPE_COUNT (int)(sizeof float8_shapes / sizeof float8_shapes[0])

static void name_of(char *buf, size_t n, cache_shape sh, int form, uint64_t seed) {
  static const char *forms[] = {"int64 slots", "int32 slots", "csr"};
  int at = snprintf(buf, n, "%s %s page %d heads %d dim %d, %s (seed %llu)", ts_type_name(sh.dtype),
                    sh.layout == YK_KV_NHD ? "NHD" : "HND", sh.page, sh.heads, sh.dim, forms[form],
                    (unsigned long long)seed);
  if (sh.float8 && at > 0 && (size_t)at < n)
    snprintf(buf + at, n - (size_t)at, ", float8 cache, scales %g %g", (double)sh.scales.k, (double)sh.scales.v);
}

/* Every shape and index form lands every token where its table says, and nothing else changes. */
static void check_plain(yk_ctx *ctx, const char *seed_name, const cache_shape *list, int count) {
  const uint64_t seed = ts_seed(seed_name);
  for (int i = 0; i < count; i++)
    for (int form = 0; form < 3; form++) {
      step s;
      step_init(&s, ctx, list[i], 0, seed + (uint64_t)i);
      char what[192];
      name_of(what, sizeof what, list[i], form, seed + (uint64_t)i);
      cr_assert_eq(append(&s, form, NULL), YK_OK, "%s: %s", what, yk_ctx_last_error(ctx));
      unsigned char *want = expected_blocks(&s, &s.k);
      assert_blocks(&s, want, what);
      free(want);
      step_free(&s);
    }
}

Test(append_kv, cpu_tokens_land_where_their_tables_say) {
  yk_ctx *ctx = ts_cpu_ctx();
  check_plain(ctx, "append_kv.cpu", shapes, SHAPE_COUNT);
  yk_ctx_destroy(ctx);
}

/* A float8 cache gets each value times 1 / scale, rounded to float8, every token where its table
 * says. */
Test(append_kv, cpu_float8_cache_holds_scaled_values) {
  yk_ctx *ctx = ts_cpu_ctx();
  check_plain(ctx, "append_kv.cpu_float8", float8_shapes, FLOAT8_SHAPE_COUNT);
  yk_ctx_destroy(ctx);
}

/* An engine's own tensors: k and v float32 [tokens, heads, dim], its caches of cache_type
 * [num_blocks, page_size, heads, dim], int32 slots [tokens]; all on the host. */
typedef struct {
  yh_tensor k, v, kc, vc, slots;
} engine_tensors;

static void engine_init(engine_tensors *e, yk_ctx *ctx, int cache_type, const int64_t *kv_shape,
                        const int64_t *cache_dims) {
  cr_assert_eq(yh_tensor_init(&e->k, ctx, YK_F32, 3, kv_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&e->v, ctx, YK_F32, 3, kv_shape, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&e->kc, ctx, cache_type, 4, cache_dims, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&e->vc, ctx, cache_type, 4, cache_dims, NULL, 0), 0);
  cr_assert_eq(yh_tensor_init(&e->slots, ctx, YK_I32, 1, kv_shape, NULL, 0), 0);
}

static void engine_free(engine_tensors *e) {
  yh_tensor_free(&e->k), yh_tensor_free(&e->v), yh_tensor_free(&e->kc), yh_tensor_free(&e->vc);
  yh_tensor_free(&e->slots);
}

/* Known answers, worked by hand from the format (sign, 4 exponent bits biased by 7, 3 mantissa
 * bits), for float32 k and v written into an engine's own float8 cache with scale 2 (k) and 0.5
 * (v). */
Test(append_kv, cpu_float8_known_answers) {
  yk_ctx *ctx = ts_cpu_ctx();
  const int64_t kv_shape[3] = {1, 1, 6}, cache_shape_[4] = {2, 1, 1, 6};
  engine_tensors e;
  engine_init(&e, ctx, YK_E4M3, kv_shape, cache_shape_);
  const float values[6] = {1.f, 100.f, 500.f, -0.001f, 0.3f, 2000.f};
  memcpy(e.k.host, values, sizeof values), memcpy(e.v.host, values, sizeof values);
  memset(e.kc.host, 0xee, 12), memset(e.vc.host, 0xee, 12);
  ((int32_t *)e.slots.host)[0] = 1;
  const yk_append_kv_index index = {.slot_mapping = &e.slots.dl};
  const yk_kv_scales scales = {2.f, 0.5f};
  cr_assert_eq(yk_append_kv(ctx, &e.k.dl, &e.v.dl, &e.kc.dl, &e.vc.dl, YK_KV_NHD, &index, NULL, &scales, NULL), YK_OK,
               "%s", yk_ctx_last_error(ctx));
  /* k / 2: 0.5 = 2^-1 (exponent 6); 50 = 2^5 x 1.5625 ties between mantissas 4 and 5: even 4 (48);
   * 250 rounds up to 2^8 (exponent 15, mantissa 0); -0.0005 is below half of 2^-9: -0; 0.15 =
   * 2^-3 x 1.2 rounds to mantissa 2 (0.15625); 1000 saturates to 448 */
  const uint8_t k_want[6] = {0x30, 0x64, 0x78, 0x80, 0x22, 0x7e};
  /* v / 0.5: 2 = 2^1; 200 = 2^7 x 1.5625: even 4 (192); 1000 saturates; -0.002 = -2^-9 x 1.024:
   * the smallest subnormal; 0.6 = 2^-1 x 1.2: mantissa 2; 4000 saturates */
  const uint8_t v_want[6] = {0x40, 0x74, 0x7e, 0x81, 0x32, 0x7e};
  const uint8_t *kg = (const uint8_t *)e.kc.host, *vg = (const uint8_t *)e.vc.host;
  for (int i = 0; i < 6; i++) {
    cr_assert_eq(kg[6 + i], k_want[i], "k[%d] = %g: 0x%02x, want 0x%02x", i, (double)values[i], kg[6 + i], k_want[i]);
    cr_assert_eq(vg[6 + i], v_want[i], "v[%d] = %g: 0x%02x, want 0x%02x", i, (double)values[i], vg[6 + i], v_want[i]);
    cr_assert_eq(kg[i], 0xee, "block 0 untouched");
    cr_assert_eq(vg[i], 0xee, "block 0 untouched");
  }
  engine_free(&e);
  yk_ctx_destroy(ctx);
}

/* Fused RoPE writes exactly what yk_rope on a copy of k, then a plain append, writes; k is left
 * as it was. */
static void check_rope(yk_ctx *ctx, const char *seed_name) {
  const uint64_t seed = ts_seed(seed_name);
  static const struct {
    cache_shape shape;
    int rot_dim, style, form;
  } cases[] = {
      {{YK_BF16, YK_KV_NHD, 16, 8, 128}, 0, YK_ROPE_NEOX, 0},
      {{YK_F16, YK_KV_HND, 16, 8, 128}, 0, YK_ROPE_GPTJ, 2},
      {{YK_BF16, YK_KV_HND, 7, 2, 64}, 32, YK_ROPE_NEOX, 2},
      {{YK_F16, YK_KV_NHD, 1, 4, 80}, 48, YK_ROPE_GPTJ, 1},
      {{YK_BF16, YK_KV_NHD, 128, 1, 256}, 0, YK_ROPE_NEOX, 0},
      /* float8 caches: rotated in k's dtype, then scaled and rounded */
      {{YK_BF16, YK_KV_NHD, 16, 8, 128, 1, {0.5f, 2.f}}, 0, YK_ROPE_NEOX, 0},
      {{YK_F16, YK_KV_HND, 7, 2, 64, 1, {3.f, 0}}, 32, YK_ROPE_GPTJ, 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    for (int table_f32 = 0; table_f32 <= 1; table_f32++) {
      step s;
      step_init(&s, ctx, cases[i].shape, cases[i].rot_dim, seed + i);
      if (!table_f32) { /* the table in k's dtype */
        yh_tensor t;
        cr_assert_eq(yh_tensor_init(&t, ctx, cases[i].shape.dtype, 2, s.table.shape, NULL, s.on_device), 0);
        double *values = malloc((size_t)s.table.numel * sizeof *values);
        yh_to_double(&s.table, values), yh_from_double(&t, values);
        free(values);
        yh_tensor_free(&s.table);
        s.table = t;
        s.table.dl.shape = s.table.shape, s.table.dl.strides = s.table.strides; /* they pointed into t */
      }
      const yk_append_kv_rope rope = {&s.rope_pos.dl, &s.table.dl, cases[i].style};
      void *k_before = yh_snapshot(&s.k);
      cr_assert_eq(append(&s, cases[i].form, &rope), YK_OK, "case %zu: %s", i, yk_ctx_last_error(ctx));
      unsigned char *fused = malloc(s.bytes);
      read_blocks(&s, fused);
      cr_assert_eq(yh_bytes_changed(&s.k, k_before), 0, "case %zu: k was modified", i);

      write_blocks(&s, s.before);
      cr_assert_eq(yk_rope(ctx, &s.q.dl, &s.k.dl, &s.table.dl, &s.rope_pos.dl, (yk_rope_style)cases[i].style, NULL),
                   YK_OK, "%s", yk_ctx_last_error(ctx));
      cr_assert_eq(append(&s, cases[i].form, NULL), YK_OK);
      char what[96];
      snprintf(what, sizeof what, "case %zu (table %s): fused against yk_rope then append", i,
               table_f32 ? "f32" : "k's dtype");
      assert_blocks(&s, fused, what);
      unsigned char *want = expected_blocks(&s, &s.k); /* k rotated in place by yk_rope */
      assert_blocks(&s, want, "yk_rope then append, read through the tables");
      free(want), free(fused), free(k_before);
      step_free(&s);
    }
}

Test(append_kv, cpu_fused_rope_equals_rope_then_append) {
  yk_ctx *ctx = ts_cpu_ctx();
  check_rope(ctx, "append_kv.cpu_rope");
  yk_ctx_destroy(ctx);
}

/* An engine's own cache: compact, float32, [num_blocks, page_size, heads, dim]. */
Test(append_kv, cpu_engine_cache_compact_f32) {
  yk_ctx *ctx = ts_cpu_ctx();
  yh_rng rng = {ts_seed("append_kv.engine")};
  const int64_t kv_shape[3] = {4, 2, 6}, cache_shape_[4] = {3, 5, 2, 6};
  engine_tensors e;
  engine_init(&e, ctx, YK_F32, kv_shape, cache_shape_);
  yh_fill_uniform(&e.k, &rng, -2, 2), yh_fill_uniform(&e.v, &rng, -2, 2);
  yh_fill_uniform(&e.kc, &rng, -2, 2), yh_fill_uniform(&e.vc, &rng, -2, 2);
  const int32_t slot[4] = {14, -1, 0, 7};
  memcpy(e.slots.host, slot, sizeof slot);
  float *kc_before = yh_snapshot(&e.kc), *vc_before = yh_snapshot(&e.vc);
  const yk_append_kv_index index = {.slot_mapping = &e.slots.dl};
  cr_assert_eq(yk_append_kv(ctx, &e.k.dl, &e.v.dl, &e.kc.dl, &e.vc.dl, YK_KV_NHD, &index, NULL, NULL, NULL), YK_OK,
               "%s", yk_ctx_last_error(ctx));
  for (int t = 0; t < 4; t++)
    if (slot[t] >= 0) {
      memcpy(kc_before + slot[t] * 12, (float *)e.k.host + t * 12, 12 * sizeof(float));
      memcpy(vc_before + slot[t] * 12, (float *)e.v.host + t * 12, 12 * sizeof(float));
    }
  cr_assert_eq(memcmp(e.kc.host, kc_before, (size_t)e.kc.numel * 4), 0);
  cr_assert_eq(memcmp(e.vc.host, vc_before, (size_t)e.vc.numel * 4), 0);
  free(kc_before), free(vc_before);
  engine_free(&e);
  yk_ctx_destroy(ctx);
}

/* Each bad call fails with a message naming the problem and leaves every block as it was. */
Test(append_kv, cpu_bad_inputs_write_nothing) {
  yk_ctx *ctx = ts_cpu_ctx();
  step s;
  step_init(&s, ctx, (cache_shape){YK_F16, YK_KV_NHD, 16, 4, 64}, 0, 5);
  const yk_kv_layout nhd = YK_KV_NHD;
  yk_append_kv_index slots = {.slot_mapping = &s.slots64.dl}, both = slots, partial = {0}, none = {0};
  both.kv_indptr = &s.indptr.dl;
  partial.batch_indices = &s.batch.dl, partial.positions = &s.positions.dl, partial.kv_indptr = &s.indptr.dl;
  yk_append_kv_rope rope = {&s.rope_pos.dl, &s.table.dl, YK_ROPE_NEOX};
  DLTensor t, cache = s.kc;
  int64_t shape[4];
#define REJECT(call, status, needle)                                                                                   \
  do {                                                                                                                 \
    ts_assert_rejected(ctx, call, status, needle);                                                                     \
    assert_blocks(&s, s.before, needle);                                                                               \
  } while (0)
  cr_assert_eq(yk_append_kv(NULL, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL),
               YK_ERR_INVALID_ARGUMENT);
  REJECT(yk_append_kv(ctx, NULL, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "append_kv: k is NULL");
  t = s.v.dl, t.dtype.code = kDLBfloat;
  REJECT(yk_append_kv(ctx, &s.k.dl, &t, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "v is bfloat16 but k is float16");
  memcpy(shape, s.v.shape, 3 * sizeof *shape), shape[0] = 2, t = s.v.dl, t.shape = shape;
  REJECT(yk_append_kv(ctx, &s.k.dl, &t, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "v has shape [2, 4, 64], expected");
  cache.dtype.code = kDLBfloat;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &cache, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "k_cache is bfloat16 but k is float16");
  memcpy(shape, s.k.shape, 3 * sizeof *shape), shape[2] = 32, t = s.k.dl, t.shape = shape;
  yh_tensor v32;
  cr_assert_eq(yh_tensor_init(&v32, ctx, YK_F16, 3, shape, NULL, 0), 0);
  REJECT(yk_append_kv(ctx, &t, &v32.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "k_cache (NHD) holds 4 kv heads of head_dim 64, k has 4 of 32");
  yh_tensor_free(&v32);
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, YK_KV_HND, &slots, NULL, NULL, NULL),
         YK_ERR_INVALID_ARGUMENT, "k_cache (HND) holds 16 kv heads");
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, (yk_kv_layout)7, &slots, NULL, NULL, NULL),
         YK_ERR_INVALID_ARGUMENT, "layout 7");
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, NULL, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "index is NULL");
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &both, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "sets both slot_mapping and the CSR form");
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &none, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "sets neither");
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &partial, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "kv_indices is NULL");
  partial.kv_indices = &s.slots64.dl;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &partial, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "kv_indices must be int32");
  yk_append_kv_index short_slots = {.slot_mapping = &s.slots64.dl};
  shape[0] = s.tokens - 1, t = s.slots64.dl, t.shape = shape, short_slots.slot_mapping = &t;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &short_slots, NULL, NULL, NULL),
         YK_ERR_INVALID_ARGUMENT, "slot_mapping has 25 entries for 26 tokens");
  t = s.k.dl, t.device.device_type = kDLCUDA;
  REJECT(yk_append_kv(ctx, &t, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "tensors mix host and device memory");

  /* Host-readable index values, checked before anything is written: the bad token is the last. */
  const int64_t last = s.tokens - 1, slots_total = s.cache->config.num_blocks * 16;
  int64_t *slot = s.slots64.host;
  const int64_t kept = slot[last];
  slot[last] = slots_total;
  char needle[128];
  snprintf(needle, sizeof needle, "slot_mapping[%lld] = %lld is past the cache's %lld slots", (long long)last,
           (long long)slots_total, (long long)slots_total);
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         needle);
  slot[last] = kept;
  yk_append_kv_index csr = {NULL, &s.batch.dl, &s.positions.dl, &s.indptr.dl, &s.indices.dl};
  int32_t *batch = s.batch.host, *positions = s.positions.host, *indices = s.indices.host, *indptr = s.indptr.host;
  batch[last] = SEQS;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &csr, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "batch_indices[25] = 3 is not a sequence of kv_indptr (0..2)");
  batch[last] = 2, positions[last] += 16 * 3;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &csr, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "positions[25] = 197 is past the 10 blocks of sequence 2");
  positions[last] -= 16 * 3;
  const int32_t kept_block = indices[indptr[2] + positions[last] / 16];
  indices[indptr[2] + positions[last] / 16] = (int32_t)s.cache->config.num_blocks;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &csr, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "is not a block of the cache");
  indices[indptr[2] + positions[last] / 16] = kept_block;
  indptr[3] = 1000;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &csr, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "is not a range of kv_indices' 256 entries");
  yk_append_kv_rope bad = rope;
  bad.style = 3;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, &bad, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "rope style 3");
  t = s.table.dl, t.dtype.code = kDLBfloat, t.dtype.bits = 16, bad = rope, bad.cos_sin_cache = &t;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, &bad, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "cos_sin_cache must be float32 or k's dtype float16, not bfloat16");
  shape[0] = MAX_POSITION, shape[1] = 63, t = s.table.dl, t.shape = shape, bad = rope, bad.cos_sin_cache = &t;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, &bad, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "the rotary dim 63");
  int64_t *rope_pos = s.rope_pos.host;
  rope_pos[last] = MAX_POSITION;
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, &rope, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "rope positions[25] = 512 is outside [0, 512)");
  rope_pos[0] = -5; /* a padding token's position is never read */
  rope_pos[last] = 3;
  const yk_kv_scales half = {0.5f, 0}, unit = {1.f, 0.f};
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, &half, NULL), YK_ERR_INVALID_ARGUMENT,
         "the k scale is 0.5, but scales apply to float8_e4m3fn caches only");
  t = s.k.dl, t.dtype = (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1};
  REJECT(yk_append_kv(ctx, &t, &s.v.dl, &s.kc, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "k: expected dtype float32, float16 or bfloat16, got float8_e4m3fn");
  cache = s.kc, cache.dtype = (DLDataType){YK_DL_FLOAT8_E4M3FN, 8, 1};
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &cache, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "v_cache is float16 but k_cache is float8_e4m3fn");
  cache.dtype = (DLDataType){12, 8, 1}; /* float8 e5m2 */
  REJECT(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &cache, &s.vc, nhd, &slots, NULL, NULL, NULL), YK_ERR_INVALID_ARGUMENT,
         "k_cache: expected dtype float32, float16, bfloat16 or float8_e4m3fn, got float8_e5m2");
  cr_assert_eq(yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, nhd, &slots, &rope, &unit, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
#undef REJECT
  step_free(&s);

  /* a float8 cache: scales that are not positive and finite */
  step_init(&s, ctx, (cache_shape){YK_BF16, YK_KV_HND, 16, 4, 64, 1, {0, 0}}, 0, 6);
  const yk_kv_scales bad_scales[] = {{-1.f, 1.f}, {1.f, NAN}, {INFINITY, 1.f}, {1.f, -0.f}};
  const char *const why[] = {"the k scale -1 is not positive", "the v scale nan is not positive",
                             "the k scale inf is not positive", NULL};
  for (int i = 0; i < 4; i++) {
    const yk_status st =
        yk_append_kv(ctx, &s.k.dl, &s.v.dl, &s.kc, &s.vc, YK_KV_HND, &slots, NULL, &bad_scales[i], NULL);
    if (!why[i]) { /* -0 == 0: reads as 1 */
      cr_assert_eq(st, YK_OK, "%s", yk_ctx_last_error(ctx));
      continue;
    }
    ts_assert_rejected(ctx, st, YK_ERR_INVALID_ARGUMENT, why[i]);
    assert_blocks(&s, s.before, why[i]);
  }
  step_free(&s);
  yk_ctx_destroy(ctx);
}

/* ---- GPU ---- */

Test(append_kv, gpu_tokens_land_where_their_tables_say) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  check_plain(ctx, "append_kv.gpu", shapes, SHAPE_COUNT);
  yk_ctx_destroy(ctx);
}

Test(append_kv, gpu_fused_rope_equals_rope_then_append) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  check_rope(ctx, "append_kv.gpu_rope");
  yk_ctx_destroy(ctx);
}

/* The GPU quantizes with the CPU's arithmetic: the same bytes as the host's conversions. */
Test(append_kv, gpu_float8_cache_holds_scaled_values) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  check_plain(ctx, "append_kv.gpu_float8", float8_shapes, FLOAT8_SHAPE_COUNT);
  yk_ctx_destroy(ctx);
}

/* The same step on a GPU cache and a CPU one (same ids, same poison): without rope every byte
 * agrees; with rope the rotated K rows agree within the dtype's rounding and the rest exactly. */
Test(append_kv, gpu_matches_cpu_fallback) {
  yk_ctx *gpu = ts_gpu_ctx();
  TS_REQUIRE_GPU(gpu);
  yk_ctx *cpu = ts_cpu_ctx();
  const uint64_t seed = ts_seed("append_kv.gpu_cpu");
  const cache_shape sh = {YK_BF16, YK_KV_HND, 16, 8, 128};
  for (int with_rope = 0; with_rope <= 1; with_rope++) {
    step g, c;
    step_init(&g, gpu, sh, 0, seed), step_init(&c, cpu, sh, 0, seed);
    const yk_append_kv_rope rope_g = {&g.rope_pos.dl, &g.table.dl, YK_ROPE_NEOX};
    const yk_append_kv_rope rope_c = {&c.rope_pos.dl, &c.table.dl, YK_ROPE_NEOX};
    cr_assert_eq(append(&g, 0, with_rope ? &rope_g : NULL), YK_OK, "%s", yk_ctx_last_error(gpu));
    cr_assert_eq(append(&c, 0, with_rope ? &rope_c : NULL), YK_OK, "%s", yk_ctx_last_error(cpu));
    unsigned char *got = malloc(g.bytes), *want = malloc(c.bytes);
    read_blocks(&g, got), read_blocks(&c, want);
    if (with_rope) { /* compare the K rows by value, then take them over so the rest compares exactly */
      const int64_t n = sh.heads * sh.dim;
      double *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
      for (int64_t t = 0; t < c.tokens; t++) {
        if (c.seq_of[t] < 0) continue;
        const int64_t slot = ((int64_t *)c.slots64.host)[t];
        for (int64_t h = 0; h < sh.heads; h++) {
          const size_t at = token_offset(c.cache, 0, (int32_t)(slot / sh.page), slot % sh.page, h);
          for (int64_t d = 0; d < sh.dim; d++) {
            uint16_t x, y;
            memcpy(&x, got + at + 2 * d, 2), memcpy(&y, want + at + 2 * d, 2);
            a[h * sh.dim + d] = yk_bf16_to_float(x), b[h * sh.dim + d] = yk_bf16_to_float(y);
          }
          memcpy(got + at, want + at, (size_t)sh.dim * 2);
        }
        const double err = ts_gpu_error(a, b, n);
        cr_assert(err < ts_gpu_tolerance(YK_BF16), "token %lld: rel err %.3g (seed %llu)", (long long)t, err,
                  (unsigned long long)seed);
      }
      free(a), free(b);
    }
    cr_assert_eq(memcmp(got, want, g.bytes), 0, "with_rope %d: GPU and CPU blocks differ (seed %llu)", with_rope,
                 (unsigned long long)seed);
    free(got), free(want);
    step_free(&g), step_free(&c);
  }
  yk_ctx_destroy(cpu);
  yk_ctx_destroy(gpu);
}

/* Index values in device memory cannot be checked first: a slot past the cache, a sequence or
 * page outside the CSR table, a block outside the cache are skipped, and the other tokens land. */
Test(append_kv, gpu_out_of_range_index_is_skipped) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  step s;
  step_init(&s, ctx, (cache_shape){YK_F16, YK_KV_NHD, 16, 4, 64}, 0, ts_seed("append_kv.gpu_range"));
  int64_t *slot = s.slots64.host;
  int32_t *batch = s.batch.host, *positions = s.positions.host;
  /* tokens 1..3 are sequence 0's, 4 sequence 1's: each gets a different bad index */
  slot[1] = s.cache->config.num_blocks * 16, slot[2] = INT64_MAX;
  batch[1] = SEQS, positions[2] = 16 * 50, batch[3] = -2;
  slot[3] = -1;
  for (int t = 1; t <= 3; t++) s.seq_of[t] = -1; /* expected: not written */
  yh_upload(&s.slots64), yh_upload(&s.batch), yh_upload(&s.positions);
  cr_assert_eq(append(&s, 0, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  unsigned char *want = expected_blocks(&s, &s.k);
  assert_blocks(&s, want, "slots past the cache");
  write_blocks(&s, s.before);
  cr_assert_eq(append(&s, 2, NULL), YK_OK, "%s", yk_ctx_last_error(ctx));
  assert_blocks(&s, want, "CSR entries outside the table");
  free(want);
  step_free(&s);
  yk_ctx_destroy(ctx);
}

/* ---- NVRTC, no GPU ---- */

static void count_bad(void *user, const yk_cache_entry *e) {
  const int bad = !e->valid || e->spill_store_bytes || e->spill_load_bytes || e->stack_bytes || !e->cubin_bytes;
  if (bad)
    cr_log_error("%s %s: spills %d/%d stack %d %s", e->spec, e->arch, e->spill_store_bytes, e->spill_load_bytes,
                 e->stack_bytes, e->problem);
  *(int *)user += bad;
}

/* The warm matrix of both cache ops (in bf16: test_gen compiles every dtype's) and the edges the
 * GPU tests reach compile to PTX and cubin for sm_80 and sm_90 without spills. */
Test(append_kv, specs_compile_with_nvrtc_alone, .timeout = 600) {
  static const char *const edges[] = {
      "append_kv:dtype=f16,head_dim=5,vec=1,index=slots32",
      "append_kv:dtype=bf16,head_dim=80,rope=gptj,rot_dim=48,cache_type=f32,pos_type=int32,index=csr",
      "append_kv:dtype=f32,head_dim=256,rope=neox,rot_dim=64,threads=256",
      "append_kv:dtype=bf16,head_dim=64,rope=neox,rot_dim=32,vec=2,cache_type=bf16",
      "append_kv:dtype=f16,head_dim=80,rope=gptj,rot_dim=48,vec=2,kv_float8=1",
      "append_kv:dtype=f32,head_dim=64,rope=neox,rot_dim=64,kv_float8=1",
      "append_kv:dtype=bf16,head_dim=5,vec=1,kv_float8=1",
      "copy_blocks:dtype=f16,vec=1",
      "copy_blocks:dtype=f32,vec=4,caches=1,pairs=509",
  };
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "append-kv-specs");
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_dir = dir;
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  yk_warm_options w = {.archs = "sm_80,sm_90", .ops = "append_kv,copy_blocks", .dtypes = "bf16", .jobs = 2};
  yk_warm_result r;
  cr_assert_eq(yk_warm(ctx, &w, &r), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(r.total, 2 * (2 * 4 * 2 + 1),
               "2 archs x (16-bit and float8 caches x 4 append forms x head dims 128, 256 + copy_blocks)");
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
    for (int a = 0; a < 2; a++) {
      int compiled;
      cr_assert_eq(yk_spec_compile(ctx, edges[i], a ? "sm_90" : "sm_80", &compiled), YK_OK, "%s: %s", edges[i],
                   yk_ctx_last_error(ctx));
    }
  int bad = 0, entries, invalid;
  cr_assert_eq(yk_cache_list(ctx, 1, count_bad, &bad, &entries, &invalid), YK_OK);
  cr_assert_eq(entries, r.total + 2 * (int)(sizeof edges / sizeof edges[0]));
  cr_assert_eq(bad, 0, "%d entries spill or lack a cubin", bad);
  yk_ctx_destroy(ctx);
}
