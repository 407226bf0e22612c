/* attention_decode: one query token a sequence (or, for the prefill call, a few: the queries'
 * tokens and q heads rows of one tile), GQA group packed in one tile, split-KV with an lse merge
 * when the batch alone cannot fill the GPU or a ragged batch waits on its longest sequence.
 * Template: templates/attention_decode.cu (+ attention_common.cuh). CPU: cpu_fallback/attention.c.
 * Tests: tests/test_attention_decode.c. */
#include <stdio.h>

#include "cpu_fallback/attention.h"
#include "gen/attention.h"
#include "gen/spec.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/launch.h"
#include "yk/ops.h"

enum {
  HEAD_DIM,
  BLOCK_N,
  WARPS,
  D_SPLIT,
  STAGES,
  RAGGED,
  SPLIT,
  Q_IN_REGS,
  KV_HINT,
  SWIZZLE,
  PAGED,
  PAGE_SIZE,
  KV_FLOAT8,
  QUERIES,
  ROW_TILES
};
static const char *const includes[] = {"attention_common.cuh", NULL};
enum { HINT_NONE, HINT_PREFETCH128, HINT_PREFETCH256, HINT_EVICT_FIRST }; /* yk_cp_async16's HINT */
static const char *const kv_hints[] = {"none", "prefetch128", "prefetch256", "evict_first"};

#define MAX_SPLITS YK_DECODE_MAX_SPLITS
#define MIN_KEYS_PER_SPLIT 256 /* below this the merge costs more than the parallelism gains */
#define MAX_QUERY_ROWS 256     /* several queries a sequence: (token, q head) rows a kv head */
/* A block's 16-row tiles for rows (token, q head) pairs of a kv head: their warps share the team's K
 * and V, read once for all of them, where blocks of 16 rows read them each. yk bench --decode and
 * --paged, H100, against blocks of 16 rows (bench/results/2026-12-06-h100-session30.md): 64 rows
 * (16 queries of 4 q heads) at batch 1 x 32768 1.40x dense, 1.52x paged; 16 requests' cascade
 * prefix 1.39x; 32 rows at batch 64 x 4096 1.06x dense, 1.20x paged. Two tiles at batch 1 and 8
 * ran 0.94-0.97x with 64-key tiles (session 29) and 0.967-0.985x paged with these 32-key ones
 * (session 31; 8 requests' cascade 0.976x): two blocks reading the keys together from L2 cost
 * little, one block split further cost more. So 32 rows take 2 only past one wave of 16-row blocks.
 * Past 64 rows, 8 tiles (128 rows) a block, where the prefill kernel took them before at a few
 * hundred GB/s (session 31, paged, against that: 32 queries of B1 x 32768 6.57x, 64 queries 3.76x,
 * 32 of B16 x 4096 1.83x); head_dim 256 stays at 4 (8 tiles of two warps each spilled in 16 warps). */
static int max_row_tiles(int64_t head_dim) { return head_dim <= 128 ? 8 : 4; }
static int row_tiles_for(const yk_ctx *ctx, int64_t rows, int64_t batch, int64_t kv_heads, int64_t head_dim) {
  if (rows <= 32) return rows > 16 && batch * kv_heads * 2 > ctx->multiprocessors ? 2 : 1;
  int tiles = 4;
  while (16 * tiles < rows && tiles < max_row_tiles(head_dim)) tiles *= 2;
  return tiles;
}
int yk_decode_fits_queries(int64_t q_heads, int64_t kv_heads, int64_t max_seqlen_q) {
  return max_seqlen_q > 0 && max_seqlen_q * (q_heads / kv_heads) <= MAX_QUERY_ROWS;
}
/* Paged keys in a grid of at most one block an SM take a split's 8 one-warp teams (complete()) with
 * no split too: bench --paged --sweep, H100, 8 queries a sequence of batch 8 x 4096 (128 blocks, no
 * split) read 1803 GB/s on them against 1467 on 4 teams of 3 stages; at batch 64 (1024 blocks)
 * they ran 0.92x, so only where the grid is one wave of single blocks. Several queries there take
 * the split's evict-first hint too: 1934 against 1809 (decode of batch 16, one query: 2527
 * against 2543, so not it). */
#define ONE_WAVE_PAGED_WARPS 8
/* Whether a launch of one wave of single blocks takes ONE_WAVE_PAGED_WARPS: paged keys, no split,
 * one warp a team (head dims up to 128). yk_decode_spec also asks the grid; the warm-up cannot. */
static int one_wave_teams_apply(int paged, int split, int head_dim) { return paged && !split && head_dim <= 128; }

