// Writes new tokens' K and V into their pages of a paged KV cache, one block a token; k rotated
// on the way when ROPE is set (k itself is read only). Bandwidth-bound: every access is a VEC
// vector (16 bytes where the tensors' alignment allows), K and V copied as raw words so the cache
// receives the exact bits; rotated dimensions go through float with yk_rope's arithmetic
// (templates/rope_rotate.cuh, which rope.cu uses too), so a fused append writes what yk_rope then a plain append would.
//
// Destination of token t: INDEX_SLOTS*: slot = slots[t], block slot / page_size, offset
// slot % page_size (vLLM); INDEX_CSR: position positions[t] of sequence batch_indices[t], block
// kv_indices[kv_indptr[b] + position / page_size] (FlashInfer). A negative slot or position is
// padding, skipped; so is a slot, sequence, page or block outside what the parameters bound: the
// host cannot check index tensors in device memory, and a bad one must not write out of bounds.
// A rope position outside [0, max_position) writes k unrotated, as yk_rope leaves such a token.
// A float8 cache (KV_FLOAT8) gets each value times its inverse scale, rounded to float8 (the
// rotated ones rounded to T first), with cpu_fallback/append_kv.c's arithmetic.
//
// Spec constants: T, HEAD_DIM, ROT_DIM, ROPE, VEC, THREADS, INDEX, CACHE_TYPE, POS_TYPE, KV_FLOAT8.

typedef yk_type_of<CACHE_TYPE>::type C;
template <bool FLOAT8> struct cache_element { typedef T type; };
template <> struct cache_element<true> { typedef yk_e4m3 type; };
typedef cache_element<KV_FLOAT8>::type E;     // the KV cache's elements
typedef yk_word<VEC *(int)sizeof(T)>::type W; // one vector, copied without conversion
constexpr int CHUNKS = HEAD_DIM / VEC;        // vectors a head
constexpr int HALF = ROT_DIM / 2;
constexpr int ROT_CHUNKS = ROPE == ROPE_NEOX ? HALF / VEC : ROT_DIM / VEC; // rotated work items a head
constexpr int TAIL_CHUNKS = (HEAD_DIM - ROT_DIM) / VEC;                    // dimensions past ROT_DIM

// Passed by value; the same members in the same order as in gen/ops/append_kv.c, all 8 bytes.
struct append_kv_params {
  const T *k, *v;
  E *k_cache, *v_cache;
  const void *slots; // int32 or int64 (INDEX_SLOTS32 / 64)
  const int *batch_indices, *positions, *kv_indptr, *kv_indices;
  const C *cos, *sin;
  const void *rope_positions;                 // POS_TYPE
  long long k_token, k_head, v_token, v_head; // input strides, elements
  long long kc_block, kc_offset, kc_head;     // cache strides: block, token in page, head
  long long vc_block, vc_offset, vc_head;
  long long kv_heads, page_size, num_blocks;
  long long batch, num_indices; // CSR: sequences, entries of kv_indices
  long long table_row_stride, max_position;
  float k_inv_scale, v_inv_scale; // float8 caches: 1 / their scales
};

// The block and the offset in it where token t goes; false when it is skipped.
__device__ __forceinline__ bool locate(const append_kv_params &p, long long t, long long &block, long long &offset) {
  if constexpr (INDEX == INDEX_CSR) {
    const long long b = p.batch_indices[t], pos = p.positions[t];
    if (pos < 0 || b < 0 || b >= p.batch) return false;
    const long long first = p.kv_indptr[b], end = p.kv_indptr[b + 1], entry = first + pos / p.page_size;
    if (first < 0 || entry >= end || entry >= p.num_indices) return false;
    block = p.kv_indices[entry];
    offset = pos % p.page_size;
  } else {
    const long long slot =
        INDEX == INDEX_SLOTS64 ? ((const long long *)p.slots)[t] : (long long)((const int *)p.slots)[t];
    if (slot < 0) return false;
    block = slot / p.page_size;
    offset = slot % p.page_size;
  }
  return block >= 0 && block < p.num_blocks;
}

// One vector: the exact bits into a cache of T, or times inv_scale into a float8 cache.
__device__ __forceinline__ void copy_vector(E *to, const T *from, float inv_scale) {
  if constexpr (KV_FLOAT8) {
    float x[VEC];
    yk_load<T, VEC>(from, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] *= inv_scale;
    yk_store<E, VEC>(to, x);
  } else {
    *reinterpret_cast<W *>(to) = *reinterpret_cast<const W *>(from);
  }
}

// Every head's HEAD_DIM elements, unchanged (or quantized).
__device__ __forceinline__ void copy_heads(E *to, long long to_head, const T *from, long long from_head, int heads,
                                           float inv_scale) {
  for (int w = threadIdx.x; w < heads * CHUNKS; w += THREADS) {
    const int head = w / CHUNKS, chunk = w % CHUNKS;
    copy_vector(to + head * to_head + chunk * VEC, from + head * from_head + chunk * VEC, inv_scale);
  }
}

// The rotated dimensions of every head, then the ones past ROT_DIM unchanged (or quantized).
__device__ __forceinline__ void rotate_heads(E *to, long long to_head, const T *from, long long from_head, int heads,
                                             const C *cos, const C *sin, float inv_scale) {
  constexpr int ITEMS = ROT_CHUNKS + TAIL_CHUNKS;
  for (int w = threadIdx.x; w < heads * ITEMS; w += THREADS) {
    const int head = w / ITEMS, item = w % ITEMS;
    E *h = to + head * to_head;
    const T *g = from + head * from_head;
    if (item < ROT_CHUNKS)
      yk_rope_rotate<ROPE == ROPE_NEOX, HALF, VEC>(h, g, cos, sin, item, inv_scale);
    else
      copy_vector(h + ROT_DIM + (item - ROT_CHUNKS) * VEC, g + ROT_DIM + (item - ROT_CHUNKS) * VEC, inv_scale);
  }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) append_kv(const append_kv_params p) {
  const long long t = blockIdx.x;
  long long block, offset;
  if (!locate(p, t, block, offset)) return;
  const int heads = (int)p.kv_heads;
  const T *k = p.k + t * p.k_token;
  E *kc = p.k_cache + block * p.kc_block + offset * p.kc_offset;
  copy_heads(p.v_cache + block * p.vc_block + offset * p.vc_offset, p.vc_head, p.v + t * p.v_token, p.v_head, heads,
             p.v_inv_scale);
  if constexpr (ROPE != ROPE_NONE) {
    const long long pos = POS_TYPE == POS_TYPE_INT64 ? ((const long long *)p.rope_positions)[t]
                                                     : (long long)((const int *)p.rope_positions)[t];
    if (pos >= 0 && pos < p.max_position) {
      const C *cos = p.cos + pos * p.table_row_stride, *sin = p.sin + pos * p.table_row_stride;
      rotate_heads(kc, p.kc_head, k, p.k_head, heads, cos, sin, p.k_inv_scale);
      return;
    }
  }
  copy_heads(kc, p.kc_head, k, p.k_head, heads, p.k_inv_scale);
}
