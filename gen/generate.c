#include "gen/generate.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "gen/templates.h"
#include "runtime/compile.h"

const yk_template *yk_template_find(const char *name) {
  for (int i = 0; i < yk_template_count; i++)
    if (strcmp(yk_templates[i].name, name) == 0) return &yk_templates[i];
  return NULL;
}

/* A growable string; out-of-memory sticks and is reported once at the end. */
typedef struct {
  char *data;
  size_t length, capacity;
  int failed;
} text;

static void append(text *t, const char *s, size_t n) {
  if (t->failed) return;
  if (t->length + n + 1 > t->capacity) {
    size_t capacity = t->capacity ? t->capacity : 4096;
    while (capacity < t->length + n + 1) capacity *= 2;
    char *grown = realloc(t->data, capacity);
    if (!grown) {
      t->failed = 1;
      return;
    }
    t->data = grown;
    t->capacity = capacity;
  }
  memcpy(t->data + t->length, s, n);
  t->length += n;
  t->data[t->length] = '\0';
}

__attribute__((format(printf, 2, 3))) static void appendf(text *t, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof line)
    t->failed = 1;
  else
    append(t, line, (size_t)n);
}

static void upper(char *dst, size_t size, const char *src) {
  size_t i = 0;
  for (; src[i] && i + 1 < size; i++) dst[i] = (char)toupper((unsigned char)src[i]);
  dst[i] = '\0';
}

int yk_generate_source(const yk_spec *spec, char **source, size_t *length, char *why, size_t why_size) {
  const yk_op_def *op = spec->op;
  char file[96];
  snprintf(file, sizeof file, "%s.cu", op->name);
  const yk_template *prelude = yk_template_find("prelude.cuh"), *body = yk_template_find(file);
  if (!prelude || !body) {
    snprintf(why, why_size, "template %s is not built into this library", body ? "prelude.cuh" : file);
    return 1;
  }
  char canonical[512];
  yk_spec_format(spec, canonical, sizeof canonical);

  text t = {0};
  appendf(&t, "// yaie-kernels generated source, format %d\n// spec: %s\n", YK_GEN_FORMAT_VERSION, canonical);
  appendf(&t, "#line 1 \"%s\"\n", prelude->name);
  append(&t, prelude->text, prelude->size);
  appendf(&t, "\n// ---- spec constants ----\nconstexpr int DTYPE = %d;\ntypedef yk_type_of<DTYPE>::type T;\n",
          (int)spec->dtype);
  for (int i = 0; i < op->field_count; i++) {
    const yk_spec_field *f = &op->fields[i];
    char name[64];
    upper(name, sizeof name, f->name);
    for (int c = 0; f->choices && c <= f->max; c++) {
      char choice[64];
      upper(choice, sizeof choice, f->choices[c]);
      appendf(&t, "constexpr int %s_%s = %d;\n", name, choice, c);
    }
    appendf(&t, "constexpr int %s = %d;\n", name, (int)spec->v[i]);
  }
  for (const yk_named_value *c = op->constants; c && c->name; c++)
    appendf(&t, "constexpr int %s = %d;\n", c->name, c->value);
  for (const char *const *inc = op->includes; inc && *inc; inc++) {
    const yk_template *shared = yk_template_find(*inc);
    if (!shared) {
      free(t.data);
      snprintf(why, why_size, "template %s is not built into this library", *inc);
      return 1;
    }
    appendf(&t, "#line 1 \"%s\"\n", shared->name);
    append(&t, shared->text, shared->size);
  }
  appendf(&t, "#line 1 \"%s\"\n", file);
  append(&t, body->text, body->size);
  if (t.failed) {
    free(t.data);
    snprintf(why, why_size, "out of memory generating %s", canonical);
    return 1;
  }
  *source = t.data;
  *length = t.length;
  return 0;
}

void yk_content_key(const char *source, size_t length, const char *target, const yk_nvrtc_api *nvrtc, uint8_t key[16]) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_128bits_reset(&state);
  char header[64];
  int n = snprintf(header, sizeof header, "yaie-kernels/%d", YK_GEN_FORMAT_VERSION);
  XXH3_128bits_update(&state, header, (size_t)n + 1);
  XXH3_128bits_update(&state, source, length + 1);
  XXH3_128bits_update(&state, nvrtc->identity, strlen(nvrtc->identity) + 1);
  XXH3_128bits_update(&state, target, strlen(target) + 1);
  const char *options[YK_COMPILE_MAX_OPTIONS];
  char arch_option[64];
  int count = yk_compile_options(nvrtc, target, options, arch_option, sizeof arch_option);
  for (int i = 0; i < count; i++) XXH3_128bits_update(&state, options[i], strlen(options[i]) + 1);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(&state));
  memcpy(key, canonical.digest, 16);
}

void yk_key_to_hex(const uint8_t key[16], char hex[33]) {
  static const char digits[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    hex[2 * i] = digits[key[i] >> 4];
    hex[2 * i + 1] = digits[key[i] & 15];
  }
  hex[32] = '\0';
}

int yk_key_from_hex(const char *hex, uint8_t key[16]) {
  for (int i = 0; i < 16; i++) {
    int hi = hex[2 * i], lo = hi ? hex[2 * i + 1] : 0;
    int h = isdigit(hi) ? hi - '0' : (hi >= 'a' && hi <= 'f') ? hi - 'a' + 10 : -1;
    int l = isdigit(lo) ? lo - '0' : (lo >= 'a' && lo <= 'f') ? lo - 'a' + 10 : -1;
    if (h < 0 || l < 0) return 1;
    key[i] = (uint8_t)(h << 4 | l);
  }
  return hex[32] != '\0';
}
