// FlashAttention backward on mma.sync (sm_80+), as two kernels that recompute the scores so that
// every gradient has one writer: no atomics, the same bits on every run. (On sm_90, for head dims 64
// and 128, attention_backward_sm90.cu's kernels take their place.)
//   P = exp(q k^T * scale - lse)   delta_i = sum_d dout_id out_id   dS = P * (dout v^T - delta)
//   PART_DQ:   launched first. A block owns BLOCK_M query rows of a q head (16 a warp) and walks the
//              key tiles: dq = scale * dS k. It also leaves each row's {lse in base 2, delta} in the
//              float2 workspace ws [q_heads][tokens], so that the dk/dv kernel, which meets every
//              row once per key block, reads 8 bytes a row instead of a row of out.
//   PART_DKDV: a block owns BLOCK_N keys of a kv head (16 a warp; D_SPLIT warps share them, each
//              accumulating head_dim / D_SPLIT columns) and walks the BLOCK_M-row query tiles of
//              every q head of its group: dv = P^T dout, dk = scale * dS^T q. S^T and dP^T stay in
//              registers, where their C fragments are already the A fragments of those products.
// Tiles stream through shared memory STAGES deep with cp.async, one block barrier a tile; causal
// masks are bottom-right aligned as in the forward (query i sees keys j <= i + len_k - len_q), and
// only tiles a mask or a sequence's end cuts pay for the mask.
//
// Spec constants: T, HEAD_DIM, PART, BLOCK_M, BLOCK_N, D_SPLIT, STAGES, IN_REGS (the A fragments
// fixed for the whole walk, Q and dout or K and V, stay in registers), CAUSAL, RAGGED.

constexpr int KSTEPS = HEAD_DIM / 16;
constexpr int WARPS = PART == PART_DQ ? BLOCK_M / 16 : BLOCK_N / 16 * D_SPLIT;
constexpr int THREADS = WARPS * 32;
static_assert(BLOCK_M % 16 == 0 && BLOCK_N % 16 == 0 && HEAD_DIM % (16 * D_SPLIT) == 0, "whole mma steps");
// Scores a warp holds at a time: dP (dq) or dP^T (dk/dv) of the whole tile, S or S^T of a chunk
// of its keys or rows (see the main loops)
constexpr int S_TILE = PART == PART_DQ ? BLOCK_N : BLOCK_M, S_CHUNK = S_TILE % 32 == 0 ? 32 : 16;

// A fragments of 16 rows x HEAD_DIM read once (IN_REGS), or nothing: the products then read them
// from shared memory each tile, for the registers they would take.
typedef unsigned a_fragments[IN_REGS ? KSTEPS : 1][4];
__device__ __forceinline__ void load_fragments(a_fragments &f, const T *a_rows) {
  if (IN_REGS) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) yk_ldmatrix_x4(f[IN_REGS ? ks : 0], a_rows + ks * 16);
  }
}

