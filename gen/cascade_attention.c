/* Cascade decode: requests that share a prefix of pages attend to it once for all of them (the
 * paged prefill of the batch's queries against the prefix, or the decode kernel for a few requests),
 * then each to its own pages (paged decode), and the two merge by lse. The kernels are the paged
 * ones (gen/paged_attention.c) and merge_attention_states; the CPU path the same calls on the host.
 * Tests: tests/test_cascade_attention.c. */
#include <stdlib.h>

#include "gen/paged_attention.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"
#include "yk/ops.h"

/* The prefix is cut into up to MAX_CHUNKS chunks of whole pages, run as the sequences of one
 * prefill launch (the same queries against each chunk) and merged by lse: one chunk gives a block
 * per q head, which leaves most SMs idle. A batch of a few requests (at most CASCADE_DECODE_ROWS
 * rows of (request, q head) a kv head: parallel sampling, a beam) runs its prefix on the decode
 * kernel instead, as one sequence of B queries whose keys it splits and merges itself: each K and
 * V byte read once for the group's q heads, where the prefill kernel reads them again for each q
 * head of tiles mostly empty (B of 128 rows). yk bench --paged, H100 (session 31), 32 q / 8 kv
 * heads: 32 requests' prefix of 32768 keys (128 rows, one block of 8 row tiles a kv head) ran
 * 1.66x on the decode kernel, 64 requests' of 4096 (256 rows) 0.87x, where the prefill kernel's
 * chunks already fill the SMs. */
#define MAX_CHUNKS 8
#define CASCADE_DECODE_ROWS 128

/* Whether the batch's queries take the prefix on the decode kernel (on the GPU), and the float32
 * partials its split may take: sized for any prefix's length, since the workspace's size is asked
 * without it (the split grows with the keys only until the SMs are full). */
static int cascade_prefix_on_decode(int on_device, int64_t batch, int64_t q_heads, int64_t kv_heads) {
  return on_device && batch * (q_heads / kv_heads) <= CASCADE_DECODE_ROWS &&
         yk_decode_fits_queries(q_heads, kv_heads, batch);
}

static size_t cascade_prefix_floats(yk_ctx *ctx, int on_device, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                    int64_t head_dim) {
  if (!cascade_prefix_on_decode(on_device, batch, q_heads, kv_heads)) return 0;
  return yk_flash_attention_forward_workspace_floats(ctx, 1, batch, batch, q_heads, kv_heads, head_dim, INT32_MAX,
                                                     INT32_MAX, 0);
}

/* The split partials' region: the suffixes' decode's of `splits`, or the prefix's, the larger. */
static size_t cascade_partials_floats(size_t prefix_floats, int64_t batch, int64_t q_heads, int64_t head_dim,
                                      int splits) {
  const size_t suffix = yk_decode_workspace_floats(batch, q_heads, head_dim, splits);
  return suffix > prefix_floats ? suffix : prefix_floats;
}

/* The cascade's scratch, in float32 units: the suffixes' output and the prefix chunks' outputs (in
 * q's dtype, room for float32, the CPU path's widest), both lse, the chunks' lengths, then the
 * split partials of the suffixes' decode and of the prefix's on the decode kernel, which run one
 * after the other and share them (decode_floats, the larger); each part 16-byte aligned. */
typedef struct cascade_layout {
  size_t o_unique, o_chunks, lse_shared, lse_unique, lens, decode, total;
} cascade_layout;

static cascade_layout cascade_scratch(int64_t batch, int64_t q_heads, int64_t head_dim, size_t decode_floats) {
  cascade_layout l;
  const size_t rows = (size_t)(batch * q_heads), round4 = 3;
  l.o_unique = 0;
  l.o_chunks = (rows * (size_t)head_dim + round4) & ~round4;
  l.lse_shared = (l.o_chunks + MAX_CHUNKS * rows * (size_t)head_dim + round4) & ~round4;
  l.lse_unique = (l.lse_shared + MAX_CHUNKS * rows + round4) & ~round4;
  l.lens = (l.lse_unique + rows + round4) & ~round4;
  l.decode = (l.lens + MAX_CHUNKS + round4) & ~round4;
  l.total = l.decode + decode_floats;
  return l;
}

