// Decode attention: one query token a sequence against its whole key sequence, bound by the bytes
// of K and V it must read.
//   - The q heads that share a kv head (the GQA group, up to 16 of them) are the rows of one 16-row
//     mma tile, so every K and V byte is read once for the whole group.
//   - Several queries a sequence (QUERIES) make more rows, (token, q head) pairs, up to 256 a kv
//     head: a block holds ROW_TILES tiles of 16 (up to 8), a warp of each team holding one, so that
//     the team's K and V serve all of them (as many blocks would read them each).
//   - A block owns (kv head, row block, sequence, split); each team of its warps streams its own
//     tiles of BLOCK_N keys through its own cp.async pipeline, STAGES deep, so no block-wide barrier
//     stalls the loads; the teams merge their softmax states at the end. A team's warps both
//     compute the scores and each accumulates head_dim / D_SPLIT columns of the output (at head_dim
//     256 the whole of O would take 128 registers a thread).
//   - With SPLIT the keys of a sequence are spread over num_splits blocks (flash-decoding): each
//     writes its normalised partial output and lse in float32, and merge_attention_states combines
//     them. Without, the block writes the output itself.
//
//   - Each sequence cuts its own keys into gridDim.z chunks of whole tiles, or, given chunk_keys,
//     into as many of at least chunk_keys keys as it needs (up to gridDim.z): the host picks the
//     split of a ragged batch from its lengths, so its longest sequences spread over every split
//     and its short ones stay whole. The lengths are read here, so one launch serves any lengths (a
//     captured graph of paged decode replays with new tables).
//   - Paged keys (PAGED 1 or 2, attention_common.cuh) are read through the page table, a tile of
//     BLOCK_N rows gathering from as many pages as it spans.
//   - Float8 keys and values (KV_FLOAT8, a float8 KV cache) stream as bytes, half the bytes of
//     T, and are converted in registers on their way to the mma (below, "float8"). Their scales:
//     k's is in scale_log2, v's (out_scale) multiplies O.
//
// Spec constants: T, HEAD_DIM, BLOCK_N, WARPS, D_SPLIT, STAGES, RAGGED, SPLIT, QUERIES (0: one query
// a sequence; 1: several, located by cu_q or seq_q each, each (token, q head) pair a row of the tile; 2: the
// same, causal: token t of len_q sees keys j <= len_k - len_q + t), Q_IN_REGS (Q's
// fragments kept in registers; 0 reads them from shared memory each tile), KV_HINT (the L2 hint of
// K and V's loads, yk_cp_async16), SWIZZLE (1: swizzled tiles, head dims a multiple of 64; 0:
// padded; attention_common.cuh), PAGED, PAGE_SIZE, KV_FLOAT8, ROW_TILES (16-row tiles a block;
// a team is ROW_TILES x D_SPLIT warps).

constexpr int THREADS = WARPS * 32;
// A team: ROW_TILES x D_SPLIT warps sharing one pipeline, warp w holding tile rows [16 (w / D_SPLIT),
// + 16) and columns [(w % D_SPLIT) COLS, + COLS) of O.
constexpr int TEAM_WARPS = ROW_TILES * D_SPLIT, TEAMS = WARPS / TEAM_WARPS, TEAM_THREADS = 32 * TEAM_WARPS;
constexpr int TILE_ROWS = 16 * ROW_TILES; // a block's rows
constexpr int KSTEPS = HEAD_DIM / 16;
constexpr int S_TILES = BLOCK_N / 8;
constexpr int COLS = HEAD_DIM / D_SPLIT, O_TILES = COLS / 8; // a warp's output columns
constexpr bool SWIZZLED = SWIZZLE;
constexpr int ROW = yk_row_stride<SWIZZLED>();
typedef typename yk_kv_element<KV_FLOAT8>::type KV;
// One team's K and V, in bytes: STAGES stages of K's tile, then of V's (of T, or float8 bytes)
constexpr int TEAM_BYTES = STAGES * 2 * BLOCK_N * (KV_FLOAT8 ? HEAD_DIM : ROW * (int)sizeof(T));
static_assert(BLOCK_N % 16 == 0 && COLS % 16 == 0 && WARPS % TEAM_WARPS == 0, "tiles are whole mma steps");