/* Float8 tiles of one 16-byte piece or less a thread of their team (a team of 8 row tiles at head
 * dims 64 to 128, of 4 at 64, of 8 two-warp tiles at 256): CUDA 13's ptxas encodes their evict-first cp.async with uniform
 * registers it never sets (the SASS reads UR0 and UR1 for the shared offset and the cache policy),
 * and the H100 ran an illegal instruction (gpu_prefill_matches_dense, float8 case 0, 180 rows in
 * 8 tiles; compute-sanitizer: the first LDGSTS). bench/sass_scan.py over every float8 decode
 * spec of 4 to 8 row tiles found it in 11 of 32 and in none of more pieces a thread, nor in any
 * 16-bit spec; such tiles load without the hint. The block_n and d_split are complete()'s. */
static int default_block_n(int kv_float8, int row_tiles) { return kv_float8 || row_tiles > 1 ? 32 : 16; }
static int default_d_split(int head_dim) { return head_dim > 128 ? 2 : 1; }
static int evict_first_miscompiles(int kv_float8, int block_n, int head_dim, int team_warps) {
  return kv_float8 && block_n * head_dim / 16 <= 32 * team_warps;
}
/* The L2 hint of such a launch: evict-first with several queries a sequence (where ptxas builds
 * it), else the default. */
static int one_wave_hint(int queries, int kv_float8, int head_dim, int row_tiles) {
  const int team_warps = row_tiles * default_d_split(head_dim);
  if (!queries || evict_first_miscompiles(kv_float8, default_block_n(kv_float8, row_tiles), head_dim, team_warps))
    return YK_UNSET;
  return HINT_EVICT_FIRST;
}

static void complete(yk_spec *s) {
  yk_attention_complete_paged(&s->v[PAGED], &s->v[PAGE_SIZE]);
  if (s->v[KV_FLOAT8] == YK_UNSET) s->v[KV_FLOAT8] = 0;
  if (s->v[RAGGED] == YK_UNSET) s->v[RAGGED] = 0;
  if (s->v[SPLIT] == YK_UNSET) s->v[SPLIT] = 0;
  if (s->v[QUERIES] == YK_UNSET) s->v[QUERIES] = 0;
  if (s->v[ROW_TILES] == YK_UNSET) s->v[ROW_TILES] = 1;
  /* float8: 32 keys, a tile of the same bytes as 16 of 16-bit keys. Several row tiles share a
   * team's tiles, so with fewer teams (below) its 16-bit tiles grow to 32 keys. 64 spilled under
   * NVRTC with Q in registers (255 registers; 4 tiles, and float8 from 2); with Q in shared memory
   * they compile clean at head_dim 128 but ran 0.93-0.96x these at 64 rows and 0.79-0.89x at 32 */
  const int rt = s->v[ROW_TILES];
  if (s->v[BLOCK_N] == YK_UNSET) s->v[BLOCK_N] = default_block_n(s->v[KV_FLOAT8], rt);
  /* head_dim 256: a team of two warps shares the keys, each holding half of O (128 registers whole) */
  if (s->v[D_SPLIT] == YK_UNSET) s->v[D_SPLIT] = default_d_split(s->v[HEAD_DIM]);
  /* bench --lengths, H200, batch 1 x 32768: paged keys with a split ran at 1.08x on 8 one-warp
   * teams with 2 stages each against 4 with 3 (2740 against 2534 GB/s; 6 teams 2731, 12 2144):
   * twice the tiles in flight an SM hide the page-table gathers. Dense keys: 1.00x, kept at 4.
   * Row tiles keep the warps: teams of rt x d_split warps, rt times fewer */
  const int paged_split = s->v[PAGED] && s->v[SPLIT] && s->v[D_SPLIT] == 1;
  if (s->v[WARPS] == YK_UNSET) s->v[WARPS] = (paged_split || rt > 4 ? 8 : 4) * s->v[D_SPLIT];
  /* 8 teams' pipelines of 3 stages take 192 KiB at head_dim 128; one team of 8 tiles' warps keeps 3 */
  const int teams = s->v[WARPS] / (s->v[D_SPLIT] * rt);
  if (s->v[STAGES] == YK_UNSET) s->v[STAGES] = s->v[WARPS] / s->v[D_SPLIT] >= 8 && teams > 1 ? 2 : 3;
  /* head_dim 256: O alone takes 128 registers a thread; Q's fragments go to shared memory */
  if (s->v[Q_IN_REGS] == YK_UNSET) s->v[Q_IN_REGS] = s->v[HEAD_DIM] <= 128;
  /* bench --decode --sweep, H200: with a split (batch 1 x 32768) evict-first K and V ran at 1.06x
   * no hint; without (batch 64 x 4096, 256 x 1024) at 0.96x, and 128-byte prefetch made no
   * difference once the tiles were swizzled */
  const int miscompiles = evict_first_miscompiles(s->v[KV_FLOAT8], s->v[BLOCK_N], s->v[HEAD_DIM], rt * s->v[D_SPLIT]);
  if (s->v[KV_HINT] == YK_UNSET)
    s->v[KV_HINT] = s->v[SPLIT] && s->v[STAGES] <= 3 && !miscompiles ? HINT_EVICT_FIRST : HINT_NONE;
  /* swizzled tiles read each 128-byte line with one L2 request, where padded rows took 2.6 and
   * read a third of the sectors twice: 1.05-1.10x at every batch (ncu and bench --decode --sweep);
   * a swizzled row is whole 128-byte lines, so the head dim must be a multiple of 64 */
  if (s->v[SWIZZLE] == YK_UNSET) s->v[SWIZZLE] = s->v[HEAD_DIM] % 64 == 0;
}