// acc[N/8] += A (16 x HEAD_DIM) * B^T, A from f or a_rows, B's N rows k-major from b_rows.
template <int N>
__device__ __forceinline__ void mma_fixed_a(float (&acc)[N / 8][4], const a_fragments &f, const T *a_rows,
                                            const T *b_rows) {
  if (IN_REGS) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) yk_mma_k_step<N>(acc, f[IN_REGS ? ks : 0], b_rows + ks * 16);
  } else {
    yk_mma_rows<N>(acc, a_rows, b_rows);
  }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_backward(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                       const T *__restrict__ out, const T *__restrict__ dout, const float *__restrict__ lse,
                       T *__restrict__ dq, T *__restrict__ dk, T *__restrict__ dv, const int *__restrict__ cu_q,
                       const int *__restrict__ cu_k, long long q_b, long long q_s, long long q_h, long long k_b,
                       long long k_s, long long k_h, long long v_b, long long v_s, long long v_h, long long o_b,
                       long long o_s, long long o_h, long long do_b, long long do_s, long long do_h, long long l_b,
                       long long l_s, long long l_h, long long dq_b, long long dq_s, long long dq_h, long long dk_b,
                       long long dk_s, long long dk_h, long long dv_b, long long dv_s, long long dv_h, int seq_q,
                       int seq_k, int group, float scale, float2 *__restrict__ ws, int ws_tokens) {
  const int head = blockIdx.y, batch = blockIdx.z; // a q head (PART_DQ) or a kv head (PART_DKDV)
  yk_sequence sq;
  if (!yk_locate<RAGGED, RAGGED>(sq, cu_q, cu_k, batch, seq_q, seq_k)) return;
  const int q_start = sq.q_start, k_start = sq.k_start, len_q = sq.len_q, len_k = sq.len_k;
  const int shift = len_k - len_q, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const float scale_log2 = scale * YK_LOG2E;
  // this sequence's first query on the workspace's token axis (dense batches: seq_q a sequence)
  const long long ws_first = (RAGGED ? 0 : (long long)batch * seq_q) + q_start;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  if constexpr (PART == PART_DQ) {
    const int m_block = yk_query_block<BLOCK_M, CAUSAL>(len_q);
    if (m_block < 0) return;
    const int row0 = m_block * BLOCK_M, kv_head = head / group;
    const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + head * q_h;
    const T *dop = dout + batch * do_b + (long long)(q_start + row0) * do_s + head * do_h;
    const T *kp = k + batch * k_b + (long long)k_start * k_s + kv_head * k_h;
    const T *vp = v + batch * v_b + (long long)k_start * v_s + kv_head * v_h;
    T *sQ = reinterpret_cast<T *>(smem_raw), *sDO = sQ + BLOCK_M * YK_ROW, *sK = sDO + BLOCK_M * YK_ROW;
    T *sV = sK + STAGES * BLOCK_N * YK_ROW;
    const yk_key_tiles keys = yk_keys_of_rows<BLOCK_M, BLOCK_N, CAUSAL>(row0, len_k, shift);
    const int n_end = keys.n_end, n_tiles = keys.n_tiles;
    auto load_kv = [&](int tile) {
      const int first = tile * BLOCK_N, stage = tile % STAGES;
      yk_load_tile<BLOCK_N, THREADS>(sK + stage * BLOCK_N * YK_ROW, n_end - first, tid,
                                     [&](int r) { return kp + (long long)(first + r) * k_s; });
      yk_load_tile<BLOCK_N, THREADS>(sV + stage * BLOCK_N * YK_ROW, n_end - first, tid,
                                     [&](int r) { return vp + (long long)(first + r) * v_s; });
    };
    // group 0: Q, dout and the first key tile; then one group a tile
    yk_load_tile<BLOCK_M, THREADS>(sQ, len_q - row0, tid, [&](int r) { return qp + (long long)r * q_s; });
    yk_load_tile<BLOCK_M, THREADS>(sDO, len_q - row0, tid, [&](int r) { return dop + (long long)r * do_s; });
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < n_tiles) load_kv(s);
      yk_cp_async_commit();
    }
    yk_cp_async_wait<STAGES - 2>();
    __syncthreads();

    // delta and lse of the warp's rows, two lanes a row (a half of head_dim each; 16-byte pieces
    // of out), into the workspace; rows past the sequence get lse +inf, so their P is 0
    float2 stats;
    {
      const int r = warp * 16 + lane / 2, half = lane % 2, row = row0 + r;
      float d = 0.f;
      if (row < len_q) {
        const T *orow = out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h + half * (HEAD_DIM / 2);
        const T *drow = sDO + r * YK_ROW + half * (HEAD_DIM / 2);
#pragma unroll
        for (int c = 0; c < HEAD_DIM / 2; c += 8) {
          float o8[8], d8[8];
          yk_load<T, 8>(orow + c, o8);
          yk_load<T, 8>(drow + c, d8);
#pragma unroll
          for (int i = 0; i < 8; ++i) d += o8[i] * d8[i];
        }
      }
      d += __shfl_xor_sync(0xffffffffu, d, 1);
      stats = float2{
          row < len_q ? yk_lse_log2(lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h]) : INFINITY, d};
      if (row < len_q && half == 0) ws[head * (long long)ws_tokens + ws_first + row] = stats;
    }
    // the C fragments' rows g and g + 8 are those of lanes 2 g and 2 g + 16
    float row_lse[2], row_d[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      row_lse[r] = __shfl_sync(0xffffffffu, stats.x, 2 * g + 16 * r);
      row_d[r] = __shfl_sync(0xffffffffu, stats.y, 2 * g + 16 * r);
    }

    const T *q_a = yk_a_rows(sQ + warp * 16 * YK_ROW, lane), *do_a = yk_a_rows(sDO + warp * 16 * YK_ROW, lane);
    a_fragments qf, dof;
    load_fragments(qf, q_a);
    load_fragments(dof, do_a);
    float acc[HEAD_DIM / 8][4];
    yk_zero(acc);
    const int my_row = row0 + warp * 16 + g;
    for (int j = 0; j < n_tiles; ++j) {
      yk_cp_async_wait<STAGES - 2>();
      __syncthreads(); // tile j has landed, and every warp is done with tile j - 1, whose stage is refilled next
      if (j + STAGES - 1 < n_tiles) load_kv(j + STAGES - 1);
      yk_cp_async_commit();
      const T *k_tile = sK + (j % STAGES) * BLOCK_N * YK_ROW, *v_tile = sV + (j % STAGES) * BLOCK_N * YK_ROW;
      // dP whole, S a chunk of keys at a time (free while Q stays in registers), as in dk/dv below
      float dp[BLOCK_N / 8][4];
      yk_zero(dp);
      mma_fixed_a<BLOCK_N>(dp, dof, do_a, yk_b_rows(v_tile, lane)); // dout v^T
      unsigned dsf[BLOCK_N / 16][4];
#pragma unroll
      for (int c = 0; c < BLOCK_N / S_CHUNK; ++c) {
        float s[S_CHUNK / 8][4];
        yk_zero(s);
        mma_fixed_a<S_CHUNK>(s, qf, q_a, yk_b_rows(k_tile + c * S_CHUNK * YK_ROW, lane)); // q k^T
        if (j >= keys.unmasked)
          yk_ds_of_rows<true, S_CHUNK>(dsf, s, dp, c, row_lse, row_d, scale_log2, j * BLOCK_N, len_k, my_row, shift, t4);
        else
          yk_ds_of_rows<false, S_CHUNK>(dsf, s, dp, c, row_lse, row_d, scale_log2, j * BLOCK_N, len_k, my_row, shift, t4);
      }
      yk_mma_packed_rows<BLOCK_N, HEAD_DIM>(acc, dsf, yk_bt_rows(k_tile, lane)); // dq += dS k
    }
    yk_store_rows<HEAD_DIM>(dq + batch * dq_b + (long long)(q_start + row0) * dq_s + head * dq_h, dq_s, len_q - row0,
                         warp * 16, 0, acc, scale, lane);
  } else {
    const int col0 = blockIdx.x * BLOCK_N; // this block's first key
    if (col0 >= len_k) return;
    constexpr int KEY_WARPS = BLOCK_N / 16, COLS = HEAD_DIM / D_SPLIT;
    const int key_warp = warp % KEY_WARPS, cols0 = (warp / KEY_WARPS) * COLS;
    const T *kp = k + batch * k_b + (long long)(k_start + col0) * k_s + head * k_h;
    const T *vp = v + batch * v_b + (long long)(k_start + col0) * v_s + head * v_h;
    T *sK = reinterpret_cast<T *>(smem_raw), *sV = sK + BLOCK_N * YK_ROW, *sQ = sV + BLOCK_N * YK_ROW;
    T *sDO = sQ + STAGES * BLOCK_M * YK_ROW;
    float2 *sStats = reinterpret_cast<float2 *>(sDO + STAGES * BLOCK_M * YK_ROW);

    // query tiles that can see a key of this block: rows i >= col0 - shift, for every q head of
    // the group, in order (head, tile)
    const int m_tiles = (len_q + BLOCK_M - 1) / BLOCK_M;
    const int m_first = CAUSAL ? min(m_tiles, max(0, col0 - shift) / BLOCK_M) : 0;
    const int per_head = m_tiles - m_first, tiles = per_head * group;
    auto tile_rows = [&](int t, int &qh, int &row0) {
      qh = head * group + t / per_head, row0 = (m_first + t % per_head) * BLOCK_M;
    };
    auto load_q = [&](int t) {
      int qh, row0;
      tile_rows(t, qh, row0);
      const int stage = t % STAGES, rows = len_q - row0;
      const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + qh * q_h;
      const T *dop = dout + batch * do_b + (long long)(q_start + row0) * do_s + qh * do_h;
      yk_load_tile<BLOCK_M, THREADS>(sQ + stage * BLOCK_M * YK_ROW, rows, tid,
                                     [&](int r) { return qp + (long long)r * q_s; });
      yk_load_tile<BLOCK_M, THREADS>(sDO + stage * BLOCK_M * YK_ROW, rows, tid,
                                     [&](int r) { return dop + (long long)r * do_s; });
      const float2 *stats = ws + qh * (long long)ws_tokens + ws_first + row0;
#pragma unroll
      for (int it = 0; it < (BLOCK_M + THREADS - 1) / THREADS; ++it) {
        const int r = tid + it * THREADS;
        if (r < BLOCK_M) yk_cp_async8(sStats + stage * BLOCK_M + r, stats + (r < rows ? r : 0), r < rows ? 8 : 0);
      }
    };
    // group 0: K, V and the first query tile; then one group a tile
    yk_load_tile<BLOCK_N, THREADS>(sK, len_k - col0, tid, [&](int r) { return kp + (long long)r * k_s; });
    yk_load_tile<BLOCK_N, THREADS>(sV, len_k - col0, tid, [&](int r) { return vp + (long long)r * v_s; });
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < tiles) load_q(s);
      yk_cp_async_commit();
    }
    yk_cp_async_wait<STAGES - 2>();
    __syncthreads();

    const T *k_a = yk_a_rows(sK + key_warp * 16 * YK_ROW, lane), *v_a = yk_a_rows(sV + key_warp * 16 * YK_ROW, lane);
    a_fragments kf, vf;
    load_fragments(kf, k_a);
    load_fragments(vf, v_a);
    float dk_acc[COLS / 8][4], dv_acc[COLS / 8][4];
    yk_zero(dk_acc), yk_zero(dv_acc);
    const int my_key = col0 + key_warp * 16 + g; // keys my_key and my_key + 8
    const int last_key = col0 + key_warp * 16 + 15;
    for (int t = 0; t < tiles; ++t) {
      yk_cp_async_wait<STAGES - 2>();
      __syncthreads(); // tile t has landed, and every warp is done with tile t - 1, whose stage is refilled next
      if (t + STAGES - 1 < tiles) load_q(t + STAGES - 1);
      yk_cp_async_commit();
      int qh, row0;
      tile_rows(t, qh, row0);
      const int stage = t % STAGES;
      const T *q_tile = sQ + stage * BLOCK_M * YK_ROW, *do_tile = sDO + stage * BLOCK_M * YK_ROW;
      // dP^T whole, S^T 32 rows at a time, each chunk's P^T and dS^T packed at once: scores peak
      // at 48 registers rather than 64 (whole 64-row tiles spilled at head_dim 128), for one more
      // read of K's fragments a chunk
      float dpt[BLOCK_M / 8][4];
      yk_zero(dpt);
      mma_fixed_a<BLOCK_M>(dpt, vf, v_a, yk_b_rows(do_tile, lane)); // v dout^T
      // the mask costs only in the sequence's last tile and, causally, where this warp's last key
      // is past the tile's first row's diagonal
      const bool masked = row0 + BLOCK_M > len_q || (CAUSAL && last_key > row0 + shift);
      const float2 *stats = sStats + stage * BLOCK_M;
      unsigned pt[BLOCK_M / 16][4], dst[BLOCK_M / 16][4];
#pragma unroll
      for (int c = 0; c < BLOCK_M / S_CHUNK; ++c) {
        float st[S_CHUNK / 8][4];
        yk_zero(st);
        mma_fixed_a<S_CHUNK>(st, kf, k_a, yk_b_rows(q_tile + c * S_CHUNK * YK_ROW, lane)); // k q^T
        if (masked)
          yk_p_ds_of_keys<true, S_CHUNK>(pt, dst, st, dpt, c, stats, scale_log2, my_key, row0, len_q, shift, t4);
        else
          yk_p_ds_of_keys<false, S_CHUNK>(pt, dst, st, dpt, c, stats, scale_log2, my_key, row0, len_q, shift, t4);
      }
      yk_mma_packed_rows<BLOCK_M, COLS>(dv_acc, pt, yk_bt_rows(do_tile, lane) + cols0); // dv += P^T dout
      yk_mma_packed_rows<BLOCK_M, COLS>(dk_acc, dst, yk_bt_rows(q_tile, lane) + cols0); // dk += dS^T q
    }
    yk_store_rows<COLS>(dk + batch * dk_b + (long long)(k_start + col0) * dk_s + head * dk_h, dk_s, len_k - col0,
                     key_warp * 16, cols0, dk_acc, scale, lane);
    yk_store_rows<COLS>(dv + batch * dv_b + (long long)(k_start + col0) * dv_s + head * dv_h, dv_s, len_k - col0,
                     key_warp * 16, cols0, dv_acc, 1.f, lane);
  }
}
