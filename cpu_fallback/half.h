/* float16, bfloat16 and float8 e4m3 on the CPU: conversions rounding to nearest even, as the GPU's
 * cvt.rn does, and row loads and stores through float buffers that the compiler vectorises. */
#ifndef YK_CPU_HALF_H
#define YK_CPU_HALF_H

#include <stdint.h>
#include <string.h>

#include "gen/spec.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define YK_HAVE_F16C_ROWS 1
#endif

static inline float yk_bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint32_t yk_float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static inline float yk_bf16_to_float(uint16_t b) { return yk_bits_to_float((uint32_t)b << 16); }

static inline uint16_t yk_float_to_bf16(float f) {
  uint32_t u = yk_float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float yk_f16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return yk_bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 */
    float v = (float)mantissa * 5.9604644775390625e-8f;
    return yk_bits_to_float(sign | yk_float_to_bits(v));
  }
  return yk_bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

static inline uint16_t yk_float_to_f16(float f) {
  uint32_t u = yk_float_to_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x47800000u) /* 65536 and up, inf, NaN */
    return sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u);
  if (u < 0x38800000u) { /* below 2^-14: subnormal or zero; adding 0.5 lets the FPU round */
    const uint32_t magic = ((127 - 15) + (23 - 10) + 1) << 23;
    float v = yk_bits_to_float(u) + yk_bits_to_float(magic);
    return sign | (uint16_t)(yk_float_to_bits(v) - magic);
  }
  uint32_t odd = (u >> 13) & 1u;
  u += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
  return sign | (uint16_t)(u >> 13);
}

/* float8 e4m3fn (OCP FP8, as vLLM's and FlashInfer's float8 KV caches and torch.float8_e4m3fn):
 * sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN only at S.1111.111, largest
 * finite 448, smallest subnormal 2^-9. Every value is exact in float16, bfloat16 and float32.
 * Loads read a table of the 256 values, made by the compiler from the definition: computed per
 * value (bits to float, sign, NaN) the loads were not vectorised, 3 ns a value, and float8 decode
 * ran at a seventh of float16's speed. */
#define YK_E4M3_MAGNITUDE(b)                                                                                           \
  ((((b) >> 3) & 15) == 0 ? ((b)&7) / 512.0f                                                                           \
   : ((b)&0x7f) == 0x7f   ? __builtin_nanf("")                                                                         \
                          : (float)((8 + ((b)&7)) * (double)(1 << (((b) >> 3) & 15)) / 1024.0))
#define YK_E4M3_VALUE(b) ((b)&0x80 ? -YK_E4M3_MAGNITUDE(b) : YK_E4M3_MAGNITUDE(b))
#define YK_E4M3_4(b) YK_E4M3_VALUE(b), YK_E4M3_VALUE((b) + 1), YK_E4M3_VALUE((b) + 2), YK_E4M3_VALUE((b) + 3)
#define YK_E4M3_16(b) YK_E4M3_4(b), YK_E4M3_4((b) + 4), YK_E4M3_4((b) + 8), YK_E4M3_4((b) + 12)
#define YK_E4M3_64(b) YK_E4M3_16(b), YK_E4M3_16((b) + 16), YK_E4M3_16((b) + 32), YK_E4M3_16((b) + 48)
static const float yk_e4m3_values[256] = {YK_E4M3_64(0), YK_E4M3_64(64), YK_E4M3_64(128), YK_E4M3_64(192)};

static inline float yk_e4m3_to_float(uint8_t b) { return yk_e4m3_values[b]; }

/* Eight at a time by the bits, in AVX2 vectors (the table's loads are one a value): the 7 bits
 * below the sign, placed at a float's bit 20, read as the value times 2^-120, normal and subnormal
 * alike, and multiplying by 2^120 is exact; then the sign, and NaN for S.1111.111. (Without AVX2
 * the table is faster: on SSE2 the same vectors took 2-4 ns a value, the table 0.55-0.95.) */
