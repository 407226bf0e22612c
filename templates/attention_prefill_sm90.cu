// FlashAttention forward for Hopper (sm_90a) on warpgroup MMAs: the same maths and masks as
// attention_prefill.cu, with S = Q K^T and O += P V issued as wgmma by whole warpgroups.
//   - A block owns BLOCK_M = 64 x WARPGROUPS query rows of one head; each warpgroup 64 of them,
//     sharing the block's K and V tiles, so a tile read from memory serves all BLOCK_M rows (three
//     warpgroups, 192 rows, at head dim 64, where O, S and P fit in 160 registers).
//   - Q, K and V live in shared memory in the 128-byte swizzled layout the MMA unit reads without
//     bank conflicts: 64-element column blocks, 8-row atoms of 1 KB, 16-byte chunk c of row r at
//     c ^ (r % 8). cp.async fills them STAGES deep; a proxy fence hands them to the MMA unit.
//   - S comes from shared memory (Q and K K-major); P goes back as register A fragments (the
//     accumulator layout is mma.sync's, so packing two column tiles makes an A fragment); V is the
//     B operand MN-major, straight from its row-major tile.
//   - Paged keys (PAGED 1 or 2) come through the page table, as in attention_prefill.cu.
//
// PIPELINE 0: every thread loads with cp.async; each tile issues S, waits, runs the softmax, issues
// O += P V, waits, with two block-wide barriers a tile. Nothing overlaps.
// PIPELINE 1 (FlashAttention-3's structure, its loads on cp.async rather than TMA):
//   - one more warpgroup, the producer, copies K and V tiles; each stage of K and of V has a "full"
//     mbarrier (the producer's copies landed: cp.async.mbarrier.arrive) and an "empty" one (every
//     consumer warp's MMAs reading it retired), so no block-wide barrier remains in the loop and a
//     consumer warpgroup never waits for the other one's arithmetic;
//   - the consumers (the first WARPGROUPS warpgroups) overlap inside the warpgroup: tile j issues
//     S_j = Q K_j^T and O += P_{j-1} V_{j-1} together, waits for S_j alone (wgmma.wait_group 1),
//     runs the softmax of S_j while P_{j-1} V_{j-1} still runs, then waits for that (wait_group 0)
//     and only then rescales O and overwrites P, the two things the running MMA reads.
//   - setmaxnreg moves registers from the producer (PRODUCER_REGS) to the consumers.
// PIPELINE 2: PIPELINE 1 with the two consumer warpgroups taking turns to issue their MMAs (named
// barriers, FlashAttention-3's scheduler barrier), so one warpgroup's softmax runs under the other's
// MMAs.
// TMA 1 (pipelines 1 and 2, contiguous keys): one thread of the producer loads each whole K or V tile
// with cp.async.bulk.tensor through the host's tensor maps (k_map, v_map; their 128-byte swizzle is
// the layout above), completing the stage's full barrier by its byte count; the other producer warps
// exit. A tile the sequence ends inside is copied by the producer's first warp with cp.async, which
// zero-fills the rows past the end (the map would read the next sequence's). Only such a tile, written
// through the generic proxy, needs the consumers' proxy fence.
//
// Spec constants: T, HEAD_DIM (a multiple of 64), BLOCK_N, WARPGROUPS, STAGES, CAUSAL, RAGGED,
// PAGED, PAGE_SIZE, PIPELINE, TMA.

constexpr int BLOCK_M = 64 * WARPGROUPS, CONSUMERS = 128 * WARPGROUPS;
constexpr int THREADS = CONSUMERS + (PIPELINE > 0 ? 128 : 0); // pipelines 1, 2: the producer warpgroup last
constexpr int KSTEPS = HEAD_DIM / 16, NSTEPS = BLOCK_N / 16;
static_assert(HEAD_DIM % 64 == 0 && BLOCK_N % 64 == 0, "whole 128-byte swizzle atoms");
static_assert(PIPELINE != 2 || WARPGROUPS == 2, "pipeline 2 alternates two consumer warpgroups");
static_assert(!TMA || (PIPELINE > 0 && PAGED == 0), "TMA loads are the producer's, of contiguous keys");
// With two consumer warpgroups a block has 384 threads, 168 registers each at launch: the producer
// gives back all but PRODUCER_REGS and the consumers take them up to CONSUMER_REGS (both from the
// generator, gen/ops/attention_prefill_sm90.c, whose register checks count on them); with three,
// 512 threads of 128, PRODUCER_REGS_3 and CONSUMER_REGS_3. With one, a 256-thread block has 255
// registers a thread from the start.
constexpr int PRODUCER_KEEPS = WARPGROUPS == 3 ? PRODUCER_REGS_3 : PRODUCER_REGS;
constexpr int CONSUMER_TAKES = WARPGROUPS == 3 ? CONSUMER_REGS_3 : CONSUMER_REGS;

