// Tensor-core and async-copy building blocks of the attention kernels (sm_80 and newer):
// mma.sync m16n8k16 with float32 accumulators, ldmatrix, cp.async, packed conversions.
//
// Fragment layouts of mma.m16n8k16 (lane = threadIdx.x % 32, g = lane / 4, t = lane % 4):
//   A 16x16, 4 regs: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B 16x8 (k x n), 2 regs: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C 16x8 float, 4 regs: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// Two neighbouring C tiles (n 0-7 and 8-15) are, once packed to 16 bits, exactly the A fragment of
// a 16x16 tile: a0 = pack(c[0], c[1]) of the first, a1 = pack(c[2], c[3]), a2, a3 of the second.

static_assert(DTYPE == YK_F16 || DTYPE == YK_BF16, "attention kernels take float16 or bfloat16");

// Two floats packed as 16-bit elements of type DT (the kernel's T unless asked), lo first.
template <int DT = DTYPE> __device__ __forceinline__ unsigned yk_pack2(float lo, float hi) {
  unsigned r;
  if (DT == YK_BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// d += a * b, with a and b of type DT
template <int DT = DTYPE>
__device__ __forceinline__ void yk_mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if (DT == YK_BF16)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned yk_smem_address(const void *p) {
  return (unsigned)__cvta_generic_to_shared(p);
}

// Four 8x8 matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void yk_ldmatrix_x4(unsigned (&r)[4], const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(yk_smem_address(row)));
}
__device__ __forceinline__ void yk_ldmatrix_x4_trans(unsigned (&r)[4], const void *row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(yk_smem_address(row)));
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 fills the destination with zeros (rows
// past the end of a sequence), without reading the source. HINT, for data read once (decode's K
// and V): 1 or 2 ask L2 to prefetch the 128 or 256 bytes around, 3 marks the lines evict-first.
template <int HINT = 0> __device__ __forceinline__ void yk_cp_async16(void *dst, const void *src, int src_bytes) {
  if constexpr (HINT == 1) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(yk_smem_address(dst)), "l"(src),
                 "r"(src_bytes));
  } else if constexpr (HINT == 2) {
    asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(yk_smem_address(dst)), "l"(src),
                 "r"(src_bytes));
  } else if constexpr (HINT == 3) {
    unsigned long long policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;" ::"r"(yk_smem_address(dst)),
                 "l"(src), "r"(src_bytes), "l"(policy));
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(yk_smem_address(dst)), "l"(src),
                 "r"(src_bytes));
  }
}
__device__ __forceinline__ void yk_cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void yk_cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

// Shared-memory tiles of rows of HEAD_DIM 16-bit elements, in one of two layouts that both let
// the 8 rows one ldmatrix reads fall in 8 different 16-byte bank groups:
//   padded:   rows YK_ROW apart (16 bytes of padding a row);
//   swizzled: rows HEAD_DIM apart, the 16-byte chunk c of row r stored at chunk c ^ (r % 8) of its
//             128-byte group (head dims that are multiples of 64). Every 128 bytes of a global row
//             land in one aligned 128 bytes of shared memory, so cp.async reads each line with one
//             request; padded rows straddle 128-byte boundaries, and the decode kernel made 2.6
//             L2 requests a line and read a third of its sectors twice (ncu, H200).
constexpr int YK_ROW = HEAD_DIM + 8;
template <bool SWIZZLED> constexpr int yk_row_stride() { return SWIZZLED ? HEAD_DIM : YK_ROW; }
template <bool SWIZZLED> __device__ __forceinline__ int yk_tile_at(int r, int c) { // c: a multiple of 8
  return SWIZZLED ? r * HEAD_DIM + (c ^ ((r & 7) << 3)) : r * YK_ROW + c;
}

