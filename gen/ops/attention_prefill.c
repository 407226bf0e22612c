/* attention_prefill: flash_attention_forward, the prefill kernel. Spec, launch shape, warm matrix and
 * the public call. Template: templates/attention_prefill.cu (+ attention_common.cuh).
 * CPU: cpu_fallback/attention.c. Tests: tests/test_attention.c. */
#include <stdio.h>
#include <string.h>

#include "cpu_fallback/attention.h"
#include "gen/attention.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "yk/ops.h"

enum { HEAD_DIM, BLOCK_M, BLOCK_N, WARPS, STAGES, CAUSAL, RAGGED, Q_IN_REGS, PAGED, PAGE_SIZE, KV_FLOAT8 };
static const char *const includes[] = {"attention_common.cuh", NULL};

/* The Hopper kernel where it applies: an sm_90 device, a head_dim it routes (yk_attention_prefill_sm90_head_dim), keys and values of T
 * (float8 ones go to the mma.sync kernel), and YK_PREFILL_KERNEL not asking for mma.sync. Both
 * kernels take the same arguments; the Hopper one two tensor maps more. */
static int use_wgmma(const yk_ctx *ctx, const yk_attention_operands *a) {
  return ctx->target_arch_specific[0] && yk_attention_prefill_sm90_head_dim((int)a->head_dim) &&
         !ctx->prefill_mma_sync && !a->kv_float8;
}

static void complete(yk_spec *s) {
  const int d = s->v[HEAD_DIM];
  /* head_dim 256 keeps half the rows a block and reads Q from shared memory each tile: its O
   * accumulators alone take 128 registers a thread. */
  if (s->v[BLOCK_M] == YK_UNSET) s->v[BLOCK_M] = d > 128 ? 64 : 128;
  if (s->v[BLOCK_N] == YK_UNSET) s->v[BLOCK_N] = d > 128 ? 32 : 64;
  if (s->v[WARPS] == YK_UNSET && s->v[BLOCK_M] > 0) s->v[WARPS] = s->v[BLOCK_M] / 16;
  if (s->v[STAGES] == YK_UNSET) s->v[STAGES] = 2;
  if (s->v[CAUSAL] == YK_UNSET) s->v[CAUSAL] = 0;
  if (s->v[RAGGED] == YK_UNSET) s->v[RAGGED] = 0;
  if (s->v[Q_IN_REGS] == YK_UNSET) s->v[Q_IN_REGS] = d <= 128;
  yk_attention_complete_paged(&s->v[PAGED], &s->v[PAGE_SIZE]);
  if (s->v[KV_FLOAT8] == YK_UNSET) s->v[KV_FLOAT8] = 0;
}

/* Floats a thread holds: O (head_dim / 2), S (block_n / 2), Q fragments (head_dim / 4 if kept). */
static int held_floats(const yk_spec *s) {
  return s->v[HEAD_DIM] / 2 + s->v[BLOCK_N] / 2 + (s->v[Q_IN_REGS] ? s->v[HEAD_DIM] / 4 : 0);
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (yk_attention_paged_invalid(s->v[PAGED], s->v[PAGE_SIZE], why, n)) return 1;
  if (s->v[HEAD_DIM] % 16) return snprintf(why, n, "head_dim %d is not a multiple of 16", s->v[HEAD_DIM]), 1;
  if (s->v[BLOCK_M] != 16 * s->v[WARPS])
    return snprintf(why, n, "block_m %d must be 16 x warps (%d)", s->v[BLOCK_M], s->v[WARPS]), 1;
  if (s->v[BLOCK_N] % 16) return snprintf(why, n, "block_n %d is not a multiple of 16", s->v[BLOCK_N]), 1;
  if (!yk_fits_registers(held_floats(s), 32 * s->v[WARPS]))
    return snprintf(why, n, "head_dim %d with block_n %d%s holds %d floats a thread, more than fit in registers",
                    s->v[HEAD_DIM], s->v[BLOCK_N], s->v[Q_IN_REGS] ? " and Q in registers" : "", held_floats(s)),
           1;
  return 0;
}

