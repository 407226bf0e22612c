/* Status codes returned by every fallible yk_ call.
 *
 * A call that returns anything but YK_OK has changed nothing the caller can see (no output
 * written, no cache entry half-made) and has left a message for the calling thread, read with
 * yk_ctx_last_error(ctx). */
#ifndef YK_STATUS_H
#define YK_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define YK_API __attribute__((visibility("default")))
#else
#define YK_API
#endif

typedef enum yk_status {
  YK_OK = 0,
  YK_ERR_INVALID_ARGUMENT = 1, /* null, misshaped or inconsistent tensors or values */
  YK_ERR_UNSUPPORTED = 2,      /* well-formed but outside what is built: dtype, size, spec */
  YK_ERR_NO_DEVICE = 3,        /* the call needs a CUDA device and the context has none */
  YK_ERR_COMPILE = 4,          /* NVRTC failed or is missing; the message holds its log */
  YK_ERR_CUDA = 5,             /* a CUDA driver call failed */
  YK_ERR_OUT_OF_MEMORY = 6,    /* host or device allocation failed */
  YK_ERR_IO = 7,               /* the cache directory could not be read or written */
  YK_ERR_NOT_FOUND = 8,        /* a named op, field or entry does not exist */
  YK_ERR_INTERNAL = 9          /* a bug in yaie-kernels: please report the message */
} yk_status;

/* A constant name for a status ("YK_ERR_UNSUPPORTED"); never NULL. */
YK_API const char *yk_status_name(yk_status status);

#ifdef __cplusplus
}
#endif
#endif