// ---- float8 ----
// Each K and V byte is read by one warp, so where the prefill widens a tile in shared memory for
// the four warps that read it, decode converts in registers on the way to the mma:
//   - S = Q K^T: the head-dim columns are permuted alike in Q and K (qk_col), which the dot
//     products cannot tell, so that a lane's b0 and b1 of 4 k steps are 16 bytes of its key row.
//   - O += P V, in float16 whatever T (P lies in [0, 1], and every float8 value is a float16):
//     lane (g, t) supplies column g of each 8-column tile nt, taken as byte g * O_TILES + nt of the
//     warp's columns of the value row, so its bytes of a row are contiguous; the two rows of b0
//     (and of b1) are interleaved by byte permutes. Lane (g, t) so ends with columns [2t, 2t + 2)
//     * O_TILES of O's rows g and g + 8, which it stores in order for the teams' merge.
//   - Q K^T runs in float16 too: bfloat16 q is taken as float16 times 2^shift (q_shift), so that
//     every conversion of K and V is one hardware pair conversion (bfloat16 by moving bits took
//     five ALU instructions a pair, more than the bandwidth left room for).
//   - The stages are swizzled (yk_byte_at): the 8 lanes of a quarter warp read rows 2p and 2p + 1
//     (K), or rows 2t (+ 1, + 8, + 9) (V), in distinct banks.
// The widening pass this replaces (two barriers and a trip through shared memory a tile) held
// float8 decode to 0.93-1.10x bfloat16's speed.
__device__ __forceinline__ int qk_col(int c) { // the stage column of the mma's k column c
  if (!KV_FLOAT8) return c;
  const int ks = c / 16, w = c % 16, t = (w % 8) / 2, e = 2 * (w / 8) + w % 2;
  const int group = ks / 4, steps = min(4, KSTEPS - 4 * group); // k steps side by side
  return 64 * group + 4 * steps * t + 4 * (ks % 4) + e;
}

// The teams' O rows in shared memory for their merge: SO_ROW floats a row, 4 more after every 32
// columns. A warp stores its C fragments as float2s (lane (g, t) columns nt * 8 + 2t, 2t + 1) or,
// float8, as float4s (lane (g, t) holds columns [2t, 2t + 2) * O_TILES, see above): rows 8 banks
// apart, and for float4s groups of 32 columns 4 banks apart, put each store's lanes in distinct
// banks at head dims 64 and 128 (rows HEAD_DIM apart put every lane of a float8 store in one bank,
// and took a few microseconds a block).
constexpr int SO_BASE = HEAD_DIM + HEAD_DIM / 32 * 4, SO_ROW = SO_BASE + ((KV_FLOAT8 ? 16 : 8) - SO_BASE % 32 + 32) % 32;
__device__ __forceinline__ int so_at(int row, int col) { return row * SO_ROW + col + col / 32 * 4; }

