// The rotary rotation of one work item, shared by rope.cu (in place) and append_kv.cu (from k into
// the cache), so both write the same bits:
//   NEOX: VEC pairs (i, i + HALF), a vector from each half; GPTJ: VEC / 2 pairs (2i, 2i + 1)
//   within one vector; (a, b) -> (a*cos - b*sin, b*cos + a*sin), cos and sin from the row's tables.
// to may be from (every value is loaded before any is stored). A float8 destination (TO yk_e4m3,
// a float8 KV cache) gets each result rounded to T first, as a store to T then a quantizing copy
// would, times inv_scale.
template <bool NEOX, int HALF, int VEC, class C, class TO = T>
__device__ __forceinline__ void yk_rope_rotate(TO *to, const T *from, const C *cos, const C *sin, int chunk,
                                               float inv_scale = 1.f) {
  if constexpr (NEOX) {
    float a[VEC], b[VEC], c[VEC], s[VEC];
    yk_load<T, VEC>(from + chunk * VEC, a);
    yk_load<T, VEC>(from + HALF + chunk * VEC, b);
    yk_load<C, VEC>(cos + chunk * VEC, c);
    yk_load<C, VEC>(sin + chunk * VEC, s);
    float ra[VEC], rb[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      ra[j] = a[j] * c[j] - b[j] * s[j];
      rb[j] = b[j] * c[j] + a[j] * s[j];
      if constexpr (sizeof(TO) == 1) ra[j] = yk_round<T>(ra[j]) * inv_scale, rb[j] = yk_round<T>(rb[j]) * inv_scale;
    }
    yk_store<TO, VEC>(to + chunk * VEC, ra);
    yk_store<TO, VEC>(to + HALF + chunk * VEC, rb);
  } else {
    constexpr int PAIRS = VEC >= 2 ? VEC / 2 : 1; // positive for a NEOX spec's VEC 1 too
    float e[VEC], c[PAIRS], s[PAIRS];
    yk_load<T, VEC>(from + chunk * VEC, e);
    yk_load<C, PAIRS>(cos + chunk * PAIRS, c);
    yk_load<C, PAIRS>(sin + chunk * PAIRS, s);
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) {
      const float a = e[2 * j], b = e[2 * j + 1];
      e[2 * j] = a * c[j] - b * s[j];
      e[2 * j + 1] = b * c[j] + a * s[j];
      if constexpr (sizeof(TO) == 1)
        e[2 * j] = yk_round<T>(e[2 * j]) * inv_scale, e[2 * j + 1] = yk_round<T>(e[2 * j + 1]) * inv_scale;
    }
    yk_store<TO, VEC>(to + chunk * VEC, e);
  }
}
