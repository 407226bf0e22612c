/* The one error path: every failure sets the calling thread's message on the context and returns
 * its status, in one expression: return yk_error(ctx, YK_ERR_..., "rms_norm: x: ...", ...); */
#ifndef YK_RUNTIME_ERROR_H
#define YK_RUNTIME_ERROR_H

#include "yk/context.h"

#define YK_MESSAGE_MAX 16384 /* NVRTC logs come back whole in the message */

__attribute__((format(printf, 3, 4))) yk_status yk_error(yk_ctx *ctx, yk_status status, const char *fmt, ...);

/* How many messages this thread has had set on ctx so far (ctx NULL: without a context): two
 * readings differ exactly when a call between them set the message yk_ctx_last_error(ctx) reads. */
unsigned long yk_error_mark(const yk_ctx *ctx);

/* Sets the message for a failure with no context (yk_ctx_create). */
__attribute__((format(printf, 2, 3))) yk_status yk_error_no_ctx(yk_status status, const char *fmt, ...);

/* Warnings go to the context's log function, if any. */
__attribute__((format(printf, 2, 3))) void yk_warn(yk_ctx *ctx, const char *fmt, ...);

/* Warnings that a context gives once, however often the cause recurs. */
enum {
  YK_WARN_CACHE_UNWRITABLE = 1u << 0,
  YK_WARN_CACHE_WRITE_FAILED = 1u << 1,
  YK_WARN_CACHE_PRUNE_FAILED = 1u << 2,
};
/* 1 the first time for this flag on this context, then 0. */
int yk_warn_first(yk_ctx *ctx, unsigned flag);

/* Called by context.c. */
int yk_errors_init(yk_ctx *ctx);
void yk_errors_destroy(yk_ctx *ctx);

#endif
