/* The tuning database and a context: where it lives, what identifies this GPU in it, and the
 * table a context loads from it when it is created. */
#ifndef YK_TUNE_CONTEXT_H
#define YK_TUNE_CONTEXT_H

#include <stddef.h>

#include "tune/tune_db.h"

#define YK_TUNE_DB_FILE "tune.jsonl"

/* YK_TUNE_DB; else tune.jsonl in the kernel cache directory. "" where there is none: YK_TUNE_DB=off,
 * or a memory-only cache and no YK_TUNE_DB. */
void yk_tune_db_path(const yk_ctx *ctx, char *out, size_t size);

/* This context's GPU and versions, as records name them. */
void yk_tune_identity_of(const yk_ctx *ctx, yk_tune_identity *id);

/* At context creation, on a CUDA device: reads the database and keeps this GPU's winners in
 * ctx->tune. Never fails: a missing file means no tuning, silently; an unreadable or untrusted
 * one, corrupt lines and unusable entries are warnings through the context's log. */
void yk_tune_attach(yk_ctx *ctx);

#endif
