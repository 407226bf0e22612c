// The pieces the backward's kernels share, on mma.sync (attention_backward.cu) and on warpgroup
// MMAs (attention_backward_sm90.cu): their register tiles of S and dP (dq) or S^T and dP^T (dk/dv)
// have the same C-fragment layout, 16 rows a warp. Needs the spec constant CAUSAL.

// lse in base 2; a row that saw no key in the forward (lse -inf) gets +inf so its P is 0.
__device__ __forceinline__ float yk_lse_log2(float lse) { return lse == -INFINITY ? INFINITY : lse * YK_LOG2E; }

// dq: dS of rows `row` and row + 8 (c0, c1 and c2, c3) over the tile's keys [16 c, 16 c + 16)
// (c = chunk * CHUNK / 16 + kt), packed into the A fragments dsf[c] of dS k, from s (S of the
// chunk's keys) and dp (dP of the whole tile). MASKED: keys past len_k or, causally, past a row's
// diagonal get 0 (a select: their P may overflow).
template <bool MASKED, int CHUNK, int TILES>
__device__ __forceinline__ void yk_ds_of_rows(unsigned (&dsf)[TILES / 2][4], const float (&s)[CHUNK / 8][4],
                                              const float (&dp)[TILES][4], int chunk, const float (&lse2)[2],
                                              const float (&delta)[2], float scale_log2, int key0, int len_k, int row,
                                              int shift, int t4) {
  float ds[CHUNK / 8][4];
#pragma unroll
  for (int nt = 0; nt < CHUNK / 8; ++nt) {
    const int tile_nt = chunk * (CHUNK / 8) + nt;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + tile_nt * 8 + 2 * t4 + (e & 1), r = e >> 1;
      const float p = exp2f(s[nt][e] * scale_log2 - lse2[r]);
      const bool seen = !MASKED || (key < len_k && (!CAUSAL || key <= row + 8 * r + shift));
      ds[nt][e] = seen ? p * (dp[tile_nt][e] - delta[r]) : 0.f;
    }
  }
#pragma unroll
  for (int kt = 0; kt < CHUNK / 16; ++kt) yk_p_fragment(dsf[chunk * (CHUNK / 16) + kt], ds, kt);
}

// 8 bytes global -> shared asynchronously (cp.async takes 4, 8 or 16 through L1); src_bytes 0
// zero-fills without reading.
__device__ __forceinline__ void yk_cp_async8(void *dst, const void *src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(yk_smem_address(dst)), "l"(src), "r"(src_bytes));
}

// dk/dv: P^T and dS^T of keys `key` and key + 8 over the tile's rows [16 c, 16 c + 16) (c =
// chunk * CHUNK / 16 + kt), packed into their A fragments pt[c] and dst[c], from st (S^T of the
// chunk's rows) and dpt (dP^T of the whole tile); stats[r] = {lse2, delta} of tile row r. MASKED:
// rows past len_q (their stats are zero fill) and, causally, rows that do not see the key get 0.
// Keys past len_k need no mask: their rows of dk and dv are never stored, and a key's row of the
// products depends on that key alone.
template <bool MASKED, int CHUNK, int TILES>
__device__ __forceinline__ void yk_p_ds_of_keys(unsigned (&pt)[TILES / 2][4], unsigned (&dst)[TILES / 2][4],
                                                float (&st)[CHUNK / 8][4], const float (&dpt)[TILES][4], int chunk,
                                                const float2 *stats, float scale_log2, int key, int row0, int len_q,
                                                int shift, int t4) {
  float ds[CHUNK / 8][4];
#pragma unroll
  for (int nt = 0; nt < CHUNK / 8; ++nt) {
    const int tile_nt = chunk * (CHUNK / 8) + nt;
    const float4 two = *reinterpret_cast<const float4 *>(stats + tile_nt * 8 + 2 * t4); // rows 2 t4, 2 t4 + 1
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float lse2 = e & 1 ? two.z : two.x, delta = e & 1 ? two.w : two.y;
      const int row = row0 + tile_nt * 8 + 2 * t4 + (e & 1), k = key + 8 * (e >> 1);
      const float p = exp2f(st[nt][e] * scale_log2 - lse2);
      const bool seen = !MASKED || (row < len_q && (!CAUSAL || k <= row + shift));
      ds[nt][e] = seen ? p * (dpt[tile_nt][e] - delta) : 0.f;
      st[nt][e] = seen ? p : 0.f;
    }
  }
#pragma unroll
  for (int kt = 0; kt < CHUNK / 16; ++kt) {
    yk_p_fragment(pt[chunk * (CHUNK / 16) + kt], st, kt);
    yk_p_fragment(dst[chunk * (CHUNK / 16) + kt], ds, kt);
  }
}

// Writes rows [row0 + 16 w + g (+8)] of a 16 x COLS float C-fragment accumulator, scaled.
template <int COLS>
__device__ __forceinline__ void yk_store_rows(T *base, long long row_stride, int rows_valid, int first_row, int col0,
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