// Copies rows [0, rows) of a [rows x HEAD_DIM] tile to shared memory (padded or SWIZZLED layout)
// with THREADS threads, 16 bytes each, with cp.async's L2 HINT; row r comes from src(r), or is
// zero-filled when r >= valid. The trip count is known: a loop from tid, which the compiler cannot
// bound, kept a remainder loop and an address a piece live (8 to 16 bytes of spills in the
// backward at head_dim 128). Where the threads cover whole rows, a thread's pieces are one column
// of rows r0, r0 + STEP, ...: 4 to 10 registers fewer than any pieces. A src that shuffles (paged
// decode) needs every lane of a warp to call it as often: ROWS * HEAD_DIM / 8 a multiple of 32 there.
template <int ROWS, int THREADS, int HINT = 0, bool SWIZZLED = false, class RowAddress>
__device__ __forceinline__ void yk_load_tile(T *smem, int valid, int tid, RowAddress src) {
  constexpr int CHUNKS = HEAD_DIM / 8, PIECES = ROWS * CHUNKS; // 16-byte chunks a row, a tile
  static_assert(!SWIZZLED || HEAD_DIM % 64 == 0, "swizzled rows are whole 128-byte groups");
  auto piece = [&](int r, int c) {
    const bool ok = r < valid;
    const T *row = src(ok ? r : 0); // row 0 past the end
    yk_cp_async16<HINT>(smem + yk_tile_at<SWIZZLED>(r, c), ok ? row + c : row, ok ? 16 : 0);
  };
  if constexpr (THREADS % CHUNKS == 0) {
    constexpr int STEP = THREADS / CHUNKS;
    const int r0 = tid / CHUNKS, c = (tid % CHUNKS) * 8;
#pragma unroll
    for (int it = 0; it < (ROWS + STEP - 1) / STEP; ++it) {
      const int r = r0 + it * STEP;
      if (ROWS % STEP && r >= ROWS) break;
      piece(r, c);
    }
  } else {
#pragma unroll
    for (int it = 0; it < (PIECES + THREADS - 1) / THREADS; ++it) {
      const int i = tid + it * THREADS;
      if (PIECES % THREADS && i >= PIECES) break;
      piece(i / CHUNKS, (i % CHUNKS) * 8);
    }
  }
}

// ---- float8 e4m3 keys and values (a float8 KV cache) ----
// The element type of K and V rows: T, or a byte each (KV_FLOAT8 kernels).
template <bool FLOAT8> struct yk_kv_element { typedef T type; };
template <> struct yk_kv_element<true> { typedef unsigned char type; };

// Where byte b of row r of a tile of float8 rows lies: rows HEAD_DIM bytes apart, and SWIZZLED,
// the 16-byte chunk of linear index L at (L & ~7) | ((L & 7) ^ h(key)), keyed by the row where rows
// are whole 128-byte lines and by the line otherwise. Every global line still lands in one aligned
// 128 bytes of shared memory (one L2 request, as yk_tile_at's swizzle), and the decode kernel's
// fragment reads (attention_decode.cu) fall in distinct banks at head dims 64, 128 and 256. A piece
// of 2, 4, 8 or 16 bytes at a multiple of its size never crosses a chunk.
template <bool SWIZZLED> __device__ __forceinline__ int yk_byte_at(int r, int b) {
  if (!SWIZZLED) return r * HEAD_DIM + b;
  constexpr int CHUNKS = HEAD_DIM / 16;
  const int L = r * CHUNKS + b / 16, key = CHUNKS % 8 == 0 ? r : L / 8;
  return ((L & ~7) | ((L & 7) ^ (key & 6) ^ ((key & 1) << 2))) * 16 + b % 16;
}

// Copies rows [0, valid) of a ROWS x HEAD_DIM tile of float8 bytes to shared memory (yk_byte_at's
// layout); rows past valid are zeros. Every thread calls src as often as the others (a paged src
// shuffles across the warp), whatever ROWS * HEAD_DIM / 16 is.
template <int ROWS, int THREADS, int HINT = 0, bool SWIZZLED = false, class RowAddress>
__device__ __forceinline__ void yk_load_bytes(unsigned char *smem, int valid, int tid, RowAddress src) {
  constexpr int CHUNKS = HEAD_DIM / 16, PIECES = ROWS * CHUNKS;
#pragma unroll
  for (int it = 0; it < (PIECES + THREADS - 1) / THREADS; ++it) {
    const int i = tid + it * THREADS, r = i / CHUNKS, c = (i % CHUNKS) * 16;
    const bool ok = i < PIECES && r < valid;
    const unsigned char *row = src(ok ? r : 0);
    if (i < PIECES) yk_cp_async16<HINT>(smem + yk_byte_at<SWIZZLED>(r, c), ok ? row + c : row, ok ? 16 : 0);
  }
}

