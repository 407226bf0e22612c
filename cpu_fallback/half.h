/* float16 and bfloat16 on the CPU: conversions rounding to nearest even, as the GPU's cvt.rn does,
 * and row loads and stores through float buffers that the compiler vectorises. */
#ifndef YK_CPU_HALF_H
#define YK_CPU_HALF_H

#include <stdint.h>
#include <string.h>

#include "gen/spec.h"

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

/* The value a store of dtype keeps. */
static inline float yk_round_to(int dtype, float f) {
  if (dtype == YK_BF16) return yk_bf16_to_float(yk_float_to_bf16(f));
  if (dtype == YK_F16) return yk_f16_to_float(yk_float_to_f16(f));
  return f;
}

static inline void yk_load_floats(int dtype, const void *src, float *dst, int64_t n) {
  if (dtype == YK_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
  } else if (dtype == YK_BF16) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = yk_bf16_to_float(s[i]);
  } else {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = yk_f16_to_float(s[i]);
  }
}

static inline void yk_store_floats(int dtype, void *dst, const float *src, int64_t n) {
  if (dtype == YK_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
  } else if (dtype == YK_BF16) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = yk_float_to_bf16(src[i]);
  } else {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = yk_float_to_f16(src[i]);
  }
}

/* Rows are processed in chunks of this many elements through stack buffers: no allocation. */
#define YK_CPU_CHUNK 512

#endif
