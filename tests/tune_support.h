/* What the tuner's tests share (tests/test_tune.c, tests/test_tune_backward.c): rms_norm's
 * call-site key, a GPU's identity, and a record of rms_norm's timing on it. */
#ifndef YK_TESTS_TUNE_SUPPORT_H
#define YK_TESTS_TUNE_SUPPORT_H

#include <stdio.h>
#include <string.h>

#include "gen/spec.h"
#include "tests/support.h"
#include "tune/tune_db.h"

enum { HIDDEN, VEC, THREADS, FUSED_ADD, ROW_IN_REGS }; /* rms_norm's fields (gen/ops/rms_norm.c) */

/* The spec rms_norm's call site builds for rows of `hidden` bf16 at full alignment. */
static inline yk_spec rms_norm_key(int hidden) {
  yk_spec key;
  yk_spec_init(&key, yk_registry_op(yk_registry_find("rms_norm")), YK_BF16);
  key.v[HIDDEN] = hidden, key.v[FUSED_ADD] = 0, key.v[VEC] = 8;
  return key;
}

static const yk_tune_identity gpu_a = {"Test GPU A", "sm_90", 13000, "13.0", "0.1.0"};

static inline yk_tune_record record(const yk_tune_identity *id, int64_t bucket, const char *config, int is_default,
                                    double ms) {
  yk_tune_record r;
  memset(&r, 0, sizeof r);
  snprintf(r.op, sizeof r.op, "rms_norm");
  snprintf(r.spec, sizeof r.spec, "rms_norm:dtype=bf16,hidden=4096,vec=8,fused_add=0");
  r.bucket = bucket, r.size = bucket;
  snprintf(r.shape, sizeof r.shape, "T%lld H4096", (long long)bucket);
  r.id = *id;
  snprintf(r.config, sizeof r.config, "%s", config);
  r.is_default = is_default;
  r.status = YK_TUNE_OK;
  r.ms = ms, r.error = 0.003, r.bytes = 2.0 * (double)bucket * 4096 * 2;
  return r;
}

static inline void put(yk_ctx *ctx, yk_tune_db *db, yk_tune_record r) {
  cr_assert_eq(yk_tune_db_put(ctx, db, &r), YK_OK);
}

#endif
