/* Which configuration wins: decided here only, for the runtime's table and for `yk tune`'s report. */
#ifndef YK_TUNE_SELECT_H
#define YK_TUNE_SELECT_H

#include "tune/tune_db.h"

/* A tuned configuration must beat the default by this share of its time to be used: medians of
 * the same kernel move by about half a percent between runs, and a win inside that is noise. */
#define YK_TUNE_MIN_GAIN 0.01

/* The configuration to run for one group (the records of one spec and bucket on one GPU): the
 * fastest whose result was checked, when it beats the default by YK_TUNE_MIN_GAIN; else the
 * default. So the winner is never slower than the default as timed. NULL when the group holds no
 * checked default to compare with. *default_out (may be NULL) receives the default's record. */
const yk_tune_record *yk_tune_winner(const yk_tune_record *const *records, int count,
                                     const yk_tune_record **default_out);

typedef void (*yk_tune_group_fn)(void *user, const yk_tune_record *const *records, int count);

/* Calls fn once per (spec, bucket) among db's records timed on id's GPU name and arch, in order
 * of spec then bucket. Where records of one configuration differ only in versions (driver,
 * NVRTC, yk), the one that shares most with id stands for it (the library's version counting
 * most, then NVRTC's, then the driver's; then the later line). */
yk_status yk_tune_groups(yk_ctx *ctx, const yk_tune_db *db, const yk_tune_identity *id, yk_tune_group_fn fn,
                         void *user);

#endif
