#include "runtime/target.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"

yk_status yk_target_parse(yk_ctx *ctx, const char *text, char out[16]) {
  if (!text) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "no target architecture given");
  const char *digits = strncmp(text, "sm_", 3) == 0 ? text + 3 : strncmp(text, "compute_", 8) == 0 ? text + 8 : NULL;
  char *end = NULL;
  long number = digits ? strtol(digits, &end, 10) : 0;
  if (!digits || end == digits || number < 10 || (*end && strcmp(end, "a") != 0 && strcmp(end, "f") != 0) ||
      strlen(text) >= 16)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "'%s' is not a target (sm_90, sm_90a, compute_90)", text);
  if (ctx->has_nvrtc && !yk_nvrtc_supports_arch(&ctx->nvrtc, (int)number)) {
    char list[256] = "";
    for (int i = 0; i < ctx->nvrtc.arch_count; i++) {
      size_t used = strlen(list);
      snprintf(list + used, sizeof list - used, "%s%d", i ? " " : "", ctx->nvrtc.archs[i]);
    }
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "NVRTC %d.%d does not build %s (it builds %s)", ctx->nvrtc.major,
                    ctx->nvrtc.minor, text, list);
  }
  memset(out, 0, 16);
  memcpy(out, text, strlen(text));
  return YK_OK;
}

yk_status yk_target_for_op(yk_ctx *ctx, const yk_op_def *op, const char *target, char out[16]) {
  memset(out, 0, 16);
  if (!op->arch_specific_sm) {
    memcpy(out, target, strnlen(target, 15));
    return YK_OK;
  }
  const char *digits = strncmp(target, "sm_", 3) == 0 ? target + 3 : NULL;
  if (!digits || atoi(digits) != op->arch_specific_sm)
    return yk_error(ctx, YK_ERR_UNSUPPORTED, "%s uses sm_%d's own instructions and is built for sm_%da only, not %s",
                    op->name, op->arch_specific_sm, op->arch_specific_sm, target);
  snprintf(out, 16, "sm_%da", op->arch_specific_sm);
  return YK_OK;
}