static int valid(const yk_spec *s, char *why, size_t n) {
  if (yk_attention_paged_invalid(s->v[PAGED], s->v[PAGE_SIZE], why, n)) return 1;
  if (s->v[PAGED] && s->v[RAGGED])
    return snprintf(why, n, "ragged keys come from cu_seqlens_k, paged keys from a page table: not both"), 1;
  if (s->v[HEAD_DIM] % 16) return snprintf(why, n, "head_dim %d is not a multiple of 16", s->v[HEAD_DIM]), 1;
  if (s->v[BLOCK_N] % 16) return snprintf(why, n, "block_n %d is not a multiple of 16", s->v[BLOCK_N]), 1;
  if (s->v[SWIZZLE] && s->v[HEAD_DIM] % 64)
    return snprintf(why, n, "swizzled tiles need head_dim a multiple of 64, not %d", s->v[HEAD_DIM]), 1;
  if (s->v[WARPS] % (s->v[D_SPLIT] * s->v[ROW_TILES]) || s->v[HEAD_DIM] % (16 * s->v[D_SPLIT]))
    return snprintf(why, n, "warps %d and head_dim %d must divide among d_split %d (warps among teams of %d)",
                    s->v[WARPS], s->v[HEAD_DIM], s->v[D_SPLIT], s->v[D_SPLIT] * s->v[ROW_TILES]),
           1;
  if (s->v[ROW_TILES] > 1 && !s->v[QUERIES])
    return snprintf(why, n, "row_tiles %d: one query a sequence fills one tile (its group)", s->v[ROW_TILES]), 1;
  /* The cp.async of evict-first K and V, 4 or more stages deep, ran an illegal instruction on the
   * H100 with CUDA 13's ptxas (the cache policy's uniform register read unset; from a constant
   * fraction or one read at run time alike), where 2 and 3 stages run right: bench --lengths and
   * gpu_decode_knobs_match_cpu. Deeper pipelines load without the hint. */
  if (s->v[KV_HINT] == HINT_EVICT_FIRST && s->v[STAGES] > 3)
    return snprintf(why, n, "kv_hint evict_first takes at most 3 stages, not %d (ptxas miscompiles deeper ones)",
                    s->v[STAGES]),
           1;
  if (s->v[KV_HINT] == HINT_EVICT_FIRST &&
      evict_first_miscompiles(s->v[KV_FLOAT8], s->v[BLOCK_N], s->v[HEAD_DIM], s->v[ROW_TILES] * s->v[D_SPLIT]))
    return snprintf(why, n,
                    "kv_hint evict_first: float8 tiles of %d keys load one piece a thread of a team of %d warps, "
                    "which ptxas miscompiles",
                    s->v[BLOCK_N], s->v[ROW_TILES] * s->v[D_SPLIT]),
           1;
  /* O's columns, Q's fragments, S */
  const int held = s->v[HEAD_DIM] / 2 / s->v[D_SPLIT] + (s->v[Q_IN_REGS] ? s->v[HEAD_DIM] / 4 : 0) + s->v[BLOCK_N] / 2;
  if (!yk_fits_registers(held, 32 * s->v[WARPS]))
    return snprintf(why, n, "head_dim %d holds %d floats a thread, more than fit in registers", s->v[HEAD_DIM], held),
           1;
  return 0;
}

static unsigned smem_bytes(const yk_spec *s) {
  const unsigned row = (unsigned)(s->v[HEAD_DIM] + (s->v[SWIZZLE] ? 0 : 8)) * 2u;
  const int teams = s->v[WARPS] / (s->v[D_SPLIT] * s->v[ROW_TILES]), rows = 16 * s->v[ROW_TILES];
  /* a team's stages of K and V tiles: of T, or of float8 bytes (the template's TEAM_BYTES) */
  const unsigned team =
      (unsigned)(s->v[STAGES] * 2 * s->v[BLOCK_N]) * (s->v[KV_FLOAT8] ? (unsigned)s->v[HEAD_DIM] : row);
  const unsigned pipelines = (unsigned)teams * team + (s->v[Q_IN_REGS] ? 0u : (unsigned)rows * row); /* then Q */
  /* the teams' O rows for their merge (the template's SO_ROW floats a row), then m and l */
  const int so_base = s->v[HEAD_DIM] + s->v[HEAD_DIM] / 32 * 4;
  const int so_row = so_base + ((s->v[KV_FLOAT8] ? 16 : 8) - so_base % 32 + 32) % 32;
  const unsigned combine = (unsigned)((teams * rows * so_row + 2 * teams * rows) * 4);
  return pipelines > combine ? pipelines : combine;
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user);

