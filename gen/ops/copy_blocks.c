/* copy_blocks: whole blocks copied within caches, many (source, destination) pairs a launch,
 * passed by value: spec, warm matrix, argument checks, public call (include/yk/kv.h).
 * Template: templates/copy_blocks.cu. CPU: cpu_fallback/copy_blocks.c.
 * Tests: tests/test_copy_blocks.c. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_fallback/copy_blocks.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/tensor.h"
#include "yk/kv.h"

enum { VEC, THREADS, ITEMS, CACHES, PAIRS };
/* What a kernel's parameters may hold on every device and driver (CUDA 12.1 raised it to 32 KB
 * on Volta and later, but not everywhere an engine runs). */
#define PARAM_BYTES 4096

/* The parameter's bytes: CACHES bases, the block stride and size, then PAIRS pairs of int32. */
static int param_words(const yk_spec *s) { return s->v[CACHES] + 2 + s->v[PAIRS]; }

static void complete(yk_spec *s) {
  if (s->v[VEC] == YK_UNSET) s->v[VEC] = 16 / (int)yk_dtype_size((yk_dtype)s->dtype);
  /* 256 threads of 4 words of 16 bytes: 16 KB a CTA, 128 CTAs for a Llama 3 8B block of 2 MiB. */
  if (s->v[THREADS] == YK_UNSET) s->v[THREADS] = 256;
  if (s->v[ITEMS] == YK_UNSET) s->v[ITEMS] = 4;
  /* Llama 3 8B's 64 per-layer tensors in two launches; the rest of the 4 KB holds pairs. */
  if (s->v[CACHES] == YK_UNSET) s->v[CACHES] = 32;
  if (s->v[PAIRS] == YK_UNSET && s->v[CACHES] > 0) s->v[PAIRS] = PARAM_BYTES / 8 - 2 - s->v[CACHES];
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (param_words(s) * 8 > PARAM_BYTES)
    return snprintf(why, n, "caches %d and pairs %d need %d bytes of kernel parameters, more than %d", s->v[CACHES],
                    s->v[PAIRS], param_words(s) * 8, PARAM_BYTES),
           1;
  const int held = s->v[ITEMS] * s->v[VEC] * (int)yk_dtype_size((yk_dtype)s->dtype) / 4; /* 32-bit registers */
  if (!yk_fits_registers(held, s->v[THREADS]))
    return snprintf(why, n, "items %d of vec %d hold %d registers a thread, more than fit at %d threads", s->v[ITEMS],
                    s->v[VEC], held, s->v[THREADS]),
           1;
  return 0;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_copy_blocks = {
    .name = "copy_blocks",
    .summary = "whole KV blocks copied within caches, (source, destination) pairs by value in the launch",
    .dtypes = 1u << YK_F32 | 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 5,
    .fields =
        {
            {"vec", "elements a word (16 bytes at most)", 1, 8, 1, 1, NULL},
            {"threads", "threads a block", 32, 1024, 0, 1, NULL},
            {"items", "words in flight a thread", 1, 16, 0, 1, NULL},
            {"caches", "caches a launch (the grid's z)", 1, 64, 0, 1, NULL},
            {"pairs", "(source, destination) pairs a launch", 1, PARAM_BYTES / 8, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .warm_specs = warm_specs,
};

/* Blocks of any shape copy with the same kernel: one spec a dtype. */
static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  for (int d = 0; d < YK_DTYPE_COUNT; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    yk_spec s;
    yk_spec_init(&s, &yk_op_copy_blocks, (yk_dtype)d);
    complete(&s);
    emit(user, &s);
  }
}

/* What every cache of a call shares, checked. */
typedef struct {
  yk_view first; /* caches[0] */
  int64_t num_blocks, stride_bytes;
  size_t block_bytes;
  uint64_t address_bits; /* every cache's address ORed: their common alignment */
  int on_device;
} copy_call;

/* A block must be one run of bytes: the dimensions after the first compact. */
static yk_status check_block(yk_ctx *ctx, const char *op, const yk_view *v, copy_call *c) {
  int64_t compact = 1;
  for (int i = v->ndim - 1; i >= 1; i--) {
    if (v->shape[i] > 1 && v->stride[i] != compact)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "%s: caches[0]: a block must be contiguous (dimension %d has stride %lld, expected %lld)", op, i,
                      (long long)v->stride[i], (long long)compact);
    compact *= v->shape[i];
  }
  c->num_blocks = v->shape[0];
  c->block_bytes = (size_t)compact * (size_t)v->elem_bytes;
  c->stride_bytes = v->stride[0] * v->elem_bytes;
  if (c->num_blocks > 1 && (size_t)c->stride_bytes < c->block_bytes)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: caches[0]: blocks overlap (block stride %lld < %zu bytes)", op,
                    (long long)c->stride_bytes, c->block_bytes);
  return YK_OK;
}