__device__ __forceinline__ unsigned yk_prmt(unsigned a, unsigned b, unsigned selector) {
  unsigned r;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(selector));
  return r;
}

// Four float8 e4m3 values (the bytes of w, the lowest first) as two pairs of DT (T unless asked;
// bytes 0, 1 in pair[0], the first in its low half), exactly: every e4m3 value is a float16 and a
// bfloat16. Float16: the hardware's pair conversion (sm_89 on). Bfloat16: the bits moved into place
// (sign, then exponent and mantissa 4 bits lower) and multiplied by 2^120 for the exponents'
// biases, which also makes e4m3's subnormals normal: ALU work, where converting through float16 and
// float32 takes four conversions a pair on units that run at a quarter of the ALU's rate. (There,
// e4m3's NaN reads as 480.)
template <int DT = DTYPE> __device__ __forceinline__ void yk_e4m3x4_to_pairs(unsigned w, unsigned (&pair)[2]) {
  if constexpr (DT == YK_BF16) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const unsigned y = yk_prmt(w, 0u, h ? 0x3424u : 0x1404u); // bytes 2h, 2h + 1 in the high byte of each half
      const unsigned bits = (y & 0x80008000u) | ((y >> 4) & 0x07f007f0u);
      asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(pair[h]) : "r"(bits), "r"(0x7b807b80u), "r"(0x80008000u));
    }
  } else {
#if __CUDA_ARCH__ >= 890
    asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %2; cvt.rn.f16x2.e4m3x2 %0, lo; cvt.rn.f16x2.e4m3x2 %1, hi; }"
        : "=r"(pair[0]), "=r"(pair[1])
        : "r"(w));
#else
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const yk_e4m3 lo = {(unsigned char)(w >> 16 * h)}, hi = {(unsigned char)(w >> (16 * h + 8))};
      pair[h] = (unsigned)yk_from_float<yk_f16>(yk_to_float(lo)).bits |
                (unsigned)yk_from_float<yk_f16>(yk_to_float(hi)).bits << 16;
    }
#endif
  }
}

// A tile of float8 rows (yk_load_bytes's, unswizzled) as T in a padded tile, by the THREADS
// threads of a block: 16 bytes in, two 16-byte chunks of T out.
template <int ROWS, int THREADS> __device__ __forceinline__ void yk_widen_tile(T *dst, const unsigned char *src, int tid) {
  constexpr int CHUNKS = HEAD_DIM / 16, PIECES = ROWS * CHUNKS;
#pragma unroll 2
  for (int i = tid; i < PIECES; i += THREADS) {
    const int r = i / CHUNKS, c = (i % CHUNKS) * 16;
    const uint4 bytes = *reinterpret_cast<const uint4 *>(src + r * HEAD_DIM + c);
    const unsigned words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
    unsigned out[4][2];
#pragma unroll
    for (int w = 0; w < 4; ++w) yk_e4m3x4_to_pairs(words[w], out[w]);
    *reinterpret_cast<uint4 *>(dst + yk_tile_at<false>(r, c)) = make_uint4(out[0][0], out[0][1], out[1][0], out[1][1]);
    *reinterpret_cast<uint4 *>(dst + yk_tile_at<false>(r, c + 8)) = make_uint4(out[2][0], out[2][1], out[3][0], out[3][1]);
  }
}

__device__ __forceinline__ float yk_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float yk_quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

constexpr float YK_LOG2E = 1.4426950408889634f, YK_LN2 = 0.6931471805599453f;

