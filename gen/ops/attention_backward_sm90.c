/* attention_backward_sm90: flash_attention_backward's two kernels on Hopper's warpgroup MMAs
 * (sm_90a), launched by yk_flash_attention_backward (gen/ops/attention_backward.c) on an sm_90
 * device for head dims 64 and 128 in place of attention_backward's. A block owns 64 rows a consumer
 * warpgroup (query rows for part dq, keys for part dkdv) and walks tiles of `tile` rows of the
 * other side, which a producer copies stages deep, by TMA where the host can build the tensor maps
 * (gen/ops/attention_backward.c), else by cp.async (see the template's header).
 * Template: templates/attention_backward_sm90.cu (+ attention_common.cuh, wgmma.cuh, hopper.cuh,
 * attention_backward.cuh). CPU: cpu_fallback/attention_backward.c. Tests: tests/test_attention_backward.c. */
#include <stdio.h>

#include "gen/attention.h"
#include "gen/spec.h"

enum { HEAD_DIM, PART, WARPGROUPS, TILE, STAGES, CAUSAL, RAGGED, TMA, ATOMIC_DQ, DQ_SUM };
static const char *const parts[] = {"dq", "dkdv", "stats", "dq_out", NULL};  /* YK_BACKWARD_PART_* */
static const char *const dq_sums[] = {"block", "behind", "warpgroup", NULL}; /* the template's DQ_SUM */
static const char *const includes[] = {"attention_common.cuh", "wgmma.cuh", "hopper.cuh", "attention_backward.cuh",
                                       NULL};

/* yk bench --backward --sweep on an H200 (S4096; bench/NOTES.md item 29): at head dim 64 the
 * walked tiles of 128 rows beat 64 in both parts (dk/dv 1.03-1.06x); at 128, dq's 128-key tiles ran
 * 1.07x its 64-key ones, and 3 stages 1.03-1.08x 2 (dk/dv's 128-row tiles do not fit its
 * registers there). */
static void complete(yk_spec *s) {
  const int d128 = s->v[HEAD_DIM] == 128, dkdv = s->v[PART] == YK_BACKWARD_PART_DKDV;
  /* The row kernels (stats, dq_out) walk no tiles: their walking fields take the one value, so
   * specs that differ only there (a pin or a sweep setting them for every part) are one kernel. */
  if (s->v[PART] == YK_BACKWARD_PART_STATS || s->v[PART] == YK_BACKWARD_PART_DQ_OUT)
    s->v[TILE] = s->v[STAGES] = s->v[TMA] = YK_UNSET;
  if (s->v[WARPGROUPS] == YK_UNSET) s->v[WARPGROUPS] = 2;
  if (s->v[TILE] == YK_UNSET) s->v[TILE] = d128 && dkdv ? 64 : 128;
  if (s->v[STAGES] == YK_UNSET) s->v[STAGES] = d128 && dkdv ? 3 : 2;
  if (s->v[CAUSAL] == YK_UNSET) s->v[CAUSAL] = 0;
  if (s->v[RAGGED] == YK_UNSET) s->v[RAGGED] = 0;
  if (s->v[TMA] == YK_UNSET) s->v[TMA] = 1;
  if (s->v[ATOMIC_DQ] == YK_UNSET) s->v[ATOMIC_DQ] = 0;
  /* Only the dk/dv kernel adding dq up forms dq's pieces; the others take the one value. At head
   * dim 128 (64-key tiles) dS^T stored first and dq issued behind the dk/dv products ran 1.06x
   * (non-causal) and 1.05x (causal) the block-wide order on an H100 (S4096, bench/NOTES.md item 47);
   * at 64, where tiles of 128 win, behind (64 only) lost 2-3%. */
  if (!s->v[ATOMIC_DQ])
    s->v[DQ_SUM] = 0;
  else if (s->v[DQ_SUM] == YK_UNSET)
    s->v[DQ_SUM] = d128 && s->v[TILE] == 64 ? 1 : 0;
}

/* Two consumer warpgroups and the producer make 384 threads, 168 registers each at launch: the
 * producer gives back all but PRODUCER_REGS and the consumers take them up to CONSUMER_REGS
 * (128 x 40 + 256 x 232 = 384 x 168). Under TMA one producer warp issues a few copies a tile and
 * keeps 24, so the consumers take 240 (128 x 24 + 256 x 240 <= 65536): with 232, dk/dv at head dim
 * 128, causal, spilled 4 bytes. With one consumer warpgroup, 255 from the start. */
