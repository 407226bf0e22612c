// yaie-kernels device prelude, prepended to every generated kernel.
//
// Our own 16-bit float types with inline-PTX conversions, so no kernel includes cuda_fp16.h or
// cuda_bf16.h: since CUDA 12.2 those pull in runtime headers, and on CUDA 13 they need the CCCL
// include path; both cost NVRTC time on every cold compile.

constexpr int YK_F32 = 0, YK_F16 = 1, YK_BF16 = 2;

// Nor <math.h>: masks and empty rows need an infinity of their own.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

struct yk_f16 {
  unsigned short bits;
};
struct yk_bf16 {
  unsigned short bits;
};

template <int DTYPE> struct yk_type_of;
template <> struct yk_type_of<YK_F32> { typedef float type; };
template <> struct yk_type_of<YK_F16> { typedef yk_f16 type; };
template <> struct yk_type_of<YK_BF16> { typedef yk_bf16 type; };

__device__ __forceinline__ float yk_to_float(float x) { return x; }
__device__ __forceinline__ float yk_to_float(yk_f16 x) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
  return f;
}
__device__ __forceinline__ float yk_to_float(yk_bf16 x) { return __uint_as_float((unsigned)x.bits << 16); }

template <class T> __device__ __forceinline__ T yk_from_float(float f);
template <> __device__ __forceinline__ float yk_from_float<float>(float f) { return f; }
template <> __device__ __forceinline__ yk_f16 yk_from_float<yk_f16>(float f) {
  yk_f16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
  return h;
}
template <> __device__ __forceinline__ yk_bf16 yk_from_float<yk_bf16>(float f) {
  yk_bf16 h;
#if __CUDA_ARCH__ >= 800
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
#else
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    h.bits = (unsigned short)((u >> 16) | 0x40u); // quiet NaN
  else
    h.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); // nearest even
#endif
  return h;
}

// float8 e4m3fn, a float8 KV cache's element (include/yk/kv.h): stored, never computed in. The
// conversions are cpu_fallback/half.h's, bit for bit: the 7 bits below the sign at a float's bit
// 20 read as the value times 2^-120; stores round to nearest even and saturate to +-448.
struct yk_e4m3 {
  unsigned char bits;
};
__device__ __forceinline__ float yk_to_float(yk_e4m3 x) {
  const unsigned b = x.bits;
  const float magnitude =
      (b & 0x7fu) == 0x7fu ? __int_as_float(0x7fc00000) : __uint_as_float((b & 0x7fu) << 20) * 0x1p120f;
  return b & 0x80u ? -magnitude : magnitude;
}
template <> __device__ __forceinline__ yk_e4m3 yk_from_float<yk_e4m3>(float f) {
  unsigned u = __float_as_uint(f);
  const unsigned sign = (u >> 24) & 0x80u;
  u &= 0x7fffffffu;
  unsigned bits;
  if (u > 0x7f800000u)
    bits = 0x7fu; // NaN
  else if (u >= 0x43e00000u)
    bits = 0x7eu;           // 448 and up: saturated
  else if (u < 0x3c800000u) // below 2^-6: a multiple of 2^-9, rounded by the FPU
    bits = __float_as_uint(__fadd_rn(__uint_as_float(u), 0x1p14f)) - __float_as_uint(0x1p14f);
  else
    bits = (u + ((unsigned)(7 - 127) << 23) + 0x7ffffu + ((u >> 20) & 1u)) >> 20;
  yk_e4m3 e;
  e.bits = (unsigned char)(sign | bits);
  return e;
}

// Rounds through T and back: the value a store of T would keep.
template <class T> __device__ __forceinline__ float yk_round(float f) { return yk_to_float(yk_from_float<T>(f)); }

// ---- vector access: N elements of T in pieces of at most 16 bytes ----
template <int BYTES> struct yk_word;
template <> struct yk_word<1> { typedef unsigned char type; };
template <> struct yk_word<2> { typedef unsigned short type; };
template <> struct yk_word<4> { typedef unsigned type; };
template <> struct yk_word<8> { typedef uint2 type; };
template <> struct yk_word<16> { typedef uint4 type; };

