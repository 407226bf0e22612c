/* The tuning database: a text file of one JSON object a line, one line per configuration timed
 * (winners and losers alike, so adding a configuration later times only that one):
 *
 *   {"op": "rms_norm", "spec": "rms_norm:dtype=bf16,hidden=4096,vec=8,fused_add=0", "bucket": 4096,
 *    "size": 4096, "shape": "T4096 H4096", "gpu": "NVIDIA H100 80GB HBM3", "arch": "sm_90",
 *    "driver": 13000, "nvrtc": "13.0", "yk": "0.1.0", "config": "threads=256,row_in_regs=1",
 *    "default": true, "status": "ok", "ms": 0.0123, "error": 0.0021, "bytes": 67108864,
 *    "flops": 0, "note": ""}
 *
 * (one line in the file). A record is identified by op, spec, bucket, gpu, arch, driver, nvrtc,
 * yk and config; a later record with the same identity replaces an earlier one. Unknown members
 * are ignored, so newer writers stay readable. */
#ifndef YK_TUNE_DB_H
#define YK_TUNE_DB_H

#include <stdint.h>

#include "yk/context.h"

typedef enum yk_tune_status {
  YK_TUNE_OK = 0,             /* timed, and its result matched the CPU fallback */
  YK_TUNE_WRONG = 1,          /* ran, but its result differs from the CPU fallback's */
  YK_TUNE_COMPILE_FAILED = 2, /* NVRTC (or the spec's own rules) refused it */
  YK_TUNE_LAUNCH_FAILED = 3,  /* compiled, but would not load or launch (shared memory, registers) */
  YK_TUNE_STATUS_COUNT = 4
} yk_tune_status;

const char *yk_tune_status_name(yk_tune_status s); /* "ok", "wrong", "compile_failed", "launch_failed" */

/* Where and with what a configuration was timed. */
typedef struct yk_tune_identity {
  char gpu[128];  /* cuDeviceGetName */
  char arch[16];  /* the context's target: "sm_90" */
  int driver;     /* cuDriverGetVersion */
  char nvrtc[16]; /* "13.0" */
  char yk[16];    /* the library's version */
} yk_tune_identity;

typedef struct yk_tune_record {
  char op[40];    /* the call tuned: rms_norm, fused_add_rms_norm, act_and_mul, attention_decode, ... */
  char spec[256]; /* the key (tune/tune_key.h) */
  int64_t bucket; /* the power of two nearest the problem size, in log distance */
  int64_t size;   /* the problem size timed: rows, tokens, batch x sequence */
  char shape[64]; /* for people: "T4096 H4096" */
  yk_tune_identity id;
  char config[128];
  int is_default; /* the configuration the op chooses without tuning */
  yk_tune_status status;
  double ms;           /* median; 0 unless status is ok or wrong */
  double error;        /* relative error against the CPU fallback; 0 where not checked */
  double bytes, flops; /* work of one call, for GB/s and TFLOP/s */
  char note[256];      /* why it failed */
} yk_tune_record;

typedef struct yk_tune_db {
  yk_tune_record *records;
  int count, capacity;
} yk_tune_db;

void yk_tune_db_free(yk_tune_db *db);

/* The power of two nearest size in log distance (size 3000 -> 4096, 2500 -> 2048); 1 for size < 2. */
int64_t yk_tune_bucket(int64_t size);

/* Records one line. 0 on success; nonzero with the reason in why. */
int yk_tune_record_parse(const char *line, yk_tune_record *r, char *why, size_t why_size);
/* One line without its newline. Returns 0, or nonzero if it does not fit. */
int yk_tune_record_format(const yk_tune_record *r, char *buf, size_t size);

/* Same op, spec, bucket, identity and config. */
int yk_tune_record_same(const yk_tune_record *a, const yk_tune_record *b);

/* Adds r, replacing a record of the same identity. YK_OK or YK_ERR_OUT_OF_MEMORY (message on ctx). */
yk_status yk_tune_db_put(yk_ctx *ctx, yk_tune_db *db, const yk_tune_record *r);
/* The record of r's identity, or NULL. */
const yk_tune_record *yk_tune_db_find(const yk_tune_db *db, const yk_tune_record *r);

/* Adds every record of path's file to db (yk_tune_db_put each). A line that does not parse is
 * skipped with a warning through the context's log (the first few, then a count); *corrupt
 * (may be NULL) counts them. A missing file is YK_ERR_NOT_FOUND, with nothing added. */
yk_status yk_tune_db_load(yk_ctx *ctx, const char *path, yk_tune_db *db, int *corrupt);

/* Writes every record to path through a temporary file renamed into place, so a reader sees the
 * old file or the new one, never half of one. */
yk_status yk_tune_db_save(yk_ctx *ctx, const char *path, const yk_tune_db *db);

#endif
