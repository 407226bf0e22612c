/* A spec is one specialisation of an op's template: the op, the element type, and the op's
 * fields (hidden size, vector width, threads, ...). Its key, its validation and its launch shape
 * are functions of it, decided here and in the op's file under gen/ops, nowhere else. */
#ifndef YK_GEN_SPEC_H
#define YK_GEN_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "yk/jit.h"

#define YK_SPEC_MAX_FIELDS 15
#define YK_UNSET INT32_MIN /* a field the caller left for the op to choose */

typedef enum yk_dtype { YK_F32 = 0, YK_F16 = 1, YK_BF16 = 2, YK_DTYPE_COUNT = 3 } yk_dtype;

/* A storage type past yk_dtype, which no kernel computes in: float8 e4m3fn, a KV cache's elements
 * at a byte each (include/yk/kv.h). Views and the CPU's row loads and stores know it. */
enum { YK_E4M3 = 18 };

typedef struct yk_op_def yk_op_def;

/* No padding (8 + 4 + 60 bytes: the largest op, attention_decode, has 15 fields), so two specs are
 * equal exactly when their bytes are: the memory cache hashes and compares the bytes. Build specs
 * with yk_spec_init. */
typedef struct yk_spec {
  const yk_op_def *op;
  int32_t dtype;
  int32_t v[YK_SPEC_MAX_FIELDS];
} yk_spec;
_Static_assert(sizeof(yk_spec) == 72, "yk_spec must have no padding");

typedef struct yk_warm_request yk_warm_request;
typedef void (*yk_spec_emit_fn)(void *user, const yk_spec *spec);
/* An emit function with its user pointer: what an emitter that wraps another (a warm-up matrix's
 * variants of each spec) passes itself as user. */
typedef struct yk_spec_sink {
  yk_spec_emit_fn emit;
  void *user;
} yk_spec_sink;

/* A constant of the generated source beside the spec's fields. */
typedef struct yk_named_value {
  const char *name;
  int value;
} yk_named_value;

struct yk_op_def {
  const char *name; /* "rms_norm": also the template file stem and the kernel's name */
  const char *summary;
  /* NULL-terminated template files shared with other ops, placed after the spec constants and
   * before the op's own template; or NULL */
  const char *const *includes;
  /* Nonzero: uses instructions of one generation only (wgmma), so it is built for sm_<n>a alone. */
  int arch_specific_sm;
  uint32_t dtypes; /* bit (1 << yk_dtype) for each element type the template takes */
  int field_count;
  yk_spec_field fields[YK_SPEC_MAX_FIELDS];
  /* Fills every field left YK_UNSET that has a default. Pure arithmetic: runs on the hot path. */
  void (*complete)(yk_spec *spec);
  /* Rules across fields, past each field's own range and the rules every op shares (a field
   * named "vec" moves at most 16 bytes; one named "threads" is a multiple of 32). Writes the
   * reason to why on failure. */
  int (*valid)(const yk_spec *spec, char *why, size_t why_size);
  /* Threads a block; NULL: the field named "threads", else 32 times the field named "warps". */
  unsigned (*block_threads)(const yk_spec *spec);
  unsigned (*dynamic_smem_bytes)(const yk_spec *spec); /* NULL: none */
  /* Constants the template takes from the op's C side, which its rules count on too (the Hopper
   * prefill's register split), emitted after the fields; ends at a NULL name. NULL: none. */
  const yk_named_value *constants;
  /* The specs the warm-up compiles for the requested dtypes and model shapes. */
  void (*warm_specs)(const yk_warm_request *request, yk_spec_emit_fn emit, void *user);
};

struct yk_warm_request {
  uint32_t dtypes; /* bit (1 << yk_dtype) each */
  const yk_model_preset *const *models;
  int model_count;
};

/* Registers a thread of a THREADS-wide block may use: templates declare
 * __launch_bounds__(THREADS, 1), so ptxas may give each thread the SM's 64K registers over the
 * block, up to 255. A spec whose threads hold more values than fit (beside ~32 registers for
 * addresses and indices) would spill, and is invalid. */
#define YK_REGISTER_OVERHEAD 32
static inline int yk_register_budget(int threads) {
  const int budget = 65536 / (threads > 0 ? threads : 1);
  return budget > 255 ? 255 : budget;
}
static inline int yk_fits_registers(int held_floats, int threads) {
  return held_floats + YK_REGISTER_OVERHEAD <= yk_register_budget(threads);
}

/* ---- registry (gen/registry.c) ---- */
int yk_registry_count(void);
const yk_op_def *yk_registry_op(int index);
int yk_registry_find(const char *name); /* index, or -1 */

/* ---- specs (gen/spec.c) ---- */
const char *yk_dtype_name(yk_dtype dtype); /* "f32", "f16", "bf16" */
int yk_dtype_parse(const char *name);      /* yk_dtype, or -1; accepts float32/bfloat16 too */
size_t yk_dtype_size(yk_dtype dtype);

/* Zeroes the spec and marks each of the op's fields unset. */
void yk_spec_init(yk_spec *spec, const yk_op_def *op, yk_dtype dtype);

/* complete() then every rule: field ranges, powers of two, required fields, dtype, valid().
 * Returns 0 when the spec can be generated, else nonzero with the reason in why. */
int yk_spec_check(yk_spec *spec, char *why, size_t why_size);

/* The widest vector (elements, at most 16 bytes) that divides n: the default "vec" of every op. */
int yk_default_vec(yk_dtype dtype, int n);

/* Threads a block for a complete spec. */
unsigned yk_spec_block_threads(const yk_spec *spec);

/* "rms_norm:dtype=bf16,hidden=4096": parses, completes and checks. */
int yk_spec_parse(const char *text, yk_spec *spec, char *why, size_t why_size);

/* Canonical text: every field in the op's order; enumerated fields by name. Returns the length
 * it needs (like snprintf). */
int yk_spec_format(const yk_spec *spec, char *buf, size_t size);

#endif
