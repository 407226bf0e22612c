/* The CPU's float16, bfloat16 and float8 e4m3 conversions (cpu_fallback/half.h), which every CPU
 * op's loads and stores go through: every bit pattern against values computed another way, the
 * row loads (four at a time) against the one-value conversions at every offset and tail length,
 * and stores rounding to nearest even as the GPU's cvt.rn does (float8: saturating, as
 * cvt.rn.satfinite). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cpu_fallback/half.h"

#ifdef YK_HAVE_F16C_ROWS
#include <cpuid.h>
#endif

/* float16's value by its definition: sign, 5 exponent bits biased by 15, 10 mantissa bits. */
static double f16_value(uint16_t h) {
  const int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  double v;
  if (exponent == 0x1f)
    v = mantissa ? NAN : INFINITY;
  else if (exponent == 0)
    v = ldexp(mantissa, -24);
  else
    v = ldexp(1024 + mantissa, exponent - 25);
  return sign ? -v : v;
}

static uint16_t all_patterns[65536];

static void fill_patterns(void) {
  for (int i = 0; i < 65536; i++) all_patterns[i] = (uint16_t)i;
}

Test(half, f16_to_float_every_pattern) {
  for (int i = 0; i < 65536; i++) {
    const float got = yk_f16_to_float((uint16_t)i);
    const double want = f16_value((uint16_t)i);
    if (isnan(want)) {
      cr_assert(isnan(got), "0x%04x: %g, want NaN", i, got);
      cr_assert_eq(signbit(got) != 0, (i >> 15) != 0, "0x%04x: NaN's sign", i);
    } else {
      cr_assert_eq((double)got, want, "0x%04x: %.9g, want %.9g", i, got, want);
      cr_assert_eq(signbit(got) != 0, (i >> 15) != 0, "0x%04x: sign of %g", i, got); /* -0 stays -0 */
    }
  }
}

/* The row load converts four at a time by masks: the same bits as one at a time, whatever the
 * offset into the row and however many values are left over. */
Test(half, row_loads_match_one_at_a_time) {
  fill_patterns();
  static float got[65536 + 8];
  for (int offset = 0; offset < 4; offset++)
    for (int tail = 0; tail < 4; tail++) {
      const int64_t n = 65536 - offset - 4 + tail;
      for (int k = 0; k < 2; k++) {
        const int dtype = k ? YK_BF16 : YK_F16;
        memset(got, 0xff, sizeof got);
        yk_load_floats(dtype, all_patterns + offset, got, n);
        for (int64_t i = 0; i < n; i++) {
          const uint16_t h = all_patterns[offset + i];
          const float want = dtype == YK_F16 ? yk_f16_to_float(h) : yk_bf16_to_float(h);
          cr_assert_eq(yk_float_to_bits(got[i]), yk_float_to_bits(want), "%s 0x%04x (offset %d, n %lld)",
                       dtype == YK_F16 ? "f16" : "bf16", h, offset, (long long)n);
        }
        cr_assert_eq(yk_float_to_bits(got[n]), 0xffffffffu, "wrote past the row (offset %d, n %lld)", offset,
                     (long long)n);
      }
    }
}

/* The AVX2 build of the attention kernels loads float16 rows by F16C's instruction: the same bits
 * again, on CPUs that have it. */