// ---- the pieces every attention kernel is made of ----
// Where sequence `batch` lies on the token axes. Dense batches: seq_q queries and seq_k keys at 0.
// Ragged sides (cu_q / cu_k, offsets in device memory): located by the offsets, with seq_q and
// seq_k bounding the lengths; false for a sequence out of those bounds, which is skipped, not read.
struct yk_sequence {
  int q_start, k_start, len_q, len_k;
};
template <bool RAGGED_Q, bool RAGGED_K>
__device__ __forceinline__ bool yk_locate(yk_sequence &s, const int *cu_q, const int *cu_k, int batch, int seq_q,
                                          int seq_k) {
  s = {0, 0, seq_q, seq_k};
  if (RAGGED_Q) s.q_start = cu_q[batch], s.len_q = cu_q[batch + 1] - s.q_start;
  if (RAGGED_K) s.k_start = cu_k[batch], s.len_k = cu_k[batch + 1] - s.k_start;
  return s.len_q >= 0 && s.len_k >= 0 && s.len_q <= seq_q && s.len_k <= seq_k;
}

// ---- paged keys ----
// The page table of a batch, in either form engines keep, and the geometry of the caches; passed
// by value, zero for contiguous keys. PAGED 1: vLLM's block_tables [batch][max_blocks] with
// context_lens (lens); PAGED 2: FlashInfer's CSR, sequence b owning indices[indptr[b] ..
// indptr[b + 1]) with lens = kv_last_page_len. The tables are in device memory, where the host
// cannot check them, so the kernels do: an entry out of bounds skips its sequence, and a block id
// outside the cache reads block 0; nothing is read outside the tensors.
struct yk_page_table {
  const int *indices, *indptr, *lens;
  long long k_block, v_block; // elements between consecutive blocks of the K and V caches
  int max_blocks;             // PAGED 1: entries a row of block_tables; PAGED 2: entries of indices
  int num_blocks;             // blocks in the caches
};

// Sequence b's block ids and key count; false for a table entry out of bounds (or above seq_k,
// the bound the grid was sized for).
template <int PAGED, int PAGE_SIZE>
__device__ __forceinline__ bool yk_locate_pages(const yk_page_table &t, int b, int seq_k, const int *&pages,
                                                int &len_k) {
  if (PAGED == 1) {
    pages = t.indices + (long long)b * t.max_blocks;
    len_k = t.lens[b];
    return len_k >= 0 && len_k <= seq_k && len_k <= t.max_blocks * PAGE_SIZE;
  }
  const int first = t.indptr[b], n = t.indptr[b + 1] - first, last = t.lens[b];
  pages = t.indices + first;
  len_k = n > 0 ? (n - 1) * PAGE_SIZE + last : 0;
  return first >= 0 && n >= 0 && first + n <= t.max_blocks && (n == 0 || (last >= 1 && last <= PAGE_SIZE)) &&
         len_k <= seq_k;
}

// yk_locate for kernels whose keys may be paged: the keys' length then comes from the page table.
template <bool RAGGED_Q, bool RAGGED_K, int PAGED, int PAGE_SIZE>
__device__ __forceinline__ bool yk_locate_keys(yk_sequence &s, const int *&pages, const int *cu_q, const int *cu_k,
                                               const yk_page_table &t, int batch, int seq_q, int seq_k) {
  pages = nullptr;
  if (!yk_locate<RAGGED_Q, RAGGED_K && PAGED == 0>(s, cu_q, cu_k, batch, seq_q, seq_k)) return false;
  return PAGED == 0 || yk_locate_pages<PAGED, PAGE_SIZE>(t, batch, seq_k, pages, s.len_k);
}

// Key (or value) row j of one kv head: contiguous rows (PAGE_SIZE 0: base is the sequence's first
// row) or rows of pages (base is the cache, row j in block pages[j / PAGE_SIZE]).
template <int PAGE_SIZE, class E = T> struct yk_key_rows { // E: the rows' element type (T, or float8 bytes)
  const E *base;
  long long row, block; // elements between rows (within a page), between blocks
  const int *pages;
  int num_blocks;
  __device__ __forceinline__ const E *at(int j) const {
    if (PAGE_SIZE == 0) return base + (long long)j * row;
    return in_page(page(j), j);
  }
  // Paged: the block holding row j (block 0 for an id outside the cache), and row j within block id.
  __device__ __forceinline__ int page(int j) const {
    const int id = __ldg(pages + j / (PAGE_SIZE ? PAGE_SIZE : 1));
    return (unsigned)id < (unsigned)num_blocks ? id : 0;
  }
  __device__ __forceinline__ const E *in_page(int id, int j) const {
    return base + (long long)id * block + (long long)(j % (PAGE_SIZE ? PAGE_SIZE : 1)) * row;
  }
};

