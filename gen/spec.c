#include "gen/spec.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const dtype_names[YK_DTYPE_COUNT] = {"f32", "f16", "bf16"};
static const size_t dtype_sizes[YK_DTYPE_COUNT] = {4, 2, 2};

const char *yk_dtype_name(yk_dtype dtype) { return (unsigned)dtype < YK_DTYPE_COUNT ? dtype_names[dtype] : "?"; }

size_t yk_dtype_size(yk_dtype dtype) { return (unsigned)dtype < YK_DTYPE_COUNT ? dtype_sizes[dtype] : 0; }

int yk_dtype_parse(const char *name) {
  static const struct {
    const char *name;
    yk_dtype dtype;
  } names[] = {{"f32", YK_F32},  {"float32", YK_F32}, {"fp32", YK_F32},  {"f16", YK_F16},      {"float16", YK_F16},
               {"fp16", YK_F16}, {"half", YK_F16},    {"bf16", YK_BF16}, {"bfloat16", YK_BF16}};
  for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
    if (strcmp(names[i].name, name) == 0) return (int)names[i].dtype;
  return -1;
}

void yk_spec_init(yk_spec *spec, const yk_op_def *op, yk_dtype dtype) {
  memset(spec, 0, sizeof *spec);
  spec->op = op;
  spec->dtype = (int32_t)dtype;
  /* Slots past the op's fields stay zero, so specs built on the hot path and parsed ones are
   * byte-for-byte equal, as the memory cache compares them. */
  for (int i = 0; op && i < op->field_count; i++) spec->v[i] = YK_UNSET;
}

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t why_size, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_size, fmt, ap);
  va_end(ap);
  return 1;
}

int yk_spec_check(yk_spec *spec, char *why, size_t why_size) {
  const yk_op_def *op = spec->op;
  if (!op) return fail(why, why_size, "spec has no op");
  if (spec->dtype < 0 || spec->dtype >= YK_DTYPE_COUNT || !(op->dtypes & (1u << spec->dtype)))
    return fail(why, why_size, "%s does not take dtype %s", op->name, yk_dtype_name((yk_dtype)spec->dtype));
  op->complete(spec);
  for (int i = 0; i < op->field_count; i++) {
    const yk_spec_field *f = &op->fields[i];
    int32_t v = spec->v[i];
    if (v == YK_UNSET) return fail(why, why_size, "field %s is required (no default)", f->name);
    if (v < f->min || v > f->max)
      return fail(why, why_size, "field %s must be in [%d, %d], not %d", f->name, (int)f->min, (int)f->max, (int)v);
    if (f->pow2 && (v <= 0 || (v & (v - 1))))
      return fail(why, why_size, "field %s must be a power of two, not %d", f->name, (int)v);
  }
  for (int i = op->field_count; i < YK_SPEC_MAX_FIELDS; i++) spec->v[i] = 0;
  const int elem = (int)yk_dtype_size((yk_dtype)spec->dtype);
  for (int i = 0; i < op->field_count; i++) {
    const char *name = op->fields[i].name;
    if (!strcmp(name, "vec") && spec->v[i] * elem > 16)
      return fail(why, why_size, "vec %d x %d bytes is wider than 16 bytes", (int)spec->v[i], elem);
    if (!strcmp(name, "threads") && spec->v[i] % 32)
      return fail(why, why_size, "threads %d is not a multiple of 32", (int)spec->v[i]);
  }
  return op->valid(spec, why, why_size);
}

int yk_default_vec(yk_dtype dtype, int n) {
  int vec = 16 / (int)yk_dtype_size(dtype);
  while (vec > 1 && n % vec) vec /= 2;
  return vec;
}

unsigned yk_spec_block_threads(const yk_spec *spec) {
  if (spec->op->block_threads) return spec->op->block_threads(spec);
  for (int i = 0; i < spec->op->field_count; i++) {
    if (!strcmp(spec->op->fields[i].name, "threads")) return (unsigned)spec->v[i];
    if (!strcmp(spec->op->fields[i].name, "warps")) return 32u * (unsigned)spec->v[i];
  }
  return 0;
}

static int find_field(const yk_op_def *op, const char *name, size_t len) {
  for (int i = 0; i < op->field_count; i++)
    if (strlen(op->fields[i].name) == len && strncmp(op->fields[i].name, name, len) == 0) return i;
  return -1;
}

static int parse_value(const yk_spec_field *f, const char *text, int32_t *out) {
  if (f->choices) {
    for (int c = 0; c <= f->max; c++)
      if (f->choices[c] && strcmp(f->choices[c], text) == 0) return *out = c, 0;
  }
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (errno || end == text || *end || v < INT32_MIN + 1 || v > INT32_MAX) return 1;
  *out = (int32_t)v;
  return 0;
}

int yk_spec_parse(const char *text, yk_spec *spec, char *why, size_t why_size) {
  char buf[512];
  if (!text || snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf)
    return fail(why, why_size, "spec text is %s", text ? "too long" : "missing");
  char *fields = strchr(buf, ':');
  if (fields) *fields++ = '\0';
  int op_index = yk_registry_find(buf);
  if (op_index < 0) return fail(why, why_size, "no op named '%s'", buf);
  const yk_op_def *op = yk_registry_op(op_index);
  yk_spec_init(spec, op, YK_BF16);
  int dtype_given = 0;
  uint32_t seen = 0;
  char *save = NULL;
  for (char *item = fields ? strtok_r(fields, ",", &save) : NULL; item; item = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(item, '=');
    if (!eq) return fail(why, why_size, "spec item '%s' is not name=value", item);
    *eq = '\0';
    const char *value = eq + 1;
    if (strcmp(item, "dtype") == 0) {
      int d = yk_dtype_parse(value);
      if (d < 0) return fail(why, why_size, "unknown dtype '%s' (f32, f16, bf16)", value);
      spec->dtype = d;
      dtype_given = 1;
      continue;
    }
    int i = find_field(op, item, strlen(item));
    if (i < 0) {
      char names[256] = "";
      for (int j = 0; j < op->field_count; j++) {
        strncat(names, j ? ", " : "", sizeof names - strlen(names) - 1);
        strncat(names, op->fields[j].name, sizeof names - strlen(names) - 1);
      }
      return fail(why, why_size, "%s has no field '%s' (fields: dtype, %s)", op->name, item, names);
    }
    if (seen & (1u << i)) return fail(why, why_size, "field %s given twice", item);
    seen |= 1u << i;
    if (parse_value(&op->fields[i], value, &spec->v[i]))
      return fail(why, why_size, "field %s: '%s' is not a valid value", item, value);
  }
  if (!dtype_given) return fail(why, why_size, "%s: field dtype is required", op->name);
  return yk_spec_check(spec, why, why_size);
}

int yk_spec_format(const yk_spec *spec, char *buf, size_t size) {
  const yk_op_def *op = spec->op;
  if (!op) return snprintf(buf, size, "?");
  int n = snprintf(buf, size, "%s:dtype=%s", op->name, yk_dtype_name((yk_dtype)spec->dtype));
  for (int i = 0; i < op->field_count; i++) {
    const yk_spec_field *f = &op->fields[i];
    size_t at = (size_t)n < size ? (size_t)n : size;
    int32_t v = spec->v[i];
    if (f->choices && v >= 0 && v <= f->max && f->choices[v])
      n += snprintf(buf + at, size - at, ",%s=%s", f->name, f->choices[v]);
    else
      n += snprintf(buf + at, size - at, ",%s=%d", f->name, (int)v);
  }
  return n;
}