/* Q and the K and V stages of T; or Q, one tile each of T, and the stages of float8 bytes. */
static unsigned smem_bytes(const yk_spec *s) {
  const int t_stages = s->v[KV_FLOAT8] ? 1 : s->v[STAGES];
  const int raw = s->v[KV_FLOAT8] ? 2 * s->v[STAGES] * s->v[BLOCK_N] * s->v[HEAD_DIM] : 0;
  return (unsigned)((s->v[BLOCK_M] + 2 * t_stages * s->v[BLOCK_N]) * (s->v[HEAD_DIM] + 8) * 2 + raw);
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_attention_prefill = {
    .name = "attention_prefill",
    .summary = "flash_attention_forward: tiled online-softmax attention on tensor cores (causal, GQA, ragged)",
    .includes = includes,
    .dtypes = 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 11,
    .fields =
        {
            {"head_dim", "elements a head (a multiple of 16)", 16, 256, 0, 0, NULL},
            {"block_m", "query rows a block (16 a warp)", 16, 256, 0, 1, NULL},
            {"block_n", "keys a tile", 16, 256, 0, 1, NULL},
            {"warps", "warps a block", 1, 16, 0, 1, NULL},
            {"stages", "K/V tiles in flight (cp.async pipeline depth)", 2, 4, 0, 1, NULL},
            {"causal", "1: bottom-right causal mask", 0, 1, 0, 1, NULL},
            {"ragged", "1: sequences located by cu_seqlens (paged: the queries only)", 0, 1, 0, 1, NULL},
            {"q_in_regs", "1: Q fragments stay in registers", 0, 1, 0, 1, NULL},
            YK_PAGED_FIELDS,
            {"kv_float8", "1: K and V are float8 e4m3 (a float8 KV cache), widened to the dtype in shared memory", 0, 1,
             0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .dynamic_smem_bytes = smem_bytes,
    .warm_specs = warm_specs,
};

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  yk_attention_warm(req, &yk_op_attention_prefill, CAUSAL, RAGGED, PAGED, KV_FLOAT8, NULL, emit, user);
}

yk_status yk_flash_attention_forward(yk_ctx *ctx, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                                     const yk_attention_params *params, DLTensor *out, DLTensor *lse, void *stream) {
  static const char op[] = "flash_attention_forward";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_attention_check(ctx, op, q, k, v, params, 0, &pr)) ||
      (st = yk_attention_check_like(ctx, op, "out", out, "q", &pr.q, &pr, &ov)) ||
      (st = yk_attention_check_lse(ctx, op, lse, 1, &pr, &lv)))
    return st;
  const yk_view *outs[] = {&ov, &lv}, *ins[] = {&pr.q, &pr.k, &pr.v};
  static const char *const out_names[] = {"out", "lse"}, *const in_names[] = {"q", "k", "v"};
  if ((st = yk_attention_check_outputs(ctx, op, outs, out_names, 2, ins, in_names, 3))) return st;
  if (pr.shape.batch == 0 || pr.max_seqlen_q == 0) return YK_OK;
  const yk_attn_operand lse_rows = yk_attention_lse_rows(&lv, &pr);
  if (!pr.on_device) {
    yk_cpu_attention_forward(&ctx->pool, &pr.shape, yk_attention_rows(&pr.q, &pr, 0), yk_attention_rows(&pr.k, &pr, 1),
                             yk_attention_rows(&pr.v, &pr, 1), yk_attention_rows(&ov, &pr, 0), lse_rows);
    return YK_OK;
  }
  const yk_view *rows[] = {&pr.q, &pr.k, &pr.v, &ov};
  static const char *const names[] = {"q", "k", "v", "out"};
  if ((st = yk_attention_check_aligned(ctx, op, rows, names, 4))) return st;
  if (pr.shape.batch > 65535)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s: batch %lld is above 65535", op, (long long)pr.shape.batch);
  const yk_attention_operands a =
      yk_attention_operands_of(&pr, yk_attention_rows(&pr.k, &pr, 1), yk_attention_rows(&pr.v, &pr, 1), &ov, &lv);
  if (yk_decode_takes_queries(&pr, pr.max_seqlen_k)) {
    yk_decode_launch D = {.a = a, .cu_k = pr.cu_k, .max_seqlen_k = pr.max_seqlen_k};
    return yk_decode_queries(ctx, op, &pr, &D, pr.max_seqlen_k, pr.total_k, params, stream);
  }

  const yk_prefill_launch L = {
      .a = a,
      .causal = pr.shape.causal,
      .cu_q = pr.cu_q,
      .cu_k = pr.cu_k,
      .max_seqlen_q = pr.max_seqlen_q,
      .max_seqlen_k = pr.max_seqlen_k,
      .k_rows = pr.ragged_k ? pr.total_k : pr.max_seqlen_k,
  };
  return yk_prefill_run(ctx, &L, stream);
}

