/* The kernel generator and its cache, for the operator who warms a cache offline, the tuner that
 * sweeps specs, and the `yk` command. Ops use all of this implicitly; an engine needs none of it.
 *
 * A spec names one specialisation of an op's template as text:
 *   "rms_norm:dtype=bf16,hidden=4096,vec=8,threads=256,fused_add=0"
 * Fields left out take the op's defaults where it has one (vec, threads, ...); fields with no
 * default (hidden) are required. The canonical form lists every field in the op's order. */
#ifndef YK_JIT_H
#define YK_JIT_H

#include <stddef.h>
#include <stdint.h>

#include "yk/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Frees memory returned by yk_ calls that say so. */
YK_API void yk_free(void *p);

/* ---- ops and their spec fields ---- */
typedef struct yk_spec_field {
  const char *name;
  const char *help;
  int32_t min, max;           /* inclusive range of the value */
  int pow2;                   /* the value must be a power of two */
  int has_default;            /* the op picks a value when the field is left out */
  const char *const *choices; /* names of the values 0..max for enumerated fields, else NULL */
} yk_spec_field;

YK_API int yk_op_count(void);
YK_API const char *yk_op_name(int op); /* NULL if op is out of range */
YK_API const char *yk_op_summary(int op);
YK_API int yk_op_field_count(int op);
YK_API const yk_spec_field *yk_op_field(int op, int field);

/* Canonical text of a spec, with defaults filled in: *canonical is malloc'd (yk_free). */
YK_API yk_status yk_spec_canonical(yk_ctx *ctx, const char *spec, char **canonical);

/* The CUDA source the generator makes for a spec: deterministic, byte for byte. yk_free it. */
YK_API yk_status yk_spec_source(yk_ctx *ctx, const char *spec, char **source);

/* The cache key (32 hex digits and a NUL) of a spec compiled for arch ("sm_90"). */
YK_API yk_status yk_spec_key(yk_ctx *ctx, const char *spec, const char *arch, char key_hex[33]);

/* Compiles a spec for arch through the cache (memory, then disk, then NVRTC); no GPU needed.
 * *compiled is set to 1 if NVRTC ran, 0 if the cache had it. */
YK_API yk_status yk_spec_compile(yk_ctx *ctx, const char *spec, const char *arch, int *compiled);

/* ---- warm-up: compile the default spec matrix into the cache with NVRTC alone ---- */
typedef struct yk_warm_progress {
  int done, total;
  int compiled, cached, failed;
  const char *spec; /* the spec just finished */
  const char *arch;
  yk_status status;    /* its outcome */
  const char *message; /* "" unless status != YK_OK */
} yk_warm_progress;

typedef struct yk_warm_options {
  const char *archs;  /* "sm_80,sm_90"; NULL: the device's arch, or sm_80,sm_90 without one */
  const char *ops;    /* "rms_norm,rope"; NULL: every op */
  const char *dtypes; /* "bf16,f16,f32"; NULL: bf16,f16 */
  const char *models; /* model presets whose shapes to cover ("llama-3-8b,..."); NULL: all */
  int jobs;           /* compile threads; 0: online CPUs */
  void (*progress)(void *user, const yk_warm_progress *p); /* called from one thread at a time */
  void *user;
} yk_warm_options;

typedef struct yk_warm_result {
  int total, compiled, cached, failed;
  double seconds;
} yk_warm_result;

/* Returns YK_OK when every spec is now cached; otherwise the first failure's status and message
 * (the others are reported through progress). result may be NULL. */
YK_API yk_status yk_warm(yk_ctx *ctx, const yk_warm_options *options, yk_warm_result *result);

/* The model presets the warm-up and the tuner draw shapes from. */
typedef struct yk_model_preset {
  const char *name;
  int hidden, q_heads, kv_heads, head_dim, intermediate;
  const char *activation; /* "silu", "gelu", "gelu_tanh" */
} yk_model_preset;
YK_API int yk_model_preset_count(void);
YK_API const yk_model_preset *yk_model_preset_get(int index);

/* ---- the disk cache ---- */
typedef struct yk_cache_entry {
  const char *path;
  char key[33];
  const char *spec; /* canonical spec, "" if unreadable */
  const char *arch;
  const char *kernel;
  uint64_t file_bytes, ptx_bytes, cubin_bytes;
  int registers, spill_store_bytes, spill_load_bytes, stack_bytes, shared_bytes;
  double compile_ms;
  int read_only;       /* found in a YK_CACHE_PATH directory */
  int valid;           /* header (and with verify, every checksum) is sound */
  const char *problem; /* why not valid, else "" */
  int other_version;   /* a sound header of another format version: another library's entry, which
                          this one cannot read but which is not damaged (not valid, not invalid) */
} yk_cache_entry;

/* Calls fn for every entry of the cache directory and of the read-only directories. With verify,
 * every payload checksum is checked too. invalid counts the damaged entries: those of another
 * format version are listed (other_version) but not counted. Counts may be NULL. */
YK_API yk_status yk_cache_list(yk_ctx *ctx, int verify, void (*fn)(void *user, const yk_cache_entry *e), void *user,
                               int *entries, int *invalid);

/* Removes every entry (and any stale temporary file) from the writable cache directory; it
 * leaves the kernels already in the context's memory alone. */
YK_API yk_status yk_cache_clear(yk_ctx *ctx, int *removed);

/* Bounds the writable cache directory, which otherwise only grows (each new template, NVRTC or
 * library version adds keys): removes every damaged entry (torn, corrupt, foreign; another format
 * version's entries belong to another library and are aged and sized like the rest), every entry
 * unused for more than max_age_s seconds (0: no age bound), then the least recently used until
 * the rest take at most max_bytes (0: no size bound). An entry is used when stored or loaded from
 * disk. Read-only directories and the kernels in memory are left alone; YK_CACHE_MAX_SIZE does
 * the size part after every store. removed and kept_bytes (the entries' bytes left) may be NULL. */
YK_API yk_status yk_cache_prune(yk_ctx *ctx, uint64_t max_bytes, int64_t max_age_s, int *removed, uint64_t *kept_bytes);

#ifdef __cplusplus
}
#endif
#endif
