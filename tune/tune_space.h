/* The configurations a sweep times for one key: the op's default, then every combination of the
 * candidate values of the fields the key leaves to the op (threads, tiles, pipeline depth). The
 * fields a call site sets from its tensors (sizes, flags, the vector width their alignment allows)
 * are never varied: they are facts of the call, not choices. */
#ifndef YK_TUNE_SPACE_H
#define YK_TUNE_SPACE_H

#include "gen/spec.h"

#define YK_TUNE_VALUES_MAX 16

/* Candidate values for one field, replacing the op's list (yk tune --values threads=96,128). */
typedef struct yk_tune_values {
  char field[32];
  int32_t values[YK_TUNE_VALUES_MAX];
  int count;
} yk_tune_values;

/* 1 when the tuner has candidate lists for op's fields: the kernels a sweep varies. A call's other
 * kernels keep their defaults (tune/tune_space.c says which and why). */
int yk_tune_space_known(const yk_op_def *op);

/* "threads=64,96,128" into v. 0 on success, else nonzero with the reason in why. */
int yk_tune_values_parse(const char *text, yk_tune_values *v, char *why, size_t why_size);

typedef struct yk_tune_config {
  yk_spec spec;   /* complete */
  char text[128]; /* the values of the fields the key leaves unset (tune/tune_key.h) */
  int is_default;
  /* set by the sweep */
  int reused; /* the database has it for this GPU and these versions: not timed again */
  int failed; /* compiling, loading or launching it failed, or its result was wrong */
} yk_tune_config;

/* The configurations of key (a spec as its call site builds it): the default first, then each
 * combination that completes into a spec passing the op's rules and, on a CUDA context, fitting
 * the device's shared memory; *rejected counts those that do not. values (may be NULL) replace
 * the op's candidate lists field by field. *out is malloc'd (free). */
yk_status yk_tune_space(yk_ctx *ctx, const yk_spec *key, const yk_tune_values *values, int value_count,
                        yk_tune_config **out, int *count, int *rejected);

#endif
