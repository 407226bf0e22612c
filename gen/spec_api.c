/* The public face of specs (yk/jit.h): canonical text, generated source, key. */
#include <stdlib.h>
#include <string.h>

#include "gen/generate.h"
#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/target.h"

void yk_free(void *p) { free(p); }

static yk_status parse(yk_ctx *ctx, const char *text, yk_spec *spec) {
  char why[1024];
  if (yk_spec_parse(text, spec, why, sizeof why))
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "spec %s: %s", text ? text : "(null)", why);
  return YK_OK;
}

yk_status yk_spec_canonical(yk_ctx *ctx, const char *text, char **canonical) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!canonical) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_spec_canonical: canonical is NULL");
  yk_spec spec;
  yk_status st = parse(ctx, text, &spec);
  if (st) return st;
  char buf[512];
  yk_spec_format(&spec, buf, sizeof buf);
  if (!(*canonical = strdup(buf))) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "out of memory");
  return YK_OK;
}

yk_status yk_spec_source(yk_ctx *ctx, const char *text, char **source) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!source) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_spec_source: source is NULL");
  yk_spec spec;
  yk_status st = parse(ctx, text, &spec);
  if (st) return st;
  size_t length;
  char why[256];
  if (yk_generate_source(&spec, source, &length, why, sizeof why)) return yk_error(ctx, YK_ERR_INTERNAL, "%s", why);
  return YK_OK;
}

yk_status yk_spec_key(yk_ctx *ctx, const char *text, const char *arch, char key_hex[33]) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (!key_hex) return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "yk_spec_key: key_hex is NULL");
  yk_spec spec;
  char requested[16], target[16], why[256];
  yk_status st = parse(ctx, text, &spec);
  if (st || (st = yk_target_parse(ctx, arch, requested)) || (st = yk_target_for_op(ctx, spec.op, requested, target)))
    return st;
  if (!ctx->has_nvrtc) return yk_error(ctx, YK_ERR_COMPILE, "the key names the NVRTC build: %s", ctx->nvrtc_note);
  char *source;
  size_t length;
  if (yk_generate_source(&spec, &source, &length, why, sizeof why)) return yk_error(ctx, YK_ERR_INTERNAL, "%s", why);
  uint8_t key[16];
  yk_content_key(source, length, target, &ctx->nvrtc, key);
  free(source);
  yk_key_to_hex(key, key_hex);
  return YK_OK;
}
