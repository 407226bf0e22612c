// FlashAttention backward for Hopper (sm_90a) on warpgroup MMAs: the two kernels of
// attention_backward.cu (same maths, masks, workspace and outputs; no atomics, the same bits on every
// run), each product issued as wgmma by a whole warpgroup; or, not deterministic (ATOMIC_DQ below),
// the dk/dv kernel alone adding dq up in float32, between a stats kernel and a conversion.
//   PART_DQ:   launched first. A block owns BLOCK_M = 64 x WARPGROUPS query rows of a q head, 64 to
//              each consumer warpgroup, and walks the kv head's TILE-key tiles: S = Q K^T and
//              dP = dO V^T, then dq += dS K. It leaves each row's {lse in base 2, delta} in ws.
//   PART_DKDV: a block owns BLOCK_N = 64 x WARPGROUPS keys of a kv head and walks the TILE-row query
//              tiles of every q head of its group: S^T = K Q^T and dP^T = V dO^T, then dv += P^T dO
//              and dk += dS^T Q, reading the rows' stats from ws.
//   - The first two products come from shared memory, all operands K-major (rows of head_dim) in
//     the 128-byte swizzled layout (hopper.cuh); dS (and P^T) go back as register A fragments (the
//     accumulator layout is mma.sync's), and the last products read the walked tile's K (dq), or dO
//     and Q (dk/dv), MN-major from the same row-major tiles.
//   - A producer warpgroup copies the walked tiles (K and V; or Q, dO and the rows' stats) STAGES
//     deep: with TMA, one warp issues a bulk tensor copy for each whole tile (map_a, map_b) and
//     cp.async for the tile a sequence ends inside and for the stats; without, all its threads use
//     cp.async. A stage's "full" mbarrier completes when its copies have landed, its "empty" one
//     when every consumer warp is done with it, so consumer warpgroups never wait for each other.
//   - ATOMIC_DQ (part dkdv, the non-deterministic option): the dk/dv kernel also computes each
//     walked tile's dq = dS K and adds it into a float32 dq (dq_acc) by reductions, so no dq kernel
//     recomputes S and dP (5 products instead of 7). Each warpgroup puts its dS^T into shared memory
//     as dS (stmatrix.trans, two buffers by tile parity), the consumers meet at a named barrier, and
//     each issues its 64 x 64 pieces of the tile's dq against the owned K, staged in shared memory in
//     the order of the accumulator's registers and added into dq_acc by one bulk reduction a piece
//     (dq_acc holds 64 x 64 pieces in that order: see dq_piece). The caller zeroes dq_acc;
//     PART_STATS runs before: the rows' {lse2, delta} into ws; PART_DQ_OUT after: dq = scale * dq_acc.
//     DQ_SUM orders it: 0 (block) as above, dS^T stored once the dk/dv products retired; 1 (behind)
//     dS^T stored first, the dk/dv products running on while the consumers meet and dq is issued
//     behind them (P^T and dS^T stay live meanwhile); 2 (warpgroup) each warpgroup issues every
//     piece over its own 64 keys (dS's columns, K's rows) and adds that part into dq_acc itself:
//     no meeting between the warpgroups, twice the reductions, nothing where no row sees its keys.
//   - With two consumer warpgroups setmaxnreg moves registers from the producer (PRODUCER_REGS, or
//     TMA_PRODUCER_REGS under TMA) to the consumers (CONSUMER_REGS, TMA_CONSUMER_REGS); with one, a
//     256-thread block has 255 registers a thread.
//
// Spec constants: T, HEAD_DIM (64 or 128), PART, WARPGROUPS, TILE, STAGES, CAUSAL, RAGGED, TMA,
// ATOMIC_DQ, DQ_SUM, PRODUCER_REGS, CONSUMER_REGS, TMA_PRODUCER_REGS, TMA_CONSUMER_REGS.

constexpr int OWNED = 64 * WARPGROUPS, CONSUMERS = 128 * WARPGROUPS, THREADS = CONSUMERS + 128;
constexpr int BLOCK_M = PART == PART_DQ ? OWNED : TILE, BLOCK_N = PART == PART_DQ ? TILE : OWNED;
constexpr int KSTEPS = HEAD_DIM / 16, TSTEPS = TILE / 16;
static_assert(HEAD_DIM % 64 == 0 && TILE % 64 == 0, "whole 128-byte swizzle atoms");

