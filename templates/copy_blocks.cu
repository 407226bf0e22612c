// Copies whole blocks within caches: for each (source, destination) pair of the launch, in each
// cache of the launch, a block's bytes as words of VEC elements. The pairs travel by value in the
// kernel's parameter, so there is no upload to wait for and a CUDA graph can capture the launch;
// the host splits longer lists (and more caches) over several launches.
// Grid: x the pieces of a block (THREADS * ITEMS words each), y the pair, z the cache.
//
// Spec constants: T, VEC, THREADS, ITEMS, CACHES, PAIRS.

typedef yk_word<VEC *(int)sizeof(T)>::type W;

// gen/ops/copy_blocks.c lays out the same bytes: CACHES + 2 words of 8 bytes, then the pairs.
struct copy_blocks_params {
  unsigned long long bases[CACHES]; // block 0 of each cache
  long long block_stride;           // bytes from one block to the next
  long long block_words;            // words of a block
  int pairs[2 * PAIRS];             // (source, destination) block ids
};

extern "C" __global__ void __launch_bounds__(THREADS, 1) copy_blocks(const copy_blocks_params p) {
  const int *pair = p.pairs + 2 * blockIdx.y;
  char *base = (char *)p.bases[blockIdx.z];
  const W *from = (const W *)(base + pair[0] * p.block_stride);
  W *to = (W *)(base + pair[1] * p.block_stride);
  const long long first = (long long)blockIdx.x * (THREADS * ITEMS) + threadIdx.x;
  // Every load before any store: ITEMS words in flight a thread.
  W words[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (first + i * THREADS < p.block_words) words[i] = from[first + i * THREADS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i)
    if (first + i * THREADS < p.block_words) to[first + i * THREADS] = words[i];
}