// Bfloat16 q for float16 products: the power of two that puts Q's largest magnitude (max_bits,
// as float bits) in [2^14, 2^15), below float16's largest. Every bfloat16 value within 2^28 of
// that largest is then a float16 exactly (8 significant bits into 11); smaller ones round as
// float16 subnormals, on terms 2^28 below the largest. Zeros, infinities and NaN: 0.
constexpr bool Q_TO_F16 = KV_FLOAT8 && DTYPE == YK_BF16;
__device__ __forceinline__ int q_shift(unsigned max_bits) {
  if (!Q_TO_F16 || max_bits == 0 || max_bits >= 0x7f800000u) return 0;
  return min(100, 14 - ((int)(max_bits >> 23) - 127));
}
__device__ __forceinline__ float pow2(int e) { return __uint_as_float((unsigned)(127 + e) << 23); } // |e| < 127
__device__ __forceinline__ unsigned abs_max_bits(unsigned pair) { // of a pair of bfloat16, as float bits
  return max((pair << 16) & 0x7fffffffu, pair & 0x7fff0000u);
}
__device__ __forceinline__ unsigned q_pair(unsigned pair, float scale) { // bfloat16 pair -> float16, times scale
  if (!Q_TO_F16) return pair;
  return yk_pack2<YK_F16>(__uint_as_float(pair << 16) * scale, __uint_as_float(pair & 0xffff0000u) * scale);
}
__device__ __forceinline__ unsigned warp_max(unsigned v) {
  unsigned r;
  asm("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
  return r;
}

// yk_byte_at of row r0 + r of a stage: r0 a step of an unrolled loop, r the lane's row. Where the
// swizzle repeats every SWIZZLE_ROWS rows (head dims 64 and multiples of 128, among others), the
// lane's part is the same every tile, and the compiler computes it once.
constexpr int SWIZZLE_ROWS = (HEAD_DIM / 16) % 8 == 0 ? 8 : 128 % HEAD_DIM == 0 ? 1024 / HEAD_DIM : 0;
__device__ __forceinline__ int stage_at(int r0, int r, int b) {
  if (SWIZZLE_ROWS == 0) return yk_byte_at<true>(r0 + r, b);
  constexpr int P = SWIZZLE_ROWS ? SWIZZLE_ROWS : 1;
  return r0 / P * P * HEAD_DIM + yk_byte_at<true>(r0 % P + r, b);
}

// Lane t4's bytes of key row r0 + r, 4 a k step (b0's pair, then b1's), as qk_col lays them out.
__device__ __forceinline__ void fp8_key_words(unsigned (&w)[KSTEPS], const unsigned char *stage, int r0, int r,
                                              int t4) {
  constexpr int FULL = KSTEPS / 4, REST = KSTEPS % 4;
#pragma unroll
  for (int q = 0; q < FULL; ++q) {
    const uint4 x = *reinterpret_cast<const uint4 *>(stage + stage_at(r0, r, 64 * q + 16 * t4));
    w[4 * q] = x.x, w[4 * q + 1] = x.y, w[4 * q + 2] = x.z, w[4 * q + 3] = x.w;
  }
#pragma unroll
  for (int i = 0; i < REST; ++i)
    w[4 * FULL + i] = *reinterpret_cast<const unsigned *>(stage + stage_at(r0, r, 64 * FULL + 4 * REST * t4 + 4 * i));
}

// The O_TILES bytes of value row r0 + r from byte `at` (a lane's columns), in the widest aligned pieces.
constexpr int V_WORDS = (O_TILES + 3) / 4;
__device__ __forceinline__ void fp8_value_words(unsigned (&w)[V_WORDS], const unsigned char *stage, int r0, int r,
                                                int at) {
  constexpr int PIECE = O_TILES % 16 == 0 ? 16 : O_TILES % 8 == 0 ? 8 : O_TILES % 4 == 0 ? 4 : 2;
#pragma unroll
  for (int p = 0; p < O_TILES / PIECE; ++p) {
    const unsigned char *src = stage + stage_at(r0, r, at + p * PIECE);
    if constexpr (PIECE == 16) {
      const uint4 x = *reinterpret_cast<const uint4 *>(src);
      w[4 * p] = x.x, w[4 * p + 1] = x.y, w[4 * p + 2] = x.z, w[4 * p + 3] = x.w;
    } else if constexpr (PIECE == 8) {
      const uint2 x = *reinterpret_cast<const uint2 *>(src);
      w[2 * p] = x.x, w[2 * p + 1] = x.y;
    } else if constexpr (PIECE == 4) {
      w[p] = *reinterpret_cast<const unsigned *>(src);
    } else {
      const unsigned half = *reinterpret_cast<const unsigned short *>(src);
      w[p / 2] = p % 2 ? w[p / 2] | half << 16 : half;
    }
  }
}

// A team's warps share its pipeline: a named barrier for two or more, the warp's own otherwise.
__device__ __forceinline__ void team_sync(int team) {
  if (TEAM_WARPS == 1) __syncwarp();
  else asm volatile("bar.sync %0, %1;" ::"r"(team + 1), "n"(TEAM_THREADS));
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_decode(const T *__restrict__ q, const KV *__restrict__ k, const KV *__restrict__ v, T *__restrict__ out,
                     float *__restrict__ lse, float *__restrict__ part_o, float *__restrict__ part_lse,
                     const int *__restrict__ cu_k, const int *__restrict__ cu_q, long long q_b, long long q_h,
                     long long k_b, long long k_s,
                     long long k_h, long long v_b, long long v_s, long long v_h, long long o_b, long long o_h,
                     long long l_b, long long l_h, int batch, int q_heads, int group, int row_blocks, int seq_q,
                     int seq_k, int chunk_keys, float scale_log2, yk_page_table pt, float out_scale, long long q_bb,
                     long long o_bb, long long l_bb) {
  if (SPLIT) yk_allow_next_grid(); // the merge of the partials may be scheduled now; it waits for us
  const int kv_head = blockIdx.x / row_blocks, row_block = blockIdx.x % row_blocks;
  const int b = blockIdx.y, split = blockIdx.z;
  yk_sequence sq;
  const int *pages;
  // QUERIES: ragged queries located by cu_q (their token axis shared by the batch), or dense ones
  // without (seq_q a sequence, from its q_bb, o_bb and l_bb; partial rows from b * seq_q)
  if (!yk_locate_keys<false, RAGGED, PAGED, PAGE_SIZE>(sq, pages, nullptr, cu_k, pt, b, seq_q, seq_k)) return;
  if (QUERIES && cu_q) {
    sq.q_start = cu_q[b], sq.len_q = cu_q[b + 1] - sq.q_start;
    if (sq.len_q < 0 || sq.len_q > seq_q) return;
  }
  if (QUERIES) { // one query a sequence is at b times the "b" strides (q_bb and the rest unused)
    q += b * q_bb, out += b * o_bb;
    if (lse) lse += b * l_bb;
  }
  const long long part_base = QUERIES && !cu_q ? (long long)b * seq_q : 0; // the sequence's first partial row
  const int k_start = sq.k_start, len_k = sq.len_k, len_q = sq.len_q;
  // The sequence's chunks: gridDim.z, or with chunk_keys (a ragged batch, balanced by the host)
  // as many chunks of at least chunk_keys keys as it needs, so that short sequences stay whole
  // while the longest spread over every split.
  const long long wanted = chunk_keys > 0 ? ((long long)len_k + chunk_keys - 1) / chunk_keys : (long long)gridDim.z;
  const int chunks = (int)max(1LL, min((long long)gridDim.z, wanted));
  const int chunk = ((len_k + chunks - 1) / chunks + BLOCK_N - 1) / BLOCK_N * BLOCK_N;
  const int first = split * chunk, last = min(len_k, first + chunk); // this block's keys
  // The tile's rows: the q heads of the kv head's group, or with QUERIES the sequence's (query
  // token, q head) pairs, token-major, so that each K and V byte serves every query of the group.
  // `batch` is then the partials' token count, and q, out and lse's "b" strides are a token's
  // (their "bb" strides a sequence's, 0 for ragged queries).
  const int row0 = row_block * TILE_ROWS, rows = min(TILE_ROWS, (QUERIES ? len_q : 1) * group - row0); // valid
  if (QUERIES && rows <= 0) return;
  auto row_token = [&](int r) { return QUERIES ? sq.q_start + (row0 + r) / group : b; };
  auto row_head = [&](int r) { return kv_head * group + (QUERIES ? (row0 + r) % group : row0 + r); };
  if (SPLIT && first >= last) { // an empty chunk: only its rows' lse, which tells the merge to skip them
    for (int r = threadIdx.x; r < rows; r += THREADS)
      part_lse[((long long)split * batch + part_base + row_token(r)) * q_heads + row_head(r)] = -INFINITY;
    return;
  }

  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const int team = warp / TEAM_WARPS, team_tid = tid % TEAM_THREADS, col0 = (warp % D_SPLIT) * COLS;
  const int wrow = (warp % TEAM_WARPS) / D_SPLIT * 16; // the warp's first row of the block's tile
  unsigned char *team_smem = smem_raw + team * TEAM_BYTES;
  T *sK = reinterpret_cast<T *>(team_smem), *sV = sK + STAGES * BLOCK_N * ROW;           // 16-bit stages
  unsigned char *rawK = team_smem, *rawV = team_smem + STAGES * BLOCK_N * HEAD_DIM; // float8 stages
  // Paged: the block's stretch of the page table into L2 first. The warps read it a tile ahead
  // (fetch_ids below), but a 128-byte line of it first touched there waits on DRAM behind the
  // stream of K and V, longer than a tile takes at batch 1.
  if (PAGED && last > first) {
    constexpr int PAGE = PAGE_SIZE ? PAGE_SIZE : 1;
    const int first_id = first / PAGE, last_id = (last - 1) / PAGE;
    for (int id = first_id + 32 * (int)threadIdx.x; id <= last_id; id += 32 * THREADS) // 32 ids a line
      asm volatile("prefetch.global.L2 [%0];" ::"l"(pages + id));
    if (threadIdx.x == 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(pages + last_id)); // the line the stride skips
  }
  const auto kr = yk_rows_of<PAGE_SIZE>(k, k_b, k_s, k_h, pt.k_block, b, k_start, kv_head, pages, pt.num_blocks);
  const auto vr = yk_rows_of<PAGE_SIZE>(v, v_b, v_s, v_h, pt.v_block, b, k_start, kv_head, pages, pt.num_blocks);
  // Paged with a split (a small batch, one block an SM): a line of each of the block's pages too,
  // which starts their address translations together. Pages lie anywhere in the cache, so the
  // stream met a translation miss at almost every page, one after another; batch 1 x 32768 page 16
  // ran 1.04x with this. Not for page 1 (a prefetch a key: 0.94x) nor without a split (0.97x at
  // batch 64), nor dense keys (a block's rows span a few 2 MiB pages: no change).
  if (PAGED && SPLIT && PAGE_SIZE >= 16 && last > first)
    for (int j = first + (int)threadIdx.x * PAGE_SIZE; j < last; j += THREADS * PAGE_SIZE) {
      const int id = kr.page(j);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(kr.in_page(id, j)));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(vr.in_page(id, j)));
    }

  // Q as A fragments, rows past the group zero: straight from global memory into registers, or
  // into shared memory (after every warp's pipeline) for ldmatrix each tile
  // (float8 with bfloat16 q: as float16 times 2^shift, every warp finding the same shift)
  unsigned qf[Q_IN_REGS ? KSTEPS : 1][4];
  T *sQ = reinterpret_cast<T *>(smem_raw + TEAMS * TEAM_BYTES);
  auto q_at = [&](int row, int col) { // the pair of Q at (row, mma column col), zero past the group
    return row < rows ? *reinterpret_cast<const unsigned *>(q + row_token(row) * q_b + row_head(row) * q_h + qk_col(col))
                      : 0u;
  };
  int shift = 0;
  if (Q_IN_REGS) {
    unsigned max_bits = 0;
#pragma unroll
    for (int ks = 0; ks < (Q_IN_REGS ? KSTEPS : 0); ++ks)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        qf[Q_IN_REGS ? ks : 0][e] = q_at(wrow + g + (e & 1) * 8, ks * 16 + 2 * t4 + (e >> 1) * 8);
        if (Q_TO_F16) max_bits = max(max_bits, abs_max_bits(qf[Q_IN_REGS ? ks : 0][e]));
      }
    if (Q_TO_F16) {
      shift = q_shift(warp_max(max_bits));
#pragma unroll
      for (int ks = 0; ks < (Q_IN_REGS ? KSTEPS : 0); ++ks)
#pragma unroll
        for (int e = 0; e < 4; ++e) qf[Q_IN_REGS ? ks : 0][e] = q_pair(qf[Q_IN_REGS ? ks : 0][e], pow2(shift));
    }
  } else {
    if (Q_TO_F16) { // the block's largest through a word of the pipelines' space, not yet in use
      unsigned *block_max_bits = reinterpret_cast<unsigned *>(smem_raw);
      if (tid == 0) *block_max_bits = 0;
      __syncthreads();
      unsigned max_bits = 0;
      for (int i = tid; i < TILE_ROWS * HEAD_DIM / 2; i += THREADS)
        max_bits = max(max_bits, abs_max_bits(q_at(i / (HEAD_DIM / 2), 2 * (i % (HEAD_DIM / 2)))));
      atomicMax(block_max_bits, warp_max(max_bits));
      __syncthreads();
      shift = q_shift(*block_max_bits);
    }
    for (int i = tid; i < TILE_ROWS * HEAD_DIM / 2; i += THREADS) {
      const int row = i / (HEAD_DIM / 2), col = 2 * (i % (HEAD_DIM / 2));
      *reinterpret_cast<unsigned *>(sQ + yk_tile_at<SWIZZLED>(row, col & ~7) + col % 8) =
          q_pair(q_at(row, col), pow2(shift));
    }
    __syncthreads();
  }
  const float score_log2 = Q_TO_F16 ? scale_log2 * pow2(-shift) : scale_log2; // undoes 2^shift
  const auto q_rows = yk_a_rows<SWIZZLED>(sQ + wrow * ROW, lane); // 16 rows keep the swizzle's phase

  // this team's tiles: team, team + TEAMS, ... of the block's range
  const int tiles = last > first ? (last - first + BLOCK_N - 1) / BLOCK_N : 0;
  const int mine = tiles > team ? (tiles - team + TEAMS - 1) / TEAMS : 0;
  auto key0_of = [&](int i) { return first + (team + i * TEAMS) * BLOCK_N; }; // the team's i-th tile

  // Paged keys: lane l of each warp holds the block of row l (+ 32 k in ids[k]) of the next tile
  // the team loads, read from the page table an iteration ahead, so that no cp.async waits on a
  // table read (at batch 1, with one block an SM, that wait cost a fifth of the time).
  constexpr int ID_REGS = PAGED ? (BLOCK_N + 31) / 32 : 1;
  int ids[ID_REGS];
  auto fetch_ids = [&](int i) {
    const int key0 = key0_of(i);
#pragma unroll
    for (int k = 0; k < ID_REGS; ++k) {
      const int r = 32 * k + lane;
      ids[k] = PAGED && i < mine && r < BLOCK_N && key0 + r < last ? kr.page(key0 + r) : 0;
    }
  };
  auto row_id = [&](int r) { // every lane of the warp calls it together
    int id = 0;
#pragma unroll
    for (int k = 0; k < ID_REGS; ++k) {
      const int v = __shfl_sync(0xffffffffu, ids[k], r % 32);
      if (r / 32 == k) id = v;
    }
    return id;
  };
  auto load = [&](int i) { // the team's i-th tile into stage i % STAGES (paged: with ids of tile i)
    const int key0 = key0_of(i), stage = i % STAGES;
    // (the casts are no-ops: each kernel compiles one of the two paths' types, KV being T or bytes)
    auto k_row = [&](int r) { return PAGED ? kr.in_page(row_id(r), key0 + r) : kr.at(key0 + r); };
    auto v_row = [&](int r) { return PAGED ? vr.in_page(row_id(r), key0 + r) : vr.at(key0 + r); };
    if (KV_FLOAT8) {
      yk_load_bytes<BLOCK_N, TEAM_THREADS, KV_HINT, true>(rawK + stage * BLOCK_N * HEAD_DIM, last - key0, team_tid,
                                                          [&](int r) { return (const unsigned char *)k_row(r); });
      yk_load_bytes<BLOCK_N, TEAM_THREADS, KV_HINT, true>(rawV + stage * BLOCK_N * HEAD_DIM, last - key0, team_tid,
                                                          [&](int r) { return (const unsigned char *)v_row(r); });
    } else {
      yk_load_tile<BLOCK_N, TEAM_THREADS, KV_HINT, SWIZZLED>(sK + stage * BLOCK_N * ROW, last - key0, team_tid,
                                                             [&](int r) { return (const T *)k_row(r); });
      yk_load_tile<BLOCK_N, TEAM_THREADS, KV_HINT, SWIZZLED>(sV + stage * BLOCK_N * ROW, last - key0, team_tid,
                                                             [&](int r) { return (const T *)v_row(r); });
    }
  };
  // the pipeline's first STAGES - 1 tiles, as a loop: each copy of load written out is the whole
  // tile's address arithmetic (0.84x the cold compile of float8 paged decode without them)
