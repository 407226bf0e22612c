/* attention_prefill_sm90: the prefill kernel on Hopper's warpgroup MMAs (sm_90a). Spec, launch
 * shape and warm matrix; flash_attention_forward (gen/ops/attention_prefill.c) launches it on an
 * sm_90 device for the head dims yk_attention_prefill_sm90_head_dim routes, 64 and 128. The spec also
 * builds 256 (64-key tiles, two stages: O alone takes 128 registers a thread), not routed until its
 * GPU tests have run (bench/NOTES.md item 95). The field "pipeline" picks the loop: 0 the plain one,
 * 1 and 2 FlashAttention-3's producer warpgroup and intra-warpgroup overlap (see the template's header).
 * Template: templates/attention_prefill_sm90.cu (+ attention_common.cuh, wgmma.cuh).
 * CPU: cpu_fallback/attention.c. Tests: tests/test_attention.c. */
#include <stdio.h>
#include <string.h>

#include "gen/attention.h"
#include "gen/spec.h"

enum { HEAD_DIM, BLOCK_N, WARPGROUPS, STAGES, CAUSAL, RAGGED, PAGED, PAGE_SIZE, PIPELINE, TMA };
static const char *const includes[] = {"attention_common.cuh", "wgmma.cuh", "hopper.cuh", NULL};

/* The most dynamic shared memory a Hopper block may opt in to (227 KB). */
#define HOPPER_SMEM_BYTES (227 * 1024)

static unsigned smem_bytes(const yk_spec *s);

static void complete(yk_spec *s) {
  /* At head dim 256 a consumer thread's O takes 128 registers: S and P of 128-key tiles (96 more)
   * leave no room, of 64-key tiles (48) do. */
  if (s->v[BLOCK_N] == YK_UNSET) s->v[BLOCK_N] = s->v[HEAD_DIM] > 128 ? 64 : 128;
  if (s->v[CAUSAL] == YK_UNSET) s->v[CAUSAL] = 0;
  if (s->v[RAGGED] == YK_UNSET) s->v[RAGGED] = 0;
  yk_attention_complete_paged(&s->v[PAGED], &s->v[PAGE_SIZE]);
  /* The producer-warpgroup loops beat the plain one at every D128 shape of yk bench --prefill
   * --sweep on an H200 (bench/NOTES.md), by 1.15-1.5x. With TMA loads the consumers taking turns
   * (pipeline 2) lost to pipeline 1 at all four shapes (by 3-12%); with cp.async they were even. */
  if (s->v[PIPELINE] == YK_UNSET) s->v[PIPELINE] = 1;
  /* Three consumer warpgroups (192 rows a block, FlashAttention-3's shape at head dim 64) where their
   * 160 registers hold O, S and P: at head dim 64 with 128-key tiles they ran 1.01-1.11x two at every
   * shape of the H100's sweep at 4096 and 16384 queries (bench/NOTES.md item 52); short causal grids
   * take fewer (short_causal_form). */
  if (s->v[WARPGROUPS] == YK_UNSET)
    s->v[WARPGROUPS] = s->v[HEAD_DIM] == 64 && s->v[BLOCK_N] <= 128 && s->v[PIPELINE] == 1 ? 3 : 2;
  /* The producer's whole K and V tiles by TMA where it can (paged keys are gathered row by row):
   * 1.13-1.30x cp.async with 2 warpgroups at those shapes */
  if (s->v[TMA] == YK_UNSET) s->v[TMA] = s->v[PIPELINE] > 0 && !s->v[PAGED];
  /* Under TMA a third stage ran 1.02-1.08x two at head dim 128 and 0.99-1.03x at 64 in the H100's
   * sweep (0.98-1.07x main's prefill at 128 in an A/B/A, item 52); with cp.async loads it was even */
  if (s->v[STAGES] == YK_UNSET) {
    s->v[STAGES] = s->v[TMA] ? 3 : 2;
    if (smem_bytes(s) > HOPPER_SMEM_BYTES) s->v[STAGES] = 2; /* head dim 256: 64 KB of Q, 64 KB a stage */
  }
}

/* Causal grids of sequences shorter than SHORT_CAUSAL_QUERIES at head dim 64 take fewer consumer
 * warpgroups than complete()'s three (192-row blocks): a causal grid's blocks differ in length by
 * their row, so fewer, longer ones even out worse. yk bench --prefill --sweep on an H100 (bench/NOTES.md
 * items 83 and 86), D64 causal, TFLOP/s:
 *   - 1024 queries: one warpgroup with 64-key tiles 248 (247 on three stages), two 234, three 200
 *     (FlashAttention-2 218);
 *   - 2048: two 303, three 301, one with 64-key tiles 295;
 *   - 4096: three ahead (362 against 352), and at every length without the mask.
 * So up to ONE_WARPGROUP_QUERIES one warpgroup of 64-key tiles, below SHORT_CAUSAL_QUERIES two.
 * Paged keys (the producer on cp.async, no TMA) keep two: one warpgroup of 64-key tiles ran 223
 * there against two's 227. The launch sets the fields before the spec is finished, so a sweep's
 * override still replaces them, and a tuned configuration's warpgroups and block_n do not. */