const yk_op_def yk_op_attention_decode = {
    .name = "attention_decode",
    .summary = "decode attention: one query a sequence (or a few), GQA-packed tiles, split-KV merged by lse",
    .includes = includes,
    .dtypes = 1u << YK_F16 | 1u << YK_BF16,
    .field_count = 15,
    .fields =
        {
            {"head_dim", "elements a head (a multiple of 16)", 16, 256, 0, 0, NULL},
            {"block_n", "keys a warp's tile", 16, 128, 0, 1, NULL},
            {"warps", "warps a block, in teams that each stream their own tiles", 1, 16, 0, 1, NULL},
            {"d_split", "warps a team, each holding head_dim / d_split output columns", 1, 4, 1, 1, NULL},
            {"stages", "tiles in flight a warp (cp.async pipeline depth)", 2, 8, 0, 1, NULL},
            {"ragged", "1: key sequences located by cu_seqlens_k", 0, 1, 0, 1, NULL},
            {"split", "1: write float32 partials for the merge", 0, 1, 0, 1, NULL},
            {"q_in_regs", "1: Q fragments stay in registers", 0, 1, 0, 1, NULL},
            {"kv_hint", "L2 hint of K and V's loads", 0, 3, 0, 1, kv_hints},
            {"swizzle", "1: swizzled shared-memory tiles (head dims a multiple of 64), else padded", 0, 1, 0, 1, NULL},
            YK_PAGED_FIELDS,
            {"kv_float8",
             "1: K and V are float8 e4m3 (a float8 KV cache), converted in registers on the way to the mma", 0, 1, 0, 1,
             NULL},
            {"queries",
             "0: one query a sequence; 1: several (cu_seqlens_q, or seq_q a sequence), each token's q heads rows of "
             "the tile; 2: the same, causal",
             0, 2, 0, 1, NULL},
            {"row_tiles",
             "16-row tiles a block (several queries: up to 256 rows a kv head in blocks of up to 8 tiles, 4 at "
             "head_dim 256), each a warp's of a team, sharing the team's K and V",
             1, 8, 1, 1, NULL},
        },
    .complete = complete,
    .valid = valid,
    .dynamic_smem_bytes = smem_bytes,
    .warm_specs = warm_specs,
};

/* The warm-up matrix's decode specs in the forms the calls also launch: paged keys in a grid of at
 * most one block an SM on 8 teams (yk_decode_spec), and the ragged and paged specs for the prefill
 * calls' few queries a sequence, causal or not, in 1, 2, 4 or 8 row tiles (yk_decode_queries). */
static void emit_variants(void *user, const yk_spec *s) {
  const yk_spec_sink *w = user;
  yk_spec forms[2] = {*s, *s};
  int count = 1;
  if (one_wave_teams_apply(s->v[PAGED], s->v[SPLIT], s->v[HEAD_DIM])) {
    forms[1].v[WARPS] = ONE_WAVE_PAGED_WARPS, forms[1].v[STAGES] = YK_UNSET, forms[1].v[KV_HINT] = YK_UNSET;
    complete(&forms[1]);
    count = 2;
  }
  for (int f = 0; f < count; f++)
    for (int queries = 0; queries <= (forms[f].v[RAGGED] || forms[f].v[PAGED] ? 2 : 0); queries++)
      for (int rt = 1; rt <= (queries ? max_row_tiles(s->v[HEAD_DIM]) : 1); rt *= 2) { /* row_tiles_for's */
        yk_spec several = forms[f];
        char why[256];
        several.v[QUERIES] = queries, several.v[ROW_TILES] = rt;
        if (rt > 1) { /* row tiles take longer tiles, and teams of rt warps their own warps and stages */
          several.v[BLOCK_N] = several.v[STAGES] = YK_UNSET;
          if (f == 0) several.v[WARPS] = YK_UNSET;
        }
        if (f == 1) several.v[KV_HINT] = one_wave_hint(queries, s->v[KV_FLOAT8], s->v[HEAD_DIM], rt);
        complete(&several);
        if (!valid(&several, why, sizeof why)) w->emit(w->user, &several);
      }
}

static void warm_specs(const yk_warm_request *req, yk_spec_emit_fn emit, void *user) {
  yk_spec_sink w = {emit, user};
  yk_attention_warm(req, &yk_op_attention_decode, RAGGED, SPLIT, PAGED, KV_FLOAT8, NULL, emit_variants, &w);
}