#pragma unroll 1
  for (int s = 0; s < STAGES - 1; ++s) {
    fetch_ids(s);
    if (s < mine) load(s);
    yk_cp_async_commit();
  }
  fetch_ids(STAGES - 1);

  float o[O_TILES][4];
  yk_zero(o);
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};

  for (int i = 0; i < mine; ++i) {
    if (i + STAGES - 1 < mine) load(i + STAGES - 1);
    if (PAGED) fetch_ids(i + STAGES); // used by the next iteration's load
    yk_cp_async_commit();
    yk_cp_async_wait<STAGES - 1>();
    team_sync(team);
    const T *k_tile = sK + (i % STAGES) * BLOCK_N * ROW, *v_tile = sV + (i % STAGES) * BLOCK_N * ROW;
    const unsigned char *k_stage = rawK + (i % STAGES) * BLOCK_N * HEAD_DIM, *v_stage = rawV + (i % STAGES) * BLOCK_N * HEAD_DIM;
    const int key0 = first + (team + i * TEAMS) * BLOCK_N;

    float s[S_TILES][4];
    yk_zero(s);
    if constexpr (KV_FLOAT8) { // lane g's key row of each 8-key tile j, converted a k step at a time
#pragma unroll
      for (int j = 0; j < S_TILES; ++j) {
        unsigned w[KSTEPS];
        fp8_key_words(w, k_stage, 8 * j, g, t4);
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
          unsigned kb[2], qa[4];
          yk_e4m3x4_to_pairs<YK_F16>(w[ks], kb);
          if (Q_IN_REGS) yk_mma<YK_F16>(s[j], qf[Q_IN_REGS ? ks : 0], kb[0], kb[1]);
          else yk_ldmatrix_x4(qa, yk_at(q_rows, 0, ks * 16)), yk_mma<YK_F16>(s[j], qa, kb[0], kb[1]);
        }
      }
    } else if (Q_IN_REGS) {
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) yk_mma_k_step<BLOCK_N>(s, qf[Q_IN_REGS ? ks : 0], yk_b_rows<SWIZZLED>(k_tile, lane) + ks * 16);
    } else {
      yk_mma_rows<BLOCK_N>(s, q_rows, yk_b_rows<SWIZZLED>(k_tile, lane));
    }
    if (key0 + BLOCK_N > last) yk_mask_scores(s, key0, last, false, 0, 0, t4);
    const int r0 = row0 + wrow; // the warp's first row in the sequence's
    if (QUERIES == 2 && key0 + BLOCK_N > len_k - len_q + r0 / group + 1) { // causal: token t sees keys
      const int lim[2] = {len_k - len_q + (r0 + g) / group + 1, len_k - len_q + (r0 + g + 8) / group + 1};
#pragma unroll
      for (int nt = 0; nt < S_TILES; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (key0 + nt * 8 + 2 * t4 + (e & 1) >= lim[e >> 1]) s[nt][e] = -INFINITY;
    }
    yk_softmax_step(s, o, m_row, l_row, score_log2);
    if constexpr (KV_FLOAT8) { // value rows 2 t4 (+ 1, + 8, + 9) of each 16-key step
#pragma unroll
      for (int kt = 0; kt < BLOCK_N / 16; ++kt) {
        unsigned pa[4], w[4][V_WORDS];
        yk_p_fragment<S_TILES, YK_F16>(pa, s, kt);
#pragma unroll
        for (int x = 0; x < 4; ++x)
          fp8_value_words(w[x], v_stage, 16 * kt + 8 * (x >> 1), 2 * t4 + (x & 1), col0 + g * O_TILES);
#pragma unroll
        for (int nt = 0; nt < O_TILES; nt += 2) { // tiles nt and nt + 1
          const unsigned pick = nt % 4 ? 0x7362u : 0x5140u; // bytes nt % 4 and + 1 of two rows, interleaved
          unsigned b0[2], b1[2];
          yk_e4m3x4_to_pairs<YK_F16>(yk_prmt(w[0][nt / 4], w[1][nt / 4], pick), b0);
          yk_e4m3x4_to_pairs<YK_F16>(yk_prmt(w[2][nt / 4], w[3][nt / 4], pick), b1);
          yk_mma<YK_F16>(o[nt], pa, b0[0], b1[0]);
          yk_mma<YK_F16>(o[nt + 1], pa, b0[1], b1[1]);
        }
      }
    } else {
      yk_mma_p_rows<BLOCK_N, COLS>(o, s, yk_bt_rows<SWIZZLED>(v_tile, lane) + col0); // this warp's columns of P V
    }
    team_sync(team); // the team is done with this stage before it is loaded again
  }
  yk_cp_async_wait<0>();

  // merge the teams' states through shared memory (the pipelines' space, now free)
  __syncthreads();
  if constexpr (KV_FLOAT8) { // O in units of the values' scale
    const float both_rows[2] = {out_scale, out_scale};
    yk_rescale(o, both_rows);
  }
  float *sO = reinterpret_cast<float *>(smem_raw);                           // [TEAMS][TILE_ROWS] rows, so_at
  float *sM = sO + TEAMS * TILE_ROWS * SO_ROW, *sL = sM + TEAMS * TILE_ROWS; // [TEAMS][TILE_ROWS] each
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = team * TILE_ROWS + wrow + g + 8 * r; // of sO, sM and sL
    const float l = yk_quad_sum(l_row[r]);
