// FlashAttention forward, the prefill kernel (FlashAttention-2's scheme on mma.sync, sm_80+):
//   out = softmax(q k^T * scale [causal mask]) v,  lse = log(sum exp(q k^T * scale))  per query row
// A block owns BLOCK_M query rows of one head of one sequence; each of its WARPS warps owns 16 of
// them. K and V stream through shared memory in tiles of BLOCK_N keys, STAGES deep with cp.async;
// S = Q K^T and O += P V run on tensor cores with float32 accumulators; the softmax is online, in
// base 2 with the scale folded in, so the score matrix never exists (memory O(n)). The causal mask
// is aligned to the bottom right (query i sees keys j <= i + len_k - len_q); tiles it hides
// entirely are never loaded. GQA: q head h reads kv head h / group.
//
// Paged keys (PAGED 1 or 2: paged prefill, attention_common.cuh) come through the page table; the
// queries are then ragged (RAGGED) or dense, and each sequence's key count is its table's.
// Float8 keys and values (KV_FLOAT8: a float8 KV cache's pages) stream as bytes into their own
// stages and are widened to T in one tile each before the mma steps read them; k's scale is in
// scale_log2, v's (out_scale) multiplies O.
//
// Spec constants: T, HEAD_DIM, BLOCK_M, BLOCK_N, WARPS (BLOCK_M / 16), STAGES, CAUSAL, RAGGED,
// Q_IN_REGS (Q fragments kept in registers; 0 re-reads them from shared memory, for head_dim 256),
// PAGED, PAGE_SIZE, KV_FLOAT8.

