#include "tune/tune_json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reason into the caller's why (every parsing function names it so), and failure. */
#define FAIL(...) (snprintf(why, why_size, __VA_ARGS__), 1)

static char *skip_space(char *p) {
  while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
  return p;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Writes code point cp as UTF-8 at *out (never longer than the six-character escape it replaces). */
static void put_utf8(char **out, unsigned cp) {
  unsigned char *o = (unsigned char *)*out;
  if (cp < 0x80) {
    *o++ = (unsigned char)cp;
  } else if (cp < 0x800) {
    *o++ = (unsigned char)(0xc0 | cp >> 6);
    *o++ = (unsigned char)(0x80 | (cp & 0x3f));
  } else {
    *o++ = (unsigned char)(0xe0 | cp >> 12);
    *o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    *o++ = (unsigned char)(0x80 | (cp & 0x3f));
  }
  *out = (char *)o;
}

/* A string starting at *p (on the opening quote), unescaped in place; *p moves past it. */
static int parse_string(char **p, const char **value, char *why, size_t why_size) {
  char *in = *p + 1, *out = *p + 1;
  *value = out;
  for (;;) {
    char c = *in++;
    if (c == '\0') return FAIL("unterminated string");
    if ((unsigned char)c < 0x20) return FAIL("control character in a string");
    if (c == '"') break;
    if (c != '\\') {
      *out++ = c;
      continue;
    }
    char e = *in++;
    switch (e) {
    case '"': *out++ = '"'; break;
    case '\\': *out++ = '\\'; break;
    case '/': *out++ = '/'; break;
    case 'b': *out++ = '\b'; break;
    case 'f': *out++ = '\f'; break;
    case 'n': *out++ = '\n'; break;
    case 'r': *out++ = '\r'; break;
    case 't': *out++ = '\t'; break;
    case 'u': {
      unsigned cp = 0;
      for (int i = 0; i < 4; i++) {
        int d = hex_digit(in[i]);
        if (d < 0) return FAIL("bad \\u escape");
        cp = cp << 4 | (unsigned)d;
      }
      if (cp == 0 || (cp >= 0xd800 && cp < 0xe000)) return FAIL("unsupported \\u escape");
      in += 4;
      put_utf8(&out, cp);
      break;
    }
    default: return FAIL("bad escape \\%c", e ? e : '0');
    }
  }
  *out = '\0'; /* the string only shrinks, so this lands at or before its closing quote */
  *p = in;
  return 0;
}

static int parse_value(char **p, yk_json_member *m, char *why, size_t why_size) {
  char *s = *p;
  if (*s == '"') {
    m->type = YK_JSON_STRING;
    return parse_string(p, &m->string, why, why_size);
  }
  static const struct {
    const char *word;
    yk_json_type type;
    double number;
  } words[] = {{"true", YK_JSON_BOOL, 1}, {"false", YK_JSON_BOOL, 0}, {"null", YK_JSON_NULL, 0}};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
    size_t n = strlen(words[i].word);
    if (!strncmp(s, words[i].word, n)) {
      m->type = words[i].type, m->number = words[i].number;
      *p = s + n;
      return 0;
    }
  }
  if (*s != '-' && (*s < '0' || *s > '9')) return FAIL("expected a value at '%.12s'", s);
  char *end;
  errno = 0;
  m->number = strtod(s, &end);
  if (end == s || errno == ERANGE || !isfinite(m->number)) return FAIL("bad number '%.12s'", s);
  m->type = YK_JSON_NUMBER;
  *p = end;
  return 0;
}

int yk_json_parse_flat(const char *line, yk_json_object *o, char *why, size_t why_size) {
  o->count = 0;
  if (snprintf(o->text, sizeof o->text, "%s", line) >= (int)sizeof o->text)
    return FAIL("line longer than %d bytes", YK_JSON_LINE_MAX - 1);
  char *p = skip_space(o->text);
  if (*p++ != '{') return FAIL("not a JSON object");
  p = skip_space(p);
  if (*p == '}') return *skip_space(p + 1) ? FAIL("text after the object") : 0;
  for (;;) {
    if (o->count == YK_JSON_MEMBERS_MAX) return FAIL("more than %d members", YK_JSON_MEMBERS_MAX);
    yk_json_member *m = &o->members[o->count];
    if (*p != '"') return FAIL("expected a member name at '%.12s'", p);
    if (parse_string(&p, &m->key, why, why_size)) return 1;
    p = skip_space(p);
    if (*p++ != ':') return FAIL("expected ':' after \"%s\"", m->key);
    p = skip_space(p);
    if (parse_value(&p, m, why, why_size)) return 1;
    for (int i = 0; i < o->count; i++)
      if (!strcmp(o->members[i].key, m->key)) return FAIL("member \"%s\" given twice", m->key);
    o->count++;
    p = skip_space(p);
    if (*p == ',') {
      p = skip_space(p + 1);
      continue;
    }
    if (*p != '}') return FAIL("expected ',' or '}' at '%.12s'", p);
    return *skip_space(p + 1) ? FAIL("text after the object") : 0;
  }
}

const yk_json_member *yk_json_get(const yk_json_object *o, const char *key) {
  for (int i = 0; i < o->count; i++)
    if (!strcmp(o->members[i].key, key)) return &o->members[i];
  return NULL;
}

/* ---- writing ---- */

__attribute__((format(printf, 2, 3))) static void append(yk_json_writer *w, const char *fmt, ...) {
  if (w->overflow) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(w->buf + w->length, w->size - w->length, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= w->size - w->length)
    w->overflow = 1;
  else
    w->length += (size_t)n;
}

static void append_quoted(yk_json_writer *w, const char *s) {
  append(w, "\"");
  for (const unsigned char *c = (const unsigned char *)s; *c && !w->overflow; c++) {
    if (*c == '"' || *c == '\\')
      append(w, "\\%c", *c);
    else if (*c == '\n')
      append(w, "\\n");
    else if (*c < 0x20)
      append(w, "\\u%04x", *c);
    else
      append(w, "%c", *c);
  }
  append(w, "\"");
}

static void member_name(yk_json_writer *w, const char *key) {
  append(w, w->length > 1 ? ", " : "");
  append_quoted(w, key);
  append(w, ": ");
}

void yk_json_begin(yk_json_writer *w, char *buf, size_t size) {
  *w = (yk_json_writer){buf, size, 0, 0};
  append(w, "{");
}

void yk_json_string(yk_json_writer *w, const char *key, const char *value) {
  member_name(w, key);
  append_quoted(w, value ? value : "");
}

void yk_json_integer(yk_json_writer *w, const char *key, long long value) {
  member_name(w, key);
  append(w, "%lld", value);
}

void yk_json_number(yk_json_writer *w, const char *key, double value) {
  member_name(w, key);
  if (isfinite(value))
    append(w, "%.9g", value);
  else
    append(w, "null");
}

void yk_json_bool(yk_json_writer *w, const char *key, int value) {
  member_name(w, key);
  append(w, value ? "true" : "false");
}

int yk_json_end(yk_json_writer *w) {
  append(w, "}");
  return w->overflow;
}
