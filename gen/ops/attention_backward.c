/* attention_backward: flash_attention_backward as two kernels that recompute the scores, so each
 * gradient has exactly one writer and no atomics (deterministic; on Hopper, unless
 * params->deterministic, the dk/dv kernel adds dq up instead: gen/ops/attention_backward_sm90.c):
 *   part dq:   a block owns BLOCK_M query rows and walks the key tiles: dq = scale * dS k
 *   part dkdv: a block owns BLOCK_N keys of a kv head and walks the query tiles of every q head of
 *              its group: dv = P^T dout, dk = scale * dS^T q
 * with P = exp(q k^T * scale - lse), dS = P * (dout v^T - rowsum(dout * out)). On an sm_90 device,
 * for head dims 64 and 128, yk_flash_attention_backward launches the same two kernels on warpgroup
 * MMAs instead (gen/ops/attention_backward_sm90.c; YK_BACKWARD_KERNEL=mma_sync keeps these).
 * Template: templates/attention_backward.cu (+ attention_common.cuh, attention_backward.cuh).
 * CPU: cpu_fallback/attention_backward.c. Tests: tests/test_attention_backward.c. */
#include <stdio.h>
#include <string.h>

#include "cpu_fallback/attention_backward.h"
#include "gen/attention.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "runtime/module.h"
#include "runtime/tensor_map.h"
#include "yk/ops.h"

enum { HEAD_DIM, PART, BLOCK_M, BLOCK_N, D_SPLIT, STAGES, IN_REGS, CAUSAL, RAGGED };
enum { PART_DQ = YK_BACKWARD_PART_DQ, PART_DKDV = YK_BACKWARD_PART_DKDV };
static const char *const parts[] = {"dq", "dkdv"};
static const char *const includes[] = {"attention_common.cuh", "attention_backward.cuh", NULL};

/* A warp reads a B fragment (ldmatrix, 512 bytes of shared memory) for every 2 mma of its 16 rows,
 * so shared memory, not the tensor cores, bounds these kernels; the defaults buy fewer reads and
 * barriers per mma. dkdv: 64-row query tiles (16-row ones spent an ldmatrix per mma and two
 * barriers per 16 rows), 4 warps of 16 keys sharing each, K and V fragments in registers where
 * they fit beside dk, dv and the scores (up to 64); at 256, two warps share 16 keys, each with
 * half the columns, on 32-row tiles (sm_80's 163 KB of shared memory). dq: 4 warps of 16 rows on
 * 64-key tiles, Q and dout fragments in registers up to 128; at 256, 32-key tiles. Blocks of 64
 * (rows for dq, keys for dk/dv) fit two to an SM, so one block's barrier and load waits have the
 * other's mma beside them: on the H200 (bench --backward --sweep, S4096) they ran 1.06-1.14x
 * blocks of 128 at head dims 64 and 128. Every default compiles without spills for sm_80 and
 * sm_90. */
static void complete(yk_spec *s) {
  const int d = s->v[HEAD_DIM], dq = s->v[PART] == PART_DQ;
  if (s->v[BLOCK_M] == YK_UNSET) s->v[BLOCK_M] = dq || d <= 128 ? 64 : 32;
  if (s->v[BLOCK_N] == YK_UNSET) s->v[BLOCK_N] = dq && d > 128 ? 32 : 64;
  if (s->v[D_SPLIT] == YK_UNSET) s->v[D_SPLIT] = !dq && d > 128 ? 2 : 1;
  if (s->v[STAGES] == YK_UNSET) s->v[STAGES] = 2;
  if (s->v[IN_REGS] == YK_UNSET) s->v[IN_REGS] = dq ? d <= 128 : d <= 64;
  if (s->v[CAUSAL] == YK_UNSET) s->v[CAUSAL] = 0;
  if (s->v[RAGGED] == YK_UNSET) s->v[RAGGED] = 0;
}

static int warps(const yk_spec *s) {
  return s->v[PART] == PART_DQ ? s->v[BLOCK_M] / 16 : s->v[BLOCK_N] / 16 * s->v[D_SPLIT];
}

