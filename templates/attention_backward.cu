// FlashAttention backward on mma.sync (sm_80+), as two kernels that recompute the scores so that
// every gradient has one writer: no atomics, the same bits on every run.
//   P = exp(q k^T * scale - lse)   Dr_i = sum_d dout_id out_id   dS = P * (dout v^T - Dr)
//   PART_DQ:   a block owns BLOCK_M query rows (16 a warp) and walks the key tiles:
//              dq = scale * dS k
//   PART_DKDV: a block owns BLOCK_N keys of a kv head (16 a warp; D_SPLIT warps share them, each
//              accumulating head_dim / D_SPLIT columns) and walks the query tiles of every q head of
//              its group: dv = P^T dout, dk = scale * dS^T q
// Tiles stream through shared memory STAGES deep with cp.async; causal masks are bottom-right
// aligned as in the forward (query i sees keys j <= i + len_k - len_q).
//
// Spec constants: T, HEAD_DIM, PART, BLOCK_M, BLOCK_N, D_SPLIT, STAGES, CAUSAL, RAGGED.

constexpr int KSTEPS = HEAD_DIM / 16;
constexpr int D_TILES = HEAD_DIM / 8;
constexpr int WARPS = PART == PART_DQ ? BLOCK_M / 16 : BLOCK_N / 16 * D_SPLIT;
constexpr int THREADS = WARPS * 32;
static_assert(BLOCK_M % 16 == 0 && BLOCK_N % 16 == 0 && HEAD_DIM % (16 * D_SPLIT) == 0, "whole mma steps");

// lse in base 2; a row that saw no key in the forward (lse -inf) gets +inf so its P is 0.
__device__ __forceinline__ float lse_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * YK_LOG2E; }

