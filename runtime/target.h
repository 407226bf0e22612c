/* Compile targets: "sm_90" (PTX and cubin), "sm_90a" (arch-specific features), "compute_90" (PTX). */
#ifndef YK_RUNTIME_TARGET_H
#define YK_RUNTIME_TARGET_H

#include "gen/spec.h"
#include "yk/context.h"

/* Checks text names a target NVRTC can build (when NVRTC is loaded) and copies it to out. */
yk_status yk_target_parse(yk_ctx *ctx, const char *text, char out[16]);

/* The target an op is built for when asked for `target`: sm_90 becomes sm_90a for an op that uses
 * sm_90's own instructions; a target of another generation is refused for such an op. */
yk_status yk_target_for_op(yk_ctx *ctx, const yk_op_def *op, const char *target, char out[16]);

#endif
