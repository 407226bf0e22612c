// FlashAttention forward for Hopper (sm_90a) on warpgroup MMAs: the same maths and masks as
// attention_prefill.cu, with S = Q K^T and O += P V issued as wgmma by whole warpgroups.
//   - A block owns BLOCK_M = 64 x WARPGROUPS query rows of one head; each warpgroup 64 of them,
//     sharing the block's K and V tiles, so a tile read from memory serves 128 rows.
//   - Q, K and V live in shared memory in the 128-byte swizzled layout the MMA unit reads without
//     bank conflicts: 64-element column blocks, 8-row atoms of 1 KB, 16-byte chunk c of row r at
//     c ^ (r % 8). cp.async fills them STAGES deep; a proxy fence hands them to the MMA unit.
//   - S comes from shared memory (Q and K K-major); P goes back as register A fragments (the
//     accumulator layout is mma.sync's, so packing two column tiles makes an A fragment); V is the
//     B operand MN-major, straight from its row-major tile.
//
//   - Paged keys (PAGED 1 or 2) come through the page table, as in attention_prefill.cu.
//
// Spec constants: T, HEAD_DIM (a multiple of 64), BLOCK_N, WARPGROUPS, STAGES, CAUSAL, RAGGED,
// PAGED, PAGE_SIZE.

constexpr int BLOCK_M = 64 * WARPGROUPS, THREADS = 128 * WARPGROUPS;
constexpr int KSTEPS = HEAD_DIM / 16, NSTEPS = BLOCK_N / 16;
static_assert(HEAD_DIM % 64 == 0 && BLOCK_N % 64 == 0, "whole 128-byte swizzle atoms");

// Element offset of (r, c) in a swizzled ROWS x HEAD_DIM tile; c a multiple of 8.
template <int ROWS> __device__ __forceinline__ int swizzled(int r, int c) {
  return (c / 64) * ROWS * 64 + (r / 8) * 512 + (r % 8) * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8);
}

template <int ROWS, class RowAddress>
__device__ __forceinline__ void load_swizzled(T *tile, int valid, int tid, RowAddress src) {
  constexpr int CHUNKS = HEAD_DIM / 8, TOTAL = ROWS * CHUNKS;
#pragma unroll
  for (int k = 0; k < (TOTAL + THREADS - 1) / THREADS; ++k) {
    const int i = tid + k * THREADS;
    if (TOTAL % THREADS == 0 || i < TOTAL) {
      const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
      const bool ok = r < valid;
      yk_cp_async16(tile + swizzled<ROWS>(r, c), ok ? src(r) + c : src(0), ok ? 16 : 0);
    }
  }
}

