/* JIT costs: a cold compile, first use of a kernel found in the disk cache, and what dispatch
 * through the cache adds over a bare cuLaunchKernel. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "runtime/context.h"
#include "runtime/launch.h"
#include "runtime/module.h"
#include "tune/tune_context.h"
#include "tune/tune_key.h"
#include "tune/tune_sweep.h"
#include "tune/tune_table.h"

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static yk_ctx *ctx_on(const char *dir, yk_device_kind device) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = device;
  o.cache_dir = dir;
  yk_ctx *ctx = NULL;
  return yk_ctx_create(&o, &ctx) == YK_OK ? ctx : NULL;
}

enum { SPECS = 9 };

/* Distinct specs that no cache holds yet (the run's salt keeps reruns cold): three ops, three sizes. */
static void spec_text(int salt, int i, char *buf, size_t size) {
  const int hidden = 4096 + 32 * salt + 64 * i;
  if (i % 3 == 0)
    snprintf(buf, size, "rms_norm:dtype=bf16,hidden=%d", hidden);
  else if (i % 3 == 1)
    snprintf(buf, size, "act_and_mul:dtype=bf16,d=%d", hidden);
  else
    snprintf(buf, size, "rope:dtype=bf16,head_dim=%d", 64 + 16 * i);
}

/* A fresh directory for the cold and disk measurements. */
static void temp_dir(char *out, size_t size) {
  const char *root = getenv("TMPDIR");
  snprintf(out, size, "%s/yk-bench-XXXXXX", root && root[0] ? root : "/tmp");
  if (!mkdtemp(out)) out[0] = '\0';
}

typedef struct {
  yk_ctx *ctx;
  yh_tensor x, w, out;
} tiny;

static int make_tiny(tiny *t, yk_ctx *ctx, int64_t hidden) {
  t->ctx = ctx;
  const int64_t dims[2] = {1, hidden};
  yh_rng rng = {9};
  if (yh_tensor_init(&t->x, ctx, YK_BF16, 2, dims, NULL, 1) ||
      yh_tensor_init(&t->w, ctx, YK_BF16, 1, &hidden, NULL, 1) ||
      yh_tensor_init(&t->out, ctx, YK_BF16, 2, dims, NULL, 1))
    return 1;
  yh_fill_uniform(&t->x, &rng, -1, 1), yh_fill_uniform(&t->w, &rng, -1, 1);
  return 0;
}

static void free_tiny(tiny *t) { yh_tensor_free(&t->x), yh_tensor_free(&t->w), yh_tensor_free(&t->out); }

/* A tune table for this GPU whose one key is the spec the dispatch rows' yk_rms_norm builds (as the
 * tuner finds it: yk_tune_keys_capture), with a winner at its one-row bucket: with it on the
 * context, yk_rms_norm pays what every launch of a tuned context pays (the key's hash, a probe, the
 * walk of its buckets), which the unit tests do not time. */
static yk_tune_table *dispatch_table(yk_ctx *gpu, tiny *t) {
  yk_tune_keys keys = {0};
  gpu->spec_override = yk_tune_keys_capture, gpu->spec_override_user = &keys;
  const yk_status st = yk_rms_norm(gpu, &t->x.dl, &t->w.dl, 1e-6f, &t->out.dl, NULL);
  gpu->spec_override = NULL, gpu->spec_override_user = NULL;
  if (st != YK_OK || keys.count != 1) return NULL;
  yk_tune_identity id;
  yk_tune_identity_of(gpu, &id);
  yk_tune_db db = {0};
  static const char *const configs[] = {"threads=32,row_in_regs=1", "threads=64,row_in_regs=1"};
  for (int winner = 0; winner < 2; winner++) {
    yk_tune_record rec;
    memset(&rec, 0, sizeof rec);
    snprintf(rec.op, sizeof rec.op, "%s", keys.key[0].op->name);
    yk_tune_key_format(&keys.key[0], rec.spec, sizeof rec.spec);
    rec.bucket = rec.size = 1;
    snprintf(rec.shape, sizeof rec.shape, "T1 H128");
    rec.id = id;
    snprintf(rec.config, sizeof rec.config, "%s", configs[winner]);
    rec.is_default = !winner;
    rec.status = YK_TUNE_OK;
    rec.ms = winner ? 0.5 : 1.0;
    if (yk_tune_db_put(gpu, &db, &rec)) break;
  }
  yk_tune_table *table = NULL;
  if (yk_tune_table_build(gpu, &db, &id, &table) == YK_OK && table->entry_count != 1)
    yk_tune_table_free(table), table = NULL;
  yk_tune_db_free(&db);
  return table;
}