#ifdef __AVX2__
typedef uint32_t yk_u32x8 __attribute__((vector_size(32)));
typedef float yk_f32x8 __attribute__((vector_size(32)));
static inline void yk_e4m3x8_to_floats(const uint8_t *src, float *dst) {
  yk_u32x8 x; /* (the compiler's own widening went through general registers, a byte at a time) */
  const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)src));
  memcpy(&x, &wide, sizeof x);
  const yk_u32x8 low = x & 0x7fu;
  const yk_u32x8 magnitude_bits = low << 20;
  yk_f32x8 magnitude;
  memcpy(&magnitude, &magnitude_bits, sizeof magnitude);
  magnitude *= 0x1p120f;
  yk_u32x8 bits;
  memcpy(&bits, &magnitude, sizeof bits);
  const yk_u32x8 nan = (yk_u32x8)(low == 0x7fu);
  bits = ((bits & ~nan) | (0x7fc00000u & nan)) | (x & 0x80u) << 24;
  memcpy(dst, &bits, sizeof bits);
}
#endif

/* Rounds to nearest even and saturates to +-448, as the GPU's cvt.rn.satfinite.e4m3x2.f32 (and
 * vLLM's float8 cache writes): a value past the largest finite one becomes 448, not NaN; NaN stays
 * NaN. */
static inline uint8_t yk_float_to_e4m3(float f) {
  uint32_t u = yk_float_to_bits(f);
  const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7fu;
  if (u >= 0x43e00000u) return sign | 0x7eu; /* 448 and up, inf */
  if (u < 0x3c800000u) {                     /* below 2^-6: a multiple of 2^-9; adding 2^14 lets the FPU round */
    const float v = yk_bits_to_float(u) + 0x1p14f;
    return sign | (uint8_t)(yk_float_to_bits(v) - yk_float_to_bits(0x1p14f));
  }
  const uint32_t odd = (u >> 20) & 1u;
  u += ((uint32_t)(7 - 127) << 23) + 0x7ffffu + odd;
  return sign | (uint8_t)(u >> 20);
}

/* The value a store of dtype keeps. */
static inline float yk_round_to(int dtype, float f) {
  if (dtype == YK_E4M3) return yk_e4m3_to_float(yk_float_to_e4m3(f));
  if (dtype == YK_BF16) return yk_bf16_to_float(yk_float_to_bf16(f));
  if (dtype == YK_F16) return yk_f16_to_float(yk_float_to_f16(f));
  return f;
}

/* yk_f16_to_float of four values at once, each case computed and the right one kept by masks:
 * the compiler does not vectorise the branches of the one at a time (1.4 ns a value, which made
 * float16 attention on the CPU a third as fast as float32; the stores likewise). */
typedef uint16_t yk_u16x4 __attribute__((vector_size(8)));
typedef uint32_t yk_u32x4 __attribute__((vector_size(16)));
typedef int32_t yk_i32x4 __attribute__((vector_size(16)));
typedef float yk_f32x4 __attribute__((vector_size(16)));

static inline void yk_f16x4_to_floats(const uint16_t *src, float *dst) {
  yk_u16x4 h;
  memcpy(&h, src, sizeof h);
  const yk_u32x4 x = __builtin_convertvector(h, yk_u32x4), e = x & 0x7c00u, m = (x & 0x7fffu) << 13;
  const yk_u32x4 normal = m + ((127u - 15u) << 23), special = m | 0x7f800000u;
  const yk_f32x4 subnormal = __builtin_convertvector((yk_i32x4)(x & 0x3ffu), yk_f32x4) * 5.9604644775390625e-8f;
  yk_u32x4 sub_bits;
  memcpy(&sub_bits, &subnormal, sizeof sub_bits);
  const yk_u32x4 is_special = (yk_u32x4)(e == 0x7c00u), is_sub = (yk_u32x4)(e == 0u);
  const yk_u32x4 bits =
      (special & is_special) | (sub_bits & is_sub) | (normal & ~(is_special | is_sub)) | (x & 0x8000u) << 16;
  memcpy(dst, &bits, sizeof bits);
}

#ifdef YK_HAVE_F16C_ROWS
/* A float16 row by F16C's conversion, eight values an instruction (float16 decode 2.5x the masks'
 * speed), for CPUs that have it: the caller checks (tests/test_half.c calls it directly). */
__attribute__((target("avx,f16c"))) static inline void yk_f16_to_floats_f16c(const uint16_t *src, float *dst,
                                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i + 4 <= n; i += 4) yk_f16x4_to_floats(src + i, dst + i);
  for (; i < n; i++) dst[i] = yk_f16_to_float(src[i]);
}
#endif

