// RMSNorm, and with FUSED_ADD the fused residual add of vLLM and FlashInfer:
//   plain:      out = x * rsqrt(mean(x^2) + eps) * weight
//   FUSED_ADD:  residual = round(x + residual); x = residual * rsqrt(mean(residual^2) + eps) * weight
// One block a row. With ROW_IN_REGS the row stays in registers between the reduction and the
// write, so x (and residual) are read from memory once; two passes would move a third more bytes.
// Rows too long for the registers (ROW_IN_REGS = 0) are read twice, the second time mostly from L2.
//
// Spec constants: T, HIDDEN, VEC (elements per access), THREADS, FUSED_ADD, ROW_IN_REGS.

constexpr int NVEC = HIDDEN / VEC;
constexpr int ITEMS = ROW_IN_REGS ? (NVEC + THREADS - 1) / THREADS : 1;

// x[c] (plus residual[c], stored back rounded, when fused): the values the norm sees.
__device__ __forceinline__ void load_row_vector(const T *xr, T *rr, int c, float (&v)[VEC]) {
  yk_load<T, VEC>(xr + c * VEC, v);
  if (FUSED_ADD) {
    float r[VEC];
    yk_load<T, VEC>(rr + c * VEC, r);
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = yk_round<T>(v[j] + r[j]);
    yk_store<T, VEC>(rr + c * VEC, v);
  }
}

__device__ __forceinline__ void write_row_vector(const T *__restrict__ weight, T *outr, int c, float scale,
                                                 float (&v)[VEC]) {
  float w[VEC];
  yk_load<T, VEC>(weight + c * VEC, w);
#pragma unroll
  for (int j = 0; j < VEC; ++j) v[j] = v[j] * scale * w[j];
  yk_store<T, VEC>(outr + c * VEC, v);
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    rms_norm(const T *x, T *residual, const T *__restrict__ weight, T *out, long long x_row_stride,
             long long residual_row_stride, long long out_row_stride, float eps) {
  const long long row = blockIdx.x;
  const T *xr = x + row * x_row_stride;
  T *rr = FUSED_ADD ? residual + row * residual_row_stride : nullptr;
  T *outr = out + row * out_row_stride;
  float sum_sq = 0.f;

  if constexpr (ROW_IN_REGS) {
    float v[ITEMS][VEC];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = i * THREADS + (int)threadIdx.x;
      if (NVEC % THREADS == 0 || c < NVEC) {
        load_row_vector(xr, rr, c, v[i]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) sum_sq += v[i][j] * v[i][j];
      }
    }
    const float scale = rsqrtf(yk_block_sum<THREADS>(sum_sq) * (1.f / HIDDEN) + eps);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int c = i * THREADS + (int)threadIdx.x;
      if (NVEC % THREADS == 0 || c < NVEC) write_row_vector(weight, outr, c, scale, v[i]);
    }
  } else {
    for (int c = threadIdx.x; c < NVEC; c += THREADS) {
      float v[VEC];
      load_row_vector(xr, rr, c, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum_sq += v[j] * v[j];
    }
    const float scale = rsqrtf(yk_block_sum<THREADS>(sum_sq) * (1.f / HIDDEN) + eps);
    // Each thread reads back only the vectors it wrote above, so the rounded residual is its own.
    const T *src = FUSED_ADD ? rr : xr;
    for (int c = threadIdx.x; c < NVEC; c += THREADS) {
      float v[VEC];
      yk_load<T, VEC>(src + c * VEC, v);
      write_row_vector(weight, outr, c, scale, v);
    }
  }
}
