// Exact merge of partial attentions of the same query rows over disjoint key sets, by their
// log-sum-exp (natural log):
//   m = max_i lse_i,  w_i = exp(lse_i - m),  o = sum_i w_i o_i / sum_i w_i,  lse = m + log(sum_i w_i)
// Rows where every lse is -inf get o = 0 and lse = -inf. One warp a (token, head) row.
//   STATES == 2: two states in tensors of their own layouts (merge_attention_states).
//   STATES == 0: num_states float32 partials laid out [state][token * heads + head][HEAD_DIM], as
//                split-KV decode writes them.
//
// Spec constants: T (output type), HEAD_DIM, IN_TYPE (input type), STATES, VEC, THREADS, SEQS.

typedef yk_type_of<IN_TYPE>::type IN;
static_assert(HEAD_DIM % VEC == 0, "rows are whole vectors");

extern "C" __global__ void __launch_bounds__(THREADS)
    merge_attention_states(const IN *__restrict__ o_a, long long a_t, long long a_h, const IN *__restrict__ o_b,
                           long long b_t, long long b_h, const float *__restrict__ lse_a, long long la_t,
                           long long la_h, const float *__restrict__ lse_b, long long lb_t, long long lb_h, T *out,
                           long long o_t, long long o_h, float *out_lse, long long lo_t, long long lo_h,
                           int tokens, int heads, int num_states, long long o_bb, long long lo_bb, int per) {
  yk_wait_previous_grid(); // split-KV partials: the decode kernel before may still be finishing
  const long long row = (long long)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (long long)tokens * heads) return;
  const long long t = row / heads, h = row % heads;
  // SEQS: the outputs of token t are token t % per of sequence t / per, o_bb and lo_bb apart (the
  // partials of dense queries, seq_q a sequence); else token t at t times o_t and lo_t
  const long long seq = SEQS ? (int)t / per : 0, token = SEQS ? t - seq * per : t; // t < 2^31
  const int states = STATES == 2 ? 2 : num_states;
  auto state_lse = [&](int i) {
    if (STATES == 2) return i == 0 ? lse_a[t * la_t + h * la_h] : lse_b[t * lb_t + h * lb_h];
    return lse_a[(long long)i * tokens * heads + row];
  };
  auto state_row = [&](int i) -> const IN * {
    if (STATES == 2) return i == 0 ? o_a + t * a_t + h * a_h : o_b + t * b_t + h * b_h;
    return o_a + ((long long)i * tokens * heads + row) * HEAD_DIM;
  };
  // The lanes share the states, 32 at a time, so the lse loads are one round rather than a chain
  // (16 dependent loads made a 16-split merge take 8 us); each weight then reaches every lane by
  // a shuffle. The rows of GROUP states are loaded together, the first group's before the weights
  // are known: at batch 1 the merge is three round trips to L2 laid end to end otherwise (lse,
  // then each group's rows; 3.1 us of a 46 us decode on the H200). A state is read whatever its
  // weight (every row exists) and a weight of 0 selects 0, so a row that saw no key adds nothing
  // whatever a caller's tensor holds there.
  constexpr int PER_LANE = (HEAD_DIM + 32 * VEC - 1) / (32 * VEC);
  constexpr int GROUP = STATES == 2 ? 2 : PER_LANE * VEC <= 4 ? 16 : PER_LANE * VEC <= 8 ? 8 : 4; // 64 floats a lane
  float x[GROUP][PER_LANE][VEC];
  auto load_group = [&](int first) {
#pragma unroll
    for (int j = 0; j < GROUP; ++j) {
      const IN *src = state_row(min(first + j, states - 1)); // past the last state: a row weighted 0
#pragma unroll
      for (int p = 0; p < PER_LANE; ++p) {
        const int c = (p * 32 + lane) * VEC;
        if (c < HEAD_DIM) {
          yk_load<IN, VEC>(src + c, x[j][p]);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) x[j][p][e] = 0.f;
        }
      }
    }
  };
  load_group(0);
  float my_lse = lane < states ? state_lse(lane) : -INFINITY, m = my_lse;
  for (int i = lane + 32; i < states; i += 32) m = fmaxf(m, state_lse(i));
  m = yk_warp_max(m);
  // each lane keeps its columns' sums across the states: the output may alias an input row
  float acc[PER_LANE][VEC];
#pragma unroll
  for (int p = 0; p < PER_LANE; ++p)
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[p][j] = 0.f;
  float total = 0.f;
  for (int i0 = 0; i0 < states; i0 += 32) {
    const int n = min(32, states - i0);
    const float l = i0 == 0 ? my_lse : lane < n ? state_lse(i0 + lane) : -INFINITY;
    const float w_lane = l == -INFINITY ? 0.f : __expf(l - m); // all -inf: every weight 0
    total += w_lane;
    for (int j0 = 0; j0 < n; j0 += GROUP) {
      if (i0 + j0 > 0) load_group(i0 + j0);
#pragma unroll
      for (int j = 0; j < GROUP; ++j) {
        const float w = __shfl_sync(0xffffffffu, w_lane, j0 + j); // 0 past the n states
#pragma unroll
        for (int p = 0; p < PER_LANE; ++p)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[p][e] += w != 0.f ? w * x[j][p][e] : 0.f;
      }
    }
  }
  total = yk_warp_sum(total);
  const float inv = total > 0.f ? 1.f / total : 0.f;
  __syncwarp(); // every lane has read its inputs before any lane writes an output that aliases them
#pragma unroll
  for (int p = 0; p < PER_LANE; ++p) {
    const int c = (p * 32 + lane) * VEC;
    if (c < HEAD_DIM) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[p][j] *= inv;
      yk_store<T, VEC>(out + seq * o_bb + token * o_t + h * o_h + c, acc[p]);
    }
  }
  if (out_lse && lane == 0)
    out_lse[seq * lo_bb + token * lo_t + h * lo_h] = total > 0.f ? m + __logf(total) : -INFINITY;
}
