#include "tune/tune_sweep.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "runtime/module.h"
#include "tune/tune_case.h"
#include "tune/tune_context.h"
#include "tune/tune_key.h"
#include "tune/tune_timer.h"

typedef struct {
  yk_ctx *ctx;
  yk_tune_db *db;
  const yk_tune_options *o;
  yk_tune_summary *s;
  yk_tune_timer timer;
  yk_tune_identity id;
} sweep;

/* Spec overrides: yk_tune_keys_capture sees which specs the op builds, apply_config runs one
 * configuration of one of them. */
void yk_tune_keys_capture(void *user, yk_spec *spec) {
  yk_tune_keys *keys = user;
  for (int i = 0; i < keys->count; i++)
    if (!memcmp(&keys->key[i], spec, sizeof *spec)) return;
  if (keys->count == YK_TUNE_KEYS_MAX)
    keys->dropped++;
  else
    keys->key[keys->count++] = *spec;
}

typedef struct {
  const yk_spec *key, *config;
  int applied;
} apply_state;

static void apply_config(void *user, yk_spec *spec) {
  apply_state *a = user;
  if (!memcmp(spec, a->key, sizeof *spec)) *spec = *a->config, a->applied++;
}

typedef struct {
  yk_tune_case *c;
} call_state;

static yk_status timed_call(void *arg, int rep) { return yk_tune_case_call(((call_state *)arg)->c, rep); }

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* The next item of a comma-separated list at *cursor into item; 0 at the list's end. */
static int next_item(const char **cursor, char *item, size_t size) {
  *cursor += strspn(*cursor, ",");
  const size_t n = strcspn(*cursor, ",");
  snprintf(item, size, "%.*s", (int)n, *cursor);
  *cursor += n;
  return n > 0;
}

static int parse_shape(const char *text, yk_tune_shape *s) {
  char *end;
  s->batch = 1;
  s->length = strtoll(text, &end, 10);
  if (*end == 'x') s->batch = s->length, s->length = strtoll(end + 1, &end, 10);
  return *end || s->batch < 1 || s->length < 1;
}

/* Which specs the op builds at this shape: one call with the capture override. */
static yk_status find_keys(sweep *w, yk_tune_case *c, yk_tune_keys *keys) {
  yk_ctx *ctx = w->ctx;
  memset(keys, 0, sizeof *keys);
  ctx->spec_override = yk_tune_keys_capture, ctx->spec_override_user = keys;
  yk_status st = yk_tune_case_call(c, 0);
  ctx->spec_override = NULL;
  if (st == YK_OK) {
    CUresult r = ctx->cu.cuCtxSynchronize();
    if (r != CUDA_SUCCESS) st = yk_cuda_error(ctx, r, "tune: running the default");
  }
  if (st == YK_OK && !keys->count)
    st = yk_error(ctx, YK_ERR_INTERNAL, "tune: %s %s launched no kernel", c->op->name, c->shape);
  if (st == YK_OK && keys->dropped)
    st = yk_error(ctx, YK_ERR_INTERNAL, "tune: %s %s builds more than %d kernels", c->op->name, c->shape,
                  YK_TUNE_KEYS_MAX);
  return st;
}

/* A failed launch may have left the GPU context unusable (an illegal address is sticky): then
 * nothing later can run, and the sweep stops rather than record every configuration as failed. */
static yk_status context_alive(sweep *w, const char *after) {
  CUresult r = w->ctx->cu.cuCtxSynchronize();
  if (r == CUDA_SUCCESS) return YK_OK;
  char what[512];
  snprintf(what, sizeof what, "tune: the GPU context failed after %s", after);
  return yk_cuda_error(w->ctx, r, what);
}

/* Checks, then times, one configuration; fills r. A nonzero return stops the sweep (the GPU
 * context is lost); r is complete either way. */
static yk_status time_config(sweep *w, yk_tune_case *c, const yk_spec *key, yk_tune_config *cfg, yk_tune_record *r) {
  yk_ctx *ctx = w->ctx;
  apply_state a = {key, &cfg->spec, 0};
  ctx->spec_override = apply_config, ctx->spec_override_user = &a;
  double t0 = now_s();
  yk_status st = yk_tune_case_check(c, &r->error);
  w->s->check_seconds += now_s() - t0;
  int never_built = !a.applied; /* the check's own case (tune_case.h) must build the key too */
  if (st == YK_OK && r->error <= yk_tune_tolerance(c->dtype)) {
    call_state call = {c};
    a.applied = 0;
    t0 = now_s();
    st = yk_tune_time(&w->timer, timed_call, &call, &r->ms);
    w->s->time_seconds += now_s() - t0;
    never_built |= !a.applied;
  }
  ctx->spec_override = NULL;
  if (st == YK_OK && never_built) { /* the op took another path than the one its key came from */
    r->status = YK_TUNE_LAUNCH_FAILED, cfg->failed = 1;
    snprintf(r->note, sizeof r->note, "the op never built the key");
    return yk_error(ctx, YK_ERR_INTERNAL, "tune: %s %s never built %s", c->op->name, c->shape, r->spec);
  }
  if (st != YK_OK) {
    r->status = YK_TUNE_LAUNCH_FAILED;
    snprintf(r->note, sizeof r->note, "%s", yk_ctx_last_error(ctx));
    w->s->launch_failed++;
    cfg->failed = 1;
    return context_alive(w, cfg->text);
  }
  if (r->error > yk_tune_tolerance(c->dtype)) {
    r->status = YK_TUNE_WRONG;
    snprintf(r->note, sizeof r->note, "relative error %.3g against the CPU fallback", r->error);
    w->s->wrong++;
    cfg->failed = 1;
    return YK_OK;
  }
  r->status = YK_TUNE_OK;
  w->s->timed++;
  return YK_OK;
}