int bench_jit(yk_ctx *gpu, bench_results *r, int quick) {
  char dir[512];
  temp_dir(dir, sizeof dir);
  int failures = 0;
  const char *target = gpu->target;
  const int salt = (int)(time(NULL) % 1000);

  /* cold compile: generation, key, NVRTC, disk write */
  yk_ctx *cold = ctx_on(dir, YK_DEVICE_CPU);
  double compile[SPECS];
  int n = 0;
  for (int i = 0; cold && i < SPECS; i++) {
    char spec[128];
    spec_text(salt, i, spec, sizeof spec);
    int compiled = 0;
    double t0 = now_ms();
    if (yk_spec_compile(cold, spec, target, &compiled) == YK_OK && compiled) compile[n++] = now_ms() - t0;
  }
  if (n) {
    double m = bench_median(compile, n);
    bench_add(r, "jit.cold_compile_ms (median of rms_norm, act_and_mul, rope)", m, 0, m, "ms");
    fprintf(stderr, "  cold compile: median %.1f ms over %d specs\n", m, n);
  } else {
    failures++;
  }
  yk_ctx_destroy(cold);

  /* first use from the disk cache, in a new context: disk read, checksum, module load, launch */
  yk_ctx *warm = ctx_on(dir, YK_DEVICE_CUDA);
  double first[SPECS];
  n = 0;
  for (int i = 0; warm && i < SPECS; i += 3) {
    char spec[128];
    spec_text(salt, i, spec, sizeof spec);
    const int hidden = atoi(strstr(spec, "hidden=") + 7);
    tiny t;
    if (make_tiny(&t, warm, hidden)) break;
    yh_sync(warm);
    double t0 = now_ms();
    yk_status st = yk_rms_norm(warm, &t.x.dl, &t.w.dl, 1e-6f, &t.out.dl, NULL);
    if (st == YK_OK && yh_sync(warm) == 0) first[n++] = now_ms() - t0;
    free_tiny(&t);
  }
  yk_ctx_stats stats;
  if (warm) yk_ctx_get_stats(warm, &stats);
  if (n && warm && stats.disk_hits == (uint64_t)n && stats.compiled == 0) {
    double m = bench_median(first, n);
    bench_add(r, "jit.first_use_from_disk_ms (read, verify, load cubin, launch, sync)", m, 0, m, "ms");
    fprintf(stderr, "  first use from disk: median %.3f ms over %d kernels\n", m, n);
  } else {
    fprintf(stderr, "  first use from disk: not measured (%s)\n", warm ? "kernels were not disk hits" : "no context");
    failures++;
  }
  yk_ctx_destroy(warm);

  /* dispatch: yk_rms_norm on a cached kernel against cuLaunchKernel(Ex) of the same function */
  tiny t;
  if (make_tiny(&t, gpu, 128)) return failures + 1;
  yk_spec spec;
  char why[256];
  yk_kernel *k = NULL;
  if (yk_spec_parse("rms_norm:dtype=bf16,hidden=128,vec=8", &spec, why, sizeof why) || yk_kernel_get(gpu, &spec, &k)) {
    free_tiny(&t);
    return failures + 1;
  }
  void *xp = t.x.dl.data, *rp = NULL, *wp = t.w.dl.data, *op = t.out.dl.data;
  long long stride = 128;
  float eps = 1e-6f;
  void *args[] = {&xp, &rp, &wp, &op, &stride, &stride, &stride, &eps};
  CUlaunchConfig config = {
      .gridDimX = 1, .gridDimY = 1, .gridDimZ = 1, .blockDimX = k->block_threads, .blockDimY = 1, .blockDimZ = 1};
  /* Batches of 200 stay well inside the launch queue (about 1024 entries), so the host never waits
   * for the GPU and the figures are host cost alone; the device is drained between batches. */
  const int batches = quick ? 20 : 100, per_batch = 200;
  /* variants, interleaved batch by batch so drift hits all alike: bare cuLaunchKernel, bare
   * cuLaunchKernelEx, cuCtxGetCurrent + cuLaunchKernelEx (the driver part of our path), yk_rms_norm,
   * and yk_rms_norm on the context tuned (dispatch_table) */
  yk_tune_table *table = dispatch_table(gpu, &t), *untuned = gpu->tune;
  gpu->tune = table; /* its kernel (64 threads) loaded before the timing */
  if (table && yk_rms_norm(gpu, &t.x.dl, &t.w.dl, 1e-6f, &t.out.dl, NULL) != YK_OK)
    yk_tune_table_free(table), table = NULL;
  gpu->tune = untuned;
  const int variants = table ? 5 : 4;
  double times[5][100];
  for (int b = 0; b < batches; b++) {
    for (int variant = 0; variant < variants; variant++) {
      gpu->tune = variant == 4 ? table : untuned;
      yh_sync(gpu);
      double t0 = now_ms();
      CUcontext current;
      for (int i = 0; i < per_batch; i++) {
        if (variant == 0)
          gpu->cu.cuLaunchKernel(k->function, 1, 1, 1, k->block_threads, 1, 1, 0, NULL, args, NULL);
        else if (variant == 1)
          gpu->cu.cuLaunchKernelEx(&config, k->function, args, NULL);
        else if (variant == 2)
          gpu->cu.cuCtxGetCurrent(&current), gpu->cu.cuLaunchKernelEx(&config, k->function, args, NULL);
        else
          yk_rms_norm(gpu, &t.x.dl, &t.w.dl, 1e-6f, &t.out.dl, NULL);
      }
      times[variant][b] = (now_ms() - t0) * 1e3 / per_batch;
    }
  }
  gpu->tune = untuned;
  yk_tune_table_free(table);
  yh_sync(gpu);
  double mb = bench_median(times[0], batches), mbx = bench_median(times[1], batches),
         mcx = bench_median(times[2], batches), mo = bench_median(times[3], batches);
  bench_add(r, "launch.cuLaunchKernel_us (host submit, bare)", 0, 0, mb, "us");
  bench_add(r, "launch.cuLaunchKernelEx_us (host submit, bare)", 0, 0, mbx, "us");
  bench_add(r, "launch.cuCtxGetCurrent+cuLaunchKernelEx_us", 0, 0, mcx, "us");
  bench_add(r, "launch.yk_rms_norm_us (checks, cache hit, launch)", 0, 0, mo, "us");
  bench_add(r, "launch.dispatch_overhead_us (yk - bare cuLaunchKernelEx)", 0, 0, mo - mbx, "us");
  fprintf(stderr,
          "  launch: bare %.2f us, bare Ex %.2f us, GetCurrent+Ex %.2f us, yk_rms_norm %.2f us, overhead %.2f us\n", mb,
          mbx, mcx, mo, mo - mbx);
  if (variants == 5) {
    const double mt = bench_median(times[4], batches);
    bench_add(r, "launch.yk_rms_norm_tuned_us (the same on a tuned context)", 0, 0, mt, "us");
    bench_add(r, "launch.tune_lookup_us (tuned - untuned yk_rms_norm)", 0, 0, mt - mo, "us");
    fprintf(stderr, "  launch: tuned yk_rms_norm %.2f us, the lookup %.3f us\n", mt, mt - mo);
  } else {
    fprintf(stderr, "  launch: tuned yk_rms_norm not measured (no tune table)\n");
    failures++;
  }
  free_tiny(&t);
  return failures;
}
