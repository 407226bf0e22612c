#include "runtime/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/context.h"

/* One slot per thread that has failed on a context, so one thread's failure never replaces the
 * message another thread is about to read. Slots live until the context does. */
struct yk_error_slot {
  yk_error_slot *next;
  unsigned long failures; /* messages written to this slot */
  char message[YK_MESSAGE_MAX];
};

static _Thread_local char create_error[YK_MESSAGE_MAX];
static _Thread_local unsigned long create_failures; /* messages written to create_error */

int yk_errors_init(yk_ctx *ctx) {
  if (pthread_mutex_init(&ctx->error_lock, NULL)) return 1;
  if (pthread_key_create(&ctx->error_key, NULL)) {
    pthread_mutex_destroy(&ctx->error_lock);
    return 1;
  }
  ctx->error_slots = NULL;
  return 0;
}

void yk_errors_destroy(yk_ctx *ctx) {
  pthread_key_delete(ctx->error_key);
  for (yk_error_slot *s = ctx->error_slots, *next; s; s = next) {
    next = s->next;
    free(s);
  }
  ctx->error_slots = NULL;
  pthread_mutex_destroy(&ctx->error_lock);
}

static yk_error_slot *thread_slot(yk_ctx *ctx) {
  yk_error_slot *slot = pthread_getspecific(ctx->error_key);
  if (slot) return slot;
  if (!(slot = calloc(1, sizeof *slot))) return NULL;
  if (pthread_setspecific(ctx->error_key, slot)) {
    free(slot);
    return NULL;
  }
  pthread_mutex_lock(&ctx->error_lock);
  slot->next = ctx->error_slots;
  ctx->error_slots = slot;
  pthread_mutex_unlock(&ctx->error_lock);
  return slot;
}

yk_status yk_error(yk_ctx *ctx, yk_status status, const char *fmt, ...) {
  yk_error_slot *slot = ctx ? thread_slot(ctx) : NULL;
  char *buf = slot ? slot->message : create_error;
  if (slot) slot->failures++;
  else create_failures++;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, YK_MESSAGE_MAX, fmt, ap);
  va_end(ap);
  return status;
}

yk_status yk_error_no_ctx(yk_status status, const char *fmt, ...) {
  create_failures++;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(create_error, sizeof create_error, fmt, ap);
  va_end(ap);
  return status;
}

const char *yk_ctx_last_error(const yk_ctx *ctx) {
  if (!ctx) return create_error;
  yk_error_slot *slot = pthread_getspecific(ctx->error_key);
  /* A thread whose slot could not be allocated wrote its message to create_error instead. */
  if (!slot) return create_error[0] ? create_error : "";
  return slot->message;
}

unsigned long yk_error_mark(const yk_ctx *ctx) {
  if (!ctx) return create_failures;
  const yk_error_slot *slot = pthread_getspecific(ctx->error_key);
  return slot ? slot->failures : 0; /* a thread's first failure on ctx makes its slot: 0 -> 1 */
}

void yk_warn(yk_ctx *ctx, const char *fmt, ...) {
  if (!ctx->log) return;
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  ctx->log(ctx->log_user, YK_LOG_WARNING, buf);
}

int yk_warn_first(yk_ctx *ctx, unsigned flag) { return !(atomic_fetch_or(&ctx->warned_once, flag) & flag); }

const char *yk_status_name(yk_status status) {
  switch (status) {
  case YK_OK: return "YK_OK";
  case YK_ERR_INVALID_ARGUMENT: return "YK_ERR_INVALID_ARGUMENT";
  case YK_ERR_UNSUPPORTED: return "YK_ERR_UNSUPPORTED";
  case YK_ERR_NO_DEVICE: return "YK_ERR_NO_DEVICE";
  case YK_ERR_COMPILE: return "YK_ERR_COMPILE";
  case YK_ERR_CUDA: return "YK_ERR_CUDA";
  case YK_ERR_OUT_OF_MEMORY: return "YK_ERR_OUT_OF_MEMORY";
  case YK_ERR_IO: return "YK_ERR_IO";
  case YK_ERR_NOT_FOUND: return "YK_ERR_NOT_FOUND";
  case YK_ERR_INTERNAL: return "YK_ERR_INTERNAL";
  }
  return "YK_ERR_UNKNOWN";
}