/* Which kernel of how many a shape's sweep is at. */
typedef struct {
  char label[128];
  int count;
} kernel_of;

static void report(sweep *w, const yk_tune_record *shape, const kernel_of *k, const char *phase, int done, int total,
                   const yk_tune_record *last, const yk_tune_record *best, double default_ms) {
  if (!w->o->progress) return;
  yk_tune_progress p = {shape->op, shape->shape, k->label, k->count, phase, done, total, last, best, default_ms};
  w->o->progress(w->o->user, &p);
}

static yk_status remember_swept(sweep *w, const yk_tune_record *shape) {
  yk_tune_summary *s = w->s;
  yk_tune_swept *grown = realloc(s->swept, (size_t)(s->swept_count + 1) * sizeof *grown);
  if (!grown) return yk_error(w->ctx, YK_ERR_OUT_OF_MEMORY, "tune: out of memory");
  s->swept = grown;
  yk_tune_swept *e = &s->swept[s->swept_count++];
  memset(e, 0, sizeof *e);
  snprintf(e->op, sizeof e->op, "%s", shape->op);
  snprintf(e->shape, sizeof e->shape, "%s", shape->shape);
  snprintf(e->spec, sizeof e->spec, "%s", shape->spec);
  e->bucket = shape->bucket, e->size = shape->size;
  return YK_OK;
}

/* Every configuration of one kernel (key) of one op at one shape, the call's others at their
 * defaults. */
static yk_status sweep_key(sweep *w, yk_tune_case *c, const yk_spec *key, int kernels) {
  yk_tune_config *configs = NULL;
  int count = 0, rejected = 0;
  kernel_of kernel = {.count = kernels};
  yk_tune_key_label(key, kernel.label, sizeof kernel.label);
  yk_status st = yk_tune_space(w->ctx, key, w->o->values, w->o->value_count, &configs, &count, &rejected);
  if (st) return st;
  w->s->kernels++, w->s->configs += count, w->s->rejected += rejected;
  yk_tune_record shape = {0}, *best = NULL, best_copy = {0};
  snprintf(shape.op, sizeof shape.op, "%s", c->op->name);
  yk_tune_key_format(key, shape.spec, sizeof shape.spec);
  shape.bucket = yk_tune_bucket(c->size), shape.size = c->size;
  snprintf(shape.shape, sizeof shape.shape, "%s", c->shape);
  shape.id = w->id, shape.bytes = c->bytes, shape.flops = c->flops;

  double default_ms = 0;
  int done = 0;
  for (int i = 0; i < count; i++) { /* what the database has is not timed again */
    yk_tune_record r = shape;
    snprintf(r.config, sizeof r.config, "%s", configs[i].text);
    const yk_tune_record *known = w->o->retime ? NULL : yk_tune_db_find(w->db, &r);
    if (!known) continue;
    configs[i].reused = 1, w->s->reused++, done++;
    if (known->status != YK_TUNE_OK) continue;
    if (configs[i].is_default) default_ms = known->ms;
    if (!best || known->ms < best->ms) best_copy = *known, best = &best_copy;
  }
  report(w, &shape, &kernel, "compile", done, count, NULL, best, default_ms);
  st = yk_tune_compile(w->ctx, w->ctx->target, w->o->jobs, w->db, &shape, configs, count, w->s);
  for (int i = 0; i < count && st == YK_OK; i++) {
    yk_tune_config *cfg = &configs[i];
    if (cfg->reused) continue;
    yk_tune_record r = shape;
    snprintf(r.config, sizeof r.config, "%s", cfg->text);
    r.is_default = cfg->is_default;
    const yk_tune_record *compile_failure = cfg->failed ? yk_tune_db_find(w->db, &r) : NULL;
    if (compile_failure) { /* in the database already */
      r = *compile_failure;
    } else {
      st = time_config(w, c, key, cfg, &r);
      const yk_status put = yk_tune_db_put(w->ctx, w->db, &r); /* the failure that stops a sweep, too */
      if (st || (st = put)) break;
      if (r.status == YK_TUNE_OK && cfg->is_default) default_ms = r.ms;
      if (r.status == YK_TUNE_OK && (!best || r.ms < best->ms)) best_copy = r, best = &best_copy;
    }
    report(w, &shape, &kernel, "time", ++done, count, &r, best, default_ms);
  }
  free(configs);
  return st ? st : remember_swept(w, &shape);
}