enum { PRODUCER_REGS = 40, CONSUMER_REGS = 232, TMA_PRODUCER_REGS = 24, TMA_CONSUMER_REGS = 240 };

static const yk_named_value constants[] = {{"PRODUCER_REGS", PRODUCER_REGS},
                                           {"CONSUMER_REGS", CONSUMER_REGS},
                                           {"TMA_PRODUCER_REGS", TMA_PRODUCER_REGS},
                                           {"TMA_CONSUMER_REGS", TMA_CONSUMER_REGS},
                                           {NULL, 0}};

static int consumer_registers(const yk_spec *s) {
  if (s->v[WARPGROUPS] == 1) return yk_register_budget(256);
  return s->v[TMA] ? TMA_CONSUMER_REGS : CONSUMER_REGS;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (s->v[ATOMIC_DQ] && s->v[PART] != YK_BACKWARD_PART_DKDV)
    return snprintf(why, n, "atomic_dq belongs to part dkdv"), 1;
  if (s->v[HEAD_DIM] != 64 && s->v[HEAD_DIM] != 128)
    return snprintf(why, n, "head_dim %d: the Hopper dk/dv kernel takes 64 or 128", s->v[HEAD_DIM]), 1;
  if (s->v[PART] == YK_BACKWARD_PART_STATS || s->v[PART] == YK_BACKWARD_PART_DQ_OUT) return 0; /* rows only */
  /* behind keeps P^T and dS^T (tile / 2 registers) live beside dq's piece: at 128-row tiles the
   * consumers spilled (NVRTC, head_dim 64) */
  if (s->v[DQ_SUM] == 1 && s->v[TILE] != 64) return snprintf(why, n, "dq_sum behind takes tile 64"), 1;
  /* S is one MMA `tile` wide (the wgmma widths cmake/gen_wgmma.py makes: 64, 128, 256) */
  if (s->v[TILE] != 64 && s->v[TILE] != 128) return snprintf(why, n, "tile %d is not 64 or 128", s->v[TILE]), 1;
  /* A consumer thread holds its accumulators (dq, or dk and dv: head_dim / 2 floats each) and, at
   * their peak, S and dP (tile / 2 each); dS (and P), packed to 16 bits, replace them. */
  const int held = s->v[HEAD_DIM] / 2 * (s->v[PART] == YK_BACKWARD_PART_DQ ? 1 : 2) + s->v[TILE];
  if (held + YK_REGISTER_OVERHEAD > consumer_registers(s))
    return snprintf(why, n,
                    "head_dim %d with tile %d holds %d values a thread, more than fit in the %d registers of a "
                    "consumer thread",
                    s->v[HEAD_DIM], s->v[TILE], held, consumer_registers(s)),
           1;
  return 0;
}

/* The consumer warpgroups, then the producer. */
static unsigned block_threads(const yk_spec *s) { return 128u * (unsigned)(s->v[WARPGROUPS] + 1); }

/* The owned rows' two tensors once (Q and dout, or K and V), the walked tiles' two stages deep
 * (and for dk/dv their rows' {lse, delta}), two mbarriers a stage, plus 1 KB to align the swizzle
 * atoms. */
