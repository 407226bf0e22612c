/* yk bench: the copy ceiling, every op at the peers' shapes, and the JIT's costs, on the GPU.
 * Prints a table and writes JSON for bench/report.py to merge with the peers' figures. */
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "runtime/context.h"
#include "tools/cli.h"

typedef struct {
  yk_ctx *ctx;
  CUdeviceptr a, b;
  size_t bytes;
} copy_case;

static yk_status copy(void *p) {
  copy_case *c = p;
  return c->ctx->cu.cuMemcpyDtoDAsync(c->b, c->a, c->bytes, NULL) == CUDA_SUCCESS ? YK_OK : YK_ERR_CUDA;
}

static void write_json(const char *path, const yk_ctx_info *info, const bench_results *r) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "yk bench: cannot write %s\n", path);
    return;
  }
  fprintf(f, "{\n \"device\": \"%s\",\n \"arch\": \"%s\",\n \"driver\": %d,\n \"nvrtc\": \"%d.%d\",\n",
          info->device_name, info->arch, info->driver_version, info->nvrtc_major, info->nvrtc_minor);
  fprintf(f, " \"copy_GBps\": %.1f,\n \"rows\": [\n", r->copy_gbps);
  for (int i = 0; i < r->count; i++)
    fprintf(f, "  {\"name\": \"%s\", \"ms\": %.6f, \"value\": %.4f, \"unit\": \"%s\"}%s\n", r->rows[i].name,
            r->rows[i].ms, r->rows[i].value, r->rows[i].unit, i + 1 < r->count ? "," : "");
  fprintf(f, " ]\n}\n");
  fclose(f);
}