/* Splits a sequence's keys when the blocks of the batch alone would leave SMs idle: the largest
 * power of two of splits that keeps to one block an SM, each split at least MIN_KEYS_PER_SPLIT
 * keys. Measured on the H100 at batch 1 x 32768 (8 kv heads, bench --sweep): 16 splits ran at
 * 1928 GB/s, 8 at 1838, 17 at 1613, 24 at 1789, 33 at 1817, 66 at 1526: whole powers of two
 * cut the keys into whole tiles and each extra split costs a pipeline fill and a merge row.
 *
 * A ragged batch whose lengths are known (its longest at least twice the mean) is balanced by
 * them instead, since many short sequences and one long one give blocks enough for every SM yet
 * wait on the long one's few: the longest sequence takes the power of two of splits that keeps
 * its chunks within one SM's share of the batch's keys, and more while a chunk holds more than
 * BALANCED_CHUNK_KEYS; the others take chunks of that size (one, for most). The short blocks fill
 * the SMs first (the grid runs split by split), so the long chunks must be small enough to end
 * with them. yk bench --decode, H100, 32 q / 8 kv heads, head dim 128, best split counts: 16 for
 * 1 x 32768 among 31 x 512 (chunks of 2048 keys; 8, at the share's floor, ran 0.87x), 8 for 4 x
 * 16384 among 60 x 1024 (2048; the share's 4 0.97x), 16 for 1 x 32768 among 15 x 2048 and for
 * 32768 + 4096 + 1024 + 256 (2048), 8 for 2 x 8192 among 126 x 256 (1024; this rule's 4 0.95x);
 * equal lengths ran best on the batch's rule (32 x 4096: 1 split, 2-32 splits 0.91-0.95x). */
#define BALANCED_CHUNK_KEYS 2048

/* The batch's lengths are known where its keys were counted (total_keys) and one has any. */
static int lengths_known(int64_t max_keys, int64_t total_keys) { return total_keys > 0 && max_keys > 0; }

/* Where the lengths are known, every sequence's chunks hold the longest one's share of keys. */
static int chunk_keys_of(int known, int64_t max_keys, int splits) {
  const int64_t chunk = known && splits > 1 ? (max_keys + splits - 1) / splits : 0;
  return (int)(chunk < INT32_MAX ? chunk : 0);
}

int64_t yk_decode_sequence_blocks(int64_t q_heads, int64_t kv_heads) {
  return kv_heads * ((q_heads / kv_heads + 15) / 16);
}

yk_decode_split yk_decode_splits(const yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t max_keys,
                                 int64_t total_keys, int num_splits) {
  return yk_decode_splits_of(ctx, batch, yk_decode_sequence_blocks(q_heads, kv_heads), max_keys, total_keys,
                             num_splits);
}

yk_decode_split yk_decode_splits_of(const yk_ctx *ctx, int64_t batch, int64_t seq_blocks, int64_t max_keys,
                                    int64_t total_keys, int num_splits) {
  const int64_t blocks = batch * seq_blocks;
  const int known = lengths_known(max_keys, total_keys) && seq_blocks > 0;
  int splits = num_splits;
  if (!splits) {
    const int64_t most_keys = max_keys / MIN_KEYS_PER_SPLIT, cap = most_keys < MAX_SPLITS ? most_keys : MAX_SPLITS;
    const double by_batch = (double)ctx->multiprocessors / (double)(blocks > 0 ? blocks : 1);
    splits = 1;
    while (2.0 * splits <= by_batch && 2 * splits <= cap) splits *= 2;
    if (known && (double)batch * (double)max_keys >= 2.0 * (double)total_keys) { /* ragged */
      const double share = (double)ctx->multiprocessors * (double)max_keys / ((double)total_keys * (double)seq_blocks);
      int ragged = 1;
      while (ragged < share && 2 * ragged <= cap) ragged *= 2;
      while ((max_keys + ragged - 1) / ragged > BALANCED_CHUNK_KEYS && 2 * ragged <= cap) ragged *= 2;
      if (ragged > splits) splits = ragged;
    }
  }
  return (yk_decode_split){splits, chunk_keys_of(known, max_keys, splits)};
}

yk_decode_split yk_decode_splits_within(const yk_ctx *ctx, int64_t batch, int64_t seq_blocks, int64_t max_keys,
                                        int64_t total_keys, int num_splits, const DLTensor *workspace,
                                        size_t split_floats, int keep_batch_split) {
  yk_decode_split s = yk_decode_splits_of(ctx, batch, seq_blocks, max_keys, total_keys, num_splits);
  if (!workspace) return s; /* allocated for the call: nothing caps it */
  const int least = keep_batch_split ? yk_decode_splits_of(ctx, batch, seq_blocks, max_keys, 0, num_splits).splits
                    : num_splits     ? num_splits
                                     : 1;
  const size_t room = yk_workspace_floats_offered(workspace);
  while (s.splits > least && (size_t)s.splits * split_floats > room) {
    s.splits /= 2;
    if (s.splits < least) s.splits = least;
    s.chunk_keys = chunk_keys_of(lengths_known(max_keys, total_keys), max_keys, s.splits);
  }
  return s;
}