static unsigned smem_bytes(const yk_spec *s) {
  if (s->v[PART] == YK_BACKWARD_PART_STATS || s->v[PART] == YK_BACKWARD_PART_DQ_OUT) return 0;
  const unsigned d = (unsigned)s->v[HEAD_DIM], owned = 64u * (unsigned)s->v[WARPGROUPS];
  const unsigned walked = (unsigned)(s->v[STAGES] * s->v[TILE]);
  /* dS, two tiles; dq's float32 staging, 64 x 64 a warpgroup */
  const unsigned ds = s->v[ATOMIC_DQ] ? 2u * (unsigned)s->v[TILE] * owned * 2 + owned * 64 * 4 : 0;
  return (2 * owned + 2 * walked) * d * 2 + ds + (s->v[PART] == YK_BACKWARD_PART_DKDV ? walked * 8 : 0) +
         2 * 8 * (unsigned)s->v[STAGES] + 1024;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_attention_backward_sm90 = {
    .name = "attention_backward_sm90",
    .summary = "flash_attention_backward on Hopper: dq and dk/dv kernels on wgmma (sm_90a); or dk/dv adding dq up in "
               "float32 between a stats kernel and a conversion (not deterministic)",
    .includes = includes,
    .arch_specific_sm = 90,
    .dtypes = 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 10,
    .fields =
        {
            {"head_dim", "elements a head: 64 or 128", 64, 128, 0, 0, NULL},
            {"part",
             "which kernel: dq; dk and dv; with atomic_dq, the rows' stats before dk/dv and dq's conversion after", 0,
             3, 0, 0, parts},
            {"warpgroups", "consumer warpgroups a block, 64 owned rows each (a producer warpgroup besides)", 1, 2, 0, 1,
             NULL},
            {"tile", "rows of the walked tiles: keys (dq) or query rows (dkdv); 64 or 128", 64, 128, 0, 1, NULL},
            {"stages", "walked tiles in flight (the producer's pipeline depth)", 2, 4, 0, 1, NULL},
            {"causal", "1: bottom-right causal mask", 0, 1, 0, 1, NULL},
            {"ragged", "1: sequences located by cu_seqlens", 0, 1, 0, 1, NULL},
            {"tma",
             "1: the producer loads whole walked tiles with the tensor memory accelerator (a tile a sequence "
             "ends inside, and the rows' stats, by cp.async); 0: everything by cp.async",
             0, 1, 0, 1, NULL},
            {"atomic_dq",
             "1: part dkdv also adds each tile's dq into a float32 dq by bulk reductions (no dq kernel; the "
             "bits may differ from run to run)",
             0, 1, 0, 1, NULL},
            {"dq_sum",
             "with atomic_dq, how a tile's dq is formed: block (the consumers meet once their dk/dv products "
             "retired, each issues its 64 x 64 pieces over all the block's keys), behind (the same issued behind "
             "the dk/dv products still running), warpgroup (each consumer adds its own keys' part of every piece "
             "itself: no meeting, twice the reductions)",
             0, 2, 0, 1, dq_sums},
        },
    .complete = complete,
    .valid = valid,
    .block_threads = block_threads,
    .dynamic_smem_bytes = smem_bytes,
    .constants = constants,
    .warm_specs = warm_specs,
};

/* What yk_flash_attention_backward launches: dq and dk/dv, causal or not (deterministic); the rows'
 * stats, dk/dv with atomic_dq, causal or not, and dq's conversion (the default). */
static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  static const int kernels[][3] = {/* part, causal, atomic_dq */
                                   {YK_BACKWARD_PART_DQ, 0, 0},    {YK_BACKWARD_PART_DQ, 1, 0},
                                   {YK_BACKWARD_PART_DKDV, 0, 0},  {YK_BACKWARD_PART_DKDV, 1, 0},
                                   {YK_BACKWARD_PART_STATS, 0, 0}, {YK_BACKWARD_PART_DKDV, 0, 1},
                                   {YK_BACKWARD_PART_DKDV, 1, 1},  {YK_BACKWARD_PART_DQ_OUT, 0, 0}};
  for (int d = YK_F16; d <= YK_BF16; d++) {
    if (!(req->dtypes & (1u << d))) continue;
    for (int m = 0; m < req->model_count; m++) {
      if (!yk_attention_backward_sm90_head_dim(req->models[m]->head_dim)) continue;
      for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++) {
        yk_spec s;
        char why[256];
        yk_attention_backward_sm90_spec(&s, d, req->models[m]->head_dim, kernels[i][0], kernels[i][1], 0,
                                        kernels[i][2]);
        complete(&s);
        if (!valid(&s, why, sizeof why)) emit(user, &s);
      }
    }
  }
}

void yk_attention_backward_sm90_spec(yk_spec *s, int dtype, int head_dim, int part, int causal, int ragged,
                                     int atomic_dq) {
  yk_spec_init(s, &yk_op_attention_backward_sm90, (yk_dtype)dtype);
  s->v[HEAD_DIM] = head_dim;
  s->v[PART] = part;
  s->v[CAUSAL] = causal;
  s->v[RAGGED] = ragged;
  s->v[ATOMIC_DQ] = part == YK_BACKWARD_PART_DKDV && atomic_dq;
}

/* A block's rows: 64 a consumer warpgroup; the row kernels (stats, dq_out) a quad of threads a row */
int yk_attention_backward_sm90_rows(const yk_spec *s) {
  if (s->v[PART] == YK_BACKWARD_PART_STATS || s->v[PART] == YK_BACKWARD_PART_DQ_OUT) return (int)block_threads(s) / 4;
  return 64 * s->v[WARPGROUPS];
}

int yk_attention_backward_sm90_tma_rows(const yk_spec *s) {
  const int walks = s->v[PART] == YK_BACKWARD_PART_DQ || s->v[PART] == YK_BACKWARD_PART_DKDV;
  return walks && s->v[TMA] ? s->v[TILE] : 0;
}

void yk_attention_backward_sm90_without_tma(yk_spec *s) { s->v[TMA] = 0; }
