#include "tune/tune_context.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "tune/tune_table.h"
#include "yk/yk.h"

void yk_tune_db_path(const yk_ctx *ctx, char *out, size_t size) {
  const char *env = getenv("YK_TUNE_DB");
  out[0] = '\0';
  if (env && env[0])
    snprintf(out, size, "%s", strcmp(env, "off") ? env : "");
  else if (ctx->cache.disk.dir[0])
    snprintf(out, size, "%s/%s", ctx->cache.disk.dir, YK_TUNE_DB_FILE);
}

void yk_tune_identity_of(const yk_ctx *ctx, yk_tune_identity *id) {
  memset(id, 0, sizeof *id);
  snprintf(id->gpu, sizeof id->gpu, "%s", ctx->device_name);
  snprintf(id->arch, sizeof id->arch, "%s", ctx->target);
  id->driver = ctx->driver_version;
  snprintf(id->nvrtc, sizeof id->nvrtc, "%d.%d", ctx->nvrtc.major, ctx->nvrtc.minor);
  snprintf(id->yk, sizeof id->yk, "%s", yk_version());
}

void yk_tune_attach(yk_ctx *ctx) {
  ctx->tune = NULL;
  char path[4096];
  yk_tune_db_path(ctx, path, sizeof path);
  struct stat st;
  if (ctx->device != YK_DEVICE_CUDA || !path[0] || stat(path, &st)) return;
  /* a planted file could steer launches to configurations the tuner found wrong */
  if ((st.st_uid != geteuid() && st.st_uid != 0) || (st.st_mode & (S_IWGRP | S_IWOTH))) {
    yk_warn(ctx, "tuning database %s is owned or writable by another user; not used", path);
    return;
  }
  yk_tune_db db = {0};
  yk_tune_identity id;
  yk_tune_identity_of(ctx, &id);
  yk_tune_table *table = NULL;
  /* the context reports nothing as an error here: a failure leaves it untuned, with a warning */
  if (yk_tune_db_load(ctx, path, &db, NULL) != YK_OK || yk_tune_table_build(ctx, &db, &id, &table) != YK_OK)
    yk_warn(ctx, "tuning database %s not used: %s", path, yk_ctx_last_error(ctx));
  yk_tune_db_free(&db);
  if (table && !table->keys) { /* nothing for this GPU: keep the launch path's one branch untaken */
    yk_tune_table_free(table);
    table = NULL;
  }
  ctx->tune = table;
}
