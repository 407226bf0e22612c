#include "tune/tune_key.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int yk_tune_field_index(const yk_op_def *op, const char *name) {
  for (int i = 0; i < op->field_count; i++)
    if (!strcmp(op->fields[i].name, name)) return i;
  return -1;
}

int yk_tune_field_value(const yk_spec_field *f, const char *text, int32_t *out) {
  for (int c = 0; f->choices && c <= f->max; c++)
    if (f->choices[c] && !strcmp(f->choices[c], text)) return *out = c, 0;
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || end == text || *end || v <= INT32_MIN || v > INT32_MAX) return 1;
  *out = (int32_t)v;
  return 0;
}

/* ",name=value" for each field of op that `include` selects, choices by name. */
static int format_fields(const yk_op_def *op, const int32_t *v, const int32_t *include, char *buf, size_t size,
                         int first) {
  int n = 0;
  for (int i = 0; i < op->field_count; i++) {
    if (include[i] == YK_UNSET) continue;
    const yk_spec_field *f = &op->fields[i];
    size_t at = (size_t)n < size ? (size_t)n : size;
    const char *sep = first ? "" : ",";
    first = 0;
    if (f->choices && v[i] >= 0 && v[i] <= f->max && f->choices[v[i]])
      n += snprintf(buf + at, size - at, "%s%s=%s", sep, f->name, f->choices[v[i]]);
    else
      n += snprintf(buf + at, size - at, "%s%s=%d", sep, f->name, (int)v[i]);
  }
  return n;
}

/* "name=value,..." into values; each field at most once. */
static int parse_fields(const yk_op_def *op, char *list, int32_t *values, char *why, size_t why_size) {
  uint32_t seen = 0;
  char *save = NULL;
  for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(item, '=');
    if (!eq) return snprintf(why, why_size, "'%s' is not name=value", item), 1;
    *eq = '\0';
    const int f = yk_tune_field_index(op, item);
    if (f < 0) return snprintf(why, why_size, "%s has no field '%s'", op->name, item), 1;
    if (seen & (1u << f)) return snprintf(why, why_size, "field %s given twice", item), 1;
    seen |= 1u << f;
    if (yk_tune_field_value(&op->fields[f], eq + 1, &values[f]) || values[f] == YK_UNSET)
      return snprintf(why, why_size, "field %s: '%s' is not a value", item, eq + 1), 1;
  }
  return 0;
}

int yk_tune_key_format(const yk_spec *key, char *buf, size_t size) {
  int n = snprintf(buf, size, "%s:dtype=%s", key->op->name, yk_dtype_name((yk_dtype)key->dtype));
  size_t at = (size_t)n < size ? (size_t)n : size;
  return n + format_fields(key->op, key->v, key->v, buf + at, size - at, 0);
}

int yk_tune_key_label(const yk_spec *key, char *buf, size_t size) {
  const yk_op_def *op = key->op;
  int n = snprintf(buf, size, "%s", op->name);
  for (int i = 0; i < op->field_count; i++) {
    const yk_spec_field *f = &op->fields[i];
    const int32_t v = key->v[i];
    if (f->has_default || !f->choices || v < 0 || v > f->max || !f->choices[v]) continue;
    const size_t at = (size_t)n < size ? (size_t)n : size;
    n += snprintf(buf + at, size - at, " %s=%s", f->name, f->choices[v]);
  }
  return n;
}

int yk_tune_key_parse(const char *text, yk_spec *key, char *why, size_t why_size) {
  char buf[512];
  if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf) return snprintf(why, why_size, "key too long"), 1;
  char *colon = strchr(buf, ':');
  if (!colon) return snprintf(why, why_size, "key '%s' has no ':'", text), 1;
  *colon = '\0';
  const int op = yk_registry_find(buf);
  if (op < 0) return snprintf(why, why_size, "no op named '%s'", buf), 1;
  char *fields = colon + 1;
  if (strncmp(fields, "dtype=", 6)) return snprintf(why, why_size, "key '%s' does not start with dtype", text), 1;
  char *comma = strchr(fields, ',');
  if (comma) *comma = '\0';
  const int dtype = yk_dtype_parse(fields + 6);
  if (dtype < 0) return snprintf(why, why_size, "unknown dtype '%s'", fields + 6), 1;
  yk_spec_init(key, yk_registry_op(op), (yk_dtype)dtype);
  return comma ? parse_fields(key->op, comma + 1, key->v, why, why_size) : 0;
}

int yk_tune_config_format(const yk_spec *spec, const yk_spec *key, char *buf, size_t size) {
  int32_t unset_in_key[YK_SPEC_MAX_FIELDS];
  for (int i = 0; i < YK_SPEC_MAX_FIELDS; i++) unset_in_key[i] = key->v[i] == YK_UNSET ? 1 : YK_UNSET;
  if (size) buf[0] = '\0';
  return format_fields(spec->op, spec->v, unset_in_key, buf, size, 1);
}

int yk_tune_config_parse(const yk_op_def *op, const char *text, int32_t values[YK_SPEC_MAX_FIELDS], char *why,
                         size_t why_size) {
  for (int i = 0; i < YK_SPEC_MAX_FIELDS; i++) values[i] = YK_UNSET;
  char buf[512];
  if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf) return snprintf(why, why_size, "config too long"), 1;
  return parse_fields(op, buf, values, why, why_size);
}

int yk_tune_pin_parse(yk_tune_pin *pin, const char *op, const char *config, char *why, size_t why_size) {
  const int index = yk_registry_find(op);
  if (index < 0) return snprintf(why, why_size, "no op named %s", op), 1;
  pin->op = yk_registry_op(index);
  return yk_tune_config_parse(pin->op, config, pin->values, why, why_size);
}

void yk_tune_pin_apply(void *user, yk_spec *spec) {
  const yk_tune_pin *pin = user;
  if (spec->op != pin->op) return;
  for (int i = 0; i < spec->op->field_count; i++)
    if (!spec->op->fields[i].has_default && pin->values[i] != YK_UNSET && pin->values[i] != spec->v[i]) return;
  for (int i = 0; i < spec->op->field_count; i++)
    if (pin->values[i] != YK_UNSET) spec->v[i] = pin->values[i];
}