size_t yk_decode_split_floats(int64_t tokens, int64_t q_heads, int64_t head_dim) {
  return (size_t)tokens * (size_t)q_heads * (size_t)(head_dim + 1);
}

size_t yk_decode_workspace_floats(int64_t batch, int64_t q_heads, int64_t head_dim, int splits) {
  return splits <= 1 ? 0 : (size_t)splits * yk_decode_split_floats(batch, q_heads, head_dim);
}

size_t yk_attention_decode_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                            int64_t head_dim, int64_t max_seqlen_k, int64_t total_k, int num_splits) {
  if (!ctx || batch <= 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || head_dim <= 0 || max_seqlen_k < 0 ||
      total_k < 0 || num_splits < 0 || num_splits > MAX_SPLITS)
    return 0;
  return yk_decode_workspace_floats(
      batch, q_heads, head_dim,
      yk_decode_splits(ctx, batch, q_heads, kv_heads, max_seqlen_k, total_k, num_splits).splits);
}

/* A kv head's rows: its q heads, or with several queries its (token, q head) pairs. */
static int64_t rows_of(const yk_decode_launch *L) {
  return L->a.q_heads / L->a.kv_heads * (L->queries ? L->max_seqlen_q : 1);
}

static int row_tiles_of(const yk_ctx *ctx, const yk_decode_launch *L) {
  return L->queries ? row_tiles_for(ctx, rows_of(L), L->a.batch, L->a.kv_heads, L->a.head_dim) : 1;
}

/* Blocks for a kv head's rows, of row_tiles 16-row tiles each. */
static int64_t blocks_for_rows(int64_t rows, int64_t row_tiles) {
  return (rows + 16 * row_tiles - 1) / (16 * row_tiles);
}

void yk_decode_spec(yk_ctx *ctx, const yk_decode_launch *L, yk_spec *spec) {
  yk_spec_init(spec, &yk_op_attention_decode, (yk_dtype)L->a.dtype);
  const int row_tiles = row_tiles_of(ctx, L);
  const int64_t grid = L->a.kv_heads * blocks_for_rows(rows_of(L), row_tiles) * L->a.batch * L->splits;
  if (one_wave_teams_apply(L->paged, L->splits > 1, (int)L->a.head_dim) && grid <= ctx->multiprocessors) {
    spec->v[WARPS] = ONE_WAVE_PAGED_WARPS;
    spec->v[KV_HINT] = one_wave_hint(L->queries, L->a.kv_float8, (int)L->a.head_dim, row_tiles);
  }
  spec->v[HEAD_DIM] = (int32_t)L->a.head_dim;
  spec->v[RAGGED] = L->cu_k != NULL;
  spec->v[SPLIT] = L->splits > 1;
  spec->v[PAGED] = L->paged;
  spec->v[PAGE_SIZE] = L->page_size;
  spec->v[KV_FLOAT8] = L->a.kv_float8;
  spec->v[QUERIES] = L->queries ? 1 + (L->causal != 0) : 0;
  spec->v[ROW_TILES] = row_tiles;
  yk_spec_finish(ctx, spec, L->paged ? 0 : L->a.batch * L->max_seqlen_k); /* paged: each sequence its own */
}

/* The partials' token rows: the queries', or one a sequence. */
static int64_t launch_tokens(const yk_decode_launch *L) { return L->queries ? L->total_q : L->a.batch; }

/* Of those, the rows a sequence's outputs take consecutively (the merge's `per`): one query a
 * sequence 1, dense queries seq_q, a ragged token axis all of them. */
static int64_t tokens_per_sequence(const yk_decode_launch *L) {
  return !L->queries ? 1 : L->cu_q ? L->total_q : L->max_seqlen_q;
}

/* Elements between the rows of consecutive tokens of q, out or lse within a sequence: with several
 * queries a sequence, its token axis's; with one, the batch's. */
static long long token_stride(const yk_decode_launch *L, const yk_attn_operand *o) {
  return L->queries ? o->seq_stride : o->batch_stride;
}