/* Each kernel of one op at one shape in turn, in launch order; those of ops the tuner does not
 * vary (tune_space.h) keep their defaults. */
static yk_status sweep_shape(sweep *w, yk_tune_case *c) {
  yk_tune_keys keys;
  const double t0 = now_s();
  yk_status st = find_keys(w, c, &keys);
  w->s->setup_seconds += now_s() - t0;
  const yk_spec *varied[YK_TUNE_KEYS_MAX];
  int count = 0;
  for (int k = 0; k < keys.count; k++)
    if (yk_tune_space_known(keys.key[k].op)) varied[count++] = &keys.key[k];
  for (int k = 0; st == YK_OK && k < count; k++) st = sweep_key(w, c, varied[k], count);
  if (st == YK_OK && !count)
    st = yk_error(w->ctx, YK_ERR_INTERNAL, "tune: %s %s launched no kernel the tuner varies", c->op->name, c->shape);
  w->s->shapes += st == YK_OK;
  return st;
}

static const yk_model_preset *find_model(const char *name) {
  for (int m = 0; m < yk_model_preset_count(); m++)
    if (!strcmp(yk_model_preset_get(m)->name, name)) return yk_model_preset_get(m);
  return NULL;
}

/* One op at each model and shape in turn: one case in memory at a time. */
static yk_status sweep_op(sweep *w, const yk_tune_op *op) {
  char model[64], text[64];
  const char *models = w->o->models ? w->o->models : "llama-3-8b";
  for (const char *m = models; next_item(&m, model, sizeof model);) {
    const char *shapes = w->o->shapes ? w->o->shapes : op->default_shapes;
    for (const char *t = shapes; next_item(&t, text, sizeof text);) {
      yk_tune_shape shape;
      if (parse_shape(text, &shape))
        return yk_error(w->ctx, YK_ERR_INVALID_ARGUMENT, "tune: shape '%s' is not N or BxN", text);
      yk_tune_case c;
      const double t0 = now_s();
      yk_status st = yk_tune_case_setup(&c, w->ctx, op, find_model(model), shape, w->o->dtype, 1,
                                        0x7e57ull + (uint64_t)shape.batch * 131 + (uint64_t)shape.length);
      w->s->setup_seconds += now_s() - t0;
      if (st == YK_OK) {
        st = sweep_shape(w, &c);
        yk_tune_case_free(&c);
      }
      if (st) return st;
    }
  }
  return YK_OK;
}

static yk_status sweep_all(sweep *w) {
  char name[64];
  const char *ops = w->o->ops && strcmp(w->o->ops, "all") ? w->o->ops : NULL;
  const char *models = w->o->models ? w->o->models : "llama-3-8b";
  for (const char *o = ops ? ops : ""; next_item(&o, name, sizeof name);) /* every name first: fail before work */
    if (!yk_tune_op_find(name)) return yk_error(w->ctx, YK_ERR_NOT_FOUND, "tune: no op '%s' to tune", name);
  for (const char *m = models; next_item(&m, name, sizeof name);)
    if (!find_model(name)) return yk_error(w->ctx, YK_ERR_NOT_FOUND, "tune: no model preset '%s'", name);
  yk_status st = YK_OK;
  if (!ops)
    for (int i = 0; i < yk_tune_op_count() && st == YK_OK; i++) st = sweep_op(w, yk_tune_op_get(i));
  for (const char *o = ops ? ops : ""; st == YK_OK && next_item(&o, name, sizeof name);)
    st = sweep_op(w, yk_tune_op_find(name));
  return st;
}

yk_status yk_tune_run(yk_ctx *ctx, yk_tune_db *db, const yk_tune_options *o, yk_tune_summary *s) {
  memset(s, 0, sizeof *s);
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (ctx->device != YK_DEVICE_CUDA)
    return yk_error(ctx, YK_ERR_NO_DEVICE, "tune: no CUDA device (%s); tuning times kernels on the GPU",
                    ctx->device_note);
  const double t0 = now_s();
  sweep w = {ctx, db, o, s};
  yk_tune_identity_of(ctx, &w.id);
  yk_status st = yk_tune_timer_init(&w.timer, ctx, o->budget_ms);
  if (st) return st;
  yk_tune_table *tuned = ctx->tune; /* defaults must be the op's own, not an earlier sweep's */
  ctx->tune = NULL;
  yk_ctx_stats before, after;
  yk_ctx_get_stats(ctx, &before);
  st = sweep_all(&w);
  yk_ctx_get_stats(ctx, &after);
  s->nvrtc_kernels = (int)(after.compiled - before.compiled);
  s->nvrtc_seconds = (after.compile_ms - before.compile_ms) / 1e3;
  ctx->tune = tuned;
  ctx->spec_override = NULL;
  yk_tune_timer_free(&w.timer);
  s->seconds = now_s() - t0;
  return st;
}

void yk_tune_summary_free(yk_tune_summary *s) {
  free(s->swept);
  s->swept = NULL, s->swept_count = 0;
}