// Writes rows [row0 + 16 w + g (+8)] of a 16 x COLS float C-fragment accumulator, scaled.
template <int COLS>
__device__ __forceinline__ void store_rows(T *base, long long row_stride, int rows_valid, int first_row, int col0,
                                           const float (&acc)[COLS / 8][4], float scale, int lane) {
  const int g = lane / 4, t4 = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = first_row + g + 8 * r;
    if (row >= rows_valid) continue;
    T *dst = base + (long long)row * row_stride + col0 + 2 * t4;
#pragma unroll
    for (int nt = 0; nt < COLS / 8; ++nt)
      *reinterpret_cast<unsigned *>(dst + nt * 8) = yk_pack2(acc[nt][2 * r] * scale, acc[nt][2 * r + 1] * scale);
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
                       int seq_k, int group, float scale) {
  const int head = blockIdx.y, batch = blockIdx.z; // a q head (PART_DQ) or a kv head (PART_DKDV)
  yk_sequence sq;
  if (!yk_locate<RAGGED, RAGGED>(sq, cu_q, cu_k, batch, seq_q, seq_k)) return;
  const int q_start = sq.q_start, k_start = sq.k_start, len_q = sq.len_q, len_k = sq.len_k;
  const int shift = len_k - len_q, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const float scale_log2 = scale * YK_LOG2E;
  extern __shared__ __align__(16) unsigned char smem_raw[];

  if constexpr (PART == PART_DQ) {
    const int row0 = blockIdx.x * BLOCK_M;
    if (row0 >= len_q) return;
    const int kv_head = head / group;
    const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + head * q_h;
    const T *dop = dout + batch * do_b + (long long)(q_start + row0) * do_s + head * do_h;
    const T *op = out + batch * o_b + (long long)(q_start + row0) * o_s + head * o_h;
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
    yk_load_tile<BLOCK_M, THREADS>(sQ, len_q - row0, tid, [&](int r) { return qp + (long long)r * q_s; });
    yk_load_tile<BLOCK_M, THREADS>(sDO, len_q - row0, tid, [&](int r) { return dop + (long long)r * do_s; });
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < n_tiles) load_kv(s);
      yk_cp_async_commit();
    }
    yk_cp_async_wait<STAGES - 2>();
    __syncthreads();

    // each row's lse and Dr = dout . out, for the rows g and g + 8 of this warp
    const int my_row = warp * 16 + g; // within the block
    float row_lse[2], row_d[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = my_row + 8 * r;
      float d = 0.f;
      if (row0 + row < len_q) {
        for (int c = 2 * t4; c < HEAD_DIM; c += 8) {
          float o2[2], do2[2];
          yk_load<T, 2>(op + (long long)row * o_s + c, o2);
          yk_load<T, 2>(sDO + row * YK_ROW + c, do2);
          d += o2[0] * do2[0] + o2[1] * do2[1];
        }
        row_lse[r] = lse_log2(lse[batch * l_b + (long long)(q_start + row0 + row) * l_s + head * l_h]);
      } else {
        row_lse[r] = INFINITY;
      }
      row_d[r] = yk_quad_sum(d);
    }

    float acc[D_TILES][4];
    yk_zero(acc);
    const T *q_a = yk_a_rows(sQ + warp * 16 * YK_ROW, lane), *do_a = yk_a_rows(sDO + warp * 16 * YK_ROW, lane);
    for (int j = 0; j < n_tiles; ++j) {
      if (j + STAGES - 1 < n_tiles) load_kv(j + STAGES - 1);
      yk_cp_async_commit();
      yk_cp_async_wait<STAGES - 1>();
      __syncthreads();
      const T *k_tile = sK + (j % STAGES) * BLOCK_N * YK_ROW, *v_tile = sV + (j % STAGES) * BLOCK_N * YK_ROW;
      float s[BLOCK_N / 8][4], dp[BLOCK_N / 8][4];
      yk_zero(s), yk_zero(dp);
      yk_mma_rows<BLOCK_N>(s, q_a, yk_b_rows(k_tile, lane));   // q k^T
      yk_mma_rows<BLOCK_N>(dp, do_a, yk_b_rows(v_tile, lane)); // dout v^T
#pragma unroll
      for (int nt = 0; nt < BLOCK_N / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = j * BLOCK_N + nt * 8 + 2 * t4 + (e & 1), row = row0 + my_row + (e >> 1) * 8;
          const bool seen = key < len_k && (!CAUSAL || key <= row + shift);
          const float p = seen ? exp2f(s[nt][e] * scale_log2 - row_lse[e >> 1]) : 0.f;
          s[nt][e] = p * (dp[nt][e] - row_d[e >> 1]); // dS
        }
      yk_mma_p_rows<BLOCK_N, HEAD_DIM>(acc, s, yk_bt_rows(k_tile, lane)); // dq += dS k
      __syncthreads();
    }
    store_rows<HEAD_DIM>(dq + batch * dq_b + (long long)(q_start + row0) * dq_s + head * dq_h, dq_s, len_q - row0,
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
    float *sLse = reinterpret_cast<float *>(sDO + STAGES * BLOCK_M * YK_ROW), *sD = sLse + STAGES * BLOCK_M;

    // query tiles that can see a key of this block: rows i >= col0 - shift, for every q head of
    // the group, in order (head, tile)
    const int m_tiles = (len_q + BLOCK_M - 1) / BLOCK_M;
    const int m_first = CAUSAL ? min(m_tiles, max(0, col0 - shift) / BLOCK_M) : 0;
    const int per_head = m_tiles - m_first, tiles = per_head * group;
    auto tile_rows = [&](int t, int &qh, int &row0) { qh = head * group + t / per_head, row0 = (m_first + t % per_head) * BLOCK_M; };
    auto load_q = [&](int t) {
      int qh, row0;
      tile_rows(t, qh, row0);
      const int stage = t % STAGES;
      const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + qh * q_h;
      const T *dop = dout + batch * do_b + (long long)(q_start + row0) * do_s + qh * do_h;
      yk_load_tile<BLOCK_M, THREADS>(sQ + stage * BLOCK_M * YK_ROW, len_q - row0, tid,
                                     [&](int r) { return qp + (long long)r * q_s; });
      yk_load_tile<BLOCK_M, THREADS>(sDO + stage * BLOCK_M * YK_ROW, len_q - row0, tid,
                                     [&](int r) { return dop + (long long)r * do_s; });
    };
    yk_load_tile<BLOCK_N, THREADS>(sK, len_k - col0, tid, [&](int r) { return kp + (long long)r * k_s; });
    yk_load_tile<BLOCK_N, THREADS>(sV, len_k - col0, tid, [&](int r) { return vp + (long long)r * v_s; });
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < tiles) load_q(s);
      yk_cp_async_commit();
    }

    float dk_acc[COLS / 8][4], dv_acc[COLS / 8][4];
    yk_zero(dk_acc), yk_zero(dv_acc);
    const T *k_a = yk_a_rows(sK + key_warp * 16 * YK_ROW, lane), *v_a = yk_a_rows(sV + key_warp * 16 * YK_ROW, lane);
    const int my_key = col0 + key_warp * 16 + g; // keys my_key and my_key + 8
    for (int t = 0; t < tiles; ++t) {
      if (t + STAGES - 1 < tiles) load_q(t + STAGES - 1);
      yk_cp_async_commit();
      yk_cp_async_wait<STAGES - 1>();
      __syncthreads();
      int qh, row0;
      tile_rows(t, qh, row0);
      const int stage = t % STAGES;
      const T *q_tile = sQ + stage * BLOCK_M * YK_ROW, *do_tile = sDO + stage * BLOCK_M * YK_ROW;
      float *lse_tile = sLse + stage * BLOCK_M, *d_tile = sD + stage * BLOCK_M;
      // the tile's lse and Dr = dout . out: a warp a row at a time, lanes across head_dim
      for (int r = warp; r < BLOCK_M; r += WARPS) {
        float d = 0.f;
        const int row = row0 + r;
        if (row < len_q) {
          const T *orow = out + batch * o_b + (long long)(q_start + row) * o_s + qh * o_h;
          for (int c = 2 * lane; c < HEAD_DIM; c += 64) {
            float o2[2], do2[2];
            yk_load<T, 2>(orow + c, o2);
            yk_load<T, 2>(do_tile + r * YK_ROW + c, do2);
            d += o2[0] * do2[0] + o2[1] * do2[1];
          }
        }
        d = yk_warp_sum(d);
        if (lane == 0) {
          d_tile[r] = d;
          lse_tile[r] = row < len_q ? lse_log2(lse[batch * l_b + (long long)(q_start + row) * l_s + qh * l_h]) : INFINITY;
        }
      }
      __syncthreads();

      float st[BLOCK_M / 8][4], dpt[BLOCK_M / 8][4];
      yk_zero(st), yk_zero(dpt);
      yk_mma_rows<BLOCK_M>(st, k_a, yk_b_rows(q_tile, lane));   // k q^T
      yk_mma_rows<BLOCK_M>(dpt, v_a, yk_b_rows(do_tile, lane)); // v dout^T
#pragma unroll
      for (int nt = 0; nt < BLOCK_M / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = nt * 8 + 2 * t4 + (e & 1), key = my_key + (e >> 1) * 8, row = row0 + r;
          const bool seen = key < len_k && row < len_q && (!CAUSAL || key <= row + shift);
          const float p = seen ? exp2f(st[nt][e] * scale_log2 - lse_tile[r]) : 0.f;
          st[nt][e] = p;                             // P^T
          dpt[nt][e] = p * (dpt[nt][e] - d_tile[r]); // dS^T
        }
      yk_mma_p_rows<BLOCK_M, COLS>(dv_acc, st, yk_bt_rows(do_tile, lane) + cols0); // dv += P^T dout
      yk_mma_p_rows<BLOCK_M, COLS>(dk_acc, dpt, yk_bt_rows(q_tile, lane) + cols0); // dk += dS^T q
      __syncthreads();
    }
    store_rows<COLS>(dk + batch * dk_b + (long long)(k_start + col0) * dk_s + head * dk_h, dk_s, len_k - col0,
                     key_warp * 16, cols0, dk_acc, scale, lane);
    store_rows<COLS>(dv + batch * dv_b + (long long)(k_start + col0) * dv_s + head * dv_h, dv_s, len_k - col0,
                     key_warp * 16, cols0, dv_acc, 1.f, lane);
  }
}