/* Floats a thread holds through a tile: accumulators (dq; or dk and dv, head_dim / d_split
 * columns each), scores (dP whole, S a 32-wide chunk at a time, P and dS packed to 16 bits: about
 * two score tiles of 16 rows a warp), and the fixed A fragments when in registers (Q and dout, or
 * K and V: head_dim / 4 each). */
static int held_floats(const yk_spec *s) {
  const int d = s->v[HEAD_DIM], fixed = s->v[IN_REGS] ? d / 2 : 0;
  if (s->v[PART] == PART_DQ) return d / 2 + s->v[BLOCK_N] + fixed;
  return d / s->v[D_SPLIT] + s->v[BLOCK_M] + fixed;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (s->v[HEAD_DIM] % (16 * s->v[D_SPLIT]))
    return snprintf(why, n, "head_dim %d is not a multiple of 16 x d_split", s->v[HEAD_DIM]), 1;
  if (s->v[BLOCK_M] % 16 || s->v[BLOCK_N] % 16)
    return snprintf(why, n, "block_m %d and block_n %d must be multiples of 16", s->v[BLOCK_M], s->v[BLOCK_N]), 1;
  if (s->v[PART] == PART_DQ && s->v[D_SPLIT] != 1) return snprintf(why, n, "d_split is for part dkdv"), 1;
  if (warps(s) > 16) return snprintf(why, n, "%d warps a block, more than 16", warps(s)), 1;
  if (!yk_fits_registers(held_floats(s), 32 * warps(s)))
    return snprintf(why, n, "holds %d floats a thread, more than fit in registers", held_floats(s)), 1;
  return 0;
}

static unsigned block_threads(const yk_spec *s) { return 32u * (unsigned)warps(s); }

/* dq: Q and dout tiles once, K and V tiles STAGES deep. dkdv: K and V tiles once, Q and dout
 * tiles and their rows' {lse, delta} STAGES deep. Rows padded to head_dim + 8. */
