/* yk bench: timings on the GPU, measured the way triton.testing.do_bench measures the peers
 * (L2 flushed before each repetition, CUDA events around the call, median), so ratios against
 * the peers' figures from the same run compare like with like. */
#ifndef YK_BENCH_BENCH_H
#define YK_BENCH_BENCH_H

#include <stdio.h>

#include "bench/harness.h"

typedef struct bench_timer {
  yk_ctx *ctx;
  CUdeviceptr flush; /* 256 MB, cleared before each repetition, as do_bench does */
  size_t flush_words;
  CUevent *start, *end;
  int capacity;
} bench_timer;

int bench_timer_init(bench_timer *t, yk_ctx *ctx);
void bench_timer_free(bench_timer *t);

typedef yk_status (*bench_fn)(void *arg);

/* Median milliseconds of fn over repetitions filling about 100 ms (at least 10, at most the
 * timer's capacity), after warm-up. Negative if fn fails (the message is on the context). */
double bench_median_ms(bench_timer *t, bench_fn fn, void *arg);
/* The median of v[0..n) (n > 0), which it sorts: the one way bench/ takes one. */
double bench_median(double *v, int n);

/* Microseconds a call of fn when an engine's step issues it back to back (no L2 flush, no sync
 * between calls), the median of 21 batches of 200. Negative if fn fails. */
double bench_back_to_back_us(bench_timer *t, bench_fn fn, void *arg);

/* One row of results. */
typedef struct bench_row {
  char name[96];
  double ms;        /* median */
  double gbps;      /* bytes moved / time, 0 where not a bandwidth figure */
  double value;     /* other figures: microseconds, milliseconds */
  const char *unit; /* "GB/s", "us", "ms" */
} bench_row;

typedef struct bench_results {
  bench_row rows[2048]; /* yk bench --prefill --sweep alone filled 504 (session 36); --sweep adds the others */
  int count;
  double copy_gbps; /* measured device-to-device copy, read + write */
} bench_results;

void bench_add(bench_results *r, const char *name, double ms, double gbps, double value, const char *unit);

/* Ragged decode batches at 32 q / 8 kv heads, head dim 128 (yk bench --decode, dense and paged):
 * long_count sequences of longest spread through the batch and the rest short_len, or lens. */
typedef struct bench_ragged {
  const char *name;
  int64_t batch, longest, long_count, short_len;
  const int32_t *lens;
} bench_ragged;
extern const bench_ragged bench_ragged_shapes[];
extern const int bench_ragged_count;
/* Sequence b's keys. */
int32_t bench_ragged_len(const bench_ragged *s, int64_t b);
/* The splits the batch alone gives its sequences (the rule before ragged batches were balanced). */
int bench_batch_split(yk_ctx *ctx, int64_t batch, int64_t longest);

/* One op on one shape, in bf16, with random inputs on the device. */
typedef enum { RMS_NORM, FUSED_ADD_RMS_NORM, SILU_AND_MUL, ROPE } bench_op;
typedef struct {
  yk_ctx *ctx;
  bench_op op;
  yh_tensor a, b, c, d; /* per op: x, weight, out | x, residual, weight | x, out | q, k, cache, positions */
} bench_case;
/* width: hidden (norms), d (silu_and_mul), head_dim (rope: 32 q and 8 kv heads). Returns the bytes
 * one call moves, or 0 on failure. */
double bench_case_setup(bench_case *c, yk_ctx *ctx, bench_op op, int64_t tokens, int64_t width, yh_rng *rng);
yk_status bench_case_call(void *c);
void bench_case_free(bench_case *c);

int bench_ops(bench_timer *t, bench_results *r, int quick);
int bench_attention(bench_timer *t, bench_results *r, int quick);
/* Dense decode only, both KV layouts; with sweep, its split counts and tiles too (yk bench --decode). */
void bench_decode(bench_timer *t, bench_results *r, int sweep);
/* Batch-1 decode over lengths, dense and paged, with the knobs that move its fixed cost or its
 * steady rate (yk bench --lengths, and the end of yk bench --decode --sweep). */
void bench_decode_lengths(bench_timer *t, bench_results *r);
/* Paged batch-1 decode (page 16, 32768 keys) under the knobs of its kernel. */
void bench_paged_knobs(bench_timer *t, bench_results *r);
/* The prefill rows only; with sweep, the Hopper prefill's configurations too (yk bench --prefill);
 * head_dim nonzero: that head dim's rows alone (--head-dim), and no cold compiles. */
void bench_prefill(bench_timer *t, bench_results *r, int sweep, int head_dim);
/* The backward rows only; with sweep, its tiles too (yk bench --backward); head_dim as above. */
void bench_backward(bench_timer *t, bench_results *r, int sweep, int head_dim);
int bench_paged(bench_timer *t, bench_results *r);
/* Times each op's tunable fields over a grid of values through the context's spec override. */
int bench_sweep(bench_timer *t, bench_results *r);
int bench_attention_sweep(bench_timer *t, bench_results *r);

/* One row of a sweep, "sweep.SHAPE CONFIG": fn(arg) timed with config ("field=value,...", see
 * tune/tune_key.h) pinned on the launches of op `kernel` (NULL: nothing pinned, config only names
 * the row); work is bytes for GB/s, flops for TFLOP/s. A configuration a rule refuses prints as
 * invalid and adds no row. */
void bench_sweep_one(bench_timer *t, bench_results *r, const char *shape, const char *kernel, const char *config,
                     bench_fn fn, void *arg, double work, const char *unit);
int bench_jit(yk_ctx *ctx, bench_results *r, int quick);
/* The KV cache manager's host operations a second (no GPU needed); prints its own table. */
int bench_kv(int quick);
/* The radix tree's host operations a second (no GPU needed); prints its own table. */
int bench_radix(int quick);

#endif
