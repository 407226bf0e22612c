/* NVRTC compilation of generated source into what the cache stores and the loader needs. */
#ifndef YK_RUNTIME_COMPILE_H
#define YK_RUNTIME_COMPILE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/nvrtc_api.h"

#define YK_COMPILE_MAX_OPTIONS 8

/* The options for a target ("sm_90", "sm_90a": PTX and cubin; "compute_90": PTX only) with this
 * NVRTC. One list, used by the compiler and by the cache key alike. arch_option is storage for one
 * of them. */
int yk_compile_options(const yk_nvrtc_api *nvrtc, const char *target, const char *options[YK_COMPILE_MAX_OPTIONS],
                       char *arch_option, size_t arch_option_size);

/* What ptxas reported, -1 where unknown (PTX-only targets). */
typedef struct yk_kernel_meta {
  int registers;
  int spill_store_bytes, spill_load_bytes;
  int stack_bytes;
  int shared_bytes; /* static shared memory */
  double compile_ms;
} yk_kernel_meta;

/* One compiled kernel: a cache entry's payload. */
typedef struct yk_binary {
  uint8_t key[16];
  char *ptx;       /* NUL-terminated, as cuModuleLoadData wants it */
  size_t ptx_size; /* bytes including the NUL */
  char *cubin;     /* NULL for PTX-only targets */
  size_t cubin_size;
  char *meta;          /* "name=value\n" lines (spec, target, kernel, nvrtc, ptxas figures) */
  size_t meta_size;    /* bytes including the NUL */
  yk_kernel_meta info; /* parsed from meta */
} yk_binary;

void yk_binary_free(yk_binary *b);

/* Compiles source for target. On success fills out (key left zero: the caller's) and meta with the
 * given spec text and kernel name, returns 0. On failure returns nonzero and writes the NVRTC
 * status and the whole compile log to why. */
int yk_compile(const yk_nvrtc_api *nvrtc, const char *source, const char *file_name, const char *target,
               const char *spec_text, const char *kernel_name, yk_binary *out, char *why, size_t why_size);

/* Fills info from meta; unknown fields are ignored, missing ones are -1. */
void yk_binary_parse_meta(yk_binary *b);
/* Reads one field of meta into buf ("" if absent). */
const char *yk_binary_meta_field(const yk_binary *b, const char *name, char *buf, size_t size);

#endif
