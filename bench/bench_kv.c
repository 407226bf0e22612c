/* yk bench --kv: the KV cache manager's host operations a second, what a scheduler pays every
 * step for every sequence, on a CPU context (the bookkeeping is the same on a GPU one; block bytes
 * are kept tiny so memory plays no part). Then, where there is a GPU, the bytes that move: swaps
 * against the bus's own copy rate and append_kv against the device's copy rate, on a Llama 3 8B
 * cache, timed as bench_timer.c times the ops (CUDA events, medians). */
#include <stdio.h>
#include <time.h>

#include "bench/bench.h"
#include "kv/kv_cache.h"
#include "runtime/context.h"
#include "tools/cli.h"

#define SEQS 256
#define PAGE 16

static double seconds_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void report(const char *what, double ops, double seconds) {
  printf("| %-56s | %12.0f | %8.1f |\n", what, ops / seconds, 1e9 * seconds / ops);
}

/* Decode steps: one token appended to each of SEQS sequences of 1000 tokens, slots filled. */
static yk_status decode_steps(yk_kv_cache *cache, int steps) {
  int64_t seqs[SEQS], slot;
  yk_status st = YK_OK;
  for (int i = 0; i < SEQS && st == YK_OK; i++)
    if (!(st = yk_kv_seq_add(cache, &seqs[i]))) st = yk_kv_seq_append(cache, seqs[i], 1000, NULL);
  const double t0 = seconds_now();
  for (int s = 0; s < steps && st == YK_OK; s++)
    for (int i = 0; i < SEQS && st == YK_OK; i++) st = yk_kv_seq_append(cache, seqs[i], 1, &slot);
  const double t = seconds_now() - t0;
  if (st == YK_OK) report("append 1 token (decode step, 256 sequences)", (double)steps * SEQS, t);
  static int32_t tables[SEQS * 256], lens[SEQS], indptr[SEQS + 1], indices[SEQS * 256], last[SEQS];
  const double t1 = seconds_now();
  for (int s = 0; s < steps / 16 && st == YK_OK; s++)
    if (!(st = yk_kv_cache_block_tables(cache, seqs, SEQS, tables, 256, lens)))
      st = yk_kv_cache_csr(cache, seqs, SEQS, indptr, indices, SEQS * 256, last);
  if (st == YK_OK)
    report("both page tables of 256 sequences (per sequence)", (double)(steps / 16) * SEQS, seconds_now() - t1);
  for (int i = 0; i < SEQS; i++) yk_kv_seq_free(cache, seqs[i]);
  return st;
}

/* A request's life: add, a 500-token prompt, 20 decode tokens, free. */
static yk_status lifetimes(yk_kv_cache *cache, int rounds) {
  yk_status st = YK_OK;
  int64_t seq, slots[500];
  const double t0 = seconds_now();
  for (int r = 0; r < rounds && st == YK_OK; r++) {
    if ((st = yk_kv_seq_add(cache, &seq)) || (st = yk_kv_seq_append(cache, seq, 500, slots))) break;
    for (int i = 0; i < 20 && st == YK_OK; i++) st = yk_kv_seq_append(cache, seq, 1, slots);
    if (st == YK_OK) st = yk_kv_seq_free(cache, seq);
  }
  if (st == YK_OK)
    report("add + 500-token prefill + 20 appends + free (per call)", (double)rounds * 23, seconds_now() - t0);
  return st;
}

/* Parallel sampling: fork 4 children of a 100-token prompt, each appends (a copy-on-write),
 * copies flushed, all freed. */
static yk_status forks(yk_kv_cache *cache, int rounds) {
  yk_status st = YK_OK;
  int64_t parent, child[4], slot;
  const double t0 = seconds_now();
  for (int r = 0; r < rounds && st == YK_OK; r++) {
    if ((st = yk_kv_seq_add(cache, &parent)) || (st = yk_kv_seq_append(cache, parent, 100, NULL))) break;
    for (int i = 0; i < 4 && st == YK_OK; i++)
      if (!(st = yk_kv_seq_fork(cache, parent, &child[i]))) st = yk_kv_seq_append(cache, child[i], 1, &slot);
    if (st == YK_OK) st = yk_kv_cache_copy_blocks(cache, NULL);
    for (int i = 0; i < 4 && st == YK_OK; i++) st = yk_kv_seq_free(cache, child[i]);
    if (st == YK_OK) st = yk_kv_seq_free(cache, parent);
  }
  if (st == YK_OK)
    report("fork + copy-on-write append + free (per call, 4 forks)", (double)rounds * 15, seconds_now() - t0);
  return st;
}