static inline void yk_load_floats(int dtype, const void *src, float *dst, int64_t n) {
  if (dtype == YK_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
  } else if (dtype == YK_E4M3) {
    const uint8_t *s = src;
    int64_t i = 0;
#ifdef __AVX2__
    for (; i + 8 <= n; i += 8) yk_e4m3x8_to_floats(s + i, dst + i);
#endif
    for (; i < n; i++) dst[i] = yk_e4m3_to_float(s[i]);
  } else if (dtype == YK_BF16) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = yk_bf16_to_float(s[i]);
  } else {
#ifdef __F16C__ /* the x86-64 builds of the attention kernels (attention_avx2.c, attention_avx512.c) */
    yk_f16_to_floats_f16c(src, dst, n);
#else
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) yk_f16x4_to_floats(s + i, dst + i);
    for (; i < n; i++) dst[i] = yk_f16_to_float(s[i]);
#endif
  }
}

/* float8 e4m3 values times 2^-8, exactly, for callers that fold 2^8 into a scale (the attention
 * fallback's): a byte's exponent and mantissa bits placed one bit lower read as a float16 of the
 * value times 2^-8 (the biases differ by 8), subnormals included, which F16C widens 8 at a time:
 * 0.10 ns a value against yk_load_floats's 0.36-0.42, where float8 decode spent more on its loads
 * than on its arithmetic. NaN stays NaN. */
/* The float16 bits of float8 e4m3 values times 2^-8, from their bytes widened into any vector of
 * uint16 (as above: the bits one place lower; S.1111.111, NaN, to a float16 NaN). */
#define YK_E4M3_AS_F16_BITS(x) ((((x)&0x7f) << 7) | (((x)&0x80) << 8) | ((__typeof__(x))(((x)&0x7f) == 0x7f) & 0x7e00))

static inline void yk_e4m3_to_floats_2m8(const uint8_t *src, float *dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__F16C__) /* the AVX2 build of the attention kernels */
  typedef uint8_t u8x16 __attribute__((vector_size(16)));
  typedef uint16_t u16x16 __attribute__((vector_size(32)));
  for (; i + 16 <= n; i += 16) {
    u8x16 b;
    memcpy(&b, src + i, sizeof b);
    const u16x16 h = YK_E4M3_AS_F16_BITS(__builtin_convertvector(b, u16x16));
    __m128i halves[2];
    memcpy(halves, &h, sizeof halves);
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(halves[0]));
    _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(halves[1]));
  }
#endif
  for (; i < n; i++) dst[i] = yk_e4m3_to_float(src[i]) * 0x1p-8f;
}

/* yk_float_to_f16 of four values at once, the same way. */
static inline void yk_floats_to_f16x4(const float *src, uint16_t *dst) {
  yk_u32x4 u;
  memcpy(&u, src, sizeof u);
  const yk_u32x4 sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  const yk_u32x4 big = (yk_u32x4)(u >= 0x47800000u), small = (yk_u32x4)(u < 0x38800000u);
  const yk_u32x4 nan = (yk_u32x4)(u > 0x7f800000u), special = (0x7e00u & nan) | (0x7c00u & ~nan);
  const uint32_t magic = ((127 - 15) + (23 - 10) + 1) << 23;
  yk_f32x4 uf;
  memcpy(&uf, &u, sizeof uf);
  const yk_f32x4 sum = uf + yk_bits_to_float(magic);
  yk_u32x4 sub;
  memcpy(&sub, &sum, sizeof sub);
  sub -= magic;
  const yk_u32x4 normal = (u + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
  const yk_u16x4 h =
      __builtin_convertvector(sign | (special & big) | (sub & small) | (normal & ~(big | small)), yk_u16x4);
  memcpy(dst, &h, sizeof h);
}

static inline void yk_store_floats(int dtype, void *dst, const float *src, int64_t n) {
  if (dtype == YK_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
  } else if (dtype == YK_E4M3) {
    uint8_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = yk_float_to_e4m3(src[i]);
  } else if (dtype == YK_BF16) { /* vectorised by the compiler as it stands */
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = yk_float_to_bf16(src[i]);
  } else {
    uint16_t *d = dst;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) yk_floats_to_f16x4(src + i, d + i);
    for (; i < n; i++) d[i] = yk_float_to_f16(src[i]);
  }
}

/* Rows are processed in chunks of this many elements through stack buffers: no allocation. */
#define YK_CPU_CHUNK 512

#endif