static unsigned smem_bytes(const yk_spec *s) {
  const unsigned row = (unsigned)(s->v[HEAD_DIM] + 8) * 2u;
  if (s->v[PART] == PART_DQ) return (unsigned)(2 * s->v[BLOCK_M] + 2 * s->v[STAGES] * s->v[BLOCK_N]) * row;
  return (unsigned)(2 * s->v[BLOCK_N] + 2 * s->v[STAGES] * s->v[BLOCK_M]) * row +
         (unsigned)(s->v[STAGES] * s->v[BLOCK_M]) * 8u;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_attention_backward = {
    .name = "attention_backward",
    .summary = "flash_attention_backward: dq and dk/dv kernels recomputing the scores, no atomics",
    .includes = includes,
    .dtypes = 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 9,
    .fields =
        {
            {"head_dim", "elements a head (a multiple of 16)", 16, 256, 0, 0, NULL},
            {"part", "which gradients: dq, or dk and dv", 0, 1, 0, 0, parts},
            {"block_m", "query rows a tile", 16, 256, 0, 1, NULL},
            {"block_n", "keys a tile", 16, 256, 0, 1, NULL},
            {"d_split", "warps sharing 16 keys, each with head_dim / d_split columns (dkdv)", 1, 4, 1, 1, NULL},
            {"stages", "tiles in flight (cp.async pipeline depth)", 2, 4, 0, 1, NULL},
            {"in_regs", "1: the A fragments fixed for the walk (dq: Q, dout; dkdv: K, V) stay in registers", 0, 1, 0, 1,
             NULL},
            {"causal", "1: bottom-right causal mask", 0, 1, 0, 1, NULL},
            {"ragged", "1: sequences located by cu_seqlens", 0, 1, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .block_threads = block_threads,
    .dynamic_smem_bytes = smem_bytes,
    .warm_specs = warm_specs,
};

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  yk_attention_warm(req, &yk_op_attention_backward, PART, CAUSAL, -1, -1, NULL, emit, user);
}

/* The tensor maps of a Hopper kernel's walked tiles: K and V (dq) or q and dout (dk/dv), each
 * [batch][rows][heads][head_dim], or every ragged sequence on one token axis. Nonzero where TMA
 * cannot read one of them (the kernel then loads by cp.async). */
static int walked_tile_maps(const yk_ctx *ctx, CUtensorMap maps[2], const yk_attention_problem *pr,
                            const yk_attn_operand *a, const yk_attn_operand *b, int keys, int box_rows) {
  const int ragged = keys ? pr->ragged_k : pr->ragged_q;
  const int64_t rows = keys ? (ragged ? pr->total_k : pr->max_seqlen_k) : (ragged ? pr->total_q : pr->max_seqlen_q);
  const int64_t heads = keys ? pr->shape.kv_heads : pr->shape.q_heads, batch = ragged ? 1 : pr->shape.batch;
  const yk_attn_operand *x[2] = {a, b};
  for (int i = 0; i < 2; i++)
    if (yk_attention_tensor_map(ctx, &maps[i], pr->shape.dtype, pr->shape.head_dim, x[i], rows, heads, batch, box_rows))
      return 1;
  return 0;
}

/* {lse, rowsum(dout * out)} a query row of each q head, rounded to 16 bytes: the float32 dq after
 * them is the bulk reductions' destination */
static size_t stats_floats(int64_t q_heads, int64_t total_q) {
  return (2 * (size_t)q_heads * (size_t)total_q + 3) / 4 * 4;
}

yk_status yk_flash_attention_backward(yk_ctx *ctx, const DLTensor *dout, const DLTensor *q, const DLTensor *k,
                                      const DLTensor *v, const DLTensor *out, const DLTensor *lse,
                                      const yk_attention_params *params, DLTensor *dq, DLTensor *dk, DLTensor *dv,
                                      void *stream) {
  static const char op[] = "flash_attention_backward";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_attention_problem pr;
  yk_view dov, ov, lv, dqv, dkv, dvv;
  yk_status st;
  if ((st = yk_attention_check(ctx, op, q, k, v, params, 0, &pr)) ||
      (st = yk_attention_check_like(ctx, op, "dout", dout, "q", &pr.q, &pr, &dov)) ||
      (st = yk_attention_check_like(ctx, op, "out", out, "q", &pr.q, &pr, &ov)) ||
      (st = yk_attention_check_lse(ctx, op, lse, 0, &pr, &lv)) ||
      (st = yk_attention_check_like(ctx, op, "dq", dq, "q", &pr.q, &pr, &dqv)) ||
      (st = yk_attention_check_like(ctx, op, "dk", dk, "k", &pr.k, &pr, &dkv)) ||
      (st = yk_attention_check_like(ctx, op, "dv", dv, "v", &pr.v, &pr, &dvv)))
    return st;
  const yk_view *outs[] = {&dqv, &dkv, &dvv}, *ins[] = {&pr.q, &pr.k, &pr.v, &dov, &ov, &lv};
  static const char *const out_names[] = {"dq", "dk", "dv"}, *const in_names[] = {"q", "k", "v", "dout", "out", "lse"};
  if ((st = yk_attention_check_outputs(ctx, op, outs, out_names, 3, ins, in_names, 6))) return st;
  if (pr.shape.batch == 0) return YK_OK;
  const yk_attn_operand lo = yk_attention_lse_rows(&lv, &pr);
  const yk_attn_operand qo = yk_attention_rows(&pr.q, &pr, 0), ko = yk_attention_rows(&pr.k, &pr, 1),
                        vo = yk_attention_rows(&pr.v, &pr, 1), oo = yk_attention_rows(&ov, &pr, 0),
                        doo = yk_attention_rows(&dov, &pr, 0), dqo = yk_attention_rows(&dqv, &pr, 0),
                        dko = yk_attention_rows(&dkv, &pr, 1), dvo = yk_attention_rows(&dvv, &pr, 1);
  if (!pr.on_device) {
    yk_cpu_attention_backward(&ctx->pool, &pr.shape, doo, qo, ko, vo, oo, lo, dqo, dko, dvo);
    return YK_OK;
  }
  const yk_view *rows[] = {&dov, &pr.q, &pr.k, &pr.v, &ov, &dqv, &dkv, &dvv};
  static const char *const names[] = {"dout", "q", "k", "v", "out", "dq", "dk", "dv"};
  if ((st = yk_attention_check_aligned(ctx, op, rows, names, 8))) return st;
  if (pr.shape.batch > 65535)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: batch %lld is above 65535", op, (long long)pr.shape.batch);

  /* Every kernel found (compiled) before anything is allocated or launched. On an sm_90 device the
   * Hopper ones (gen/ops/attention_backward_sm90.c), which take the same arguments, two tensor maps
   * of the tiles they walk (dq: K and V; dk/dv: q and dout) where TMA can read those, and the
   * float32 dq: unless params->deterministic, the rows' stats, then dk/dv adding dq up by bulk
   * reductions into the zeroed float32 dq, then dq's conversion; else (and elsewhere) dq, then dk/dv.
   * In stream order, each writes what the next reads. */
  const int hopper = ctx->target_arch_specific[0] && !ctx->backward_mma_sync &&
                     yk_attention_backward_sm90_head_dim((int)pr.shape.head_dim);
  const int atomic_dq = hopper && !params->deterministic;
  static const int deterministic_parts[] = {YK_BACKWARD_PART_DQ, YK_BACKWARD_PART_DKDV},
                   atomic_parts[] = {YK_BACKWARD_PART_STATS, YK_BACKWARD_PART_DKDV, YK_BACKWARD_PART_DQ_OUT};
  const int *steps = atomic_dq ? atomic_parts : deterministic_parts, step_count = atomic_dq ? 3 : 2;
  yk_kernel *kern[3];
  int64_t rows_a_block[3];
  CUtensorMap maps[3][2];
  memset(maps, 0, sizeof maps);
  for (int i = 0; i < step_count; i++) {
    const int part = steps[i], row_kernel = part == YK_BACKWARD_PART_STATS || part == YK_BACKWARD_PART_DQ_OUT;
    yk_spec spec;
    if (hopper) {
      yk_attention_backward_sm90_spec(&spec, pr.shape.dtype, (int)pr.shape.head_dim, part,
                                      row_kernel ? 0 : pr.shape.causal, pr.ragged_q, atomic_dq);
    } else {
      yk_spec_init(&spec, &yk_op_attention_backward, (yk_dtype)pr.shape.dtype);
      spec.v[HEAD_DIM] = (int32_t)pr.shape.head_dim;
      spec.v[PART] = part;
      spec.v[CAUSAL] = pr.shape.causal;
      spec.v[RAGGED] = pr.ragged_q;
    }
    yk_spec_finish(ctx, &spec, pr.shape.batch * pr.max_seqlen_q); /* as the prefill's: yk tune's size */
    const int box_rows = hopper ? yk_attention_backward_sm90_tma_rows(&spec) : 0;
    if (box_rows && walked_tile_maps(ctx, maps[i], &pr, part == PART_DQ ? &ko : &qo, part == PART_DQ ? &vo : &doo,
                                     part == PART_DQ, box_rows))
      yk_attention_backward_sm90_without_tma(&spec);
    if ((st = yk_kernel_get(ctx, &spec, &kern[i]))) return st;
    if (hopper)
      rows_a_block[i] = yk_attention_backward_sm90_rows(&spec);
    else
      rows_a_block[i] = part == PART_DQ ? spec.v[BLOCK_M] : spec.v[BLOCK_N];
  }
  float *ws;
  CUdeviceptr scratch;
  const size_t stat_floats = stats_floats(pr.shape.q_heads, pr.total_q);
  const size_t ws_floats = yk_flash_attention_backward_workspace_floats(pr.shape.q_heads, pr.total_q, pr.shape.batch,
                                                                        pr.shape.head_dim, !atomic_dq);
  if ((st = yk_device_workspace(ctx, op, params->workspace, ws_floats, stream, &ws, &scratch))) return st;
  float *dq_acc = atomic_dq ? ws + stat_floats : NULL;
  if (atomic_dq && (st = yk_cuda_make_current(ctx)) == YK_OK) { /* a caller's workspace: nothing made it current */
    const CUresult r =
        ctx->cu.cuMemsetD32Async((CUdeviceptr)(uintptr_t)dq_acc, 0, ws_floats - stat_floats, (CUstream)stream);
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "zeroing the backward's float32 dq");
  }

  int seq_q = (int)pr.max_seqlen_q, seq_k = (int)pr.max_seqlen_k, group = (int)(pr.shape.q_heads / pr.shape.kv_heads);
  int ws_tokens = (int)pr.total_q;
  float scale = pr.shape.scale;
  void *ptr[13] = {qo.data,  ko.data,  vo.data,         oo.data,         doo.data, lo.data, dqo.data,
                   dko.data, dvo.data, (void *)pr.cu_q, (void *)pr.cu_k, ws,       dq_acc};
  long long s[24] = {qo.batch_stride, qo.seq_stride,    qo.head_stride,   ko.batch_stride,  ko.seq_stride,
                     ko.head_stride,  vo.batch_stride,  vo.seq_stride,    vo.head_stride,   oo.batch_stride,
                     oo.seq_stride,   oo.head_stride,   doo.batch_stride, doo.seq_stride,   doo.head_stride,
                     lo.batch_stride, lo.seq_stride,    lo.head_stride,   dqo.batch_stride, dqo.seq_stride,
                     dqo.head_stride, dko.batch_stride, dko.seq_stride,   dko.head_stride};
  long long dv_s[3] = {dvo.batch_stride, dvo.seq_stride, dvo.head_stride};
  void *args[] = {&ptr[0],  &ptr[1], &ptr[2],  &ptr[3],    &ptr[4], &ptr[5],  &ptr[6],  &ptr[7],  &ptr[8], &ptr[9],
                  &ptr[10], &s[0],   &s[1],    &s[2],      &s[3],   &s[4],    &s[5],    &s[6],    &s[7],   &s[8],
                  &s[9],    &s[10],  &s[11],   &s[12],     &s[13],  &s[14],   &s[15],   &s[16],   &s[17],  &s[18],
                  &s[19],   &s[20],  &s[21],   &s[22],     &s[23],  &dv_s[0], &dv_s[1], &dv_s[2], &seq_q,  &seq_k,
                  &group,   &scale,  &ptr[11], &ws_tokens, NULL,    NULL,     &ptr[12]};
  const int map_arg = (int)(sizeof args / sizeof args[0]) - 3; /* the mma.sync kernels take all before these */
  for (int i = 0; i < step_count && st == YK_OK; i++) {
    const int part = steps[i];
    args[map_arg] = &maps[i][0], args[map_arg + 1] = &maps[i][1];
    const int64_t len = part == PART_DKDV ? pr.max_seqlen_k : pr.max_seqlen_q;
    const unsigned blocks = (unsigned)((len + rows_a_block[i] - 1) / rows_a_block[i]);
    const unsigned heads = (unsigned)(part == PART_DKDV ? pr.shape.kv_heads : pr.shape.q_heads);
    if (blocks == 0) continue; /* no queries (dq) or no keys (dk, dv): nothing to write */
    st = yk_launch(ctx, kern[i], blocks, heads, (unsigned)pr.shape.batch, stream, args);
  }
  return yk_device_workspace_release(ctx, scratch, st, stream);
}

size_t yk_flash_attention_backward_workspace_floats(int64_t q_heads, int64_t total_q, int64_t batch, int64_t head_dim,
                                                    int deterministic) {
  if (q_heads <= 0 || total_q <= 0 || batch <= 0 || head_dim <= 0) return 0;
  if (deterministic) return 2 * (size_t)q_heads * (size_t)total_q;
  /* each sequence's rows start at a whole 64-row block (templates/attention_backward_sm90.cu, dq_piece) */
  const size_t blocks = (size_t)(total_q + 64 * batch + 63) / 64;
  return stats_floats(q_heads, total_q) + (size_t)q_heads * blocks * 64 * (size_t)head_dim;
}