static yk_status check_caches(yk_ctx *ctx, const char *op, DLTensor *const *caches, int num_caches, copy_call *c) {
  if (!caches || num_caches < 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: caches is NULL or num_caches %d is below 1", op, num_caches);
  yk_status st =
      yk_view_of(ctx, op, "caches[0]", caches[0], YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 1, YK_VIEW_MAX_DIMS, &c->first);
  if (st || (st = check_block(ctx, op, &c->first, c))) return st;
  const yk_view *pair[2] = {&c->first, &c->first};
  if ((st = yk_views_placement(ctx, op, pair, 1, &c->on_device))) return st;
  c->address_bits = (uint64_t)(uintptr_t)c->first.data;
  for (int i = 1; i < num_caches; i++) {
    char name[32];
    snprintf(name, sizeof name, "caches[%d]", i);
    yk_view v;
    if ((st = yk_view_of(ctx, op, name, caches[i], YK_ACCEPT_FLOAT | YK_ACCEPT_E4M3, 1, YK_VIEW_MAX_DIMS, &v)) ||
        (st = yk_view_same_type(ctx, op, "caches[0]", &c->first, name, &v)) ||
        (st = yk_view_same_shape(ctx, op, "caches[0]", &c->first, name, &v)))
      return st;
    if (memcmp(v.stride, c->first.stride, (size_t)v.ndim * sizeof *v.stride))
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: %s has other strides than caches[0]", op, name);
    pair[1] = &v;
    if ((st = yk_views_placement(ctx, op, pair, 2, &c->on_device))) return st;
    c->address_bits |= (uint64_t)(uintptr_t)v.data;
  }
  return YK_OK;
}

static int ascending(const void *a, const void *b) {
  const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

/* The pairs run concurrently, so a destination written twice, or a block read by one copy and
 * written by another (or by its own), would race: refused. Every id as (block, role, pair) sorted
 * puts a block's uses side by side; pair counts are small, so the keys fit on the stack but for
 * batches past ON_STACK. */
static yk_status check_independent(yk_ctx *ctx, const char *op, const int32_t *mapping, int64_t n) {
  enum { ON_STACK = 256 };
  uint64_t stack[2 * ON_STACK], *keys = n <= ON_STACK ? stack : malloc((size_t)(2 * n) * sizeof *keys);
  if (!keys) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "%s: no memory to check %lld pairs", op, (long long)n);
  for (int64_t i = 0; i < 2 * n; i++) /* block (31 bits: checked non-negative), role (1: destination), pair */
    keys[i] = (uint64_t)mapping[i] << 33 | (uint64_t)(i % 2) << 32 | (uint64_t)(i / 2);
  qsort(keys, (size_t)(2 * n), sizeof *keys, ascending);
  yk_status st = YK_OK;
  for (int64_t i = 1; i < 2 * n && st == YK_OK; i++) {
    /* a block's sources come before its destinations: the last source meets the first destination */
    const uint64_t a = keys[i - 1], b = keys[i];
    if (a >> 33 != b >> 33 || !(b >> 32 & 1)) continue;
    const int block = (int)(b >> 33);
    const long long pa = (long long)(a & 0xffffffffu), pb = (long long)(b & 0xffffffffu);
    if (a >> 32 & 1)
      st = yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: destination block %d appears twice (pairs %lld and %lld); the copies run concurrently", op,
                    block, pa, pb);
    else
      st = yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: block %d is both a source (pair %lld) and a destination (pair %lld); the copies run "
                    "concurrently (copy in two calls)",
                    op, block, pa, pb);
  }
  if (keys != stack) free(keys);
  return st;
}

static yk_status check_pairs(yk_ctx *ctx, const char *op, const int32_t *mapping, int64_t n, int64_t num_blocks) {
  if (n < 0) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: num_pairs %lld is negative", op, (long long)n);
  if (n > INT32_MAX)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: num_pairs %lld is above 2^31 - 1", op, (long long)n);
  if (n > 0 && !mapping) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: block_mapping is NULL", op);
  for (int64_t i = 0; i < 2 * n; i++)
    if (mapping[i] < 0 || mapping[i] >= num_blocks)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: pair %lld: %s block %d is not in 0..%lld", op,
                      (long long)(i / 2), i % 2 ? "destination" : "source", mapping[i], (long long)num_blocks - 1);
  return check_independent(ctx, op, mapping, n);
}

