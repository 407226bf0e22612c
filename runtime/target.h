/* Compile targets: "sm_90" (PTX and cubin), "sm_90a" (arch-specific features), "compute_90" (PTX). */
#ifndef YK_RUNTIME_TARGET_H
#define YK_RUNTIME_TARGET_H

#include "yk/context.h"

/* Checks text names a target NVRTC can build (when NVRTC is loaded) and copies it to out. */
yk_status yk_target_parse(yk_ctx *ctx, const char *text, char out[16]);

#endif