#pragma unroll
    for (int m = 0; m < O_TILES / 2; ++m) {
      if constexpr (KV_FLOAT8) { // columns 4m .. 4m + 3 of the lane's 2 O_TILES
        float v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) v[k] = o[(4 * m + k) % O_TILES][2 * r + (4 * m + k) / O_TILES];
        *reinterpret_cast<float4 *>(sO + so_at(row, col0 + 2 * t4 * O_TILES + 4 * m)) =
            make_float4(v[0], v[1], v[2], v[3]);
      } else { // tiles 2m and 2m + 1
#pragma unroll
        for (int nt = 2 * m; nt < 2 * m + 2; ++nt)
          *reinterpret_cast<float2 *>(sO + so_at(row, col0 + nt * 8 + 2 * t4)) =
              make_float2(o[nt][2 * r], o[nt][2 * r + 1]);
      }
    }
    if (t4 == 0 && col0 == 0) sM[row] = m_row[r], sL[row] = l;
  }
  __syncthreads();
  for (int idx = tid; idx < rows * HEAD_DIM; idx += THREADS) {
    const int row = idx / HEAD_DIM, col = idx % HEAD_DIM, head = row_head(row), token = row_token(row);
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < TEAMS; ++w) m = fmaxf(m, sM[w * TILE_ROWS + row]);
    float l = 0.f, acc = 0.f;
    if (m != -INFINITY) {
#pragma unroll
      for (int w = 0; w < TEAMS; ++w) {
        const float scale = exp2f(sM[w * TILE_ROWS + row] - m);
        l += scale * sL[w * TILE_ROWS + row];
        acc += scale * sO[so_at(w * TILE_ROWS + row, col)];
      }
    }
    const float value = l > 0.f ? acc / l : 0.f;
    const float row_lse = l > 0.f ? (m + __log2f(l)) * YK_LN2 : -INFINITY;
    if (SPLIT) {
      const long long slot = ((long long)split * batch + part_base + token) * q_heads + head;
      part_o[slot * HEAD_DIM + col] = value;
      if (col == 0) part_lse[slot] = row_lse;
    } else {
      out[token * o_b + head * o_h + col] = yk_from_float<T>(value);
      if (lse && col == 0) lse[token * l_b + head * l_h] = row_lse;
    }
  }
}