// The key (or value) rows of kv head kv_head of sequence `batch`: contiguous from the sequence's
// first key (k_start on its token axis), or through its pages (base is then the whole cache).
template <int PAGE_SIZE, class E>
__device__ __forceinline__ yk_key_rows<PAGE_SIZE, E>
yk_rows_of(const E *base, long long b_stride, long long s_stride, long long h_stride, long long block_stride, int batch,
           int k_start, int kv_head, const int *pages, int num_blocks) {
  const E *first = PAGE_SIZE ? base : base + batch * b_stride + (long long)k_start * s_stride;
  return {first + kv_head * h_stride, s_stride, block_stride, pages, num_blocks};
}

// The block of ROWS query rows this block owns, -1 past the sequence's end. Causal grids start with
// the longest blocks (the bottom of the triangle) so the short ones fill the tail.
template <int ROWS, bool IS_CAUSAL> __device__ __forceinline__ int yk_query_block(int len_q) {
  const int m_block = IS_CAUSAL ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
  return m_block < (len_q + ROWS - 1) / ROWS ? m_block : -1;
}

// The keys query rows [row0, row0 + ROWS) visit (shift = len_k - len_q: query i sees keys
// j <= i + shift when causal): tiles [0, n_tiles) up to key n_end, of which the first `unmasked`
// need no mask, every key in them being visible to every row.
struct yk_key_tiles {
  int n_end, n_tiles, unmasked;
};
template <int ROWS, int TILE, bool IS_CAUSAL>
__device__ __forceinline__ yk_key_tiles yk_keys_of_rows(int row0, int len_k, int shift) {
  yk_key_tiles t;
  t.n_end = IS_CAUSAL ? min(len_k, max(0, row0 + ROWS + shift)) : len_k;
  t.n_tiles = (t.n_end + TILE - 1) / TILE;
  t.unmasked = IS_CAUSAL ? max(0, min(len_k, row0 + shift + 1)) / TILE : len_k / TILE;
  return t;
}

// Fragment addressing, lane l: an A operand (rows of its M index) reads row l % 16, column half
// l / 16; a B operand stored as rows of its N index ("k-major", like K in q k^T) row (l % 8) +
// 8 (l / 16), column half (l / 8) % 2; a B operand stored as rows of its K index (like V in p v,
// through ldmatrix.trans) row (l % 8) + 8 ((l / 8) % 2), column half l / 16.
// A padded tile's rows are a pointer (the lane's row and column; steps of rows and columns are
// added to it); a swizzled tile's are its lane's row and column, resolved at each step by yk_at.
// Steps are whole 8-row, 8-column blocks: they keep a row's r % 8 and a column's chunk alignment.
struct yk_swizzled_rows {
  const T *tile;
  int row, col;
  __device__ __forceinline__ yk_swizzled_rows operator+(int columns) const { return {tile, row, col + columns}; }
};
__device__ __forceinline__ const T *yk_at(const T *rows, int dr, int dc) { return rows + dr * YK_ROW + dc; }
__device__ __forceinline__ const T *yk_at(const yk_swizzled_rows &s, int dr, int dc) {
  return s.tile + yk_tile_at<true>(s.row + dr, s.col + dc);
}
template <bool SWIZZLED> __device__ __forceinline__ auto yk_rows_at(const T *tile, int row, int col) {
  if constexpr (SWIZZLED) return yk_swizzled_rows{tile, row, col};
  else return tile + row * YK_ROW + col;
}
template <bool SWIZZLED = false> __device__ __forceinline__ auto yk_a_rows(const T *tile, int lane) {
  return yk_rows_at<SWIZZLED>(tile, lane % 16, (lane / 16) * 8);
}
template <bool SWIZZLED = false> __device__ __forceinline__ auto yk_b_rows(const T *tile, int lane) {
  return yk_rows_at<SWIZZLED>(tile, lane % 8 + (lane / 16) * 8, ((lane / 8) % 2) * 8);
}
template <bool SWIZZLED = false> __device__ __forceinline__ auto yk_bt_rows(const T *tile, int lane) {
  return yk_rows_at<SWIZZLED>(tile, lane % 8 + ((lane / 8) % 2) * 8, (lane / 16) * 8);
}

