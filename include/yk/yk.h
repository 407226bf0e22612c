/* yaie-kernels: a JIT kernel layer for LLM inference. Include this header for the whole API. */
#ifndef YK_YK_H
#define YK_YK_H

#define YK_VERSION_MAJOR 0
#define YK_VERSION_MINOR 1
#define YK_VERSION_PATCH 0

#include "yk/status.h"
#include "yk/context.h"
#include "yk/ops.h"
#include "yk/jit.h"
#include "yk/pool.h"
#include "yk/kv.h"
#include "yk/radix.h"

#ifdef __cplusplus
extern "C" {
#endif
YK_API const char *yk_version(void); /* "0.1.0" */
/* sizeof the public struct named name ("yk_attention_params"); 0 for a name this library does not
 * have, or NULL. Bindings that copy the layouts by hand (ctypes) check their copies against the
 * library they loaded, so a struct that grew is an error at load rather than memory overwritten. */
YK_API size_t yk_struct_size(const char *name);
#ifdef __cplusplus
}
#endif
#endif