// Matrix descriptor: start address, leading and stride byte offsets (16-byte units), 128B swizzle.
// A descriptor plus an element offset is the descriptor of the moved start (the address field is
// the low 14 bits, shared memory below 256 KB), so k steps add constants rather than rebuild it.
__device__ __forceinline__ unsigned long long descriptor(const T *start, unsigned leading_bytes) {
  const unsigned long long address = yk_smem_address(start);
  return ((address & 0x3FFFF) >> 4) | ((unsigned long long)(leading_bytes >> 4) << 16) | ((1024ull >> 4) << 32) |
         (1ull << 62);
}
__host__ __device__ constexpr unsigned long long moved(int elements) { return (unsigned long long)(elements * 2 / 16); }

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_prefill_sm90(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                           T *__restrict__ out, float *__restrict__ lse, const int *__restrict__ cu_q,
                           const int *__restrict__ cu_k, long long q_b, long long q_s, long long q_h, long long k_b,
                           long long k_s, long long k_h, long long v_b, long long v_s, long long v_h, long long o_b,
                           long long o_s, long long o_h, long long l_b, long long l_s, long long l_h, int seq_q,
                           int seq_k, int group, float scale_log2, yk_page_table pt) {
  const int head = blockIdx.y, batch = blockIdx.z, kv_head = head / group;
  yk_sequence sq;
  const int *pages;
  if (!yk_locate_keys<RAGGED, RAGGED, PAGED, PAGE_SIZE>(sq, pages, cu_q, cu_k, pt, batch, seq_q, seq_k)) return;
  const int q_start = sq.q_start, k_start = sq.k_start, len_q = sq.len_q, len_k = sq.len_k;
  const int m_block = yk_query_block<BLOCK_M, CAUSAL>(len_q);
  if (m_block < 0) return;
  const int row0 = m_block * BLOCK_M, shift = len_k - len_q;
  const yk_key_tiles keys = yk_keys_of_rows<BLOCK_M, BLOCK_N, CAUSAL>(row0, len_k, shift);
  const int n_end = keys.n_end, n_tiles = keys.n_tiles, unmasked = keys.unmasked;

  const T *qp = q + batch * q_b + (long long)(q_start + row0) * q_s + head * q_h;
  const auto kr = yk_rows_of<PAGE_SIZE>(k, k_b, k_s, k_h, pt.k_block, batch, k_start, kv_head, pages, pt.num_blocks);
  const auto vr = yk_rows_of<PAGE_SIZE>(v, v_b, v_s, v_h, pt.v_block, batch, k_start, kv_head, pages, pt.num_blocks);

  // swizzle atoms need 1 KB alignment; the host asks for 1 KB more than the tiles take
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char *smem = smem_raw + ((1024 - (yk_smem_address(smem_raw) & 1023)) & 1023);
  T *sQ = reinterpret_cast<T *>(smem);
  T *sK = sQ + BLOCK_M * HEAD_DIM;
  T *sV = sK + STAGES * BLOCK_N * HEAD_DIM;

  const int tid = threadIdx.x, wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  auto load_kv = [&](int tile) {
    const int first = tile * BLOCK_N, stage = tile % STAGES;
    load_swizzled<BLOCK_N>(sK + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                           [&](int r) { return kr.at(first + r); });
    load_swizzled<BLOCK_N>(sV + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                           [&](int r) { return vr.at(first + r); });
  };
  load_swizzled<BLOCK_M>(sQ, len_q - row0, tid, [&](int r) { return qp + (long long)r * q_s; });
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_tiles) load_kv(s);
    yk_cp_async_commit();
  }

  float o[HEAD_DIM / 8][4];
  yk_zero(o);
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};
  const int my_row = row0 + wg * 64 + warp * 16 + g; // rows my_row and my_row + 8
  const T *q_rows = sQ + wg * 64 * 64;                // this warpgroup's 64 rows: whole atoms

  for (int j = 0; j < n_tiles; ++j) {
    if (j + STAGES - 1 < n_tiles) load_kv(j + STAGES - 1);
    yk_cp_async_commit();
    yk_cp_async_wait<STAGES - 1>();
    yk_fence_async_smem();
    __syncthreads();
    const T *k_tile = sK + (j % STAGES) * BLOCK_N * HEAD_DIM, *v_tile = sV + (j % STAGES) * BLOCK_N * HEAD_DIM;

    float s[BLOCK_N / 8][4];
    const unsigned long long q_desc = descriptor(q_rows, 16), k_desc = descriptor(k_tile, 16);
    yk_wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) // k step: 16 columns, 32 bytes into a 128-byte row
      yk_wgmma<BLOCK_N>::ss(s, q_desc + moved((ks / 4) * BLOCK_M * 64 + (ks % 4) * 16),
                            k_desc + moved((ks / 4) * BLOCK_N * 64 + (ks % 4) * 16), ks > 0);
    yk_wgmma_commit();
    yk_wgmma_wait<0>();
    yk_wgmma_hold(s);

    if (j >= unmasked) yk_mask_scores(s, j * BLOCK_N, len_k, CAUSAL, my_row, shift, t4);
    yk_softmax_step(s, o, m_row, l_row, scale_log2);

    unsigned p[NSTEPS][4];
#pragma unroll
    for (int kt = 0; kt < NSTEPS; ++kt) yk_p_fragment(p[kt], s, kt);
    const unsigned long long v_desc = descriptor(v_tile, BLOCK_N * 128);
    yk_wgmma_fence();
    yk_wgmma_hold(o);
#pragma unroll
    for (int kt = 0; kt < NSTEPS; ++kt) // 16 keys: two 8-row atoms; column blocks BLOCK_N rows apart
      yk_wgmma<HEAD_DIM>::rs(o, p[kt], v_desc + moved(kt * 16 * 64), 1);
    yk_wgmma_commit();
    yk_wgmma_wait<0>();
    yk_wgmma_hold(o);
    __syncthreads(); // every warpgroup is done with this stage before it is loaded again
  }

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = my_row + 8 * r;
    T *row_out = row < len_q ? out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h : nullptr;
    const float row_lse = yk_finish_row(o, m_row[r], l_row[r], r, row_out, t4);
    if (lse && row_out && t4 == 0) lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h] = row_lse;
  }
}
