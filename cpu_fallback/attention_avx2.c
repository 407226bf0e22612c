/* The CPU attention's tile kernels built for x86-64 CPUs with AVX2, FMA and F16C (CMakeLists.txt
 * adds -mavx2 -mfma -mf16c to this file alone): attention.c and attention_backward.c again, with
 * 8-float vectors, fused multiply-adds and float16 rows converted by F16C. yk_thread_pool_init
 * chooses it where the CPU has all three and not AVX-512 (attention_avx512.c). */
#define YK_CPU_BUILD_AVX2
#include "cpu_fallback/attention.c"
#include "cpu_fallback/attention_backward.c"