Test(half, f16c_row_loads_match_one_at_a_time) {
#ifdef YK_HAVE_F16C_ROWS
  __builtin_cpu_init();
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_F16C) || !__builtin_cpu_supports("avx"))
    cr_skip_test("this CPU has no F16C");
  fill_patterns();
  static float got[65536 + 16];
  for (int offset = 0; offset < 8; offset++)
    for (int tail = 0; tail < 8; tail++) {
      const int64_t n = 65536 - offset - 8 + tail;
      memset(got, 0xff, sizeof got);
      yk_f16_to_floats_f16c(all_patterns + offset, got, n);
      for (int64_t i = 0; i < n; i++) {
        const uint16_t h = all_patterns[offset + i];
        const float want = yk_f16_to_float(h);
        if (isnan(want)) /* the instruction quiets signalling NaNs */
          cr_assert(isnan(got[i]) && signbit(got[i]) == signbit(want), "0x%04x: %g, want a NaN of its sign", h, got[i]);
        else
          cr_assert_eq(yk_float_to_bits(got[i]), yk_float_to_bits(want), "0x%04x (offset %d, n %lld)", h, offset,
                       (long long)n);
      }
      cr_assert_eq(yk_float_to_bits(got[n]), 0xffffffffu, "wrote past the row (offset %d, n %lld)", offset,
                   (long long)n);
    }
#else
  cr_skip_test("not an x86-64 build");
#endif
}

Test(half, bf16_to_float_is_the_top_half) {
  for (int i = 0; i < 65536; i++)
    cr_assert_eq(yk_float_to_bits(yk_bf16_to_float((uint16_t)i)), (uint32_t)i << 16, "0x%04x", i);
}

/* Every value each type holds survives a store and a load; values between two neighbours round to
 * the nearer, ties to the even mantissa; past the largest finite value, infinity. */
Test(half, stores_round_to_nearest_even) {
  for (int i = 0; i < 65536; i++) {
    const uint16_t h = (uint16_t)i;
    const float f = yk_f16_to_float(h), b = yk_bf16_to_float(h);
    if (!isnan(f)) cr_assert_eq(yk_float_to_f16(f), h, "f16 0x%04x did not survive a round trip", i);
    if (!isnan(b)) cr_assert_eq(yk_float_to_bf16(b), h, "bf16 0x%04x did not survive a round trip", i);
  }
  for (uint16_t h = 0; h < 0x7bff; h++) { /* positive finite f16 and its next */
    const double lo = f16_value(h), hi = f16_value((uint16_t)(h + 1)), mid = (lo + hi) / 2;
    const uint16_t even = (h & 1) ? (uint16_t)(h + 1) : h;
    cr_assert_eq(yk_float_to_f16((float)mid), even, "f16 tie between 0x%04x and the next", h);
    cr_assert_eq(yk_float_to_f16(nextafterf((float)mid, (float)hi)), h + 1, "above the tie after 0x%04x", h);
    cr_assert_eq(yk_float_to_f16(nextafterf((float)mid, (float)lo)), h, "below the tie after 0x%04x", h);
  }
  cr_assert_eq(yk_float_to_f16(65520.f), 0x7c00, "65520 (the tie past 65504) rounds to infinity");
  cr_assert_eq(yk_float_to_f16(65519.f), 0x7bff);
  cr_assert_eq(yk_float_to_f16(-INFINITY), 0xfc00);
  cr_assert_eq(yk_float_to_f16(NAN) & 0x7e00, 0x7e00, "NaN stays a quiet NaN");
  cr_assert_eq(yk_float_to_bf16(yk_bits_to_float(0x3f808000u)), 0x3f80, "bf16 tie to even (down)");
  cr_assert_eq(yk_float_to_bf16(yk_bits_to_float(0x3f818000u)), 0x3f82, "bf16 tie to even (up)");
  cr_assert_eq(yk_float_to_bf16(yk_bits_to_float(0x7f7fffffu)), 0x7f80, "the largest float rounds to infinity");
  cr_assert_eq(yk_float_to_bf16(NAN) & 0x7fc0, 0x7fc0, "NaN stays a quiet NaN");
}

/* The row store rounds four at a time by masks: the same bits as one at a time, for floats of
 * every kind (each float16's value, the ties between neighbours and a float either side, values
 * past the range, subnormals of both types, infinities, NaNs, random bits), at every offset and
 * tail length. */
