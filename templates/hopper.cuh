// Building blocks of the Hopper (sm_90a) kernels: tiles in the 128-byte swizzled layout the
// warpgroup MMA reads, their matrix descriptors, mbarriers, named barriers, register moves between
// warpgroups and bulk tensor copies. Included after attention_common.cuh and wgmma.cuh.
//   Swizzled layout: 64-element column blocks, 8-row atoms of 1 KB, 16-byte chunk c of row r at
//   c ^ (r % 8); tiles start 1 KB aligned.

// Element offset of (r, c) in a swizzled ROWS x HEAD_DIM tile; c a multiple of 8.
template <int ROWS> __device__ __forceinline__ int yk_swizzled(int r, int c) {
  return (c / 64) * ROWS * 64 + (r / 8) * 512 + (r % 8) * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8);
}

// Rows [row0, row0 + COUNT) of a swizzled ROWS-row tile, by NTHREADS threads (tid in [0, NTHREADS)),
// 16 bytes a cp.async: row r from src(r), zeros for r >= valid (src(0) must be a real row).
template <int ROWS, int COUNT, int NTHREADS, class RowAddress>
__device__ __forceinline__ void yk_load_rows(T *tile, int row0, int valid, int tid, RowAddress src) {
  constexpr int CHUNKS = HEAD_DIM / 8, TOTAL = COUNT * CHUNKS;
#pragma unroll
  for (int k = 0; k < (TOTAL + NTHREADS - 1) / NTHREADS; ++k) {
    const int i = tid + k * NTHREADS;
    if (TOTAL % NTHREADS == 0 || i < TOTAL) {
      const int r = row0 + i / CHUNKS, c = (i % CHUNKS) * 8;
      const bool ok = r < valid;
      yk_cp_async16(tile + yk_swizzled<ROWS>(r, c), ok ? src(r) + c : src(0), ok ? 16 : 0);
    }
  }
}

// A producer warpgroup's copy of one ROWS-row tile, lean on registers (a producer keeps few):
// thread p of 128 moves 16-byte chunk p % CHUNKS of rows p / CHUNKS + ROW_STEP i, whose swizzled
// places lie ROW_STEP / 8 atoms apart from one base; row r from rows.at(first + r), zeros for r >= valid.
// At head dim 256 a step is 4 rows, half an atom: rows 8 apart share a swizzle, so a thread keeps two
// bases (rows r0 and r0 + 4) and alternates.
template <int ROWS, class Rows>
__device__ __forceinline__ void yk_produce_tile(T *tile, int first, int valid, int p, const Rows &rows) {
  constexpr int CHUNKS = HEAD_DIM / 8, ROW_STEP = 128 / CHUNKS, BASES = ROW_STEP < 8 ? 8 / ROW_STEP : 1;
  constexpr int ATOM_STEP = ROW_STEP * BASES / 8; // atoms between one base's rows
  static_assert(128 % CHUNKS == 0 && ROW_STEP * BASES % 8 == 0 && ROWS % (ROW_STEP * BASES) == 0,
                "whole atoms a step");
  const int r0 = p / CHUNKS, c = (p % CHUNKS) * 8;
#pragma unroll
  for (int b = 0; b < BASES; ++b) {
    T *dst = tile + yk_swizzled<ROWS>(r0 + b * ROW_STEP, c);
#pragma unroll 4
    for (int i = 0; i < ROWS / (ROW_STEP * BASES); ++i) {
      const int r = r0 + b * ROW_STEP + i * ROW_STEP * BASES;
      const bool ok = r < valid;
      yk_cp_async16(dst + i * ATOM_STEP * 512, rows.at(first + (ok ? r : 0)) + c, ok ? 16 : 0);
    }
  }
}

// A ROWS-row tile by one warp with cp.async, rows from `valid` on zero-filled: the tile a sequence
// ends inside, where a bulk tensor copy would read the next sequence's rows. Not unrolled: a producer
// keeps few registers.
template <int ROWS, class Rows>
__device__ __forceinline__ void yk_copy_tile_by_warp(T *tile, int first, int valid, int lane, const Rows &rows) {
  constexpr int CHUNKS = HEAD_DIM / 8;
#pragma unroll 1
  for (int i = lane; i < ROWS * CHUNKS; i += 32) {
    const int r = i / CHUNKS, c = (i % CHUNKS) * 8;
    const bool ok = r < valid;
    yk_cp_async16(tile + yk_swizzled<ROWS>(r, c), rows.at(first + (ok ? r : 0)) + c, ok ? 16 : 0);
  }
}