/* ---- on the GPU ---- */

/* Llama 3 8B: 32 layers, 8 kv heads of 128, page 16, bf16: 2 MiB a block. 512 device blocks hold
 * an 8192-token prefill; as many pinned host blocks take the largest swap. */
#define GPU_BLOCKS 512

/* A plain copy of the same bytes, timed the same way: the ceiling a swap or a kernel is held to. */
typedef enum { DEVICE_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_DEVICE } copy_kind;
typedef struct {
  yk_ctx *ctx;
  copy_kind kind;
  char *device, *host, *device_to; /* device_to: the destination of a device-to-device copy */
  size_t bytes;
} plain_copy;

static yk_status plain_copy_call(void *p) {
  const plain_copy *c = p;
  const yk_cuda_api *cu = &c->ctx->cu;
  const CUdeviceptr device = (CUdeviceptr)(uintptr_t)c->device;
  CUresult r = c->kind == DEVICE_TO_HOST ? cu->cuMemcpyDtoHAsync(c->host, device, c->bytes, NULL)
               : c->kind == HOST_TO_DEVICE
                   ? cu->cuMemcpyHtoDAsync(device, c->host, c->bytes, NULL)
                   : cu->cuMemcpyDtoDAsync((CUdeviceptr)(uintptr_t)c->device_to, device, c->bytes, NULL);
  return r == CUDA_SUCCESS ? YK_OK : YK_ERR_CUDA;
}

typedef struct {
  yk_kv_cache *cache;
  const int32_t *src, *dst;
  int64_t n;
  int to_cpu;
} swap_case;

static yk_status swap_call(void *p) {
  const swap_case *s = p;
  return s->to_cpu ? yk_kv_cache_swap_blocks_to_cpu(s->cache, s->src, s->dst, s->n, NULL)
                   : yk_kv_cache_swap_blocks_from_cpu(s->cache, s->src, s->dst, s->n, NULL);
}

static void gpu_row(const char *what, double ms, double bytes, double ceiling_gbps) {
  const double gbps = ms > 0 ? bytes / ms / 1e6 : 0;
  printf("| %-62s | %9.4f | %8.1f | %7.0f%% |\n", what, ms, gbps, ceiling_gbps > 0 ? 100 * gbps / ceiling_gbps : 0);
}

/* GB/s of the swaps, batches of 1, 16 and 256 blocks, consecutive ids (one transfer) and
 * scattered ones (i * 37 and i * 53 modulo the blocks: no two adjacent, a transfer a block),
 * against one copy of the same bytes between the same device and pinned host memory. */