template <int ROWS, class RowAddress>
__device__ __forceinline__ void load_swizzled(T *tile, int valid, int tid, RowAddress src) {
  yk_load_rows<ROWS, ROWS, CONSUMERS>(tile, 0, valid, tid, src);
}

// Named barriers (0 is __syncthreads): 1 + w, warpgroup w's Q is in shared memory; 3 + w, warpgroup
// w may issue its MMAs (pipeline 2, two warpgroups: BAR_Q + 2 is free).
constexpr int BAR_Q = 1, BAR_TURN = 3;

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    attention_prefill_sm90(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                           T *__restrict__ out, float *__restrict__ lse, const int *__restrict__ cu_q,
                           const int *__restrict__ cu_k, long long q_b, long long q_s, long long q_h, long long k_b,
                           long long k_s, long long k_h, long long v_b, long long v_s, long long v_h, long long o_b,
                           long long o_s, long long o_h, long long l_b, long long l_s, long long l_h, int seq_q,
                           int seq_k, int group, float scale_log2, yk_page_table pt,
                           const __grid_constant__ yk_tensor_map k_map, const __grid_constant__ yk_tensor_map v_map) {
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

  float o[HEAD_DIM / 8][4];
  yk_zero(o);
  float m_row[2] = {-INFINITY, -INFINITY}, l_row[2] = {0.f, 0.f};
  const int my_row = row0 + wg * 64 + warp * 16 + g; // rows my_row and my_row + 8
  const T *q_rows = sQ + wg * 64 * 64;               // this warpgroup's 64 rows: whole atoms

  // The MMAs of tile t, as every loop issues them (each group committed; the caller fences and waits)
  float s[BLOCK_N / 8][4];
  unsigned p[NSTEPS][4];
  auto issue_s = [&](int t, unsigned long long q_desc) { // S = Q K_t^T; k step: 16 columns, 32 bytes a row
    const unsigned long long k_desc = yk_descriptor(sK + (t % STAGES) * BLOCK_N * HEAD_DIM, 16);
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
      yk_wgmma<BLOCK_N>::ss(s, q_desc + yk_moved((ks / 4) * BLOCK_M * 64 + (ks % 4) * 16),
                            k_desc + yk_moved((ks / 4) * BLOCK_N * 64 + (ks % 4) * 16), ks > 0);
    yk_wgmma_commit();
  };
  auto issue_pv = [&](int t) { // O += P V_t; 16 keys: two 8-row atoms, column blocks BLOCK_N rows apart
    const unsigned long long v_desc = yk_descriptor(sV + (t % STAGES) * BLOCK_N * HEAD_DIM, BLOCK_N * 128);
#pragma unroll
    for (int kt = 0; kt < NSTEPS; ++kt) yk_wgmma<HEAD_DIM>::rs(o, p[kt], v_desc + yk_moved(kt * 16 * 64), 1);
    yk_wgmma_commit();
  };

  if constexpr (PIPELINE == 0) {
    auto load_kv = [&](int tile) {
      const int first = tile * BLOCK_N, stage = tile % STAGES;
      load_swizzled<BLOCK_N>(sK + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                             [&](int r) { return kr.at(first + r); });
      load_swizzled<BLOCK_N>(sV + stage * BLOCK_N * HEAD_DIM, n_end - first, tid,
                             [&](int r) { return vr.at(first + r); });
    };
    load_swizzled<BLOCK_M>(sQ, len_q - row0, tid, [&](int r) { return qp + (long long)r * q_s; });
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
      if (t < n_tiles) load_kv(t);
      yk_cp_async_commit();
    }

    for (int j = 0; j < n_tiles; ++j) {
      if (j + STAGES - 1 < n_tiles) load_kv(j + STAGES - 1);
      yk_cp_async_commit();
      yk_cp_async_wait<STAGES - 1>();
      yk_fence_async_smem();
      __syncthreads();
      yk_wgmma_fence();
      issue_s(j, yk_descriptor(q_rows, 16));
      yk_wgmma_wait<0>();
      yk_wgmma_hold(s);

      if (j >= unmasked) yk_mask_scores(s, j * BLOCK_N, len_k, CAUSAL, my_row, shift, t4);
      yk_softmax_step(s, o, m_row, l_row, scale_log2);

#pragma unroll
      for (int kt = 0; kt < NSTEPS; ++kt) yk_p_fragment(p[kt], s, kt);
      yk_wgmma_fence();
      yk_wgmma_hold(o);
      issue_pv(j);
      yk_wgmma_wait<0>();
      yk_wgmma_hold(o);
      __syncthreads(); // every warpgroup is done with this stage before it is loaded again
    }
    if (n_tiles == 0) { // Q's copies, some into other warpgroups' rows, land before O is staged there
      yk_cp_async_wait<0>();
      __syncthreads();
    }
  } else {
    // Stage s of K (V): full_k[s] (full_v[s]) completes a phase when a tile's copies have landed
    // (the producer's 128 cp.async arrivals; under TMA one arrival and the tile's bytes);
    // empty_k[s] (empty_v[s]) when all 4 x WARPGROUPS consumer warps
    // have retired the MMAs that read it. Tile t uses stage t % STAGES for the (t / STAGES)-th time,
    // so it waits for phase t / STAGES of full, and the producer, before overwriting the stage with
    // tile t, for phase t / STAGES - 1 of empty (the release of tile t - STAGES).
    unsigned long long *full_k = reinterpret_cast<unsigned long long *>(sV + STAGES * BLOCK_N * HEAD_DIM);
    unsigned long long *full_v = full_k + STAGES, *empty_k = full_v + STAGES, *empty_v = empty_k + STAGES;
    if (tid == 0) {
#pragma unroll
      for (int stage = 0; stage < STAGES; ++stage) {
        yk_mbar_init(full_k + stage, TMA ? 1 : 128), yk_mbar_init(full_v + stage, TMA ? 1 : 128);
        yk_mbar_init(empty_k + stage, 4 * WARPGROUPS), yk_mbar_init(empty_v + stage, 4 * WARPGROUPS);
      }
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads(); // the only block-wide barrier: the mbarriers exist before anyone uses them

    if (wg == WARPGROUPS) { // ---- the producer ----
      if constexpr (WARPGROUPS > 1) yk_registers_down<PRODUCER_KEEPS>();
      if constexpr (TMA) {
        if (warp != 0) return;
        // whole tiles: lane 0 arms the full barrier with the tile's bytes and issues the copies; the
        // tile the sequence ends inside: the warp's cp.async, each lane's copies an arrival on top of
        // lane 0's, which comes once every lane has raised the pending count (__syncwarp)
        auto put = [&](T *tile, const yk_tensor_map &map, const auto &rows, unsigned long long *full, int first) {
          if (first + BLOCK_N <= n_end) {
            if (lane == 0) {
              yk_mbar_arrive_expecting(full, BLOCK_N * HEAD_DIM * (unsigned)sizeof(T));
              yk_tma_tile<BLOCK_N>(tile, map, full, k_start + first, kv_head, RAGGED ? 0 : batch);
            }
          } else {
            yk_copy_tile_by_warp<BLOCK_N>(tile, first, n_end - first, lane, rows);
            yk_mbar_arrive_on_copies_extra(full);
            __syncwarp();
            if (lane == 0) yk_mbar_arrive(full);
          }
        };
#pragma unroll 1
        for (int t = 0; t < n_tiles; ++t) {
          const int stage = t % STAGES, first = t * BLOCK_N;
          const unsigned use = (unsigned)(t / STAGES);
          if (use > 0) yk_mbar_wait(empty_k + stage, (use - 1) & 1);
          put(sK + stage * BLOCK_N * HEAD_DIM, k_map, kr, full_k + stage, first);
          if (use > 0) yk_mbar_wait(empty_v + stage, (use - 1) & 1);
          put(sV + stage * BLOCK_N * HEAD_DIM, v_map, vr, full_v + stage, first);
        }
        asm volatile("cp.async.wait_all;" ::: "memory");
        return;
      }
      const int p = tid - CONSUMERS;
#pragma unroll 1
      for (int t = 0; t < n_tiles; ++t) {
        const int stage = t % STAGES, first = t * BLOCK_N;
        const unsigned use = (unsigned)(t / STAGES);
        if (use > 0) yk_mbar_wait(empty_k + stage, (use - 1) & 1);
        yk_produce_tile<BLOCK_N>(sK + stage * BLOCK_N * HEAD_DIM, first, n_end - first, p, kr);
        yk_mbar_arrive_on_copies(full_k + stage);
        if (use > 0) yk_mbar_wait(empty_v + stage, (use - 1) & 1);
        yk_produce_tile<BLOCK_N>(sV + stage * BLOCK_N * HEAD_DIM, first, n_end - first, p, vr);
        yk_mbar_arrive_on_copies(full_v + stage);
      }
      asm volatile("cp.async.wait_all;" ::: "memory"); // no copy outlives its thread
      return;
    }

    // ---- the consumers: warpgroup wg, query rows [64 wg, 64 wg + 64) of the block ----
    if constexpr (WARPGROUPS > 1) yk_registers_up<CONSUMER_TAKES>();
    const int wt = tid % 128;
    yk_load_rows<BLOCK_M, 64, 128>(sQ, wg * 64, len_q - row0, wt, [&](int r) { return qp + (long long)r * q_s; });
    yk_cp_async_commit(); // wait_group waits for committed groups only
    yk_cp_async_wait<0>();
    yk_fence_async_smem();
    yk_warpgroup_sync<BAR_Q, WARPGROUPS>(wg);

    // Turns (pipeline 2): issue point i of warpgroup 0 follows point i - 1 of warpgroup 1, point i of
    // warpgroup 1 follows point i of warpgroup 0. Each warpgroup has the same n_tiles + 1 points
    // (S_0; S_j with P_{j-1} V_{j-1}; the last P V), so every arrival below meets its sync: warpgroup
    // 0's first turn is its own arrival, and warpgroup 1 does not hand on its last one.
    auto my_turn = [&]() {
      if constexpr (PIPELINE == 2) {
        if (wg == 0) yk_named_sync<BAR_TURN, 256>();
        else yk_named_sync<BAR_TURN + 1, 256>();
      }
    };
    auto end_turn = [&](bool last) {
      if constexpr (PIPELINE == 2) {
        if (wg == 0) yk_named_arrive<BAR_TURN + 1, 256>();
        else if (!last) yk_named_arrive<BAR_TURN, 256>();
      }
    };
    if constexpr (PIPELINE == 2)
      if (wg == 0 && n_tiles > 0) yk_named_arrive<BAR_TURN, 256>();

    auto wait_full = [&](unsigned long long *full, int t) {
      yk_mbar_wait(full + t % STAGES, (unsigned)(t / STAGES) & 1);
    };
    auto fence_copied = [&](int t) { // tile t came through the generic proxy (cp.async): hand it over
      if (!TMA || (t + 1) * BLOCK_N > n_end) yk_fence_async_smem();
    };
    auto release = [&](unsigned long long *empty, int t) { // after this warp's wait retired its reads
      if (lane == 0) yk_mbar_arrive(empty + t % STAGES);
    };

    const unsigned long long q_desc = yk_descriptor(q_rows, 16);
    float alpha[2];

    if (n_tiles > 0) {
      wait_full(full_k, 0);
      fence_copied(0);
      my_turn();
      yk_wgmma_fence();
      issue_s(0, q_desc);
      end_turn(false);
      yk_wgmma_wait<0>();
      yk_wgmma_hold(s);
      release(empty_k, 0);
      if (0 >= unmasked) yk_mask_scores(s, 0, len_k, CAUSAL, my_row, shift, t4);
      yk_softmax_scores(s, m_row, l_row, alpha, scale_log2); // O is still zero: no rescale
#pragma unroll
      for (int kt = 0; kt < NSTEPS; ++kt) yk_p_fragment(p[kt], s, kt);

#pragma unroll 1
      for (int j = 1; j < n_tiles; ++j) {
        wait_full(full_k, j);
        wait_full(full_v, j - 1);
        fence_copied(j); // tile j - 1 is whole: only the last tile can end early
        my_turn();
        yk_wgmma_fence();   // orders the writes of s, p and o above before the MMAs read them
        issue_s(j, q_desc); // group 1
        issue_pv(j - 1);    // group 2
        end_turn(false);
        yk_wgmma_wait<1>(); // group 1 (S_j) complete; group 2 may run on
        yk_wgmma_hold(s);
        release(empty_k, j);
        if (j >= unmasked) yk_mask_scores(s, j * BLOCK_N, len_k, CAUSAL, my_row, shift, t4);
        yk_softmax_scores(s, m_row, l_row, alpha, scale_log2); // touches neither o nor p
        yk_wgmma_wait<0>(); // group 2 (P_{j-1} V_{j-1}) complete: o and p are ours again
        yk_wgmma_hold(o);
        yk_wgmma_hold(p);
        release(empty_v, j - 1);
        yk_rescale(o, alpha);
#pragma unroll
        for (int kt = 0; kt < NSTEPS; ++kt) yk_p_fragment(p[kt], s, kt);
      }

      wait_full(full_v, n_tiles - 1);
      fence_copied(n_tiles - 1);
      my_turn();
      yk_wgmma_fence();
      issue_pv(n_tiles - 1);
      end_turn(true);
      yk_wgmma_wait<0>();
      yk_wgmma_hold(o);
      yk_wgmma_hold(p);
      // the last V stage needs no release: the producer loads nothing more
    }
  }

  // O leaves through this warpgroup's own rows of sQ (its last S has retired), in Q's swizzle, so the
  // quads' 4-byte writes meet no bank conflict and each thread then stores 16 bytes, a warp whole
  // rows, not 32 4-byte stores a thread into half sectors: at D128 a block's stores take 1.0 us, not
  // 1.8, and the SM's next block starts 0.13 us sooner (bench/NOTES.md item 93). The host asks every
  // row of out to start on 16 bytes (yk_attention_check_aligned). Unrolled by 2, not 8: fully
  // unrolled, the paged three-warpgroup specs at head dim 64 spill. The offsets are yk_swizzled's
  // spelled out: through it (row and column of unknown sign) the D128 kernel took 8 more instructions.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int rr = warp * 16 + g + 8 * r, row = my_row + 8 * r;
    const float l = yk_quad_sum(l_row[r]), inv = yk_row_inverse(l);
    T *staged = sQ + (wg * 64 + rr) * 64;
#pragma unroll
    for (int nt = 0; nt < HEAD_DIM / 8; ++nt)
      *reinterpret_cast<unsigned *>(staged + (nt / 8) * BLOCK_M * 64 + (((nt % 8) ^ (rr % 8)) * 8) + 2 * t4) =
          yk_pack2(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
    if (lse && row < len_q && t4 == 0)
      lse[batch * l_b + (long long)(q_start + row) * l_s + head * l_h] = yk_row_lse(m_row[r], l);
  }
  yk_warpgroup_sync<BAR_Q, WARPGROUPS>(wg);
  constexpr int CHUNKS = HEAD_DIM / 8; // 16-byte chunks a row
  const int wt = tid % 128;
#pragma unroll 2
  for (int i = 0; i < 64 * CHUNKS / 128; ++i) {
    const int idx = i * 128 + wt, rr = idx / CHUNKS, c = idx % CHUNKS, row = row0 + wg * 64 + rr;
    const T *chunk = sQ + (c / 8) * BLOCK_M * 64 + (wg * 64 + rr) * 64 + (((c % 8) ^ (rr % 8)) * 8);
    if (row < len_q)
      *reinterpret_cast<uint4 *>(out + batch * o_b + (long long)(q_start + row) * o_s + head * o_h + c * 8) =
          *reinterpret_cast<const uint4 *>(chunk);
  }
}
