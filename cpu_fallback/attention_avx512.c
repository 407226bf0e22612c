/* The CPU attention's tile kernels built for x86-64 CPUs with AVX-512F besides AVX2, FMA and F16C
 * (CMakeLists.txt adds -mavx512f to attention_avx2.c's flags for this file alone): attention.c and
 * attention_backward.c again, with 16-float vectors, so that each value loaded feeds twice the
 * multiply-adds. yk_thread_pool_init chooses it where the CPU and the OS run AVX-512. */
#define YK_CPU_BUILD_AVX512
#include "cpu_fallback/attention.c"
#include "cpu_fallback/attention_backward.c"