static int swap_rows(bench_timer *t, yk_kv_cache *cache, int quick) {
  static int32_t in_order[GPU_BLOCKS], device_spread[GPU_BLOCKS], host_spread[GPU_BLOCKS];
  for (int i = 0; i < GPU_BLOCKS; i++)
    in_order[i] = i, device_spread[i] = (i * 37) % GPU_BLOCKS, host_spread[i] = (i * 53) % GPU_BLOCKS;
  static const int batches[] = {1, 16, 256};
  int failures = 0;
  for (int b = 0; b < (quick ? 2 : 3); b++)
    for (int to_cpu = 1; to_cpu >= 0; to_cpu--) {
      const int64_t n = batches[b];
      const double bytes = (double)n * (double)cache->block_bytes;
      plain_copy bus = {
          cache->ctx,   to_cpu ? DEVICE_TO_HOST : HOST_TO_DEVICE, cache->device_base, cache->host_base, NULL,
          (size_t)bytes};
      const double bus_ms = bench_median_ms(t, plain_copy_call, &bus), bus_gbps = bus_ms > 0 ? bytes / bus_ms / 1e6 : 0;
      char what[96];
      snprintf(what, sizeof what, "bus: one copy %s, %lld blocks", to_cpu ? "device -> host" : "host -> device",
               (long long)n);
      gpu_row(what, bus_ms, bytes, bus_gbps);
      for (int scattered = 0; scattered <= 1; scattered++) {
        const int32_t *device_ids = scattered ? device_spread : in_order,
                      *host_ids = scattered ? host_spread : in_order;
        swap_case s = {cache, to_cpu ? device_ids : host_ids, to_cpu ? host_ids : device_ids, n, to_cpu};
        const double ms = bench_median_ms(t, swap_call, &s);
        snprintf(what, sizeof what, "swap_blocks_%s_cpu %lld blocks, %s ids", to_cpu ? "to" : "from", (long long)n,
                 scattered ? "scattered" : "consecutive");
        if (ms <= 0 || bus_ms <= 0) {
          fprintf(stderr, "bench %s failed: %s\n", what, yk_ctx_last_error(cache->ctx));
          failures++;
          continue;
        }
        gpu_row(what, ms, bytes, bus_gbps);
      }
    }
  return failures;
}

typedef struct {
  yk_ctx *ctx;
  yh_tensor k, v, slots, positions, table;
  DLTensor kc, vc;
  int rope;
} append_case;

static yk_status append_call(void *p) {
  append_case *a = p;
  const yk_append_kv_index index = {.slot_mapping = &a->slots.dl};
  const yk_append_kv_rope rope = {&a->positions.dl, &a->table.dl, YK_ROPE_NEOX};
  return yk_append_kv(a->ctx, &a->k.dl, &a->v.dl, &a->kc, &a->vc, YK_KV_NHD, &index, a->rope ? &rope : NULL, NULL, NULL);
}

/* A decode step (64 tokens, each in its own block) and a prefill chunk (8192 tokens filling the
 * blocks in order) of layer 0; bytes: K and V read once and written once. */
static int append_rows(bench_timer *t, yk_kv_cache *cache, double copy_gbps) {
  static const struct {
    const char *name;
    int64_t tokens;
    int scattered, rope;
  } cases[] = {
      {"append_kv decode 64 tokens (Llama 3 8B layer, NHD page 16)", 64, 1, 0},
      {"append_kv prefill 8192 tokens", 8192, 0, 0},
      {"append_kv prefill 8192 tokens, NeoX RoPE of k fused", 8192, 0, 1},
  };
  yh_rng rng = {11};
  int failures = 0;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    append_case a = {.ctx = cache->ctx, .rope = cases[i].rope};
    const int64_t n = cases[i].tokens, kv[3] = {n, 8, 128}, table[2] = {32768, 128};
    yk_status st = yk_kv_cache_layer(cache, 0, &a.kc, &a.vc);
    if (st || yh_tensor_init(&a.k, a.ctx, YK_BF16, 3, kv, NULL, 1) ||
        yh_tensor_init(&a.v, a.ctx, YK_BF16, 3, kv, NULL, 1) ||
        yh_tensor_init(&a.slots, a.ctx, YK_I64, 1, &n, NULL, 1) ||
        yh_tensor_init(&a.positions, a.ctx, YK_I64, 1, &n, NULL, 1) ||
        yh_tensor_init(&a.table, a.ctx, YK_BF16, 2, table, NULL, 1)) {
      fprintf(stderr, "bench %s: cannot allocate its tensors\n", cases[i].name);
      failures++;
      continue;
    }
    yh_fill_uniform(&a.k, &rng, -2, 2), yh_fill_uniform(&a.v, &rng, -2, 2), yh_fill_uniform(&a.table, &rng, -1, 1);
    yh_fill_integers(&a.positions, &rng, 0, 32768);
    for (int64_t s = 0; s < n; s++) /* decode: block s * 37 at some offset; prefill: slot s */
      ((int64_t *)a.slots.host)[s] = cases[i].scattered ? (s * 37 % GPU_BLOCKS) * PAGE + s % PAGE : s;
    yh_upload(&a.slots);
    const double ms = bench_median_ms(t, append_call, &a), bytes = 4.0 * (double)(n * 8 * 128) * 2;
    if (ms <= 0) {
      fprintf(stderr, "bench %s failed: %s\n", cases[i].name, yk_ctx_last_error(a.ctx));
      failures++;
    } else {
      gpu_row(cases[i].name, ms, bytes, copy_gbps);
    }
    yh_tensor_free(&a.k), yh_tensor_free(&a.v), yh_tensor_free(&a.slots), yh_tensor_free(&a.positions);
    yh_tensor_free(&a.table);
  }
  return failures;
}