yk_status yk_decode_run(yk_ctx *ctx, const yk_decode_launch *L, void *stream) {
  yk_spec spec;
  yk_decode_spec(ctx, L, &spec);
  yk_kernel *kern;
  yk_status st = yk_kernel_get(ctx, &spec, &kern);
  if (st) return st;
  /* several queries a sequence: rows of (token, q head) pairs, partials and outputs by token */
  const int several = L->queries;
  const int64_t group = L->a.q_heads / L->a.kv_heads, row_blocks = blocks_for_rows(rows_of(L), spec.v[ROW_TILES]);
  const int64_t tokens = launch_tokens(L);
  /* partials: [splits][tokens * q_heads][head_dim] then [splits][tokens * q_heads] */
  float *part_o = L->workspace, *part_lse = NULL;
  if (L->splits > 1) part_lse = part_o + (size_t)L->splits * (size_t)(tokens * L->a.q_heads) * (size_t)L->a.head_dim;
  const yk_page_table_args no_table = {0};
  yk_page_table_args table = L->table ? *L->table : no_table;
  void *qp = L->a.q.data, *kp = L->a.k.data, *vp = L->a.v.data, *op_ = L->a.out.data, *lp = L->a.lse.data, *po = part_o,
       *pl = part_lse;
  const void *ck = L->cu_k, *cq = several ? L->cu_q : NULL;
  /* token t of sequence b of q, out or lse: with several queries at b * batch_stride + t *
     seq_stride (a ragged token axis has batch_stride 0, t its token); one query a sequence at
     b * batch_stride, passed as the token's stride (the kernel's QUERIES 0 reads no other) */
  const yk_attn_operand *q = &L->a.q, *k = &L->a.k, *v = &L->a.v, *o = &L->a.out, *l = &L->a.lse;
  long long s[16] = {token_stride(L, q), q->head_stride, k->batch_stride, k->seq_stride,      k->head_stride,
                     v->batch_stride,    v->seq_stride,  v->head_stride,  token_stride(L, o), o->head_stride,
                     token_stride(L, l), l->head_stride, q->batch_stride, o->batch_stride,    l->batch_stride};
  int batch = (int)tokens, q_heads = (int)L->a.q_heads, grp = (int)group, rb = (int)row_blocks,
      seq_q = several ? (int)L->max_seqlen_q : 1, seq_k = (int)L->max_seqlen_k, chunk_keys = L->chunk_keys;
  float scale_log2 = yk_attention_score_scale(&L->a) * 1.4426950408889634f, out_scale = yk_attention_out_scale(&L->a);
  /* the dense queries' sequence strides last: the kernel's other parameters sit where they sat before
     it took several queries (float8 paged decode at batch 1 ran 0.986x with them in the middle) */
  void *args[] = {&qp,         &kp,         &vp,    &op_,       &lp,      &po,    &pl,   &ck,    &cq,
                  &s[0],       &s[1],       &s[2],  &s[3],      &s[4],    &s[5],  &s[6], &s[7],  &s[8],
                  &s[9],       &s[10],      &s[11], &batch,     &q_heads, &grp,   &rb,   &seq_q, &seq_k,
                  &chunk_keys, &scale_log2, &table, &out_scale, &s[12],   &s[13], &s[14]};
  st = yk_launch(ctx, kern, (unsigned)(L->a.kv_heads * row_blocks), (unsigned)L->a.batch, (unsigned)L->splits, stream,
                 args);
  if (st == YK_OK && L->splits > 1)
    st = yk_merge_partials(ctx, L->a.dtype, tokens, tokens_per_sequence(L), L->a.q_heads, L->a.head_dim, L->splits,
                           part_o, part_lse, o, l, stream);
  return st;
}

yk_status yk_decode_run_in(yk_ctx *ctx, const char *op, yk_decode_launch *L, const DLTensor *workspace, void *stream) {
  const size_t floats = yk_decode_workspace_floats(launch_tokens(L), L->a.q_heads, L->a.head_dim, L->splits);
  CUdeviceptr scratch;
  yk_status st = yk_device_workspace(ctx, op, workspace, floats, stream, &L->workspace, &scratch);
  if (st) return st;
  return yk_device_workspace_release(ctx, scratch, yk_decode_run(ctx, L, stream), stream);
}

