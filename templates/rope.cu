// Rotary position embedding of q and k in place, one block a token, q and k in one launch. Tokens
// are [batch, seq] or [tokens] (batch 1) with free strides.
//   NEOX: pairs (i, i + ROT_DIM/2);  GPTJ: pairs (2i, 2i + 1);  i < ROT_DIM/2
//   (a, b) -> (a*cos - b*sin, b*cos + a*sin), cos_i and sin_i from row `position` of two tables
//   (vLLM's cos_sin_cache is one table holding cos then sin: sin_table = cos_table + ROT_DIM / 2).
// Dimensions from ROT_DIM to HEAD_DIM are not touched. A position outside [0, max_position)
// leaves its token as it is rather than read outside the cache.
//
// A work item is one head's chunk of VEC elements (GPTJ) or of VEC pairs (NEOX, one vector from
// each half), rotated by rope_rotate.cuh. Spec constants: T, HEAD_DIM, ROT_DIM, STYLE, VEC, THREADS,
// CACHE_TYPE, POS_TYPE.

typedef yk_type_of<CACHE_TYPE>::type C;
constexpr int HALF = ROT_DIM / 2;
constexpr int CHUNKS = STYLE == STYLE_NEOX ? HALF / VEC : ROT_DIM / VEC;

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    rope(T *q, T *k, const C *__restrict__ cos_table, const C *__restrict__ sin_table, const void *__restrict__ positions,
         int q_heads, int kv_heads, int seq, long long q_b, long long q_s, long long q_h, long long k_b, long long k_s,
         long long k_h, long long p_b, long long p_s, long long table_row_stride, long long max_position) {
  // token blockIdx.x is position in_seq of sequence seq_id ([tokens, ...] tensors are one sequence)
  const long long seq_id = blockIdx.x / seq, in_seq = blockIdx.x % seq, p = seq_id * p_b + in_seq * p_s;
  const long long pos =
      POS_TYPE == POS_TYPE_INT64 ? ((const long long *)positions)[p] : (long long)((const int *)positions)[p];
  if (pos < 0 || pos >= max_position) return;
  const C *cos = cos_table + pos * table_row_stride;
  const C *sin = sin_table + pos * table_row_stride;
  const int items = (q_heads + kv_heads) * CHUNKS;

  for (int w = threadIdx.x; w < items; w += THREADS) {
    const int head = w / CHUNKS, chunk = w % CHUNKS;
    T *h = head < q_heads ? q + seq_id * q_b + in_seq * q_s + head * q_h
                          : k + seq_id * k_b + in_seq * k_s + (head - q_heads) * k_h;
    yk_rope_rotate<STYLE == STYLE_NEOX, HALF, VEC>(h, h, cos, sin, chunk);
  }
}