static int bench_kv_gpu(int quick) {
  yk_ctx *ctx = cli_ctx(YK_DEVICE_AUTO);
  if (ctx->device != YK_DEVICE_CUDA) {
    printf("\nGPU rows skipped: %s\n", ctx->device_note);
    yk_ctx_destroy(ctx);
    return 0;
  }
  yk_kv_cache_config config;
  yk_kv_cache_config_init(&config);
  config.layers = 32, config.kv_heads = 8, config.head_dim = 128, config.page_size = PAGE;
  config.num_blocks = GPU_BLOCKS, config.host_blocks = GPU_BLOCKS;
  yk_kv_cache *cache = NULL;
  bench_timer timer;
  int failures = 0;
  if (yk_kv_cache_create(ctx, &config, &cache) != YK_OK || bench_timer_init(&timer, ctx)) {
    cli_fail("bench --kv", "GPU cache or timer: %s", yk_ctx_last_error(ctx));
    yk_kv_cache_destroy(cache);
    yk_ctx_destroy(ctx);
    return 1;
  }
  printf("\n| %-62s | %9s | %8s | %8s |\n", "KV bytes on the GPU (Llama 3 8B cache: 2 MiB a block, bf16)", "median ms",
         "GB/s", "of bus");
  printf("|----------------------------------------------------------------|-----------|----------|----------|\n");
  failures += swap_rows(&timer, cache, quick);
  const size_t half = (size_t)GPU_BLOCKS / 2 * cache->block_bytes;
  plain_copy device = {ctx, DEVICE_TO_DEVICE, cache->device_base, NULL, cache->device_base + half, half};
  const double copy_ms = bench_median_ms(&timer, plain_copy_call, &device);
  const double copy_gbps = copy_ms > 0 ? 2.0 * (double)half / copy_ms / 1e6 : 0;
  printf("| %-62s | %9s | %8s | %8s |\n", "", "", "", "of copy");
  gpu_row("device copy, 512 MiB (read + write)", copy_ms, 2.0 * (double)half, copy_gbps);
  failures += append_rows(&timer, cache, copy_gbps);
  bench_timer_free(&timer);
  yk_kv_cache_destroy(cache);
  yk_ctx_destroy(ctx);
  return failures;
}

int bench_kv(int quick) {
  yk_ctx *ctx = cli_ctx(YK_DEVICE_CPU);
  yk_kv_cache_config config;
  yk_kv_cache_config_init(&config);
  config.layers = 1, config.kv_heads = 1, config.head_dim = 8, config.page_size = PAGE;
  config.num_blocks = 65536;
  yk_kv_cache *cache = NULL;
  yk_status st = yk_kv_cache_create(ctx, &config, &cache);
  if (st == YK_OK) {
    printf("| %-56s | %12s | %8s |\n", "KV cache manager (host, page 16, 65536 blocks)", "ops/s", "ns/op");
    printf("|----------------------------------------------------------|--------------|----------|\n");
    const int scale = quick ? 1 : 10;
    if (!(st = decode_steps(cache, 200 * scale)) && !(st = lifetimes(cache, 2000 * scale)))
      st = forks(cache, 2000 * scale);
  }
  if (st != YK_OK) cli_fail("bench --kv", "%s", yk_ctx_last_error(ctx));
  yk_kv_cache_destroy(cache);
  yk_ctx_destroy(ctx);
  return (st != YK_OK) + bench_kv_gpu(quick);
}