// Rows of one head of a row-major tensor (q, dout, k or v), from a sequence's or tile's first row.
struct strided_rows {
  const T *base;
  long long stride;
  __device__ __forceinline__ const T *at(int r) const { return base + (long long)r * stride; }
};

// Named barrier 1 + w: warpgroup w's owned rows (Q and dO, or K and V) are in shared memory;
// BAR_DS: every consumer warpgroup's dS of the tile is (ATOMIC_DQ); BAR_STAGE + w: warpgroup w's dq
// staging is free, then written; BAR_OWN_DS + w: warpgroup w's dS is (DQ_SUM 2).
constexpr int BAR_OWNED = 1, BAR_DS = 3, BAR_STAGE = 4, BAR_OWN_DS = 6;
constexpr bool FUSED_DQ = PART == PART_DKDV && ATOMIC_DQ;
constexpr bool DS_FIRST = FUSED_DQ && DQ_SUM != 0; // dS^T stored before the dk/dv products take it
constexpr bool DQ_BEHIND = FUSED_DQ && DQ_SUM == 1;
constexpr int DQ_PIECES = TILE * HEAD_DIM / 4096;                 // 64 x 64 pieces of a tile's dq
constexpr int ROW_THREADS = 4, STAT_ROWS = THREADS / ROW_THREADS; // PART_STATS, PART_DQ_OUT: rows a block