#define ONE_WARPGROUP_QUERIES 1024
#define SHORT_CAUSAL_QUERIES 4096

/* Sets the short causal grids' warpgroups (and block_n) in a spec not yet finished. */
static void short_causal_form(yk_spec *s, int64_t max_seqlen_q) {
  if (s->v[HEAD_DIM] != 64 || !s->v[CAUSAL] || max_seqlen_q >= SHORT_CAUSAL_QUERIES) return;
  if (!s->v[PAGED] && max_seqlen_q <= ONE_WARPGROUP_QUERIES)
    s->v[WARPGROUPS] = 1, s->v[BLOCK_N] = 64;
  else
    s->v[WARPGROUPS] = 2;
}

/* With two consumer warpgroups a block has 384 threads, 168 registers each at launch: setmaxnreg
 * gives the producer's back all but 40 and the consumers take them (128 x 40 + 256 x 232 = 384 x 168).
 * With three, 512 threads of 128: the producer keeps 32 and the consumers take 160 (128 x 32 + 384 x
 * 160 = 512 x 128), FlashAttention-3's split at head dim 64. The template takes them from here. */
enum { PRODUCER_REGS = 40, CONSUMER_REGS = 232, PRODUCER_REGS_3 = 32, CONSUMER_REGS_3 = 160 };

static const yk_named_value constants[] = {{"PRODUCER_REGS", PRODUCER_REGS},
                                           {"CONSUMER_REGS", CONSUMER_REGS},
                                           {"PRODUCER_REGS_3", PRODUCER_REGS_3},
                                           {"CONSUMER_REGS_3", CONSUMER_REGS_3},
                                           {NULL, 0}};

/* Registers a consumer thread may use: pipeline 0 has no producer; pipelines 1 and 2 add a producer
 * warpgroup, and with two or three consumer warpgroups the registers move as above. */
static int consumer_registers(const yk_spec *s) {
  if (s->v[PIPELINE] == 0 || s->v[WARPGROUPS] == 1)
    return yk_register_budget(128 * (s->v[WARPGROUPS] + (s->v[PIPELINE] > 0)));
  return s->v[WARPGROUPS] == 3 ? CONSUMER_REGS_3 : CONSUMER_REGS;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (yk_attention_paged_invalid(s->v[PAGED], s->v[PAGE_SIZE], why, n)) return 1;
  if (s->v[HEAD_DIM] % 64 || s->v[BLOCK_N] % 64)
    return snprintf(why, n, "head_dim %d and block_n %d must be multiples of 64 (whole swizzle atoms)", s->v[HEAD_DIM],
                    s->v[BLOCK_N]),
           1;
  /* S = Q K^T is one MMA block_n wide: cmake/gen_wgmma.py makes the widths 64, 128 and 256 */
  if (s->v[BLOCK_N] != 64 && s->v[BLOCK_N] != 128 && s->v[BLOCK_N] != 256)
    return snprintf(why, n, "block_n %d is not a wgmma width this build has (64, 128, 256)", s->v[BLOCK_N]), 1;
  if (s->v[PIPELINE] == 2 && s->v[WARPGROUPS] != 2)
    return snprintf(why, n, "pipeline 2 alternates two consumer warpgroups: warpgroups must be 2, not %d",
                    s->v[WARPGROUPS]),
           1;
  if (s->v[TMA] && (s->v[PIPELINE] == 0 || s->v[PAGED]))
    return snprintf(why, n, "tma 1 takes a producer warpgroup (pipeline 1 or 2) and contiguous keys (paged 0)"), 1;
  /* A consumer thread holds O, S and P at once in every pipeline: pipelines 1 and 2 run the softmax
   * of S_j while P_{j-1} V_{j-1} accumulates into O, and make P_j only once that MMA has retired, so
   * one S tile and one P are live, as in pipeline 0. */
  const int held = s->v[HEAD_DIM] / 2 + s->v[BLOCK_N] / 2 + s->v[BLOCK_N] / 4; /* O, S, P */
  if (held + YK_REGISTER_OVERHEAD > consumer_registers(s))
    return snprintf(why, n,
                    "head_dim %d with block_n %d holds %d values a thread, more than fit in the %d registers of a "
                    "consumer thread",
                    s->v[HEAD_DIM], s->v[BLOCK_N], held, consumer_registers(s)),
           1;
  if (smem_bytes(s) > HOPPER_SMEM_BYTES)
    return snprintf(why, n,
                    "head_dim %d with %d warpgroups, block_n %d and %d stages takes %u bytes of shared memory, "
                    "more than a Hopper block's %d",
                    s->v[HEAD_DIM], s->v[WARPGROUPS], s->v[BLOCK_N], s->v[STAGES], smem_bytes(s), HOPPER_SMEM_BYTES),
           1;
  return 0;
}