template <class T, int N> struct yk_piece {
  static constexpr int BYTES = sizeof(T) * N < 16 ? (int)(sizeof(T) * N) : 16;
  static constexpr int ELEMS = BYTES / (int)sizeof(T);
  static constexpr int COUNT = N / ELEMS;
  union U {
    typename yk_word<BYTES>::type word;
    T v[ELEMS];
  };
};

// Loads N elements (aligned to min(16, N * sizeof(T)) bytes) as floats.
template <class T, int N> __device__ __forceinline__ void yk_load(const T *p, float (&out)[N]) {
  typedef yk_piece<T, N> P;
#pragma unroll
  for (int k = 0; k < P::COUNT; ++k) {
    typename P::U u;
    u.word = reinterpret_cast<const typename yk_word<P::BYTES>::type *>(p)[k];
#pragma unroll
    for (int j = 0; j < P::ELEMS; ++j) out[k * P::ELEMS + j] = yk_to_float(u.v[j]);
  }
}

// One store of a piece's 32-bit words. 16 bytes by st.global.v4: written as a uint4, NVVM split
// such a store into four 4-byte ones where the address came from 64-bit index arithmetic
// (act_and_mul, merge_attention_states).
__device__ __forceinline__ void yk_put_words(unsigned *p, const unsigned (&w)[1]) { *p = w[0]; }
__device__ __forceinline__ void yk_put_words(uint2 *p, const unsigned (&w)[2]) {
  uint2 v;
  v.x = w[0], v.y = w[1];
  *p = v;
}
__device__ __forceinline__ void yk_put_words(uint4 *p, const unsigned (&w)[4]) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
               : "memory");
}

// Stores N floats as T, rounded to nearest even, one store a piece of 4 to 16 bytes: 16-bit
// elements packed two a word (through a union of words and elements, ptxas stored them 4 bytes at a
// time, st.global.v2.u16).
template <class T, int N> __device__ __forceinline__ void yk_store(T *p, const float (&in)[N]) {
  typedef yk_piece<T, N> P;
#pragma unroll
  for (int k = 0; k < P::COUNT; ++k) {
    const float *f = in + k * P::ELEMS;
    if constexpr (P::BYTES >= 4) {
      unsigned w[P::BYTES / 4];
#pragma unroll
      for (int i = 0; i < P::BYTES / 4; ++i) {
        if constexpr (sizeof(T) == 2)
          w[i] = (unsigned)yk_from_float<T>(f[2 * i]).bits | (unsigned)yk_from_float<T>(f[2 * i + 1]).bits << 16;
        else if constexpr (sizeof(T) == 1)
          w[i] = (unsigned)yk_from_float<T>(f[4 * i]).bits | (unsigned)yk_from_float<T>(f[4 * i + 1]).bits << 8 |
                 (unsigned)yk_from_float<T>(f[4 * i + 2]).bits << 16 |
                 (unsigned)yk_from_float<T>(f[4 * i + 3]).bits << 24;
        else
          w[i] = __float_as_uint(f[i]);
      }
      yk_put_words(reinterpret_cast<typename yk_word<P::BYTES>::type *>(p) + k, w);
    } else {
      typename P::U u;
#pragma unroll
      for (int j = 0; j < P::ELEMS; ++j) u.v[j] = yk_from_float<T>(f[j]);
      reinterpret_cast<typename yk_word<P::BYTES>::type *>(p)[k] = u.word;
    }
  }
}

// ---- programmatic dependent launch (sm_90) ----
// A kernel launched with programmatic stream serialization may start while the kernel before it
// on the stream is still running: it waits here for that kernel's completion and memory. Without
// such a launch (or before sm_90) there is nothing to wait for.
__device__ __forceinline__ void yk_wait_previous_grid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
// Lets the next kernel on the stream, launched programmatically, be scheduled now (it still waits
// for this grid's completion in yk_wait_previous_grid).
__device__ __forceinline__ void yk_allow_next_grid() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// ---- reductions ----
__device__ __forceinline__ float yk_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float yk_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of THREADS threads; every thread receives the total. Uses 32 floats of shared
// memory and two barriers.
template <int THREADS> __device__ __forceinline__ float yk_block_sum(float v) {
  v = yk_warp_sum(v);
  if (THREADS == 32) return v;
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < THREADS / 32 ? partial[lane] : 0.f;
  v = yk_warp_sum(v);
  return v;
}
