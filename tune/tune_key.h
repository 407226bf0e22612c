/* What a tuning result is keyed by, as text.
 *
 * The key is a spec as an op's call site builds it, before yk_spec_finish: the fields the tensors
 * decide (sizes, dtype, flags, the vector width their alignment allows) set, the rest YK_UNSET
 * for the op to choose. Its text lists only the set fields:
 *   "rms_norm:dtype=bf16,hidden=4096,vec=8,fused_add=0"
 * A configuration is the values of the fields the key leaves unset that the tuner varies:
 *   "threads=256,row_in_regs=1"
 * Parsing the key text gives back the call site's spec byte for byte, which is what the runtime
 * compares (tune/tune_table.h). */
#ifndef YK_TUNE_KEY_H
#define YK_TUNE_KEY_H

#include <stddef.h>

#include "gen/spec.h"

/* Like snprintf: returns the length it needs. */
int yk_tune_key_format(const yk_spec *key, char *buf, size_t size);
/* 0 on success, else nonzero with the reason in why. No defaults are filled and no rule checked. */
int yk_tune_key_parse(const char *text, yk_spec *key, char *why, size_t why_size);

/* A key's kernel for people: its op and the enumerated fields the op gives no default, which
 * select one of the kernels a call launches (see the pin below): "attention_backward_sm90
 * part=dkdv", "rms_norm". Like snprintf. */
int yk_tune_key_label(const yk_spec *key, char *buf, size_t size);

/* The fields of spec that key leaves unset, as "name=value,...". Like snprintf. */
int yk_tune_config_format(const yk_spec *spec, const yk_spec *key, char *buf, size_t size);
/* "threads=256,row_in_regs=1" into values (YK_UNSET where not named). 0 on success. */
int yk_tune_config_parse(const yk_op_def *op, const char *text, int32_t values[YK_SPEC_MAX_FIELDS], char *why,
                         size_t why_size);

/* A configuration pinned on one op's launches through a context's spec_override, as the GPU tests
 * and yk bench --sweep pin one: the fields the text names take its values, the others stay as the
 * call built them and the op completes them. A field the op gives no default (the shape's: head
 * dim, part) selects instead: the pin leaves a spec whose value differs alone, so "part=dq,tile=128"
 * pins the dq kernel of a two-kernel op and not the other. */
typedef struct yk_tune_pin {
  const yk_op_def *op;
  int32_t values[YK_SPEC_MAX_FIELDS];
} yk_tune_pin;
/* op by name, config as yk_tune_config_parse takes it. 0 on success, else the reason in why. */
int yk_tune_pin_parse(yk_tune_pin *pin, const char *op, const char *config, char *why, size_t why_size);
/* The spec_override: user is a yk_tune_pin. */
void yk_tune_pin_apply(void *user, yk_spec *spec);

/* The field named name of op, or -1. */
int yk_tune_field_index(const yk_op_def *op, const char *name);
/* A field's value from text: a number, or one of its choices' names. 0 on success. */
int yk_tune_field_value(const yk_spec_field *f, const char *text, int32_t *out);

#endif