Test(half, row_stores_match_one_at_a_time) {
  enum { N = 65536 * 4 + 64 };
  static float values[N];
  static uint16_t got[N + 8];
  int64_t n = 0;
  for (int i = 0; i < 65536; i++) {
    const float f = yk_f16_to_float((uint16_t)i), next = yk_f16_to_float((uint16_t)(i + 1));
    const float mid = (float)(((double)f + next) / 2);
    values[n++] = f, values[n++] = mid, values[n++] = nextafterf(mid, INFINITY),
    values[n++] = nextafterf(mid, -INFINITY);
  }
  const float specials[] = {65504.f, 65519.f, 65520.f, 1e30f, -1e30f, 1e-30f, 1.4e-45f, -0.f, INFINITY, -INFINITY, NAN};
  for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) values[n++] = specials[i];
  uint64_t state = 0x9e3779b97f4a7c15ull;
  while (n < N) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    values[n++] = yk_bits_to_float((uint32_t)(state >> 32));
  }
  for (int offset = 0; offset < 4; offset++)
    for (int tail = 0; tail < 4; tail++) {
      const int64_t count = N - offset - 4 + tail;
      for (int k = 0; k < 2; k++) {
        const int dtype = k ? YK_BF16 : YK_F16;
        memset(got, 0xff, sizeof got);
        yk_store_floats(dtype, got, values + offset, count);
        for (int64_t i = 0; i < count; i++) {
          const float f = values[offset + i];
          const uint16_t want = dtype == YK_F16 ? yk_float_to_f16(f) : yk_float_to_bf16(f);
          cr_assert_eq(got[i], want, "%s of 0x%08x: 0x%04x, want 0x%04x (offset %d, n %lld)",
                       dtype == YK_F16 ? "f16" : "bf16", yk_float_to_bits(f), got[i], want, offset, (long long)count);
        }
        cr_assert_eq(got[count], 0xffff, "wrote past the row (offset %d, n %lld)", offset, (long long)count);
      }
    }
}

/* float8 e4m3fn's value by its definition: sign, 4 exponent bits biased by 7, 3 mantissa bits;
 * S.1111.111 is NaN, and there is no infinity. */
static double e4m3_value(uint8_t b) {
  const int sign = b >> 7, exponent = (b >> 3) & 15, mantissa = b & 7;
  double v;
  if (exponent == 15 && mantissa == 7)
    v = NAN;
  else if (exponent == 0)
    v = ldexp(mantissa, -9);
  else
    v = ldexp(8 + mantissa, exponent - 10);
  return sign ? -v : v;
}

Test(half, e4m3_to_float_every_pattern) {
  for (int i = 0; i < 256; i++) {
    const float got = yk_e4m3_to_float((uint8_t)i);
    const double want = e4m3_value((uint8_t)i);
    if (isnan(want))
      cr_assert(isnan(got), "0x%02x: %g, want NaN", i, got);
    else
      cr_assert_eq((double)got, want, "0x%02x: %.9g, want %.9g", i, got, want);
    cr_assert_eq(signbit(got) != 0, (i >> 7) != 0, "0x%02x: sign of %g", i, got);
  }
  cr_assert_eq(yk_e4m3_to_float(0x7e), 448.f);
  cr_assert_eq(yk_e4m3_to_float(0x01), 0x1p-9f);
  cr_assert_eq(yk_e4m3_to_float(0x08), 0x1p-6f);
}

/* The pattern x rounds to, by search: the nearest of the 127 finite magnitudes, a tie to the even
 * pattern (mantissa's last bit 0), 448 and above (infinity too) saturating to 448, NaN to NaN. */
static uint8_t e4m3_by_search(float x) {
  const uint8_t sign = signbit(x) ? 0x80 : 0;
  if (isnan(x)) return sign | 0x7f;
  const double a = fabs((double)x);
  if (a >= 448) return sign | 0x7e;
  int best = 0;
  for (int i = 1; i <= 0x7e; i++) {
    const double d = fabs(e4m3_value((uint8_t)i) - a), d_best = fabs(e4m3_value((uint8_t)best) - a);
    if (d < d_best || (d == d_best && !(i & 1))) best = i;
  }
  return sign | (uint8_t)best;
}