template <int TILES> __device__ __forceinline__ void yk_zero(float (&acc)[TILES][4]) {
#pragma unroll
  for (int i = 0; i < TILES; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// One k step: acc[N/8] += a (16 x 16) * B^T, B's N rows k-major from b_rows (this step's columns).
template <int N, class Rows>
__device__ __forceinline__ void yk_mma_k_step(float (&acc)[N / 8][4], const unsigned (&a)[4], const Rows &b_rows) {
#pragma unroll
  for (int nt = 0; nt < N / 8; nt += 2) {
    unsigned b[4];
    yk_ldmatrix_x4(b, yk_at(b_rows, nt * 8, 0));
    yk_mma(acc[nt], a, b[0], b[1]);
    yk_mma(acc[nt + 1], a, b[2], b[3]);
  }
}

// acc[N/8] += A (16 x HEAD_DIM, rows from a_rows) * B^T (N rows k-major from b_rows).
template <int N, class ARows, class BRows>
__device__ __forceinline__ void yk_mma_rows(float (&acc)[N / 8][4], const ARows &a_rows, const BRows &b_rows) {
#pragma unroll
  for (int ks = 0; ks < HEAD_DIM / 16; ++ks) {
    unsigned a[4];
    yk_ldmatrix_x4(a, yk_at(a_rows, 0, ks * 16));
    yk_mma_k_step<N>(acc, a, b_rows + ks * 16);
  }
}

// The A fragment of keys [16 kt, 16 kt + 16) of P, from its float C tiles 2 kt and 2 kt + 1.
// (DT: the fragment's type, T unless asked)
template <int TILES, int DT = DTYPE>
__device__ __forceinline__ void yk_p_fragment(unsigned (&a)[4], const float (&p)[TILES][4], int kt) {
  a[0] = yk_pack2<DT>(p[2 * kt][0], p[2 * kt][1]), a[1] = yk_pack2<DT>(p[2 * kt][2], p[2 * kt][3]);
  a[2] = yk_pack2<DT>(p[2 * kt + 1][0], p[2 * kt + 1][1]), a[3] = yk_pack2<DT>(p[2 * kt + 1][2], p[2 * kt + 1][3]);
}

// acc[COLS/8] += A (16 x 16, the A fragment a of k step kt) * B (rows [16 kt, 16 kt + 16) of which
// COLS columns, from bt_rows via ldmatrix.trans).
template <int COLS, class Rows>
__device__ __forceinline__ void yk_mma_trans_step(float (&acc)[COLS / 8][4], const unsigned (&a)[4], const Rows &bt_rows,
                                                  int kt) {
#pragma unroll
  for (int nt = 0; nt < COLS / 8; nt += 2) {
    unsigned b[4];
    yk_ldmatrix_x4_trans(b, yk_at(bt_rows, kt * 16, nt * 8));
    yk_mma(acc[nt], a, b[0], b[1]);
    yk_mma(acc[nt + 1], a, b[2], b[3]);
  }
}

// acc[COLS/8] += P (16 x K, float C tiles) * B (K rows of which COLS columns, from bt_rows via
// ldmatrix.trans).
template <int K, int COLS, class Rows>
__device__ __forceinline__ void yk_mma_p_rows(float (&acc)[COLS / 8][4], const float (&p)[K / 8][4], const Rows &bt_rows) {
#pragma unroll
  for (int kt = 0; kt < K / 16; ++kt) {
    unsigned a[4];
    yk_p_fragment(a, p, kt);
    yk_mma_trans_step<COLS>(acc, a, bt_rows, kt);
  }
}

// The same with A already packed: a[kt] the A fragment of k step kt.
template <int K, int COLS, class Rows>
__device__ __forceinline__ void yk_mma_packed_rows(float (&acc)[COLS / 8][4], const unsigned (&a)[K / 16][4],
                                                   const Rows &bt_rows) {
#pragma unroll
  for (int kt = 0; kt < K / 16; ++kt) yk_mma_trans_step<COLS>(acc, a[kt], bt_rows, kt);
}

// -inf for keys past len_k and, causally, past each row's diagonal (key > row + shift); s's
// columns start at key0, its rows are row0 and row0 + 8.
template <int TILES>
__device__ __forceinline__ void yk_mask_scores(float (&s)[TILES][4], int key0, int len_k, bool causal, int row0,
                                               int shift, int t4) {
#pragma unroll
  for (int nt = 0; nt < TILES; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + nt * 8 + 2 * t4 + (e & 1), row = row0 + (e >> 1) * 8;
      if (key >= len_k || (causal && key > row + shift)) s[nt][e] = -INFINITY;
    }
}

// The online softmax of rows g (elements 0, 1) and g + 8 (2, 3), without touching O: turns scores
// into probabilities against the running maximum (base 2, scale folded in), updates the per-thread
// sums, and returns each row's factor for O. Rows that have seen no key keep maximum -inf and
// contribute nothing. (The Hopper prefill's pipelines rescale O later, once the MMA still
// accumulating into it has retired.)
template <int S_TILES>
__device__ __forceinline__ void yk_softmax_scores(float (&s)[S_TILES][4], float (&m_row)[2], float (&l_row)[2],
                                                  float (&alpha)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < S_TILES; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    const float m_new = fmaxf(m_row[r], yk_quad_max(mx) * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = exp2f(m_row[r] - m_use);
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < S_TILES; ++nt) {
      s[nt][2 * r] = exp2f(s[nt][2 * r] * scale_log2 - m_use);
      s[nt][2 * r + 1] = exp2f(s[nt][2 * r + 1] * scale_log2 - m_use);
      sum += s[nt][2 * r] + s[nt][2 * r + 1];
    }
    l_row[r] = l_row[r] * alpha[r] + sum;
    m_row[r] = m_new;
  }
}

template <int O_TILES> __device__ __forceinline__ void yk_rescale(float (&o)[O_TILES][4], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < O_TILES; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) o[i][2 * r] *= alpha[r], o[i][2 * r + 1] *= alpha[r];
}

