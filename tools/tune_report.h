/* What yk tune prints and writes from the tuning database: the table of winners per shape, and
 * the CSV of every configuration that bench/plot_tune.sh plots. */
#ifndef YK_TOOLS_TUNE_REPORT_H
#define YK_TOOLS_TUNE_REPORT_H

#include <stdio.h>

#include "tune/tune_sweep.h"

/* The GPUs (name and arch) the database holds, each with the versions of its latest record. At
 * most max; returns how many. */
int tune_gpus(const yk_tune_db *db, yk_tune_identity *out, int max);

/* A table per op of the winners on id's GPU, a row a kernel (key) of each shape: of the shapes
 * swept (swept may be NULL: every shape in the database), and the default's time beside each.
 * ops (may be NULL): only these. */
void tune_print_table(FILE *to, yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id,
                      const yk_tune_swept *swept, int swept_count, const char *ops);

/* One row a configuration (the records the runtime would weigh, every GPU): op, shape, kernel, sizes,
 * GPU and versions, status, time, GB/s or TFLOP/s, speed-up over the default, whether it wins;
 * config and spec last, quoted. ops (may be NULL): only these. 0 on success. */
int tune_write_csv(const char *path, yk_ctx *ctx, const yk_tune_db *db, const char *ops);

#endif
