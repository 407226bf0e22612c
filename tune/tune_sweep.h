/* yk tune's sweep: for each op and shape, find the specs the op's call builds (its keys: one a
 * kernel it launches, the backward's stats, dk/dv and dq conversion each), and for each key in
 * turn compile every configuration in parallel through the cache, check each against the CPU
 * fallback, time each on the GPU, and record every outcome in the database; the call's other
 * kernels keep their defaults meanwhile, and the whole call is timed, which is what an engine
 * pays. Each key has its records and its winner, so the runtime picks a configuration a kernel.
 * Configurations the database already has for this GPU and these versions are not timed again.
 * Like yk_warm for the warm-up, the library does the work and reports through a callback;
 * tools/cmd_tune.c is the command. */
#ifndef YK_TUNE_SWEEP_H
#define YK_TUNE_SWEEP_H

#include "tune/tune_db.h"
#include "tune/tune_space.h"

typedef struct yk_tune_progress {
  const char *op, *shape;
  const char *kernel;           /* the key swept: "attention_backward_sm90 part=dkdv" (yk_tune_key_label) */
  int kernels;                  /* the keys swept at this shape, one after the other */
  const char *phase;            /* "compile" (before the shape's compiles), "time" (after each) */
  int done, total;              /* configurations of this kernel at this shape */
  const yk_tune_record *record; /* "time": the configuration just finished */
  const yk_tune_record *best;   /* the fastest checked one so far, or NULL */
  double default_ms;            /* 0 until the default is timed */
} yk_tune_progress;

typedef struct yk_tune_options {
  const char *ops;              /* "rms_norm,rope" or "all" */
  const char *models;           /* widths: "llama-3-8b,..."; NULL: llama-3-8b */
  const char *shapes;           /* "1,64,4096" or "32x4096"; NULL: each op's own list */
  int dtype;                    /* yk_dtype */
  int jobs;                     /* compile threads; 0: online CPUs */
  int retime;                   /* time again what the database has */
  double budget_ms;             /* timed calls a configuration gets; 0: 100 ms */
  const yk_tune_values *values; /* candidate lists replacing the ops' (may be NULL) */
  int value_count;
  void (*progress)(void *user, const yk_tune_progress *p);
  void *user;
} yk_tune_options;

/* One kernel of an (op, shape) swept, for the report. */
typedef struct yk_tune_swept {
  char op[40], shape[64], spec[256];
  int64_t bucket, size;
} yk_tune_swept;

typedef struct yk_tune_summary {
  int shapes, kernels; /* (op, shape) pairs swept; their keys swept, one a kernel the tuner varies */
  int configs;         /* configurations in all, the defaults included */
  int timed, reused;   /* timed now; found in the database */
  int compile_failed, launch_failed, wrong;
  int rejected;           /* combinations that break their op's rules or the shared memory */
  int compiled, cached;   /* configurations NVRTC compiled; found in the cache */
  int nvrtc_kernels;      /* kernels NVRTC compiled in all, the defaults' included */
  double nvrtc_seconds;   /* their compile times added up (threads overlap them) */
  double seconds;         /* wall time, of which: */
  double setup_seconds;   /* inputs, and each shape's first call (which compiles its default) */
  double compile_seconds; /* the parallel compiles of the configurations */
  double check_seconds;   /* runs against the CPU fallback, its reference included */
  double time_seconds;    /* timing */
  yk_tune_swept *swept;
  int swept_count;
} yk_tune_summary;

/* The kernels one call builds, as the sweep finds them: the distinct specs its call sites pass to
 * yk_spec_finish (keys, before the op completes them), in the order first built. */
#define YK_TUNE_KEYS_MAX 8
typedef struct yk_tune_keys {
  yk_spec key[YK_TUNE_KEYS_MAX];
  int count;
  int dropped; /* distinct specs past YK_TUNE_KEYS_MAX */
} yk_tune_keys;

/* The spec_override that finds them (user: a yk_tune_keys, zeroed first): records each spec once
 * and leaves it as built. */
void yk_tune_keys_capture(void *user, yk_spec *spec);

/* Sweeps on ctx's GPU (YK_ERR_NO_DEVICE without one) and puts every record in db. The context's
 * tuned table is set aside meanwhile, so defaults are the op's own. The summary's swept list is
 * malloc'd: yk_tune_summary_free. */
yk_status yk_tune_run(yk_ctx *ctx, yk_tune_db *db, const yk_tune_options *o, yk_tune_summary *s);
void yk_tune_summary_free(yk_tune_summary *s);

/* Compiles configs for arch ("sm_90") on `jobs` threads through the cache, NVRTC only (no GPU).
 * Each that fails is marked failed and recorded in db as compile_failed: the record `shape`
 * (op, spec, bucket, identity and work set) with the configuration and the message added. Adds
 * to s's compile counts and seconds. Configurations already failed or reused are left alone. */
yk_status yk_tune_compile(yk_ctx *ctx, const char *arch, int jobs, yk_tune_db *db, const yk_tune_record *shape,
                          yk_tune_config *configs, int count, yk_tune_summary *s);

#endif