// Stores four 8 x 8 A-fragment matrices of 16-bit values transposed: lane l gives the address of
// row l % 8 of matrix l / 8, which receives that matrix's column l % 8.
__device__ __forceinline__ void yk_stmatrix_x4_trans(void *row, const unsigned (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(yk_smem_address(row)),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// dq_acc: for each q head, 64-row blocks of a padded row space, each block HEAD_DIM / 64 pieces of
// 64 x 64 floats. A sequence's rows start at a whole block, (its first ws row + 64 batch) rounded
// down (FlashAttention-3's padding), so a piece never holds two sequences' rows: blocks_a_head
// covers total_q + 64 batch rows. Within a piece, element (r, c) is register e = 2 ((r % 16) / 8) +
// c % 2 of column tile c / 8 of thread 32 (r / 16) + 4 (r % 8) + (c % 8) / 2: the wgmma
// accumulator's layout, so a thread stores its registers as 16-byte vectors, a warp 512 contiguous
// bytes, and the conversion reads them back.
__device__ __forceinline__ int dq_blocks_a_head(int ws_tokens) { return (ws_tokens + 64 * (int)gridDim.z + 63) / 64; }
__device__ __forceinline__ int dq_first_row(long long ws_first, int batch) {
  return (int)((ws_first + 64 * batch) / 64 * 64);
}
__device__ __forceinline__ long long dq_piece(int head, int padded_row, int col, int ws_tokens) {
  return (((long long)head * dq_blocks_a_head(ws_tokens) + padded_row / 64) * (HEAD_DIM / 64) + col / 64) * 4096;
}
__device__ __forceinline__ int dq_in_piece(int r, int c) {
  return (c % 64 / 8) * 512 + (32 * (r % 64 / 16) + 4 * (r % 8) + c % 8 / 2) * 4 + 2 * (r % 16 / 8) + c % 2;
}
// Adds `bytes` of shared memory into global memory, float32 by float32, by the bulk copy engine.
__device__ __forceinline__ void yk_bulk_reduce_add(float *dst, const float *src, unsigned bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(dst),
               "r"(yk_smem_address(src)), "r"(bytes)
               : "memory");
}

// S (or S^T) and dP (or dP^T) of a warpgroup's 64 owned rows against a TILE-row walked tile: both
// products K-major from shared memory. a_*: the owned rows (whole atoms of an OWNED-row tile);
// b_*: the walked tile.
__device__ __forceinline__ void issue_scores(float (&s)[TILE / 8][4], float (&dp)[TILE / 8][4], unsigned long long a_s,
                                             unsigned long long b_s, unsigned long long a_dp, unsigned long long b_dp) {
  yk_wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < KSTEPS; ++ks) { // a k step: 16 columns, 32 bytes a row
    const int a_step = (ks / 4) * OWNED * 64 + (ks % 4) * 16, b_step = (ks / 4) * TILE * 64 + (ks % 4) * 16;
    yk_wgmma<TILE>::ss(s, a_s + yk_moved(a_step), b_s + yk_moved(b_step), ks > 0);
    yk_wgmma<TILE>::ss(dp, a_dp + yk_moved(a_step), b_dp + yk_moved(b_step), ks > 0);
  }
  yk_wgmma_commit();
  yk_wgmma_wait<0>();
  yk_wgmma_hold(s);
  yk_wgmma_hold(dp);
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_backward_sm90(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                            const T *__restrict__ out, const T *__restrict__ dout, const float *__restrict__ lse,
                            T *__restrict__ dq, T *__restrict__ dk, T *__restrict__ dv, const int *__restrict__ cu_q,
                            const int *__restrict__ cu_k, long long q_b, long long q_s, long long q_h, long long k_b,
                            long long k_s, long long k_h, long long v_b, long long v_s, long long v_h, long long o_b,
                            long long o_s, long long o_h, long long do_b, long long do_s, long long do_h, long long l_b,
                            long long l_s, long long l_h, long long dq_b, long long dq_s, long long dq_h,
                            long long dk_b, long long dk_s, long long dk_h, long long dv_b, long long dv_s,
                            long long dv_h, int seq_q, int seq_k, int group, float scale, float2 *__restrict__ ws,
                            int ws_tokens, const __grid_constant__ yk_tensor_map map_a,
                            const __grid_constant__ yk_tensor_map map_b, float *__restrict__ dq_acc) {
  const int head = blockIdx.y, batch = blockIdx.z; // a q head (PART_DQ, _STATS, _DQ_OUT) or a kv head (PART_DKDV)
  yk_sequence sq;
  if (!yk_locate<RAGGED, RAGGED>(sq, cu_q, cu_k, batch, seq_q, seq_k)) return;
  const int q_start = sq.q_start, k_start = sq.k_start, len_q = sq.len_q, len_k = sq.len_k, shift = len_k - len_q;
  const float scale_log2 = scale * YK_LOG2E;
  const long long ws_first = (RAGGED ? 0 : (long long)batch * seq_q) + q_start; // as attention_backward.cu

  if constexpr (PART == PART_STATS || PART == PART_DQ_OUT) {
    // ROW_THREADS threads a query row, a quarter of head_dim each
    const int row = blockIdx.x * STAT_ROWS + (int)threadIdx.x / ROW_THREADS;
    const int c0 = (int)threadIdx.x % ROW_THREADS * (HEAD_DIM / ROW_THREADS);
    const bool live = row < len_q; // a quad's lanes share a row: the quad's shuffles stay whole
    const long long ws_row = head * (long long)ws_tokens + ws_first + row;
    if constexpr (PART == PART_STATS) {
      float d = 0.f;
      if (live) {
        const T *orow = out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h + c0;
        const T *drow = dout + batch * do_b + (long long)(q_start + row) * do_s + head * do_h + c0;
#pragma unroll
        for (int c = 0; c < HEAD_DIM / ROW_THREADS; c += 8) {
          float o8[8], d8[8];
          yk_load<T, 8>(orow + c, o8);
          yk_load<T, 8>(drow + c, d8);
#pragma unroll
          for (int i = 0; i < 8; ++i) d += o8[i] * d8[i];
        }
      }
      d = yk_quad_sum(d);
      if (live && c0 == 0)
        ws[ws_row] = float2{yk_lse_log2(lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h]), d};
    } else if (live) {
      T *drow = dq + batch * dq_b + (long long)(q_start + row) * dq_s + head * dq_h + c0;
      const int padded = dq_first_row(ws_first, batch) + row;
#pragma unroll
      for (int c = 0; c < HEAD_DIM / ROW_THREADS; c += 8) {
        // 8 columns of one column tile: their pairs lie 4 floats apart
        const float *acc = dq_acc + dq_piece(head, padded, c0 + c, ws_tokens) + dq_in_piece(padded, c0 + c);
        float x[8];
#pragma unroll
        for (int p = 0; p < 4; ++p) {
          const float2 v = *reinterpret_cast<const float2 *>(acc + 4 * p);
          x[2 * p] = v.x * scale, x[2 * p + 1] = v.y * scale;
        }
        yk_store<T, 8>(drow + c, x);
      }
    }
    return;
  }

  // The block's owned rows and the walked tiles: dq, query rows [row0, row0 + BLOCK_M) and key tiles
  // [0, tiles) up to n_end; dk/dv, keys [col0, col0 + BLOCK_N) and the query tiles that can see one
  // of them, for every q head of the group, in order (head, tile).
  int row0 = 0, col0 = 0, tiles, n_end = 0, unmasked = 0, m_first = 0, per_head = 1;
  if constexpr (PART == PART_DQ) {
    const int m_block = yk_query_block<BLOCK_M, CAUSAL>(len_q);
    if (m_block < 0) return;
    row0 = m_block * BLOCK_M;
    const yk_key_tiles keys = yk_keys_of_rows<BLOCK_M, BLOCK_N, CAUSAL>(row0, len_k, shift);
    tiles = keys.n_tiles, n_end = keys.n_end, unmasked = keys.unmasked;
  } else {
    col0 = blockIdx.x * BLOCK_N;
    if (col0 >= len_k) return;
    const int m_tiles = (len_q + BLOCK_M - 1) / BLOCK_M;
    m_first = CAUSAL ? min(m_tiles, max(0, col0 - shift) / BLOCK_M) : 0;
    per_head = m_tiles - m_first, tiles = per_head * group;
  }
  auto tile_rows = [&](int t, int &qh, int &first_row) { // dk/dv: tile t's q head and first row
    qh = head * group + t / per_head, first_row = (m_first + t % per_head) * BLOCK_M;
  };
  const int kv_head = PART == PART_DQ ? head / group : head;
  const strided_rows kr = {k + batch * k_b + (long long)k_start * k_s + kv_head * k_h, k_s};
  const strided_rows vr = {v + batch * v_b + (long long)k_start * v_s + kv_head * v_h, v_s};

  // swizzle atoms need 1 KB alignment; the host asks for 1 KB more than the tiles take
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024 - (yk_smem_address(smem_raw) & 1023)) & 1023);
  T *sA0 = reinterpret_cast<T *>(smem), *sA1 = sA0 + OWNED * HEAD_DIM;    // owned: Q, dO (dq) or K, V (dk/dv)
  T *sB0 = sA1 + OWNED * HEAD_DIM, *sB1 = sB0 + STAGES * TILE * HEAD_DIM; // walked: K, V or Q, dO
  T *sDS = sB1 + STAGES * TILE * HEAD_DIM; // FUSED_DQ: dS, two tiles; then each warpgroup's 64 x 64 dq staging
  float *sDQ = reinterpret_cast<float *>(sDS + (FUSED_DQ ? 2 * TILE * OWNED : 0));
  float2 *sStats = reinterpret_cast<float2 *>(sDQ + (FUSED_DQ ? WARPGROUPS * 64 * 64 : 0)); // dk/dv: {lse2, delta}
  unsigned long long *full = reinterpret_cast<unsigned long long *>(sStats + (PART == PART_DKDV ? STAGES * TILE : 0));
  unsigned long long *empty = full + STAGES;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  // Stage s: full[s] completes a phase when a tile's copies have landed (the producer's 128
  // cp.async arrivals; under TMA one arrival, the bulk copies' bytes and the lanes' cp.async),
  // empty[s] when all 4 x WARPGROUPS consumer warps are done with it. Tile t uses stage t % STAGES
  // for the (t / STAGES)-th time.
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) yk_mbar_init(full + s, TMA ? 1 : 128), yk_mbar_init(empty + s, 4 * WARPGROUPS);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads(); // the only block-wide barrier: the mbarriers exist before anyone uses them

  if (wg == WARPGROUPS) { // ---- the producer ----
    if constexpr (WARPGROUPS > 1) yk_registers_down<TMA ? TMA_PRODUCER_REGS : PRODUCER_REGS>();
    // the stage tile t loads into, once the consumers have released its previous use
    auto claim_stage = [&](int t) {
      const int stage = t % STAGES;
      const unsigned use = (unsigned)(t / STAGES);
      if (use > 0) yk_mbar_wait(empty + stage, (use - 1) & 1);
      return stage;
    };
    if constexpr (TMA) {
      // One warp. Whole tiles: lane 0 arms the full barrier with their bytes and issues the bulk
      // tensor copies (map_a: K or Q, map_b: V or dO). The tile a sequence ends inside, and the
      // rows' stats: the lanes' cp.async, each lane's copies an arrival on top of lane 0's, counted
      // (__syncwarp) before lane 0 arrives.
      if (warp != 0) return;
#pragma unroll 1
      for (int t = 0; t < tiles; ++t) {
        const int stage = claim_stage(t);
        T *b0 = sB0 + stage * TILE * HEAD_DIM, *b1 = sB1 + stage * TILE * HEAD_DIM;
        int row, map_head, valid; // the tile's first row on the maps' row axis, its head, its rows
        bool copied = false;      // any cp.async this tile
        if constexpr (PART == PART_DQ) {
          row = k_start + t * TILE, map_head = kv_head, valid = n_end - t * TILE;
          if (valid < TILE) {
            yk_copy_tile_by_warp<TILE>(b0, t * TILE, valid, lane, kr);
            yk_copy_tile_by_warp<TILE>(b1, t * TILE, valid, lane, vr);
            copied = true;
          }
        } else {
          int qh, first_row;
          tile_rows(t, qh, first_row);
          row = q_start + first_row, map_head = qh, valid = len_q - first_row;
          if (valid < TILE) {
            const strided_rows qr = {q + batch * q_b + (long long)(q_start + first_row) * q_s + qh * q_h, q_s};
            const strided_rows dor = {dout + batch * do_b + (long long)(q_start + first_row) * do_s + qh * do_h, do_s};
            yk_copy_tile_by_warp<TILE>(b0, 0, valid, lane, qr);
            yk_copy_tile_by_warp<TILE>(b1, 0, valid, lane, dor);
          }
          const float2 *stats = ws + qh * (long long)ws_tokens + ws_first + first_row;
#pragma unroll
          for (int r = lane; r < TILE; r += 32) // the rows' {lse2, delta}, zeros past the sequence
            yk_cp_async8(sStats + stage * TILE + r, stats + (r < valid ? r : 0), r < valid ? 8 : 0);
          copied = true;
        }
        if (copied) yk_mbar_arrive_on_copies_extra(full + stage);
        __syncwarp();
        if (lane == 0) {
          if (valid >= TILE) {
            yk_mbar_arrive_expecting(full + stage, 2 * TILE * HEAD_DIM * (unsigned)sizeof(T));
            yk_tma_tile<TILE>(b0, map_a, full + stage, row, map_head, RAGGED ? 0 : batch);
            yk_tma_tile<TILE>(b1, map_b, full + stage, row, map_head, RAGGED ? 0 : batch);
          } else {
            yk_mbar_arrive(full + stage);
          }
        }
      }
      asm volatile("cp.async.wait_all;" ::: "memory");
      return;
    }
    const int p = tid - CONSUMERS;
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      const int stage = claim_stage(t);
      T *b0 = sB0 + stage * TILE * HEAD_DIM, *b1 = sB1 + stage * TILE * HEAD_DIM;
      if constexpr (PART == PART_DQ) {
        yk_produce_tile<TILE>(b0, t * TILE, n_end - t * TILE, p, kr);
        yk_produce_tile<TILE>(b1, t * TILE, n_end - t * TILE, p, vr);
      } else {
        int qh, first_row;
        tile_rows(t, qh, first_row);
        const int rows = len_q - first_row;
        const strided_rows qr = {q + batch * q_b + (long long)(q_start + first_row) * q_s + qh * q_h, q_s};
        const strided_rows dor = {dout + batch * do_b + (long long)(q_start + first_row) * do_s + qh * do_h, do_s};
        yk_produce_tile<TILE>(b0, 0, rows, p, qr);
        yk_produce_tile<TILE>(b1, 0, rows, p, dor);
        if (p < TILE) { // the rows' {lse2, delta}, zeros past the sequence
          const float2 *stats = ws + qh * (long long)ws_tokens + ws_first + first_row;
          yk_cp_async8(sStats + stage * TILE + p, stats + (p < rows ? p : 0), p < rows ? 8 : 0);
        }
      }
      yk_mbar_arrive_on_copies(full + stage);
    }
    asm volatile("cp.async.wait_all;" ::: "memory"); // no copy outlives its thread
    return;
  }

  // ---- the consumers: warpgroup wg, owned rows [64 wg, 64 wg + 64) of the block ----
  if constexpr (WARPGROUPS > 1) yk_registers_up<TMA ? TMA_CONSUMER_REGS : CONSUMER_REGS>();
  const int wt = tid % 128;
  auto wait_full = [&](int t, int valid) { // valid: the tile's rows in its sequence
    yk_mbar_wait(full + t % STAGES, (unsigned)(t / STAGES) & 1);
    // a tile that came through the generic proxy (cp.async) is handed to the MMA unit
    if (!TMA || valid < TILE) yk_fence_async_smem();
  };
  auto release = [&](int t) { // this warp is done with tile t's stage
    if (lane == 0) yk_mbar_arrive(empty + t % STAGES);
  };
  auto owned_ready = [&]() {
    yk_cp_async_commit(); // wait_group waits for committed groups only
    yk_cp_async_wait<0>();
    yk_fence_async_smem();
    yk_warpgroup_sync<BAR_OWNED>(wg);
  };
  // this warpgroup's 64 owned rows as A (whole atoms of the OWNED-row tiles)
  const unsigned long long a0_desc = yk_descriptor(sA0 + wg * 64 * 64, 16),
                           a1_desc = yk_descriptor(sA1 + wg * 64 * 64, 16);

  if constexpr (PART == PART_DQ) {
    const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + head * q_h;
    const T *dop = dout + batch * do_b + (long long)(q_start + row0) * do_s + head * do_h;
    yk_load_rows<OWNED, 64, 128>(sA0, wg * 64, len_q - row0, wt, [&](int r) { return qp + (long long)r * q_s; });
    yk_load_rows<OWNED, 64, 128>(sA1, wg * 64, len_q - row0, wt, [&](int r) { return dop + (long long)r * do_s; });
    // While Q and dO land: the thread's rows' lse (base 2) and delta = rowsum(dO * out), a quarter of
    // head_dim a lane of the quad, into the workspace; rows past the sequence get lse +inf (P = 0).
    const int my_row = row0 + wg * 64 + warp * 16 + g; // rows my_row and my_row + 8
    float lse2[2], delta[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = my_row + 8 * r;
      float d = 0.f;
      if (row < len_q) {
        const int c0 = t4 * (HEAD_DIM / 4);
        const T *orow = out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h + c0;
        const T *drow = dout + batch * do_b + (long long)(q_start + row) * do_s + head * do_h + c0;
#pragma unroll
        for (int c = 0; c < HEAD_DIM / 4; c += 8) {
          float o8[8], d8[8];
          yk_load<T, 8>(orow + c, o8);
          yk_load<T, 8>(drow + c, d8);
#pragma unroll
          for (int i = 0; i < 8; ++i) d += o8[i] * d8[i];
        }
      }
      delta[r] = yk_quad_sum(d);
      lse2[r] = row < len_q ? yk_lse_log2(lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h]) : INFINITY;
      if (row < len_q && t4 == 0) ws[head * (long long)ws_tokens + ws_first + row] = float2{lse2[r], delta[r]};
    }
    owned_ready();

    float acc[HEAD_DIM / 8][4];
    yk_zero(acc);
    const int wg_last_row = row0 + wg * 64 + 63;
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      wait_full(t, n_end - t * TILE);
      // causally, a warpgroup whose last row sees no key of the tile has nothing to add
      if (!CAUSAL || wg_last_row + shift >= t * TILE) {
        const T *k_tile = sB0 + (t % STAGES) * TILE * HEAD_DIM, *v_tile = sB1 + (t % STAGES) * TILE * HEAD_DIM;
        float s[TILE / 8][4], dp[TILE / 8][4];
        issue_scores(s, dp, a0_desc, yk_descriptor(k_tile, 16), a1_desc, yk_descriptor(v_tile, 16));
        unsigned dsf[TSTEPS][4];
        if (t >= unmasked)
          yk_ds_of_rows<true, TILE>(dsf, s, dp, 0, lse2, delta, scale_log2, t * TILE, len_k, my_row, shift, t4);
        else
          yk_ds_of_rows<false, TILE>(dsf, s, dp, 0, lse2, delta, scale_log2, t * TILE, len_k, my_row, shift, t4);
        // dq += dS K: 16 keys a k step, two 8-row atoms of K read MN-major
        const unsigned long long k_mn = yk_descriptor(k_tile, TILE * 128);
        yk_wgmma_fence();
        yk_wgmma_hold(acc);
#pragma unroll
        for (int kt = 0; kt < TSTEPS; ++kt) yk_wgmma<HEAD_DIM>::rs(acc, dsf[kt], k_mn + yk_moved(kt * 16 * 64), 1);
        yk_wgmma_commit();
        yk_wgmma_wait<0>();
        yk_wgmma_hold(acc);
        yk_wgmma_hold(dsf);
      }
      release(t);
    }
    yk_store_rows<HEAD_DIM>(dq + batch * dq_b + (long long)(q_start + row0) * dq_s + head * dq_h, dq_s, len_q - row0,
                            wg * 64 + warp * 16, 0, acc, scale, lane);
  } else {
    yk_load_rows<OWNED, 64, 128>(sA0, wg * 64, len_k - col0, wt, [&](int r) { return kr.at(col0 + r); });
    yk_load_rows<OWNED, 64, 128>(sA1, wg * 64, len_k - col0, wt, [&](int r) { return vr.at(col0 + r); });
    owned_ready();

    const int wg_key0 = col0 + wg * 64, my_key = wg_key0 + warp * 16 + g; // keys my_key and my_key + 8
    const int last_key = wg_key0 + warp * 16 + 15;
    float dk_acc[HEAD_DIM / 8][4], dv_acc[HEAD_DIM / 8][4];
    yk_zero(dk_acc), yk_zero(dv_acc);
#pragma unroll 1
    for (int t = 0; t < tiles; ++t) {
      int qh, first_row;
      tile_rows(t, qh, first_row);
      wait_full(t, len_q - first_row);
      // FUSED_DQ: dS (the tile's rows x the block's keys, K-major) from every warp's dS^T; buffers
      // alternate by tile, so a warpgroup still reading tile t - 1's is never overwritten: the other
      // reaches this tile's barrier only after its own reads of t - 1 are done
      T *ds_tile = sDS + (t & 1) * TILE * OWNED;
      auto store_ds = [&](const unsigned(&x)[TSTEPS][4]) {
#pragma unroll
        for (int kt = 0; kt < TSTEPS; ++kt)
          yk_stmatrix_x4_trans(ds_tile + yk_swizzled<TILE>(kt * 16 + (lane / 16) * 8 + lane % 8,
                                                           wg * 64 + warp * 16 + ((lane / 8) & 1) * 8),
                               x[kt]);
      };
      // P^T and dS^T as A fragments; DQ_BEHIND: the dk/dv products' until those retire, after the
      // tile's dq is issued, so they live past the branch
      unsigned pt[TSTEPS][4], dst[TSTEPS][4];
      // causally, a warpgroup whose first key no row of the tile sees has nothing to add
      if (!CAUSAL || wg_key0 <= first_row + TILE - 1 + shift) {
        const int stage = t % STAGES;
        const T *q_tile = sB0 + stage * TILE * HEAD_DIM, *do_tile = sB1 + stage * TILE * HEAD_DIM;
        float st[TILE / 8][4], dpt[TILE / 8][4];
        issue_scores(st, dpt, a0_desc, yk_descriptor(q_tile, 16), a1_desc, yk_descriptor(do_tile, 16));
        // the mask costs only in the sequence's last tile and, causally, where this warp's last key
        // is past the tile's first row's diagonal
        const bool masked = first_row + TILE > len_q || (CAUSAL && last_key > first_row + shift);
        const float2 *stats = sStats + stage * TILE;
        if (masked)
          yk_p_ds_of_keys<true, TILE>(pt, dst, st, dpt, 0, stats, scale_log2, my_key, first_row, len_q, shift, t4);
        else
          yk_p_ds_of_keys<false, TILE>(pt, dst, st, dpt, 0, stats, scale_log2, my_key, first_row, len_q, shift, t4);
        if constexpr (DS_FIRST) store_ds(dst); // before the products below take its registers
        // dv += P^T dO, dk += dS^T Q: 16 query rows a k step, two 8-row atoms read MN-major
        const unsigned long long q_mn = yk_descriptor(q_tile, TILE * 128), do_mn = yk_descriptor(do_tile, TILE * 128);
        yk_wgmma_fence();
        yk_wgmma_hold(dv_acc);
        yk_wgmma_hold(dk_acc);
#pragma unroll
        for (int kt = 0; kt < TSTEPS; ++kt) {
          yk_wgmma<HEAD_DIM>::rs(dv_acc, pt[kt], do_mn + yk_moved(kt * 16 * 64), 1);
          yk_wgmma<HEAD_DIM>::rs(dk_acc, dst[kt], q_mn + yk_moved(kt * 16 * 64), 1);
        }
        yk_wgmma_commit();
        if constexpr (!DQ_BEHIND) {
          yk_wgmma_wait<0>();
          yk_wgmma_hold(dv_acc);
          yk_wgmma_hold(dk_acc);
          yk_wgmma_hold(pt);
          yk_wgmma_hold(dst);
          if constexpr (FUSED_DQ && !DS_FIRST) store_ds(dst);
        }
      } else if constexpr (FUSED_DQ && DQ_SUM != 2) {
        const unsigned zeros[TSTEPS][4] = {};
        store_ds(zeros);
      }
      if constexpr (!DQ_BEHIND) release(t);
      if constexpr (FUSED_DQ) {
        // DQ_SUM 2: every piece over this warpgroup's own 64 keys, once its own dS is stored, where
        // some row of the tile sees them; else its share of the pieces over all the block's keys,
        // once every warpgroup's dS is
        constexpr bool OWN = DQ_SUM == 2;
        constexpr int K0_STEP = OWN ? 64 : 0, DQ_KSTEPS = OWN ? 4 : OWNED / 16;
        const bool issue = !OWN || !CAUSAL || wg_key0 <= first_row + TILE - 1 + shift;
        yk_fence_async_smem();
        if (!OWN)
          yk_named_sync<BAR_DS, CONSUMERS>();
        else if (issue)
          yk_warpgroup_sync<BAR_OWN_DS>(wg);
#pragma unroll
        for (int piece = OWN ? 0 : wg; issue && piece < DQ_PIECES; piece += OWN ? 1 : WARPGROUPS) {
          const int m0 = piece / (HEAD_DIM / 64) * 64, n0 = piece % (HEAD_DIM / 64) * 64, k0 = wg * K0_STEP;
          if (OWN && CAUSAL && first_row + m0 + 63 + shift < wg_key0) continue; // no row sees its keys
          const unsigned long long a = yk_descriptor(ds_tile + k0 / 64 * TILE * 64 + m0 * 64, 16),
                                   b = yk_descriptor(sA0 + n0 * OWNED + k0 * 64, OWNED * 128); // K, MN-major
          float part[8][4];
          yk_wgmma_fence();
#pragma unroll
          for (int ks = 0; ks < DQ_KSTEPS; ++ks)
            yk_wgmma<64>::ss_tb(part, a + yk_moved((ks / 4) * TILE * 64 + (ks % 4) * 16), b + yk_moved(ks * 16 * 64),
                                ks > 0);
          yk_wgmma_commit();
          yk_wgmma_wait<0>(); // DQ_BEHIND: the dk/dv products before it too
          yk_wgmma_hold(part);
          // into this warpgroup's staging in the accumulator's order (dq_in_piece), then one bulk
          // reduction of the piece; the staging is free again once the previous one has read it.
          float *stage = sDQ + wg * 64 * 64;
          if (wt == 0) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
          yk_warpgroup_sync<BAR_STAGE>(wg);
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
            *reinterpret_cast<float4 *>(stage + nt * 512 + wt * 4) =
                float4{part[nt][0], part[nt][1], part[nt][2], part[nt][3]};
          yk_fence_async_smem();
          yk_warpgroup_sync<BAR_STAGE>(wg);
          if (wt == 0 && first_row + m0 < len_q) { // a piece wholly past the sequence: padding rows only
            const int padded = dq_first_row(ws_first, batch) + first_row + m0;
            yk_bulk_reduce_add(dq_acc + dq_piece(qh, padded, n0, ws_tokens), stage, 64 * 64 * 4);
            asm volatile("cp.async.bulk.commit_group;" ::: "memory");
          }
        }
        if constexpr (DQ_BEHIND) {
          yk_wgmma_wait<0>(); // a warpgroup with no piece (one 64 x 64 piece a tile) waits here
          yk_wgmma_hold(dv_acc);
          yk_wgmma_hold(dk_acc);
          yk_wgmma_hold(pt);
          yk_wgmma_hold(dst);
          release(t); // the dk/dv products have read the stage
        }
      }
    }
    if (FUSED_DQ && wt == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
    yk_store_rows<HEAD_DIM>(dk + batch * dk_b + (long long)(k_start + col0) * dk_s + head * dk_h, dk_s, len_k - col0,
                            wg * 64 + warp * 16, 0, dk_acc, scale, lane);
    yk_store_rows<HEAD_DIM>(dv + batch * dv_b + (long long)(k_start + col0) * dv_s + head * dv_h, dv_s, len_k - col0,
                            wg * 64 + warp * 16, 0, dv_acc, 1.f, lane);
  }
}
