// Gated activations of a [rows, 2*D] tensor laid out [gate | up]:
//   out[r, i] = act(x[r, i]) * x[r, D + i],  act = silu | gelu (erf) | gelu_tanh
// Memory-bound. The grid is flat over every row's VEC-element vectors, row-major, so consecutive
// blocks stream through consecutive memory and no block idles at the end of a row (a grid of rows
// x chunks sent neighbouring blocks to rows 57 KB apart and left a half-empty chunk per row at
// d = 14336). Each thread loads ITEMS gate/up pairs before it computes, so several 16-byte loads
// are in flight per thread.
//
// Spec constants: T, D, VEC, THREADS, ITEMS, ACT (ACT_SILU, ACT_GELU, ACT_GELU_TANH).

constexpr int NVEC = D / VEC;

// The GELUs in forms without cancellation for negative inputs: 1 + erf(x) = erfc(-x), and
// 1 + tanh(u) = 2 * sigmoid(2u). The textbook forms lose every digit of the result below about -5.
// __fdividef (2 ulp): IEEE division's slow path is a subroutine call whose saved registers showed
// up as an 8-byte stack frame and spills on sm_90 (f16, ptxas 13.0). When the denominator
// overflows to infinity the quotient is 0, the limit of g * sigmoid(g) there.
__device__ __forceinline__ float activation(float g) {
  if (ACT == ACT_SILU) return __fdividef(g, 1.f + __expf(-g));
  if (ACT == ACT_GELU) return 0.5f * g * erfcf(g * -0.70710678118654752f);
  const float inner = 0.79788456080286536f * (g + 0.044715f * g * g * g); // sqrt(2/pi)
  return __fdividef(g, 1.f + __expf(-2.f * inner));
}

// The body over index type I: 32-bit wherever the vectors' count allows (every real shape), since a
// 64-bit division by NVEC is a dozen instructions more a vector than a 32-bit one.
template <class I>
__device__ __forceinline__ void act_and_mul_rows(const T *__restrict__ x, T *__restrict__ out, I vectors,
                                                 long long x_row_stride, long long out_row_stride) {
  const I first = (I)blockIdx.x * (THREADS * ITEMS) + threadIdx.x;
  float g[ITEMS][VEC], u[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const I v = first + (I)i * THREADS;
    if (v < vectors) {
      const I row = v / NVEC, c = v - row * NVEC;
      const T *gate = x + (long long)row * x_row_stride + c * VEC;
      yk_load<T, VEC>(gate, g[i]);
      yk_load<T, VEC>(gate + D, u[i]);
    }
  }
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const I v = first + (I)i * THREADS;
    if (v < vectors) {
      const I row = v / NVEC, c = v - row * NVEC;
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[i][j] = activation(g[i][j]) * u[i][j];
      yk_store<T, VEC>(out + (long long)row * out_row_stride + c * VEC, g[i]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    act_and_mul(const T *__restrict__ x, T *__restrict__ out, unsigned long long vectors, long long x_row_stride,
                long long out_row_stride) {
  if (vectors < (1ull << 31)) act_and_mul_rows<unsigned>(x, out, (unsigned)vectors, x_row_stride, out_row_stride);
  else act_and_mul_rows<unsigned long long>(x, out, vectors, x_row_stride, out_row_stride);
}
