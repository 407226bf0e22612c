/* The kernel templates, embedded in the library at build time from templates/. */
#ifndef YK_GEN_TEMPLATES_H
#define YK_GEN_TEMPLATES_H

#include <stddef.h>

typedef struct yk_template {
  const char *name; /* file name: "rms_norm.cu", "prelude.cuh" */
  const char *text; /* NUL-terminated */
  size_t size;      /* bytes, without the NUL */
} yk_template;

extern const yk_template yk_templates[];
extern const int yk_template_count;

/* NULL if there is no such file. */
const yk_template *yk_template_find(const char *name);

#endif
