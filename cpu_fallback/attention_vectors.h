/* The CPU attention's vectors: GNU C vectors of LANES floats (16 in the AVX-512 build, 8 in the
 * AVX2 build, else 4) and what the tile kernels make of them: loads, sums, e^x, the blocked matrix
 * product and a transpose in registers. Included by attention.c and attention_backward.c, in each
 * of their builds (attention_tiles.h says which). */
#ifndef YK_CPU_ATTENTION_VECTORS_H
#define YK_CPU_ATTENTION_VECTORS_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

/* The products, blocked so that each value loaded feeds several multiply-adds (a dot a score and
 * an axpy an update load two values a multiply-add, and ran at ~20 GFLOP/s on two cores). All are one
 * matrix product (matrix_product): S = Q K^T over the keys transposed, O += P V and the
 * backward's, in blocks held in GNU C vectors of LANES floats (what the compiler keeps in
 * registers, where an accumulator array stayed in memory); each sum runs over its terms in order,
 * so results do not depend on the blocking. LANES is 16 where this file is built for AVX-512
 * (attention_avx512.c), 8 for AVX2 (attention_avx2.c), else 4 (SSE2, which every x86-64 has; NEON). */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float f32v __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t i32v __attribute__((vector_size(LANES * sizeof(float))));

static inline f32v loadv(const float *p) {
  f32v v;
  memcpy(&v, p, sizeof v);
  return v;
}

/* a where mask is set (-1), else b, lane by lane: C has no ?: on vectors, so by bits. */
static inline f32v pick(i32v mask, f32v a, f32v b) { return (f32v)(((i32v)a & mask) | ((i32v)b & ~mask)); }

/* The lanes' sum, in pairs. */
static inline float lane_sum(f32v v) {
  float sum = 0;
  for (int i = 0; i < LANES; i += 4) sum += (v[i] + v[i + 1]) + (v[i + 2] + v[i + 3]);
  return sum;
}

/* Two vectors of partial sums (lo over the first LANES of each 2 x LANES elements, hi the next)
 * keep two chains of adds in flight without -ffast-math (in the AVX2 build one vector is one chain
 * of fused multiply-adds, waiting on each one's latency); the fixed order of the final additions
 * keeps results the same on every run. */
static inline float dot(const float *a, const float *b, int64_t n) {
  f32v lo = {0}, hi = {0};
  int64_t i = 0;
  for (; i + 2 * LANES <= n; i += 2 * LANES)
    lo += loadv(a + i) * loadv(b + i), hi += loadv(a + i + LANES) * loadv(b + i + LANES);
  float tail = 0;
  for (; i < n; i++) tail += a[i] * b[i];
  return lane_sum(lo + hi) + tail;
}

/* e^x for LANES floats, Cephes' expf (range reduction by ln 2 in two parts, a degree-6 polynomial,
 * 2^n by the exponent bits): within 2 ulp of expf for x in [-87, 88], clamped outside. The
 * softmax's exponentials, one a score, cost as much as a head_dim of 64's products with expf. */
#if LANES == 16
/* With AVX-512: n rounded by one instruction and 2^n applied by scalef (which underflows to 0 and
 * overflows to inf as expf does), so no floor by conversions and no clamp above: 14 instructions
 * where the generic form takes 24, the softmax's largest part once AMX takes the products.
 * Below -104 (e^x under float's smallest denormal) x is raised to it, so -inf gives 0, not
 * -inf - -inf; NaN stays NaN (max returns its second operand when one is NaN). */
