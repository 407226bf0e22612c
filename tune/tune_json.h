/* The flat JSON objects of the tuning database: one object a line, members of strings, numbers,
 * booleans and null, no nesting. A small reader and writer of exactly that, so the database needs
 * no JSON library. */
#ifndef YK_TUNE_JSON_H
#define YK_TUNE_JSON_H

#include <stddef.h>

#define YK_JSON_LINE_MAX 4096
#define YK_JSON_MEMBERS_MAX 32

typedef enum { YK_JSON_STRING, YK_JSON_NUMBER, YK_JSON_BOOL, YK_JSON_NULL } yk_json_type;

typedef struct yk_json_member {
  const char *key; /* into the object's text */
  yk_json_type type;
  const char *string; /* YK_JSON_STRING: unescaped, into the object's text */
  double number;      /* YK_JSON_NUMBER; YK_JSON_BOOL: 0 or 1 */
} yk_json_member;

typedef struct yk_json_object {
  char text[YK_JSON_LINE_MAX]; /* the line, unescaped in place */
  yk_json_member members[YK_JSON_MEMBERS_MAX];
  int count;
} yk_json_object;

/* Parses one line holding one flat object (trailing whitespace allowed). 0 on success, else
 * nonzero with the reason in why. */
int yk_json_parse_flat(const char *line, yk_json_object *out, char *why, size_t why_size);

/* The member named key, or NULL. */
const yk_json_member *yk_json_get(const yk_json_object *o, const char *key);

/* Building a line: members appended in order; `overflow` is set when it did not fit. */
typedef struct yk_json_writer {
  char *buf;
  size_t size, length;
  int overflow;
} yk_json_writer;

void yk_json_begin(yk_json_writer *w, char *buf, size_t size);
void yk_json_string(yk_json_writer *w, const char *key, const char *value);
void yk_json_integer(yk_json_writer *w, const char *key, long long value);
/* %.9g: a float's worth of digits, enough that a time read back prints the same. */
void yk_json_number(yk_json_writer *w, const char *key, double value);
void yk_json_bool(yk_json_writer *w, const char *key, int value);
/* Closes the object; returns 0, or nonzero if it overflowed buf. */
int yk_json_end(yk_json_writer *w);

#endif