size_t yk_cascade_decode_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                          int64_t head_dim, int64_t max_suffix_len, int num_splits) {
  if (!ctx || batch <= 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || head_dim <= 0 ||
      max_suffix_len < 0 || num_splits < 0 || num_splits > YK_DECODE_MAX_SPLITS)
    return 0;
  const int splits = yk_decode_splits(ctx, batch, q_heads, kv_heads, max_suffix_len, 0, num_splits).splits;
  const size_t prefix = cascade_prefix_floats(ctx, ctx->device == YK_DEVICE_CUDA, batch, q_heads, kv_heads, head_dim);
  return cascade_scratch(batch, q_heads, head_dim, cascade_partials_floats(prefix, batch, q_heads, head_dim, splits))
      .total;
}

/* A view into the scratch: ndim dimensions of type at float offset `at`. */
static DLTensor scratch_view(const DLTensor *like, void *base, size_t at, DLDataType type, int ndim,
                             const int64_t *shape, const int64_t *strides) {
  DLTensor t = {.data = base, .device = like->device, .ndim = ndim, .dtype = type};
  t.shape = (int64_t *)shape, t.strides = (int64_t *)strides, t.byte_offset = at * sizeof(float);
  return t;
}

/* Chunks of the prefix: a power of two that divides its pages and keeps the prefill's blocks to
 * about one an SM; 1 where the prefix's length is not known exactly or its table is CSR. */
static int cascade_chunks(const yk_ctx *ctx, const yk_paged_kv *shared, const yk_paged_keys *prefix, int64_t q_heads,
                          int64_t batch, int on_device) {
  const int64_t len = prefix->max_len, P = prefix->page_size, pages = len / P;
  if (!on_device || !shared->block_tables || len <= 0 || len % P) return 1;
  const int64_t blocks = q_heads * ((batch + 127) / 128);
  int chunks = 1;
  while (chunks * 2 <= MAX_CHUNKS && pages % (chunks * 2) == 0 && blocks * chunks * 2 <= ctx->multiprocessors)
    chunks *= 2;
  return chunks;
}