static inline f32v expv(f32v x) {
  __m512 v;
  memcpy(&v, &x, sizeof v);
  v = _mm512_max_ps(_mm512_set1_ps(-104.f), v);
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(_mm512_mul_ps(y, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  y = _mm512_scalef_ps(y, n);
  memcpy(&x, &y, sizeof x);
  return x;
}
#else
static inline f32v expv(f32v x) {
  const f32v hi = (f32v){0} + 88.3762626647949f, lo = (f32v){0} - 87.3365447504f;
  x = pick(x > hi, hi, x);
  x = pick(x < lo, lo, x);
  const f32v fx = x * 1.44269504088896341f + 0.5f;
  i32v n = __builtin_convertvector(fx, i32v); /* toward zero; floor below */
  f32v fn = __builtin_convertvector(n, f32v);
  const i32v over = fn > fx; /* -1 where truncation rounded up */
  n += over;
  fn = __builtin_convertvector(n, f32v);
  x = x - fn * 0.693359375f - fn * -2.12194440e-4f;
  f32v y = 1.9875691500e-4f * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  const i32v bits = (n + 127) << 23;
  f32v scale;
  memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}
#endif

/* c[r * ldc + j] = (c's value when accumulate, else 0) + sum over i < k of a(r, i) b[i * ldb + j] for
 * rows R (4 or 1) from row 0 and the V vectors of columns (V 2 or 1, WIDTH columns each) from j = 0,
 * held in registers over i, with a(r, i) at a[r * a_row + i * a_k] (a_k 1: a's rows; a_row 1: a
 * transposed, which the backward's P^T and dS^T are); each value of b loaded feeds R rows, each sum
 * runs over i in order. Defined for vectors of LANES floats (product_block), and in the AVX-512
 * build for half ones too (product_block_half), so that eight columns still go by vectors. */
#define DEFINE_PRODUCT_BLOCK(NAME, VEC, WIDTH)                                                                         \
  static inline __attribute__((always_inline)) void NAME(float *c, int64_t ldc, const float *a, int64_t a_row,         \
                                                         int64_t a_k, const float *b, int64_t ldb, int64_t k, int R,   \
                                                         int accumulate, int V) {                                      \
    const int64_t a_step = R == 4 ? a_row : 0, c_step = R == 4 ? ldc : 0; /* one row: no pointer past the rows */      \
    const float *a0 = a, *a1 = a0 + a_step, *a2 = a1 + a_step, *a3 = a2 + a_step;                                      \
    float *rows[4] = {c, c + c_step, c + 2 * c_step, c + 3 * c_step};                                                  \
    VEC acc[4][2] = {{{0}}};                                                                                           \
    for (int r = 0; accumulate && r < R; r++)                                                                          \
      for (int v = 0; v < V; v++) memcpy(&acc[r][v], rows[r] + v * (WIDTH), sizeof(VEC));                              \
    VEC x0 = acc[0][0], x1 = acc[0][1], y0 = acc[1][0], y1 = acc[1][1], z0 = acc[2][0], z1 = acc[2][1],                \
        w0 = acc[3][0], w1 = acc[3][1]; /* named: what the compiler keeps in registers */                              \
    for (int64_t i = 0; i < k; i++) {                                                                                  \
      VEC b0, b1;                                                                                                      \
      memcpy(&b0, b + i * ldb, sizeof b0);                                                                             \
      if (V == 2) memcpy(&b1, b + i * ldb + (WIDTH), sizeof b1);                                                       \
      const int64_t at = i * a_k;                                                                                      \
      x0 += a0[at] * b0;                                                                                               \
      if (V == 2) x1 += a0[at] * b1;                                                                                   \
      if (R == 4) {                                                                                                    \
        y0 += a1[at] * b0, z0 += a2[at] * b0, w0 += a3[at] * b0;                                                       \
        if (V == 2) y1 += a1[at] * b1, z1 += a2[at] * b1, w1 += a3[at] * b1;                                           \
      }                                                                                                                \
    }                                                                                                                  \
    const VEC out[4][2] = {{x0, x1}, {y0, y1}, {z0, z1}, {w0, w1}};                                                    \
    for (int r = 0; r < R; r++) memcpy(rows[r], out[r], (size_t)V * sizeof out[r][0]);                                 \
  }
DEFINE_PRODUCT_BLOCK(product_block, f32v, LANES)
#if LANES == 16
typedef float f32h __attribute__((vector_size(LANES / 2 * sizeof(float))));
DEFINE_PRODUCT_BLOCK(product_block_half, f32h, LANES / 2)
#endif

/* The columns [j, j + V * LANES) of every row (V 0: the half vector's LANES / 2, in the AVX-512
 * build): blocks of four rows, then the rows left over. */
#if LANES == 16
#define PRODUCT_BLOCK(V, ...) ((V) ? product_block(__VA_ARGS__, (V)) : product_block_half(__VA_ARGS__, 1))
#else
#define PRODUCT_BLOCK(V, ...) product_block(__VA_ARGS__, (V))
#endif
static inline __attribute__((always_inline)) void product_columns(float *c, int64_t ldc, const float *a, int64_t a_row,
                                                                  int64_t a_k, const float *b, int64_t ldb,
                                                                  int64_t rows, int64_t j, int64_t k, int V,
                                                                  int accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    if (a_k == 1) /* a's rows, the forward's case: a constant step */
      PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, 1, b + j, ldb, k, 4, accumulate);
    else
      PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, a_k, b + j, ldb, k, 4, accumulate);
  for (; r < rows; r++) PRODUCT_BLOCK(V, c + r * ldc + j, ldc, a + r * a_row, a_row, a_k, b + j, ldb, k, 1, accumulate);
}