// One whole online softmax step: the probabilities, then O rescaled.
template <int S_TILES, int O_TILES>
__device__ __forceinline__ void yk_softmax_step(float (&s)[S_TILES][4], float (&o)[O_TILES][4], float (&m_row)[2],
                                                float (&l_row)[2], float scale_log2) {
  float alpha[2];
  yk_softmax_scores(s, m_row, l_row, alpha, scale_log2);
  yk_rescale(o, alpha);
}

// A finished row's lse (natural log) from its running max m (log2 units) and whole sum l, and what
// its o is scaled by: -inf and 0 for a row that saw no key, whose o is then written as 0.
__device__ __forceinline__ float yk_row_lse(float m, float l) {
  return l > 0.f ? (m + __log2f(l)) * YK_LN2 : -INFINITY;
}
__device__ __forceinline__ float yk_row_inverse(float l) { return l > 0.f ? 1.f / l : 0.f; }

// Finishes row r (0: g, 1: g + 8): writes o / l to row_out (NULL: not this block's row) and returns
// the row's lse. Every lane of the quad calls it.
template <int O_TILES>
__device__ __forceinline__ float yk_finish_row(const float (&o)[O_TILES][4], float m, float l_part, int r,
                                               T *row_out, int t4) {
  const float l = yk_quad_sum(l_part), inv = yk_row_inverse(l);
  if (row_out) {
#pragma unroll
    for (int nt = 0; nt < O_TILES; ++nt)
      *reinterpret_cast<unsigned *>(row_out + nt * 8 + 2 * t4) = yk_pack2(o[nt][2 * r] * inv, o[nt][2 * r + 1] * inv);
  }
  return yk_row_lse(m, l);
}