/* The consumer warpgroups, and in pipelines 1 and 2 the producer warpgroup after them. */
static unsigned block_threads(const yk_spec *s) { return 128u * (unsigned)(s->v[WARPGROUPS] + (s->v[PIPELINE] > 0)); }

/* Q, then K and V STAGES deep, all head_dim wide, plus 1 KB to align the swizzle atoms; pipelines 1
 * and 2 add four mbarriers a stage (full and empty, K and V) of 8 bytes. */
static unsigned smem_bytes(const yk_spec *s) {
  return (unsigned)((64 * s->v[WARPGROUPS] + 2 * s->v[STAGES] * s->v[BLOCK_N]) * s->v[HEAD_DIM] * 2 + 1024 +
                    (s->v[PIPELINE] > 0 ? 4 * 8 * s->v[STAGES] : 0));
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_attention_prefill_sm90 = {
    .name = "attention_prefill_sm90",
    .summary = "flash_attention_forward on Hopper: wgmma from swizzled shared memory (sm_90a)",
    .includes = includes,
    .arch_specific_sm = 90,
    .dtypes = 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 10,
    .fields =
        {
            {"head_dim", "elements a head: 64, 128 or 256", 64, 256, 0, 0, NULL},
            {"block_n", "keys a tile: 64, 128 or 256 (the wgmma widths)", 64, 256, 0, 1, NULL},
            {"warpgroups", "consumer warpgroups a block, 64 query rows each (pipelines 1, 2 add a producer)", 1, 3, 0,
             1, NULL},
            {"stages", "K/V tiles in flight (cp.async pipeline depth)", 2, 3, 0, 1, NULL},
            {"causal", "1: bottom-right causal mask", 0, 1, 0, 1, NULL},
            {"ragged", "1: sequences located by cu_seqlens (paged: the queries only)", 0, 1, 0, 1, NULL},
            YK_PAGED_FIELDS,
            {"pipeline",
             "0: all threads load, S then softmax then PV, two block barriers a tile; 1: a producer warpgroup "
             "and mbarriers, softmax of S_j under P_{j-1} V_{j-1}; 2: 1 with the two warpgroups' MMAs in turn",
             0, 2, 0, 1, NULL},
            {"tma",
             "1: the producer loads whole K and V tiles with the tensor memory accelerator (a tile the sequence "
             "ends inside, by cp.async); 0: every tile by cp.async",
             0, 1, 0, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .block_threads = block_threads,
    .dynamic_smem_bytes = smem_bytes,
    .constants = constants,
    .warm_specs = warm_specs,
};

/* The warm-up matrix's specs in the forms the calls launch: a causal one at head dim 64 also in the
 * forms shorter sequences take, as the warm-up knows no lengths. Each is built as the launch builds
 * it (yk_attention_prefill_sm90_spec, then complete()), so the two cannot drift apart. */
static void emit_variants(void *user, const yk_spec *s) {
  const yk_spec_sink *w = user;
  w->emit(w->user, s);
  static const int64_t lengths[] = {1, ONE_WARPGROUP_QUERIES + 1};
  yk_spec forms[2];
  for (int i = 0; i < 2; i++) {
    yk_spec *f = &forms[i];
    yk_attention_prefill_sm90_spec(f, s->dtype, s->v[HEAD_DIM], s->v[CAUSAL], s->v[RAGGED], s->v[PAGED],
                                   s->v[PAGE_SIZE], lengths[i]);
    complete(f);
    char why[256];
    if (!memcmp(f, s, sizeof *s) || (i && !memcmp(f, &forms[0], sizeof *f)) || valid(f, why, sizeof why)) continue;
    w->emit(w->user, f);
  }
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  yk_spec_sink w = {emit, user};
  yk_attention_warm(req, &yk_op_attention_prefill_sm90, CAUSAL, RAGGED, PAGED, -1, yk_attention_prefill_sm90_head_dim,
                    emit_variants, &w);
}

void yk_attention_prefill_sm90_spec(yk_spec *s, int dtype, int head_dim, int causal, int ragged, int paged,
                                    int page_size, int64_t max_seqlen_q) {
  yk_spec_init(s, &yk_op_attention_prefill_sm90, (yk_dtype)dtype);
  s->v[HEAD_DIM] = head_dim;
  s->v[CAUSAL] = causal;
  s->v[RAGGED] = ragged;
  s->v[PAGED] = paged;
  s->v[PAGE_SIZE] = page_size;
  short_causal_form(s, max_seqlen_q);
}

int yk_attention_prefill_sm90_rows(const yk_spec *s) { return 64 * s->v[WARPGROUPS]; }

int yk_attention_prefill_sm90_tma_rows(const yk_spec *s) { return s->v[TMA] ? s->v[BLOCK_N] : 0; }

void yk_attention_prefill_sm90_without_tma(yk_spec *s) { s->v[TMA] = 0; }