yk_status yk_cascade_attention_decode(yk_ctx *ctx, const DLTensor *q, const yk_paged_kv *shared,
                                      const yk_paged_kv *unique, const yk_attention_params *params, DLTensor *out,
                                      DLTensor *lse, void *stream) {
  static const char op[] = "cascade_attention_decode";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  /* the suffixes' call checks q, out, lse and the caches; the prefix's table is checked here */
  yk_paged_keys pk, prefix;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_paged_check(ctx, op, q, unique, params, 1, out, lse, &pk, &pr, &ov, &lv))) return st;
  if (!shared) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared is NULL", op);
  if ((st = yk_paged_check_caches(ctx, op, shared, &prefix))) return st;
  if (prefix.k.data != pk.k.data || prefix.v.data != pk.v.data)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared and unique must page the same caches", op);
  if (prefix.k_scale != pk.k_scale || prefix.v_scale != pk.v_scale)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                    "%s: shared's scales (%g, %g) are not unique's (%g, %g): they page the same caches", op,
                    (double)prefix.k_scale, (double)prefix.v_scale, (double)pk.k_scale, (double)pk.v_scale);
  if ((st = yk_paged_check_table(ctx, op, shared, pr.on_device, &prefix))) return st;
  if (prefix.batch != 1)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "%s: shared has %lld sequences; the prefix is one", op,
                    (long long)prefix.batch);
  if (pk.batch == 0) return YK_OK;
  const int64_t B = pk.batch, H = pr.shape.q_heads, D = pr.shape.head_dim;
  const int splits =
      pr.on_device ? yk_decode_splits(ctx, B, H, pk.kv_heads, pk.max_len ? pk.max_len : 1, 0, params->num_splits).splits
                   : 1;
  const int prefix_on_decode = cascade_prefix_on_decode(pr.on_device, B, H, pk.kv_heads);
  const int64_t C = prefix_on_decode ? 1 : cascade_chunks(ctx, shared, &prefix, H, B, pr.on_device);
  const size_t prefix_floats = cascade_prefix_floats(ctx, pr.on_device, B, H, pk.kv_heads, D);
  const cascade_layout l = cascade_scratch(B, H, D, cascade_partials_floats(prefix_floats, B, H, D, splits));

  /* the scratch: the caller's, or one allocation for the call */
  float *base = NULL, *allocated = NULL;
  CUdeviceptr scratch = 0;
  if (pr.on_device) {
    if ((st = yk_device_workspace(ctx, op, params->workspace, l.total, stream, &base, &scratch))) return st;
  } else if (params->workspace) {
    if ((st = yk_workspace_check(ctx, op, params->workspace, l.total, 0, &base))) return st;
  } else if (!(base = allocated = malloc(l.total * sizeof(float)))) {
    return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "%s: out of host memory for %zu floats of scratch", op, l.total);
  }
  const DLDataType f32 = {kDLFloat, 32, 1}, i32 = {kDLInt, 32, 1};
  /* the prefix: the batch's queries as one sequence of B rows against each chunk, [C, B, H, D] */
  const int64_t q4[4] = {C, B, H, D}, q4_strides[4] = {0, pr.q.stride[0], pr.q.stride[1], 1};
  const int64_t o4_strides[4] = {0, ov.stride[0], ov.stride[1], 1};
  DLTensor q_rows = *q, out_rows = *out;
  q_rows.ndim = out_rows.ndim = 4, q_rows.shape = out_rows.shape = (int64_t *)q4;
  q_rows.strides = (int64_t *)q4_strides, out_rows.strides = (int64_t *)o4_strides;
  if (C > 1) out_rows = scratch_view(q, base, l.o_chunks, q->dtype, 4, q4, NULL);
  const int64_t lse3[3] = {C, H, B}, lse2[2] = {B, H}, lse2_t[2] = {1, B}, o3[3] = {B, H, D}, rows = B * H;
  DLTensor lse_shared = scratch_view(q, base, l.lse_shared, f32, 3, lse3, NULL);
  DLTensor lse_unique = scratch_view(q, base, l.lse_unique, f32, 2, lse2, NULL);
  DLTensor o_unique = scratch_view(q, base, l.o_unique, q->dtype, 3, o3, NULL);
  DLTensor decode_ws = scratch_view(q, base, l.decode, f32, 1, (const int64_t[]){(int64_t)(l.total - l.decode)}, NULL);
  /* chunk c of the prefix: row c of its table seen as [C, pages / C], and its length */
  const int64_t chunk_len = prefix.max_len / C, table_shape[2] = {C, prefix.max_len / prefix.page_size / C};
  DLTensor chunk_table = C > 1 ? *shared->block_tables : (DLTensor){0};
  chunk_table.ndim = 2, chunk_table.shape = (int64_t *)table_shape, chunk_table.strides = NULL;
  DLTensor chunk_lens = scratch_view(q, base, l.lens, i32, 1, &q4[0], NULL);
  yk_paged_kv chunks = *shared;
  if (C > 1) {
    chunks.block_tables = &chunk_table, chunks.context_lens = &chunk_lens, chunks.max_context_len = (int)chunk_len;
    CUresult r = ctx->cu.cuMemsetD32Async((CUdeviceptr)(uintptr_t)(base + l.lens), (unsigned)chunk_len, (size_t)C,
                                          (CUstream)stream);
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "setting the prefix chunks' lengths");
  }
  if (!pr.on_device) q_rows.device = out_rows.device = lse_shared.device = (DLDevice){kDLCPU, 0};
  yk_attention_params prefix_params = {.scale = pr.shape.scale};
  yk_attention_params suffix_params = {.scale = pr.shape.scale, .num_splits = splits};
  if (prefix_floats) prefix_params.workspace = &decode_ws;
  if (splits > 1) suffix_params.workspace = &decode_ws;
  if (st == YK_OK)
    st = yk_paged_prefill_as(ctx, op, &q_rows, &chunks, &prefix_params, prefix_on_decode, &out_rows, &lse_shared,
                             stream);
  /* the chunks merged into the first, which then holds the whole prefix's attention */
  DLTensor o_first = C > 1 ? scratch_view(q, base, l.o_chunks, q->dtype, 3, o3, NULL) : *out;
  DLTensor lse_first = scratch_view(q, base, l.lse_shared, f32, 2, lse2, lse2_t);
  for (int64_t c = 1; c < C && st == YK_OK; c++) {
    DLTensor o_c = scratch_view(q, base, l.o_chunks + (size_t)(c * rows * D) / 2, q->dtype, 3, o3, NULL);
    DLTensor lse_c = scratch_view(q, base, l.lse_shared + (size_t)(c * rows), f32, 2, lse2, lse2_t);
    st = yk_merge_attention_states(ctx, &o_first, &lse_first, &o_c, &lse_c, &o_first, &lse_first, stream);
  }
  if (st == YK_OK) st = yk_paged_attention_decode(ctx, q, unique, &suffix_params, &o_unique, &lse_unique, stream);
  if (st == YK_OK) st = yk_merge_attention_states(ctx, &o_first, &lse_first, &o_unique, &lse_unique, out, lse, stream);
  if (pr.on_device) return yk_device_workspace_release(ctx, scratch, st, stream);
  free(allocated);
  return st;
}