yk_status yk_attention_decode(yk_ctx *ctx, const DLTensor *q, const DLTensor *k, const DLTensor *v,
                              const yk_attention_params *params, DLTensor *out, DLTensor *lse, void *stream) {
  static const char op[] = "attention_decode";
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  yk_attention_problem pr;
  yk_view ov, lv;
  yk_status st;
  if ((st = yk_attention_check(ctx, op, q, k, v, params, 1, &pr)) ||
      (st = yk_attention_check_like(ctx, op, "out", out, "q", &pr.q, &pr, &ov)) ||
      (st = yk_attention_check_lse(ctx, op, lse, 1, &pr, &lv)))
    return st;
  const yk_view *outs[] = {&ov, &lv}, *ins[] = {&pr.q, &pr.k, &pr.v};
  static const char *const out_names[] = {"out", "lse"}, *const in_names[] = {"q", "k", "v"};
  if ((st = yk_attention_check_outputs(ctx, op, outs, out_names, 2, ins, in_names, 3))) return st;
  if (pr.shape.batch == 0) return YK_OK;
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

  yk_decode_launch L = {
      .a = yk_attention_operands_of(&pr, yk_attention_rows(&pr.k, &pr, 1), yk_attention_rows(&pr.v, &pr, 1), &ov, &lv),
      .cu_k = pr.cu_k,
      .max_seqlen_k = pr.max_seqlen_k,
  };
  /* a ragged batch is balanced by its keys: k's token axis bounds them */
  const yk_decode_split split =
      yk_decode_splits_within(ctx, pr.shape.batch, yk_decode_sequence_blocks(pr.shape.q_heads, pr.shape.kv_heads),
                              pr.max_seqlen_k, pr.ragged_k ? pr.total_k : 0, params->num_splits, params->workspace,
                              yk_decode_split_floats(pr.shape.batch, pr.shape.q_heads, pr.shape.head_dim), 1);
  L.splits = split.splits;
  L.chunk_keys = split.chunk_keys;
  return yk_decode_run_in(ctx, op, &L, params->workspace, stream);
}

/* A few queries a sequence against its keys (speculative decoding's verification step, a chunked
 * prefill's last chunk) through the decode kernel, for the prefill calls: its tile's rows are the
 * (token, q head) pairs of a kv head's group, so each K and V byte is read once for all of them,
 * and the keys split and merge as decode's. The prefill kernel gives each q head its own tile
 * and has no key split: yk bench --decode, H100, 4-16 queries against 32768 keys read 350 GB/s,
 * 0.16x decode's rate on the same keys. max_keys bounds every sequence's keys (0: there are none). */
int yk_decode_takes_queries(const yk_attention_problem *pr, int64_t max_keys) {
  return pr->on_device && max_keys > 0 &&
         yk_decode_fits_queries(pr->shape.q_heads, pr->shape.kv_heads, pr->max_seqlen_q);
}

/* The split of a few queries a sequence: decode's over the launch's blocks, a kv head's (token, q
 * head) rows in blocks of row_tiles 16-row tiles; a caller's workspace caps it (down to none, since
 * the prefill calls' workspace is optional), num_splits where given aside. */
static yk_decode_split queries_split(const yk_ctx *ctx, int64_t batch, int64_t q_heads, int64_t kv_heads,
                                     int64_t head_dim, int64_t max_seqlen_q, int64_t total_q, int64_t max_keys,
                                     int64_t total_keys, int num_splits, const DLTensor *workspace) {
  const int64_t rows = q_heads / kv_heads * max_seqlen_q;
  const int64_t blocks = blocks_for_rows(rows, row_tiles_for(ctx, rows, batch, kv_heads, head_dim));
  return yk_decode_splits_within(ctx, batch, kv_heads * blocks, max_keys, total_keys, num_splits, workspace,
                                 yk_decode_split_floats(total_q, q_heads, head_dim), 0);
}

yk_status yk_decode_queries(yk_ctx *ctx, const char *op, const yk_attention_problem *pr, yk_decode_launch *L,
                            int64_t max_keys, int64_t total_keys, const yk_attention_params *params, void *stream) {
  L->queries = 1;
  L->cu_q = pr->ragged_q ? pr->cu_q : NULL;
  L->max_seqlen_q = pr->max_seqlen_q;
  L->total_q = pr->total_q;
  L->causal = pr->shape.causal;
  const yk_decode_split split =
      queries_split(ctx, pr->shape.batch, pr->shape.q_heads, pr->shape.kv_heads, pr->shape.head_dim, pr->max_seqlen_q,
                    pr->total_q, max_keys, total_keys, params->num_splits, params->workspace);
  L->splits = split.splits;
  L->chunk_keys = split.chunk_keys;
  return yk_decode_run_in(ctx, op, L, params->workspace, stream);
}

size_t yk_flash_attention_forward_workspace_floats(yk_ctx *ctx, int64_t batch, int64_t total_q, int64_t max_seqlen_q,
                                                   int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                                   int64_t max_seqlen_k, int64_t total_k, int num_splits) {
  if (!ctx || batch <= 0 || total_q < 0 || q_heads <= 0 || kv_heads <= 0 || q_heads % kv_heads || head_dim <= 0 ||
      max_seqlen_k <= 0 || total_k < 0 || num_splits < 0 || num_splits > MAX_SPLITS ||
      !yk_decode_fits_queries(q_heads, kv_heads, max_seqlen_q))
    return 0;
  const yk_decode_split s = queries_split(ctx, batch, q_heads, kv_heads, head_dim, max_seqlen_q, total_q, max_seqlen_k,
                                          total_k, num_splits, NULL);
  return yk_decode_workspace_floats(total_q, q_heads, head_dim, s.splits);
}