/* K or V as the Hopper prefill's TMA reads it: [batch][rows][heads][head_dim], one sequence a batch
 * entry, or every ragged sequence on one token axis (their offsets place a sequence's rows). */
static int tensor_map(const yk_ctx *ctx, CUtensorMap *map, const yk_prefill_launch *L, const yk_attn_operand *x,
                      int box_rows) {
  if (L->k_rows <= 0) return 1; /* paged keys */
  return yk_attention_tensor_map(ctx, map, L->a.dtype, L->a.head_dim, x, L->k_rows, L->a.kv_heads,
                                 L->cu_k ? 1 : L->a.batch, box_rows);
}

yk_status yk_prefill_run(yk_ctx *ctx, const yk_prefill_launch *L, void *stream) {
  const int wgmma = use_wgmma(ctx, &L->a);
  const int ragged_q = L->cu_q != NULL;
  yk_spec spec;
  if (wgmma) {
    yk_attention_prefill_sm90_spec(&spec, L->a.dtype, (int)L->a.head_dim, L->causal, ragged_q, L->paged, L->page_size,
                                   L->max_seqlen_q);
  } else {
    yk_spec_init(&spec, &yk_op_attention_prefill, (yk_dtype)L->a.dtype);
    spec.v[HEAD_DIM] = (int32_t)L->a.head_dim;
    spec.v[CAUSAL] = L->causal;
    spec.v[RAGGED] = ragged_q;
    spec.v[PAGED] = L->paged;
    spec.v[PAGE_SIZE] = L->page_size;
    spec.v[KV_FLOAT8] = L->a.kv_float8;
  }
  yk_spec_finish(ctx, &spec, L->a.batch * L->max_seqlen_q);
  CUtensorMap maps[2]; /* the Hopper prefill's K and V, where it loads them by TMA */
  memset(maps, 0, sizeof maps);
  const int box_rows = wgmma ? yk_attention_prefill_sm90_tma_rows(&spec) : 0;
  if (box_rows && (tensor_map(ctx, &maps[0], L, &L->a.k, box_rows) || tensor_map(ctx, &maps[1], L, &L->a.v, box_rows)))
    yk_attention_prefill_sm90_without_tma(&spec);
  yk_kernel *kern;
  yk_status st = yk_kernel_get(ctx, &spec, &kern);
  if (st) return st;
  const int block_m = wgmma ? yk_attention_prefill_sm90_rows(&spec) : spec.v[BLOCK_M];

  const yk_page_table_args no_table = {0};
  yk_page_table_args table = L->table ? *L->table : no_table;
  void *qp = L->a.q.data, *kp = L->a.k.data, *vp = L->a.v.data, *op_ = L->a.out.data, *lp = L->a.lse.data;
  const void *cq = L->cu_q, *ck = L->cu_k;
  long long strides[15] = {L->a.q.batch_stride,   L->a.q.seq_stride,     L->a.q.head_stride,  L->a.k.batch_stride,
                           L->a.k.seq_stride,     L->a.k.head_stride,    L->a.v.batch_stride, L->a.v.seq_stride,
                           L->a.v.head_stride,    L->a.out.batch_stride, L->a.out.seq_stride, L->a.out.head_stride,
                           L->a.lse.batch_stride, L->a.lse.seq_stride,   L->a.lse.head_stride};
  int seq_q = (int)L->max_seqlen_q, seq_k = (int)L->max_seqlen_k;
  int group = (int)(L->a.q_heads / L->a.kv_heads);
  float scale_log2 = yk_attention_score_scale(&L->a) * 1.4426950408889634f, out_scale = yk_attention_out_scale(&L->a);
  /* the Hopper kernel's parameters; the mma.sync kernel's end with out_scale in place of the two
   * maps (the driver reads as many as the kernel has) */
  void *args[] = {&qp,          &kp,          &vp,          &op_,         &lp,         &cq,
                  &ck,          &strides[0],  &strides[1],  &strides[2],  &strides[3], &strides[4],
                  &strides[5],  &strides[6],  &strides[7],  &strides[8],  &strides[9], &strides[10],
                  &strides[11], &strides[12], &strides[13], &strides[14], &seq_q,      &seq_k,
                  &group,       &scale_log2,  &table,       &maps[0],     &maps[1]};
  if (!wgmma) args[27] = &out_scale;
  const unsigned m_blocks = (unsigned)((L->max_seqlen_q + block_m - 1) / block_m);
  return yk_launch(ctx, kern, m_blocks, (unsigned)L->a.q_heads, (unsigned)L->a.batch, stream, args);
}