/* Caches in groups of at most `group`, so that their bases fit a launch or a stack array. */
static int group_bases(DLTensor *const *caches, int num_caches, int start, int group, char **bases) {
  const int count = num_caches - start < group ? num_caches - start : group;
  for (int i = 0; i < count; i++) bases[i] = (char *)caches[start + i]->data + caches[start + i]->byte_offset;
  return count;
}

static void run_cpu(yk_ctx *ctx, const copy_call *c, DLTensor *const *caches, int num_caches, const int32_t *mapping,
                    int64_t n) {
  char *bases[64];
  for (int start = 0; start < num_caches; start += 64) {
    const yk_copy_blocks_args a = {
        bases, group_bases(caches, num_caches, start, 64, bases), c->stride_bytes, c->block_bytes, mapping, n};
    yk_cpu_copy_blocks(&ctx->pool, &a);
  }
}

static yk_status run_gpu(yk_ctx *ctx, const char *op, const copy_call *c, DLTensor *const *caches, int num_caches,
                         const int32_t *mapping, int64_t n, void *stream) {
  /* float8 blocks move as 16-bit words: the copy is of bytes, and the kernels have no 8-bit type */
  const int float8 = c->first.type == YK_E4M3, es = float8 ? 2 : c->first.elem_bytes;
  if (float8 && ((c->address_bits | (uint64_t)c->stride_bytes | (uint64_t)c->block_bytes) & 1))
    return yk_error(ctx, YK_ERR_UNSUPPORTED,
                    "%s: float8 blocks of an odd number of bytes (%zu, block stride %lld) or at odd addresses: the GPU "
                    "copies 16-bit words",
                    op, c->block_bytes, (long long)c->stride_bytes);
  yk_spec spec;
  yk_spec_init(&spec, &yk_op_copy_blocks, float8 ? YK_F16 : (yk_dtype)c->first.type);
  spec.v[VEC] = yk_vec_width(c->address_bits | (uint64_t)c->stride_bytes | (uint64_t)c->block_bytes, es);
  yk_spec_finish(ctx, &spec, 0);
  yk_kernel *kern;
  yk_status st = yk_kernel_get(ctx, &spec, &kern);
  if (st) return st;
  const int group = spec.v[CACHES], most_pairs = spec.v[PAIRS];
  const uint64_t words = c->block_bytes / (uint64_t)(spec.v[VEC] * es),
                 per_cta = (uint64_t)spec.v[THREADS] * spec.v[ITEMS];
  const uint64_t pieces = (words + per_cta - 1) / per_cta;
  if (pieces > INT32_MAX)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: a block of %zu bytes needs more than 2^31 - 1 CTAs", op,
                    c->block_bytes);
  uint64_t params[PARAM_BYTES / 8] = {0}; /* the kernel's copy_blocks_params, as bytes */
  params[group] = (uint64_t)c->stride_bytes;
  params[group + 1] = words;
  for (int64_t first = 0; first < n; first += most_pairs) {
    const int count = n - first < most_pairs ? (int)(n - first) : most_pairs;
    memcpy(&params[group + 2], mapping + 2 * first, (size_t)count * 2 * sizeof *mapping);
    for (int start = 0; start < num_caches; start += group) {
      char *bases[64];
      const int caches_now = group_bases(caches, num_caches, start, group, bases);
      for (int i = 0; i < caches_now; i++) params[i] = (uint64_t)(uintptr_t)bases[i];
      void *args[] = {params};
      if ((st = yk_launch(ctx, kern, (unsigned)pieces, (unsigned)count, (unsigned)caches_now, stream, args))) return st;
    }
  }
  return YK_OK;
}

yk_status yk_copy_blocks(yk_ctx *ctx, DLTensor *const *caches, int num_caches, const int32_t *block_mapping,
                         int64_t num_pairs, void *stream) {
  static const char op[] = "copy_blocks";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  copy_call c;
  yk_status st;
  if ((st = check_caches(ctx, op, caches, num_caches, &c)) ||
      (st = check_pairs(ctx, op, block_mapping, num_pairs, c.num_blocks)))
    return st;
  if (num_pairs == 0 || c.block_bytes == 0) return YK_OK;
  if (!c.on_device) {
    run_cpu(ctx, &c, caches, num_caches, block_mapping, num_pairs);
    return YK_OK;
  }
  return run_gpu(ctx, op, &c, caches, num_caches, block_mapping, num_pairs, stream);
}