static void assert_rounds(float x) {
  const uint8_t got = yk_float_to_e4m3(x), want = e4m3_by_search(x);
  cr_assert_eq(got, want, "%a (%.9g): 0x%02x, want 0x%02x", (double)x, x, got, want);
}

Test(half, e4m3_stores_round_to_nearest_even_and_saturate) {
  /* every float16 value: ties between every neighbouring pair, subnormals, overflow, infinities */
  for (int i = 0; i < 65536; i++) assert_rounds(yk_f16_to_float((uint16_t)i));
  /* each float8 value, the midpoints to its neighbours and one float32 step either side of them */
  for (int i = 0; i < 0x7e; i++) {
    const float lo = yk_e4m3_to_float((uint8_t)i), hi = yk_e4m3_to_float((uint8_t)(i + 1));
    const float mid = (float)(((double)lo + hi) / 2);
    const float probes[] = {lo, mid, nextafterf(mid, 0), nextafterf(mid, 1000), hi};
    for (size_t p = 0; p < sizeof probes / sizeof probes[0]; p++) assert_rounds(probes[p]), assert_rounds(-probes[p]);
  }
  const float edges[] = {448, 449, 463.9f, 464, 479, 480, 1e30f, INFINITY, 0x1p-10f, 0x1.8p-10f, 0x1p-11f, 1e-30f, 0.f};
  for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++) assert_rounds(edges[e]), assert_rounds(-edges[e]);
  cr_assert_eq(yk_float_to_e4m3(INFINITY), 0x7e, "saturates, not NaN");
  cr_assert_eq(yk_float_to_e4m3(-INFINITY), 0xfe);
  cr_assert_eq(yk_float_to_e4m3(0x1p-10f), 0x00, "half the smallest subnormal ties to 0");
  cr_assert_eq(yk_float_to_e4m3(0x1.8p-9f), 0x02, "1.5 x 2^-9 ties to the even 2 x 2^-9");
  cr_assert_eq(yk_float_to_e4m3(-0.f), 0x80, "-0 keeps its sign");
  cr_assert_eq(yk_float_to_e4m3(NAN) & 0x7f, 0x7f);
  /* a spread of random float32 values over the whole range */
  uint32_t state = 12345;
  for (int i = 0; i < 100000; i++) {
    state = state * 1664525u + 1013904223u;
    const float x = ldexpf((float)(state >> 8) / (float)(1 << 24), (int)(state % 40) - 20);
    assert_rounds(state & 1 ? -x : x);
  }
}

/* Rows in and out of float8 go through the same conversions, at any length. */
Test(half, e4m3_rows_match_one_at_a_time) {
  uint8_t patterns[256 + 3], back[256 + 3];
  float values[256 + 3];
  for (int i = 0; i < 256 + 3; i++) patterns[i] = (uint8_t)(i * 37 + 11);
  for (int64_t n = 0; n <= 256 + 3; n += 37) {
    memset(values, 0xff, sizeof values);
    yk_load_floats(YK_E4M3, patterns, values, n);
    for (int64_t i = 0; i < n; i++) {
      const float want = yk_e4m3_to_float(patterns[i]);
      cr_assert(memcmp(&values[i], &want, sizeof want) == 0 || (isnan(want) && isnan(values[i])), "n %lld, [%lld]",
                (long long)n, (long long)i);
    }
    memset(back, 0xaa, sizeof back);
    yk_store_floats(YK_E4M3, back, values, n);
    for (int64_t i = 0; i < n; i++) cr_assert_eq(back[i], yk_float_to_e4m3(values[i]), "[%lld]", (long long)i);
    if (n < 256 + 3) cr_assert_eq(back[n], 0xaa, "nothing written past the row");
  }
  cr_assert_eq(yk_round_to(YK_E4M3, 100.f), 96.f, "100 lies between 96 and 104: nearest even is 96");
}