// Matrix descriptor: start address, leading and stride byte offsets (16-byte units), 128B swizzle.
// A descriptor plus an element offset is the descriptor of the moved start (the address field is
// the low 14 bits, shared memory below 256 KB), so k steps add constants rather than rebuild it.
__device__ __forceinline__ unsigned long long yk_descriptor(const T *start, unsigned leading_bytes) {
  const unsigned long long address = yk_smem_address(start);
  return ((address & 0x3FFFF) >> 4) | ((unsigned long long)(leading_bytes >> 4) << 16) | ((1024ull >> 4) << 32) |
         (1ull << 62);
}
__host__ __device__ constexpr unsigned long long yk_moved(int elements) {
  return (unsigned long long)(elements * 2 / 16);
}

// ---- mbarriers (shared::cta, default .release / .acquire at CTA scope) ----
__device__ __forceinline__ void yk_mbar_init(unsigned long long *bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(yk_smem_address(bar)), "r"(count) : "memory");
}
// Returns once the phase of parity `parity` has completed (acquire: what the arrivals ordered before
// them is visible after).
__device__ __forceinline__ void yk_mbar_wait(unsigned long long *bar, unsigned parity) {
  const unsigned address = yk_smem_address(bar);
  unsigned done;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done)
                 : "r"(address), "r"(parity)
                 : "memory");
  } while (!done);
}
__device__ __forceinline__ void yk_mbar_arrive(unsigned long long *bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}" ::"r"(yk_smem_address(bar))
               : "memory");
}
// One arrival on bar once every cp.async this thread issued so far has landed (.noinc: the arrival
// counts against the barrier's expected count, which includes it).
__device__ __forceinline__ void yk_mbar_arrive_on_copies(unsigned long long *bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(yk_smem_address(bar)) : "memory");
}
template <int ID, int COUNT> __device__ __forceinline__ void yk_named_sync() {
  asm volatile("bar.sync %0, %1;" ::"n"(ID), "n"(COUNT) : "memory");
}
template <int ID, int COUNT> __device__ __forceinline__ void yk_named_arrive() {
  asm volatile("bar.arrive %0, %1;" ::"n"(ID), "n"(COUNT) : "memory");
}
// Warpgroup wg's own named barrier, FIRST + wg, among its 128 threads (of GROUPS consumer
// warpgroups, two or three).
template <int FIRST, int GROUPS = 2> __device__ __forceinline__ void yk_warpgroup_sync(int wg) {
  if (GROUPS > 2 && wg == 2)
    yk_named_sync<FIRST + 2, 128>();
  else if (wg == 0)
    yk_named_sync<FIRST, 128>();
  else
    yk_named_sync<FIRST + 1, 128>();
}
// ---- the tensor memory accelerator ----
// A CUtensorMap's 128 bytes, passed by value as a __grid_constant__ parameter: the bulk copies read
// it where it lies in parameter memory.
struct __align__(64) yk_tensor_map {
  unsigned long long opaque[16];
};
// The phase of bar now also waits for `bytes` more bytes of bulk copies (and takes this thread's
// arrival: the full barriers count one arrival a tile under TMA).
__device__ __forceinline__ void yk_mbar_arrive_expecting(unsigned long long *bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(yk_smem_address(bar)), "r"(bytes)
               : "memory");
}
// Rows [row, row + ROWS) of one head (and batch entry) through map: HEAD_DIM / 64 boxes of 64
// columns, each a ROWS-row column block of the swizzled tile; their bytes complete on bar.
template <int ROWS>
__device__ __forceinline__ void yk_tma_tile(T *tile, const yk_tensor_map &map, unsigned long long *bar, int row,
                                            int head, int batch) {
#pragma unroll
  for (int cb = 0; cb < HEAD_DIM / 64; ++cb)
    asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
                 "%4, %5}], [%6];" ::"r"(yk_smem_address(tile + cb * ROWS * 64)),
                 "l"(reinterpret_cast<unsigned long long>(&map)), "r"(cb * 64), "r"(row), "r"(head), "r"(batch),
                 "r"(yk_smem_address(bar))
                 : "memory");
}
// An arrival on bar once this thread's cp.async copies so far have landed, counted on top of the
// barrier's expected arrivals (no .noinc): the pending count rises now and falls when they land.
__device__ __forceinline__ void yk_mbar_arrive_on_copies_extra(unsigned long long *bar) {
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];" ::"r"(yk_smem_address(bar)) : "memory");
}
template <int REGS> __device__ __forceinline__ void yk_registers_down() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
}
template <int REGS> __device__ __forceinline__ void yk_registers_up() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
}
