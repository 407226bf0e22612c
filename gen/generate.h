/* A spec becomes CUDA source, and source plus compile target becomes a cache key. */
#ifndef YK_GEN_GENERATE_H
#define YK_GEN_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "gen/spec.h"
#include "runtime/nvrtc_api.h"

/* Bump when generated source or cache files change meaning: every old key then misses. */
#define YK_GEN_FORMAT_VERSION 1

/* The prelude, the spec's constants, then the op's template, with #line markers so NVRTC's
 * messages name template lines. The spec must have passed yk_spec_check. *source is malloc'd and
 * NUL-terminated. Returns 0, or nonzero (out of memory, template missing) with why. */
int yk_generate_source(const yk_spec *spec, char **source, size_t *length, char *why, size_t why_size);

/* XXH3-128 over the format version, the whole source (template text and filled spec), the NVRTC
 * identity, the target and the compile options for that target. */
void yk_content_key(const char *source, size_t length, const char *target, const yk_nvrtc_api *nvrtc, uint8_t key[16]);

void yk_key_to_hex(const uint8_t key[16], char hex[33]);
int yk_key_from_hex(const char *hex, uint8_t key[16]); /* 0 on success */

#endif