int cmd_bench(int argc, char **argv) {
  const char *json = NULL;
  int quick = 0, sweep = 0, attention_only = 0, kv_only = 0, radix_only = 0, paged_only = 0, decode_only = 0,
      prefill_only = 0, backward_only = 0, ops_only = 0, lengths_only = 0, head_dim = 0;
  for (int i = 1; i < argc; i++) {
    const char *v;
    if ((v = cli_option(argc, argv, &i, "--json")))
      json = v;
    else if ((v = cli_option(argc, argv, &i, "--head-dim")))
      head_dim = atoi(v);
    else if (!strcmp(argv[i], "--quick"))
      quick = 1;
    else if (!strcmp(argv[i], "--sweep"))
      sweep = 1;
    else if (!strcmp(argv[i], "--attention"))
      attention_only = 1;
    else if (!strcmp(argv[i], "--kv"))
      kv_only = 1;
    else if (!strcmp(argv[i], "--radix"))
      radix_only = 1;
    else if (!strcmp(argv[i], "--paged"))
      paged_only = 1;
    else if (!strcmp(argv[i], "--decode"))
      decode_only = 1;
    else if (!strcmp(argv[i], "--prefill"))
      prefill_only = 1;
    else if (!strcmp(argv[i], "--backward"))
      backward_only = 1;
    else if (!strcmp(argv[i], "--ops"))
      ops_only = 1;
    else if (!strcmp(argv[i], "--lengths"))
      lengths_only = 1;
    else {
      int help = !strcmp(argv[i], "--help");
      fprintf(
          help ? stdout : stderr,
          "usage: yk bench [--json PATH] [--quick] [--sweep] [--attention] [--paged] [--decode] [--prefill]\n"
          "                [--backward] [--ops] [--lengths] [--kv] [--radix] [--head-dim N]\n"
          "Times the ops and the JIT on the GPU; JSON goes to PATH, else $OUT/yk_bench.json.\n"
          "--paged: paged decode, paged prefill of a few queries and cascade decode only; with --sweep, their knobs\n"
          "         (batch 1, a few queries, batch 16, float8 caches).\n"
          "--decode: dense decode (both KV layouts), then paged and cascade decode; with --sweep, the\n"
          "  decode's split counts, tiles, shared-memory layouts and L2 hints too.\n"
          "--prefill: the prefill only; with --sweep, the Hopper prefill's configurations too.\n"
          "--backward: the backward only; with --sweep, its tiles too.\n"
          "--head-dim N: with --prefill or --backward, head dim N's rows (and sweep) alone (64, 128; prefill 256).\n"
          "--lengths: batch-1 decode over lengths (dense and paged) under the knobs of its kernel.\n"
          "--ops: the norms, activations and RoPE, then the JIT and dispatch costs.\n"
          "--kv: the KV cache manager's host operations a second instead (no GPU needed).\n"
          "--radix: the radix tree's (prefix cache) host operations a second instead (no GPU needed).\n");
      return help ? 0 : 2;
    }
  }
  if (head_dim != 0 && head_dim != 64 && head_dim != 128 && head_dim != 256)
    return cli_fail("bench", "--head-dim takes 64, 128 or 256"), 2;
  if (kv_only) return bench_kv(quick);
  if (radix_only) return bench_radix(quick);
  yk_ctx *ctx = cli_ctx(YK_DEVICE_AUTO);
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  if (info.device != YK_DEVICE_CUDA) {
    cli_fail("bench", "needs a CUDA device: %s", info.device_note);
    yk_ctx_destroy(ctx);
    return 1;
  }
  bench_timer timer;
  if (bench_timer_init(&timer, ctx)) return cli_fail("bench", "cannot set up the timer");
  static bench_results results;
  fprintf(stderr, "yk bench on %s (%s)\n", info.device_name, info.arch);

  copy_case c = {ctx, 0, 0, (size_t)1 << 29};
  if (ctx->cu.cuMemAlloc(&c.a, c.bytes) == CUDA_SUCCESS && ctx->cu.cuMemAlloc(&c.b, c.bytes) == CUDA_SUCCESS) {
    ctx->cu.cuMemsetD8(c.a, 0x3c, c.bytes);
    double ms = bench_median_ms(&timer, copy, &c);
    results.copy_gbps = 2.0 * (double)c.bytes / ms / 1e6;
    bench_add(&results, "ceiling.copy_GBps(read+write)", ms, results.copy_gbps, results.copy_gbps, "GB/s");
    fprintf(stderr, "  device-to-device copy: %.0f GB/s (read + write)\n", results.copy_gbps);
  }
  if (c.a) ctx->cu.cuMemFree(c.a);
  if (c.b) ctx->cu.cuMemFree(c.b);

  int failures = 0;
  if (lengths_only) {
    bench_decode_lengths(&timer, &results);
  } else if (prefill_only) {
    bench_prefill(&timer, &results, sweep, head_dim);
  } else if (backward_only) {
    bench_backward(&timer, &results, sweep, head_dim);
  } else if (ops_only) {
    failures += bench_ops(&timer, &results, quick);
    failures += bench_jit(ctx, &results, quick);
  } else {
    failures += attention_only || paged_only || decode_only ? 0 : bench_ops(&timer, &results, quick);
    if (decode_only)
      bench_decode(&timer, &results, sweep);
    else if (!paged_only)
      failures += bench_attention(&timer, &results, quick);
    failures += bench_paged(&timer, &results);
    if (!attention_only && !paged_only && !decode_only) failures += bench_jit(ctx, &results, quick);
    if (sweep && paged_only)
      bench_paged_knobs(&timer, &results);
    else if (sweep && !decode_only)
      failures += attention_only ? bench_attention_sweep(&timer, &results) : bench_sweep(&timer, &results);
  }

  printf("| %-62s | %10s | %10s | %9s |\n", "benchmark", "median ms", "value", "of copy");
  printf("|%s|%s|%s|%s|\n", "----------------------------------------------------------------", "------------",
         "------------", "-----------");
  for (int i = 0; i < results.count; i++) {
    const bench_row *row = &results.rows[i];
    char share[16] = "";
    if (row->gbps > 0 && results.copy_gbps > 0)
      snprintf(share, sizeof share, "%.0f%%", 100 * row->gbps / results.copy_gbps);
    printf("| %-62s | %10.4f | %7.2f %-4s | %9s |\n", row->name, row->ms, row->value, row->unit, share);
  }
  char path[1024];
  const char *out = getenv("OUT");
  snprintf(path, sizeof path, "%s", json ? json : out && out[0] ? "" : "yk_bench.json");
  if (!json && out && out[0]) snprintf(path, sizeof path, "%s/yk_bench.json", out);
  write_json(path, &info, &results);
  bench_timer_free(&timer);
  yk_ctx_destroy(ctx);
  return failures ? 1 : 0;
}