/* The same for a rows x cols block: columns two vectors at a time, then one vector, then the
 * columns left over one by one, each sum in the same order. (A key tile of eight keys, the
 * backward's at head_dim 256, is one vector of the AVX2 build, half of one of the AVX-512 build:
 * without a block that wide all its scores went one by one, at a sixth of the speed.) */
static inline __attribute__((always_inline)) void matrix_product(float *c, int64_t ldc, const float *a, int64_t a_row,
                                                                 int64_t a_k, const float *b, int64_t ldb, int64_t rows,
                                                                 int64_t cols, int64_t k, int accumulate) {
  int64_t j = 0;
  for (; j + 2 * LANES <= cols; j += 2 * LANES)
    product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 2, accumulate);
  for (; j + LANES <= cols; j += LANES) product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 1, accumulate);
#if LANES == 16
  for (; j + LANES / 2 <= cols; j += LANES / 2)
    product_columns(c, ldc, a, a_row, a_k, b, ldb, rows, j, k, 0, accumulate);
#endif
  for (int64_t r = 0; r < rows; r++)
    for (int64_t jj = j; jj < cols; jj++) {
      float sum = accumulate ? c[r * ldc + jj] : 0;
      for (int64_t i = 0; i < k; i++) sum += a[r * a_row + i * a_k] * b[i * ldb + jj];
      c[r * ldc + jj] = sum;
    }
}

/* The LANES x LANES block at column i of LANES rows, transposed: column c of the rows as one vector
 * at dst + c * ld (8 and 4 lanes: interleaved pairs, then pairs of pairs, then halves: unpcklps,
 * shufps and vperm2f128 where the compiler has them; 16 lanes: four rounds of interleaving row r
 * with row r + 8, a perfect shuffle each, vpermt2ps). */
static inline __attribute__((always_inline)) void transpose_lanes(const float *const *rows, int64_t i, float *dst,
                                                                  int64_t ld) {
  f32v r[LANES], c[LANES], *out = c;
  for (int k = 0; k < LANES; k++) r[k] = loadv(rows[k] + i);
#if LANES == 8
  f32v t[8], u[8];
  for (int p = 0; p < 4; p++) {
    t[2 * p] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * p + 1] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  static const int from_t[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};
  for (int p = 0; p < 4; p++) {
    const f32v x = t[from_t[p][0]], y = t[from_t[p][1]];
    u[2 * p] = __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13);
    u[2 * p + 1] = __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int k = 0; k < 4; k++) {
    c[k] = __builtin_shufflevector(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    c[k + 4] = __builtin_shufflevector(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
#elif LANES == 16
  for (int round = 0; round < 4; round++) {
    f32v *from = round % 2 ? c : r, *to = round % 2 ? r : c;
    for (int k = 0; k < 8; k++) {
      to[2 * k] = __builtin_shufflevector(from[k], from[k + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      to[2 * k + 1] =
          __builtin_shufflevector(from[k], from[k + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
  }
  out = r; /* four rounds: the last wrote r */
#else
  const f32v t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5), t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
  const f32v t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5), t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
  c[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5), c[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
  c[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5), c[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
#endif
  for (int k = 0; k < LANES; k++) memcpy(dst + k * ld, &out[k], sizeof out[k]);
}

#endif