constexpr int THREADS = WARPS * 32;
constexpr int KSTEPS = HEAD_DIM / 16;
constexpr int S_TILES = BLOCK_N / 8;
constexpr int O_TILES = HEAD_DIM / 8;
static_assert(BLOCK_M == 16 * WARPS, "a warp owns 16 query rows");
static_assert(BLOCK_N % 16 == 0 && HEAD_DIM % 16 == 0, "tiles are whole mma steps");
typedef typename yk_kv_element<KV_FLOAT8>::type KV;
constexpr int T_STAGES = KV_FLOAT8 ? 1 : STAGES; // tiles of T kept of K and of V

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_prefill(const T *__restrict__ q, const KV *__restrict__ k, const KV *__restrict__ v, T *__restrict__ out,
                      float *__restrict__ lse, const int *__restrict__ cu_q, const int *__restrict__ cu_k,
                      long long q_b, long long q_s, long long q_h, long long k_b, long long k_s, long long k_h,
                      long long v_b, long long v_s, long long v_h, long long o_b, long long o_s, long long o_h,
                      long long l_b, long long l_s, long long l_h, int seq_q, int seq_k, int group, float scale_log2,
                      yk_page_table pt, float out_scale) {
  const int head = blockIdx.y, batch = blockIdx.z, kv_head = head / group;
  yk_sequence sq;
  const int *pages;
  if (!yk_locate_keys<RAGGED, RAGGED, PAGED, PAGE_SIZE>(sq, pages, cu_q, cu_k, pt, batch, seq_q, seq_k)) return;
  const int q_start = sq.q_start, k_start = sq.k_start, len_q = sq.len_q, len_k = sq.len_k;
  const int m_block = yk_query_block<BLOCK_M, CAUSAL>(len_q);
  if (m_block < 0) return;
  const int row0 = m_block * BLOCK_M, shift = len_k - len_q; // query i sees keys j <= i + shift
  const yk_key_tiles keys = yk_keys_of_rows<BLOCK_M, BLOCK_N, CAUSAL>(row0, len_k, shift);
  const int n_end = keys.n_end, n_tiles = keys.n_tiles, unmasked = keys.unmasked;

  const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + head * q_h;
  const auto kr = yk_rows_of<PAGE_SIZE>(k, k_b, k_s, k_h, pt.k_block, batch, k_start, kv_head, pages, pt.num_blocks);
  const auto vr = yk_rows_of<PAGE_SIZE>(v, v_b, v_s, v_h, pt.v_block, batch, k_start, kv_head, pages, pt.num_blocks);

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T *sQ = reinterpret_cast<T *>(smem_raw);
  T *sK = sQ + BLOCK_M * YK_ROW;
  T *sV = sK + T_STAGES * BLOCK_N * YK_ROW;
  unsigned char *rawK = reinterpret_cast<unsigned char *>(sV + T_STAGES * BLOCK_N * YK_ROW); // float8 stages
  unsigned char *rawV = rawK + STAGES * BLOCK_N * HEAD_DIM;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  auto load_kv = [&](int tile) {
    const int first = tile * BLOCK_N, stage = tile % STAGES;
    // (the casts are no-ops: each kernel compiles one of the two paths' types, KV being T or bytes)
    if (KV_FLOAT8) {
      yk_load_bytes<BLOCK_N, THREADS>(rawK + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                                      [&](int r) { return (const unsigned char *)kr.at(first + r); });
      yk_load_bytes<BLOCK_N, THREADS>(rawV + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                                      [&](int r) { return (const unsigned char *)vr.at(first + r); });
    } else {
      yk_load_tile<BLOCK_N, THREADS>(sK + stage * BLOCK_N * YK_ROW, n_end - first, tid,
                                     [&](int r) { return (const T *)kr.at(first + r); });
      yk_load_tile<BLOCK_N, THREADS>(sV + stage * BLOCK_N * YK_ROW, n_end - first, tid,
                                     [&](int r) { return (const T *)vr.at(first + r); });
    }
  };

  // group 0: Q and the first tile; then one group a tile, empty groups past the end keep the count
  yk_load_tile<BLOCK_M, THREADS>(sQ, len_q - row0, tid, [&](int r) { return qp + (long long)r * q_s; });
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_kv(s);
    yk_cp_async_commit();
  }
  yk_cp_async_wait<STAGES - 2>();
  __syncthreads();

  // A fragments of this warp's 16 rows, kept in registers or read from shared memory each tile
  const T *q_rows = yk_a_rows(sQ + warp * 16 * YK_ROW, lane);
  unsigned qf[Q_IN_REGS ? KSTEPS : 1][4];
  if (Q_IN_REGS) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) yk_ldmatrix_x4(qf[Q_IN_REGS ? ks : 0], q_rows + ks * 16);
  }

  float o[O_TILES][4];
  yk_zero(o);
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};
  const int my_row = row0 + warp * 16 + g; // rows my_row and my_row + 8

  for (int j = 0; j < n_tiles; ++j) {
    if (j + STAGES - 1 < n_tiles) load_kv(j + STAGES - 1);
    yk_cp_async_commit();
    yk_cp_async_wait<STAGES - 1>();
    __syncthreads();
    if constexpr (KV_FLOAT8) { // the stage's bytes widened into the one tile of T
      yk_widen_tile<BLOCK_N, THREADS>(sK, rawK + (j % STAGES) * BLOCK_N * HEAD_DIM, tid);
      yk_widen_tile<BLOCK_N, THREADS>(sV, rawV + (j % STAGES) * BLOCK_N * HEAD_DIM, tid);
      __syncthreads();
    }
    const T *k_tile = sK + (j % T_STAGES) * BLOCK_N * YK_ROW;
    const T *v_tile = sV + (j % T_STAGES) * BLOCK_N * YK_ROW;

    float s[S_TILES][4];
    yk_zero(s);
    if (Q_IN_REGS) {
#pragma unroll
      for (int ks = 0; ks < KSTEPS; ++ks) yk_mma_k_step<BLOCK_N>(s, qf[Q_IN_REGS ? ks : 0], yk_b_rows(k_tile, lane) + ks * 16);
    } else {
      yk_mma_rows<BLOCK_N>(s, q_rows, yk_b_rows(k_tile, lane));
    }
    if (j >= unmasked) yk_mask_scores(s, j * BLOCK_N, len_k, CAUSAL, my_row, shift, t4);
    yk_softmax_step(s, o, m_row, l_row, scale_log2);
    yk_mma_p_rows<BLOCK_N, HEAD_DIM>(o, s, yk_bt_rows(v_tile, lane)); // O += P V
    __syncthreads(); // every warp is done with this stage before it is loaded again
  }

  if constexpr (KV_FLOAT8) { // O in units of the values' scale
    const float both_rows[2] = {out_scale, out_scale};
    yk_rescale(o, both_rows);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = my_row + 8 * r;
    T *row_out = row < len_q ? out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h : nullptr;
    const float row_lse = yk_finish_row(o, m_row[r], l_row[r], r, row_out, t4);
    if (lse && row_out && t4 == 0) lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h] = row_lse;
  }
}
