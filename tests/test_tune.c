/* The tuner: the database's format and file, the runtime's table and lookup, the configuration
 * space, compile failures, and (on a GPU) a sweep end to end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/attention.h"
#include "runtime/context.h"
#include "runtime/launch.h"
#include "tests/support.h"
#include "tune/tune_case.h"
#include "tune/tune_context.h"
#include "tune/tune_json.h"
#include "tune/tune_key.h"
#include "tune/tune_select.h"
#include "tune/tune_space.h"
#include "tune/tune_sweep.h"
#include "tune/tune_table.h"

enum { HIDDEN, VEC, THREADS, FUSED_ADD, ROW_IN_REGS }; /* rms_norm's fields (gen/ops/rms_norm.c) */

typedef struct {
  int warnings;
  char last[1024];
} log_capture;

static void capture(void *user, yk_log_level level, const char *message) {
  log_capture *l = user;
  if (level == YK_LOG_WARNING) l->warnings++;
  snprintf(l->last, sizeof l->last, "%s", message);
}

static yk_ctx *cpu_ctx_logging(log_capture *log) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_memory_only = 1;
  o.log = capture;
  o.log_user = log;
  yk_ctx *ctx = NULL;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  return ctx;
}

/* The spec rms_norm's call site builds for rows of `hidden` bf16 at full alignment. */
static yk_spec rms_norm_key(int hidden) {
  yk_spec key;
  yk_spec_init(&key, yk_registry_op(yk_registry_find("rms_norm")), YK_BF16);
  key.v[HIDDEN] = hidden, key.v[FUSED_ADD] = 0, key.v[VEC] = 8;
  return key;
}

static const yk_tune_identity gpu_a = {"Test GPU A", "sm_90", 13000, "13.0", "0.1.0"};
static const yk_tune_identity gpu_b = {"Test GPU B", "sm_80", 12040, "12.4", "0.1.0"};

static yk_tune_record record(const yk_tune_identity *id, int64_t bucket, const char *config, int is_default,
                             double ms) {
  yk_tune_record r;
  memset(&r, 0, sizeof r);
  snprintf(r.op, sizeof r.op, "rms_norm");
  snprintf(r.spec, sizeof r.spec, "rms_norm:dtype=bf16,hidden=4096,vec=8,fused_add=0");
  r.bucket = bucket, r.size = bucket;
  snprintf(r.shape, sizeof r.shape, "T%lld H4096", (long long)bucket);
  r.id = *id;
  snprintf(r.config, sizeof r.config, "%s", config);
  r.is_default = is_default;
  r.status = YK_TUNE_OK;
  r.ms = ms, r.error = 0.003, r.bytes = 2.0 * (double)bucket * 4096 * 2;
  return r;
}

static void put(yk_ctx *ctx, yk_tune_db *db, yk_tune_record r) { cr_assert_eq(yk_tune_db_put(ctx, db, &r), YK_OK); }

static void read_file(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "%s", path);
  size_t n = fread(buf, 1, size - 1, f);
  buf[n] = '\0';
  fclose(f);
}

Test(tune_db, key_text_round_trips_byte_for_byte) {
  const yk_spec key = rms_norm_key(4096);
  char text[256], why[256];
  yk_tune_key_format(&key, text, sizeof text);
  cr_assert_str_eq(text, "rms_norm:dtype=bf16,hidden=4096,vec=8,fused_add=0");
  yk_spec back;
  cr_assert_eq(yk_tune_key_parse(text, &back, why, sizeof why), 0, "%s", why);
  cr_assert(!memcmp(&back, &key, sizeof key), "the parsed key differs from the call site's spec");

  yk_spec rope;
  cr_assert_eq(yk_tune_key_parse("rope:dtype=f16,head_dim=128,style=gptj", &rope, why, sizeof why), 0, "%s", why);
  yk_tune_key_format(&rope, text, sizeof text);
  cr_assert_str_eq(text, "rope:dtype=f16,head_dim=128,style=gptj"); /* choices by name */
  cr_assert_neq(yk_tune_key_parse("rms_norm:dtype=bf16,width=3", &back, why, sizeof why), 0);
  cr_assert_neq(yk_tune_key_parse("no_such_op:dtype=bf16", &back, why, sizeof why), 0);
}

Test(tune_db, records_round_trip_through_a_file) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_tune_db db = {0};
  put(ctx, &db, record(&gpu_a, 4096, "threads=256,row_in_regs=1", 1, 0.0123456789));
  yk_tune_record odd = record(&gpu_b, 1, "threads=64,row_in_regs=0", 0, 0.5);
  odd.status = YK_TUNE_COMPILE_FAILED, odd.ms = 0;
  snprintf(odd.note, sizeof odd.note, "line 1: \"quoted\"\n\ttab \\ back \xc3\xa9");
  put(ctx, &db, odd);
  yk_tune_record big = record(&gpu_a, (int64_t)1 << 40, "threads=1024,row_in_regs=0", 0, 123.25);
  big.flops = 4.5e15, big.bytes = 0;
  put(ctx, &db, big);

  char dir[512], path[600], again[600];
  ts_temp_dir(dir, sizeof dir, "tune-db");
  snprintf(path, sizeof path, "%s/tune.jsonl", dir);
  snprintf(again, sizeof again, "%s/again.jsonl", dir);
  cr_assert_eq(yk_tune_db_save(ctx, path, &db), YK_OK, "%s", yk_ctx_last_error(ctx));
  yk_tune_db back = {0};
  int corrupt = -1;
  cr_assert_eq(yk_tune_db_load(ctx, path, &back, &corrupt), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(corrupt, 0);
  cr_assert_eq(back.count, db.count);
  for (int i = 0; i < db.count; i++) {
    const yk_tune_record *a = &db.records[i], *b = &back.records[i];
    cr_assert(yk_tune_record_same(a, b), "record %d: identity differs", i);
    cr_assert_str_eq(a->shape, b->shape);
    cr_assert_str_eq(a->note, b->note);
    cr_assert_eq(a->status, b->status);
    cr_assert_eq(a->is_default, b->is_default);
    cr_assert_eq(a->size, b->size);
    cr_assert(fabs(a->ms - b->ms) <= 1e-8 * a->ms, "record %d: ms %.17g != %.17g", i, a->ms, b->ms);
    cr_assert(fabs(a->flops - b->flops) <= 1e-8 * a->flops);
  }
  cr_assert_eq(yk_tune_db_save(ctx, again, &back), YK_OK);
  static char first[16384], second[16384];
  read_file(path, first, sizeof first), read_file(again, second, sizeof second);
  cr_assert_str_eq(first, second, "a database read and written again must be the same bytes");
  yk_tune_db_free(&db), yk_tune_db_free(&back);
  yk_ctx_destroy(ctx);
}

Test(tune_db, same_identity_replaces_and_missing_file_is_not_found) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_tune_db db = {0};
  put(ctx, &db, record(&gpu_a, 64, "threads=128,row_in_regs=1", 0, 0.2));
  put(ctx, &db, record(&gpu_a, 64, "threads=128,row_in_regs=1", 0, 0.1)); /* retimed */
  put(ctx, &db, record(&gpu_b, 64, "threads=128,row_in_regs=1", 0, 0.3)); /* another GPU */
  cr_assert_eq(db.count, 2);
  cr_assert_float_eq(db.records[0].ms, 0.1, 1e-12);
  int corrupt;
  cr_assert_eq(yk_tune_db_load(ctx, "/nonexistent/yk/tune.jsonl", &db, &corrupt), YK_ERR_NOT_FOUND);
  cr_assert_eq(db.count, 2);
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

Test(tune_db, corrupt_lines_are_skipped_with_warnings) {
  log_capture log = {0};
  yk_ctx *ctx = cpu_ctx_logging(&log);
  char dir[512], path[600], good[4096];
  ts_temp_dir(dir, sizeof dir, "tune-corrupt");
  snprintf(path, sizeof path, "%s/tune.jsonl", dir);
  yk_tune_record r = record(&gpu_a, 4096, "threads=256,row_in_regs=1", 1, 0.01);
  cr_assert_eq(yk_tune_record_format(&r, good, sizeof good), 0);
  FILE *f = fopen(path, "w");
  cr_assert_not_null(f);
  fprintf(f, "%s\n", good);
  fprintf(f, "not json at all\n");
  fprintf(f, "{\"op\": \"rms_norm\"}\n");              /* members missing */
  fprintf(f, "%.*s\n", (int)(strlen(good) / 2), good); /* truncated */
  fprintf(f, "{\"op\": 3, \"spec\": \"x\"}\n");        /* wrong type */
  fprintf(f, "\n# a comment\n");                       /* neither counts */
  char *bad_status = strstr(good, "\"ok\"");
  cr_assert_not_null(bad_status);
  fprintf(f, "%.*s\"maybe\"%s\n", (int)(bad_status - good), good, bad_status + 4);
  for (int i = 0; i < 5000; i++) fputc('x', f); /* longer than any line */
  fputc('\n', f);
  r.bucket = 64;
  yk_tune_record_format(&r, good, sizeof good);
  fprintf(f, "%s", good); /* the last line, with no newline */
  fclose(f);

  yk_tune_db db = {0};
  int corrupt = 0;
  cr_assert_eq(yk_tune_db_load(ctx, path, &db, &corrupt), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(db.count, 2, "the two sound lines load, got %d", db.count);
  cr_assert_eq(corrupt, 6, "six corrupt lines, counted %d", corrupt);
  cr_assert_eq(log.warnings, 6, "5 warnings then one with the count, got %d", log.warnings);
  cr_assert(strstr(log.last, "6 corrupt lines"), "last warning: %s", log.last);
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

Test(tune_db, json_reader_handles_escapes_and_refuses_nesting) {
  static yk_json_object o;
  char why[256];
  cr_assert_eq(
      yk_json_parse_flat("{\"a\": \"x\\\"y\\u00e9\\n\", \"b\": -1.5e3, \"c\": true, \"d\": null}", &o, why, sizeof why),
      0, "%s", why);
  cr_assert_str_eq(yk_json_get(&o, "a")->string, "x\"y\xc3\xa9\n");
  cr_assert_float_eq(yk_json_get(&o, "b")->number, -1500, 1e-9);
  cr_assert_eq(yk_json_get(&o, "c")->type, YK_JSON_BOOL);
  cr_assert_eq(yk_json_get(&o, "d")->type, YK_JSON_NULL);
  cr_assert_neq(yk_json_parse_flat("{\"a\": {\"b\": 1}}", &o, why, sizeof why), 0);
  cr_assert_neq(yk_json_parse_flat("{\"a\": 1, \"a\": 2}", &o, why, sizeof why), 0);
  cr_assert_neq(yk_json_parse_flat("{\"a\": 1} trailing", &o, why, sizeof why), 0);
  cr_assert_neq(yk_json_parse_flat("{\"a\": \"\\u0000\"}", &o, why, sizeof why), 0);
}

/* Criterion runs each test in its own process, so the environment set here stays here. */
Test(tune_db, the_path_is_yk_tune_db_else_beside_the_kernel_cache) {
  char dir[512], expected[600], path[4096];
  ts_temp_dir(dir, sizeof dir, "tune-path");
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_dir = dir;
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK);
  unsetenv("YK_TUNE_DB");
  yk_tune_db_path(ctx, path, sizeof path);
  snprintf(expected, sizeof expected, "%s/tune.jsonl", dir);
  cr_assert_str_eq(path, expected);
  setenv("YK_TUNE_DB", "/somewhere/else.jsonl", 1);
  yk_tune_db_path(ctx, path, sizeof path);
  cr_assert_str_eq(path, "/somewhere/else.jsonl");
  setenv("YK_TUNE_DB", "off", 1);
  yk_tune_db_path(ctx, path, sizeof path);
  cr_assert_str_eq(path, "");
  cr_assert_null(ctx->tune, "a CPU context never loads tuning");
  yk_ctx_destroy(ctx);
}

Test(tune_table, bucket_is_the_nearest_power_of_two_in_log_distance) {
  cr_assert_eq(yk_tune_bucket(1), 1);
  cr_assert_eq(yk_tune_bucket(3), 4);       /* log2 3 = 1.58 */
  cr_assert_eq(yk_tune_bucket(2896), 2048); /* just under 2048 * sqrt 2 */
  cr_assert_eq(yk_tune_bucket(2897), 4096);
  cr_assert_eq(yk_tune_bucket(4096), 4096);
  cr_assert_eq(yk_tune_bucket((int64_t)3 << 40), (int64_t)4 << 40);
}

/* A table of rms_norm at hidden 4096 on GPU A: buckets 1, 64 and 4096, each with its own
 * threads, all faster than the default. */
static yk_tune_table *three_buckets(yk_ctx *ctx, const yk_tune_identity *for_gpu) {
  yk_tune_db db = {0};
  static const struct {
    int64_t bucket;
    int threads;
  } tuned[] = {{1, 64}, {64, 128}, {4096, 512}};
  for (int i = 0; i < 3; i++) {
    char config[64];
    snprintf(config, sizeof config, "threads=%d,row_in_regs=1", tuned[i].threads);
    put(ctx, &db, record(&gpu_a, tuned[i].bucket, "threads=256,row_in_regs=1", 1, 1.0));
    put(ctx, &db, record(&gpu_a, tuned[i].bucket, config, 0, 0.5));
  }
  put(ctx, &db, record(&gpu_b, 4096, "threads=256,row_in_regs=1", 1, 1.0));
  put(ctx, &db, record(&gpu_b, 4096, "threads=1024,row_in_regs=0", 0, 0.1));
  yk_tune_table *t = NULL;
  cr_assert_eq(yk_tune_table_build(ctx, &db, for_gpu, &t), YK_OK, "%s", yk_ctx_last_error(ctx));
  yk_tune_db_free(&db);
  return t;
}

static int tuned_threads(const yk_tune_table *t, int64_t size) {
  const yk_spec key = rms_norm_key(4096);
  const yk_tune_entry *e = yk_tune_table_lookup(t, &key, size);
  return e ? e->v[THREADS] : 0;
}

Test(tune_table, lookup_picks_the_nearest_bucket) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_tune_table *t = three_buckets(ctx, &gpu_a);
  cr_assert_eq(t->keys, 1);
  cr_assert_eq(t->entry_count, 3);
  cr_assert_eq(tuned_threads(t, 1), 64);
  cr_assert_eq(tuned_threads(t, 7), 64);  /* log2 7 = 2.8: nearer 1 (0) than 64 (6) */
  cr_assert_eq(tuned_threads(t, 9), 128); /* 3.17: nearer 6 */
  cr_assert_eq(tuned_threads(t, 64), 128);
  cr_assert_eq(tuned_threads(t, 511), 128); /* 64 * 8 = 512 is the midpoint of 64 and 4096 */
  cr_assert_eq(tuned_threads(t, 513), 512);
  cr_assert_eq(tuned_threads(t, 1 << 20), 512); /* above every bucket */
  cr_assert_eq(tuned_threads(t, 0), 0);         /* no size, no tuning */
  const yk_spec other = rms_norm_key(8192);
  cr_assert_null(yk_tune_table_lookup(t, &other, 64), "hidden 8192 was never tuned");
  yk_tune_table_free(t);
  yk_ctx_destroy(ctx);
}

Test(tune_table, the_runtime_applies_this_gpus_winner_only) {
  yk_ctx *ctx = ts_cpu_ctx();
  ctx->tune = three_buckets(ctx, &gpu_a);
  yk_spec spec = rms_norm_key(4096);
  yk_spec_finish(ctx, &spec, 4000);
  cr_assert_eq(spec.v[THREADS], 512, "tuned threads at 4000 rows, got %d", spec.v[THREADS]);
  cr_assert_eq(spec.v[ROW_IN_REGS], 1);

  yk_spec untuned = rms_norm_key(4096), expected = rms_norm_key(4096);
  yk_spec_finish(ctx, &untuned, 0); /* no problem size */
  expected.op->complete(&expected);
  cr_assert(!memcmp(&untuned, &expected, sizeof untuned), "no size: the op's default");
  yk_tune_table_free(ctx->tune);

  /* a table built for another GPU holds nothing of GPU A's */
  const yk_tune_identity gpu_c = {"Test GPU C", "sm_90", 13000, "13.0", "0.1.0"};
  ctx->tune = three_buckets(ctx, &gpu_c);
  cr_assert_eq(ctx->tune->keys, 0);
  yk_spec other = rms_norm_key(4096);
  yk_spec_finish(ctx, &other, 4096);
  cr_assert(!memcmp(&other, &expected, sizeof other), "another GPU's records must not apply");
  yk_tune_table_free(ctx->tune);
  ctx->tune = NULL;
  yk_ctx_destroy(ctx);
}

static void force_1024_threads(void *user, yk_spec *spec) {
  (void)user;
  spec->v[THREADS] = 1024;
}

Test(tune_table, an_override_wins_and_invalid_mixtures_fall_back) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_tune_db db = {0};
  /* rows of 40960 fit in registers at 512 threads (80 floats a thread), not at 1024 (40 of 32) */
  yk_tune_record def = record(&gpu_a, 64, "threads=1024,row_in_regs=0", 1, 1.0),
                 tuned = record(&gpu_a, 64, "threads=512,row_in_regs=1", 0, 0.5);
  snprintf(def.spec, sizeof def.spec, "rms_norm:dtype=bf16,hidden=40960,vec=8,fused_add=0");
  snprintf(tuned.spec, sizeof tuned.spec, "%s", def.spec);
  put(ctx, &db, def), put(ctx, &db, tuned);
  cr_assert_eq(yk_tune_table_build(ctx, &db, &gpu_a, &ctx->tune), YK_OK);
  yk_spec spec = rms_norm_key(40960);
  yk_spec_finish(ctx, &spec, 64);
  cr_assert_eq(spec.v[THREADS], 512);
  cr_assert_eq(spec.v[ROW_IN_REGS], 1);

  ctx->spec_override = force_1024_threads;
  spec = rms_norm_key(40960);
  yk_spec_finish(ctx, &spec, 64);
  /* the tuned row_in_regs=1 would break the op's rules beside the override's 1024 threads: the
   * op's own completion decides instead */
  cr_assert_eq(spec.v[THREADS], 1024);
  cr_assert_eq(spec.v[ROW_IN_REGS], 0);
  cr_assert_eq(atomic_load(&ctx->tune->rejected), 1);
  char why[256];
  cr_assert_eq(yk_spec_check(&spec, why, sizeof why), 0, "%s", why);
  ctx->spec_override = NULL;
  yk_tune_table_free(ctx->tune);
  ctx->tune = NULL;
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

Test(tune_table, winner_must_beat_the_default_and_be_checked) {
  yk_ctx *ctx = ts_cpu_ctx();
  const yk_tune_record def = record(&gpu_a, 64, "threads=256,row_in_regs=1", 1, 1.0),
                       close = record(&gpu_a, 64, "threads=128,row_in_regs=1", 0, 0.995),
                       faster = record(&gpu_a, 64, "threads=512,row_in_regs=1", 0, 0.9);
  yk_tune_record wrong = record(&gpu_a, 64, "threads=1024,row_in_regs=1", 0, 0.1);
  wrong.status = YK_TUNE_WRONG;
  const yk_tune_record *group[4] = {&def, &close, &wrong, &faster};
  cr_assert_eq(yk_tune_winner(group, 2, NULL), &def, "half a percent is noise: the default stays");
  cr_assert_eq(yk_tune_winner(group, 3, NULL), &def, "a wrong result never wins");
  cr_assert_eq(yk_tune_winner(group, 4, NULL), &faster);
  cr_assert_null(yk_tune_winner(group + 1, 3, NULL), "without a default there is nothing to compare");
  yk_ctx_destroy(ctx);
}

Test(tune_table, a_winner_that_breaks_the_rules_is_dropped_with_a_warning) {
  log_capture log = {0};
  yk_ctx *ctx = cpu_ctx_logging(&log);
  yk_tune_db db = {0};
  put(ctx, &db, record(&gpu_a, 64, "threads=256,row_in_regs=1", 1, 1.0));
  put(ctx, &db, record(&gpu_a, 64, "threads=48,row_in_regs=1", 0, 0.5)); /* not a multiple of 32 */
  yk_tune_table *t;
  cr_assert_eq(yk_tune_table_build(ctx, &db, &gpu_a, &t), YK_OK);
  cr_assert_eq(t->dropped, 1);
  cr_assert_eq(t->keys, 0);
  cr_assert_eq(log.warnings, 1);
  cr_assert(strstr(log.last, "threads 48"), "warning: %s", log.last);
  yk_tune_table_free(t);
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

Test(tune_space, default_first_every_configuration_valid_and_distinct) {
  yk_ctx *ctx = ts_cpu_ctx();
  const yk_spec key = rms_norm_key(4096);
  yk_tune_config *configs;
  int count, rejected;
  cr_assert_eq(yk_tune_space(ctx, &key, NULL, 0, &configs, &count, &rejected), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_gt(count, 5);
  cr_assert(configs[0].is_default);
  yk_spec def = key;
  def.op->complete(&def);
  cr_assert(!memcmp(&configs[0].spec, &def, sizeof def), "the first configuration is the op's default");
  for (int i = 0; i < count; i++) {
    char why[256];
    yk_spec s = configs[i].spec;
    cr_assert_eq(yk_spec_check(&s, why, sizeof why), 0, "%s: %s", configs[i].text, why);
    cr_assert_eq(configs[i].is_default, i == 0);
    for (int j = 0; j < i; j++) cr_assert_str_neq(configs[i].text, configs[j].text);
  }
  free(configs);

  yk_tune_values values;
  char why[256];
  cr_assert_eq(yk_tune_values_parse("threads=96,160", &values, why, sizeof why), 0, "%s", why);
  cr_assert_eq(yk_tune_space(ctx, &key, &values, 1, &configs, &count, &rejected), YK_OK);
  for (int i = 1; i < count; i++)
    cr_assert(configs[i].spec.v[THREADS] == 96 || configs[i].spec.v[THREADS] == 160, "%s", configs[i].text);
  free(configs);
  cr_assert_eq(yk_tune_values_parse("vec=2,4", &values, why, sizeof why), 0);
  ts_assert_rejected(ctx, yk_tune_space(ctx, &key, &values, 1, &configs, &count, &rejected), YK_ERR_INVALID_ARGUMENT,
                     "decided by the call");
  yk_ctx_destroy(ctx);
}

/* A pin's shape fields (those without a default) select the specs it changes: part=dq pins the
 * backward's dq kernel and leaves its dk/dv kernel as the call built it. */
Test(tune_key, a_pins_shape_fields_select_rather_than_set) {
  yk_tune_pin pin;
  char why[256];
  cr_assert_eq(yk_tune_pin_parse(&pin, "attention_backward", "part=dq,block_m=128,stages=3", why, sizeof why), 0, "%s",
               why);
  yk_spec dq, dkdv, other;
  cr_assert_eq(yk_spec_parse("attention_backward:dtype=bf16,head_dim=128,part=dq", &dq, why, sizeof why), 0, "%s", why);
  cr_assert_eq(yk_spec_parse("attention_backward:dtype=bf16,head_dim=128,part=dkdv", &dkdv, why, sizeof why), 0, "%s",
               why);
  cr_assert_eq(yk_spec_parse("rms_norm:dtype=bf16,hidden=4096", &other, why, sizeof why), 0, "%s", why);
  const yk_spec dkdv_before = dkdv, other_before = other;
  yk_tune_pin_apply(&pin, &dq);
  yk_tune_pin_apply(&pin, &dkdv);
  yk_tune_pin_apply(&pin, &other);
  char text[512];
  yk_spec_format(&dq, text, sizeof text);
  cr_assert(strstr(text, "block_m=128") && strstr(text, "stages=3") && strstr(text, "part=dq"), "%s", text);
  cr_assert(!memcmp(&dkdv, &dkdv_before, sizeof dkdv), "a dq pin changed the dk/dv spec");
  cr_assert(!memcmp(&other, &other_before, sizeof other), "a pin changed another op's spec");
  /* without a part it pins both */
  cr_assert_eq(yk_tune_pin_parse(&pin, "attention_backward", "stages=3", why, sizeof why), 0, "%s", why);
  yk_tune_pin_apply(&pin, &dkdv);
  yk_spec_format(&dkdv, text, sizeof text);
  cr_assert(strstr(text, "stages=3") && strstr(text, "part=dkdv"), "%s", text);
}

Test(tune_sweep, a_configuration_that_fails_to_compile_is_recorded_and_skipped) {
  yk_ctx *ctx = ts_cpu_ctx(); /* NVRTC alone: no GPU needed to compile */
  if (!ctx->has_nvrtc) {
    yk_ctx_destroy(ctx);
    cr_skip_test("no NVRTC: %s", ctx->nvrtc_note);
  }
  const yk_spec key = rms_norm_key(4096);
  yk_tune_config configs[2];
  memset(configs, 0, sizeof configs);
  configs[0].spec = key;
  configs[0].spec.op->complete(&configs[0].spec);
  configs[0].is_default = 1;
  yk_tune_config_format(&configs[0].spec, &key, configs[0].text, sizeof configs[0].text);
  configs[1].spec = configs[0].spec;
  configs[1].spec.v[THREADS] = 48; /* forced past the op's rules: not a multiple of 32 */
  yk_tune_config_format(&configs[1].spec, &key, configs[1].text, sizeof configs[1].text);

  yk_tune_db db = {0};
  yk_tune_record shape = record(&gpu_a, 4096, "", 0, 0);
  yk_tune_summary s;
  memset(&s, 0, sizeof s);
  cr_assert_eq(yk_tune_compile(ctx, "sm_80", 2, &db, &shape, configs, 2, &s), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(configs[0].failed, 0, "the default compiles");
  cr_assert_eq(configs[1].failed, 1, "the forced one is marked, so the sweep skips it");
  cr_assert_eq(s.compile_failed, 1);
  cr_assert_eq(s.compiled + s.cached, 1);
  cr_assert_eq(db.count, 1, "only the failure is recorded before timing");
  cr_assert_eq(db.records[0].status, YK_TUNE_COMPILE_FAILED);
  cr_assert_str_eq(db.records[0].config, "threads=48,row_in_regs=1");
  cr_assert(strstr(db.records[0].note, "multiple of 32"), "note: %s", db.records[0].note);
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

Test(tune_sweep, a_sweep_needs_a_gpu) {
  yk_ctx *ctx = ts_cpu_ctx();
  yk_tune_db db = {0};
  yk_tune_options o = {.ops = "rms_norm", .dtype = YK_BF16};
  yk_tune_summary s;
  ts_assert_rejected(ctx, yk_tune_run(ctx, &db, &o, &s), YK_ERR_NO_DEVICE, "no CUDA device");
  cr_assert_eq(db.count, 0);
  yk_ctx_destroy(ctx);
}

Test(tune_sweep, rms_norm_on_one_shape_end_to_end) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  yk_tune_db db = {0};
  yk_tune_options o = {.ops = "rms_norm", .shapes = "2048", .dtype = YK_BF16, .jobs = 2, .budget_ms = 20};
  yk_tune_summary s;
  cr_assert_eq(yk_tune_run(ctx, &db, &o, &s), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(s.shapes, 1);
  cr_assert_eq(s.swept_count, 1);
  cr_assert_eq(s.timed + s.compile_failed + s.launch_failed + s.wrong, s.configs);
  cr_assert_eq(s.wrong, 0, "every configuration must match the CPU fallback");
  cr_assert_eq(db.count, s.configs, "every configuration is recorded, not only the winner");

  yk_tune_identity id;
  yk_tune_identity_of(ctx, &id);
  const yk_tune_record *group[64], *def = NULL;
  int n = 0;
  for (int i = 0; i < db.count && n < 64; i++) group[n++] = &db.records[i];
  const yk_tune_record *best = yk_tune_winner(group, n, &def);
  cr_assert_not_null(def, "the default was timed");
  cr_assert_not_null(best);
  cr_assert_leq(best->ms, def->ms, "winner %s %.4f ms, default %.4f ms", best->config, best->ms, def->ms);

  /* the context picks the winner up for that shape */
  yk_tune_table *t;
  cr_assert_eq(yk_tune_table_build(ctx, &db, &id, &t), YK_OK);
  yk_spec key, tuned;
  char why[256];
  cr_assert_eq(yk_tune_key_parse(best->spec, &key, why, sizeof why), 0, "%s", why);
  tuned = key;
  ctx->tune = t;
  yk_spec_finish(ctx, &tuned, 2048);
  ctx->tune = NULL;
  char config[128];
  yk_tune_config_format(&tuned, &key, config, sizeof config);
  cr_assert_str_eq(config, best->config);

  /* a second run times nothing again */
  yk_tune_summary again;
  cr_assert_eq(yk_tune_run(ctx, &db, &o, &again), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(again.timed, 0);
  cr_assert_eq(again.reused, s.configs);
  yk_tune_summary_free(&s), yk_tune_summary_free(&again);
  yk_tune_table_free(t);
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

/* ---- the backward: several kernels a call ---- */

static const yk_model_preset *preset(const char *name) {
  for (int i = 0; i < yk_model_preset_count(); i++)
    if (!strcmp(yk_model_preset_get(i)->name, name)) return yk_model_preset_get(i);
  cr_assert_fail("no model preset %s", name);
  return NULL;
}

/* The keys the Hopper backward's call sites build by default (dq added up in float32), causal. */
static yk_spec hopper_key(int part) {
  yk_spec key;
  yk_attention_backward_sm90_spec(&key, YK_BF16, 128, part, part == YK_BACKWARD_PART_DKDV, 0, 1);
  return key;
}

static int32_t field(const yk_spec *spec, const char *name) {
  const int f = yk_tune_field_index(spec->op, name);
  cr_assert_geq(f, 0, "%s has no field %s", spec->op->name, name);
  return spec->v[f];
}

static void assert_shape(const yk_tune_buffer *b, int ndim, const int64_t *want, const int64_t *got, int i) {
  cr_assert_eq(b->ndim, ndim, "buffer %d: %d dims", i, b->ndim);
  for (int d = 0; d < ndim; d++)
    cr_assert_eq(got[d], want[d], "buffer %d dim %d: %lld, expected %lld", i, d, (long long)got[d], (long long)want[d]);
}

/* Defined only (no GPU): the buffers at llama-3-8b's heads, the work as yk bench --backward counts
 * it, and what the CPU checks: all of a short problem, the first sequences of a batch of short ones
 * (each a whole problem), and a separate whole case of YK_TUNE_CHECK_SEQ tokens for long ones. */
Test(tune_case, attention_backward_is_defined_at_the_models_heads) {
  yk_ctx *ctx = ts_cpu_ctx();
  const yk_tune_op *op = yk_tune_op_find("attention_backward");
  cr_assert_not_null(op);
  cr_assert_not_null(op->prepare, "out and lse must be the forward's");
  int listed = 0;
  for (int i = 0; i < yk_tune_op_count(); i++) listed += yk_tune_op_get(i) == op;
  cr_assert_eq(listed, 1, "yk tune --op all sweeps it");
  cr_assert_str_eq(op->default_shapes, "1024,4096,16384");

  const yk_model_preset *m = preset("llama-3-8b");
  yk_tune_case c, check, prefill;
  const yk_tune_shape long_one = {1, 4096};
  cr_assert_eq(yk_tune_case_define(&c, ctx, op, m, long_one, YK_BF16), YK_OK, "%s", yk_ctx_last_error(ctx));
  const int64_t q[4] = {1, 4096, 32, 128}, kv[4] = {1, 4096, 8, 128}, lse[3] = {1, 32, 4096};
  const int64_t ws = (int64_t)yk_flash_attention_backward_workspace_floats(32, 4096, 1, 128, 0);
  const struct {
    yk_tune_role role;
    int type, ndim;
    const int64_t *shape;
  } want[] = {
      {YK_TUNE_IN, YK_BF16, 4, q},       {YK_TUNE_IN, YK_BF16, 4, kv},
      {YK_TUNE_IN, YK_BF16, 4, kv},                                         /* q k v */
      {YK_TUNE_DERIVED, YK_BF16, 4, q},  {YK_TUNE_DERIVED, YK_F32, 3, lse}, /* out, lse: the forward's */
      {YK_TUNE_IN, YK_BF16, 4, q},                                          /* dout */
      {YK_TUNE_OUT, YK_BF16, 4, q},      {YK_TUNE_OUT, YK_BF16, 4, kv},
      {YK_TUNE_OUT, YK_BF16, 4, kv},     /* dq dk dv */
      {YK_TUNE_SCRATCH, YK_F32, 1, &ws}, /* the workspace, not timed allocating */
  };
  cr_assert_eq(c.buffers, 10);
  for (int i = 0; i < 10; i++) {
    cr_assert_eq(c.buf[i].role, want[i].role, "buffer %d: role %d", i, c.buf[i].role);
    cr_assert_eq(c.buf[i].type, want[i].type, "buffer %d: type %d", i, c.buf[i].type);
    assert_shape(&c.buf[i], want[i].ndim, want[i].shape, c.buf[i].shape, i);
    assert_shape(&c.buf[i], want[i].ndim, want[i].shape, c.buf[i].check_shape, i);
  }
  cr_assert_eq(c.size, 4096);
  cr_assert_str_eq(c.shape, "B1 S4096 q32 kv8 d128 causal");
  /* bench_attention.c: 4 B H S^2 D, halved for causal, 2.5 times for the backward */
  cr_assert_float_eq(c.flops, 2.5 * 4.0 * 32 * 4096.0 * 4096.0 * 128 / 2, 1.0);
  cr_assert_eq(yk_tune_case_define(&prefill, ctx, yk_tune_op_find("attention_prefill"), m, long_one, YK_BF16), YK_OK);
  cr_assert_float_eq(c.flops, 2.5 * prefill.flops, 1.0);
  cr_assert_eq(c.check_at.batch, 1, "a sequence's first queries are no problem of their own for dk and dv");
  cr_assert_eq(c.check_at.length, YK_TUNE_CHECK_SEQ);

  /* the check's case checks itself, whole */
  cr_assert_eq(yk_tune_case_define(&check, ctx, op, m, c.check_at, YK_BF16), YK_OK);
  cr_assert_eq(check.check_at.batch, 0);
  for (int i = 0; i < check.buffers; i++)
    assert_shape(&check.buf[i], check.buf[i].ndim, check.buf[i].shape, check.buf[i].check_shape, i);
  cr_assert_str_eq(check.shape, "B1 S1024 q32 kv8 d128 causal");

  /* 8 sequences of 512: the first two, whole (lse [batch, heads, seq] leads with the batch too) */
  const yk_tune_shape batch = {8, 512};
  cr_assert_eq(yk_tune_case_define(&c, ctx, op, m, batch, YK_BF16), YK_OK);
  cr_assert_eq(c.check_at.batch, 0);
  for (int i = 0; i < 9; i++) {
    cr_assert_eq(c.buf[i].shape[0], 8);
    cr_assert_eq(c.buf[i].check_shape[0], 2, "buffer %d checks %lld sequences", i, (long long)c.buf[i].check_shape[0]);
    for (int d = 1; d < c.buf[i].ndim; d++) cr_assert_eq(c.buf[i].check_shape[d], c.buf[i].shape[d]);
  }
  cr_assert_eq(c.size, 4096);

  ts_assert_rejected(ctx, yk_tune_case_define(&c, ctx, op, m, long_one, YK_F32), YK_ERR_UNSUPPORTED, "f16 or bf16");
  yk_ctx_destroy(ctx);
}

/* The sweep's capture override keeps each spec a call builds once, in the order first built, and
 * leaves every spec as it came: a fake stream of the Hopper backward's three kernels, two calls. */
Test(tune_sweep, capture_keeps_each_kernel_once_in_launch_order) {
  const yk_spec stats = hopper_key(YK_BACKWARD_PART_STATS), dkdv = hopper_key(YK_BACKWARD_PART_DKDV),
                dq_out = hopper_key(YK_BACKWARD_PART_DQ_OUT);
  const yk_spec stream[] = {stats, dkdv, dq_out, stats, dkdv, dq_out};
  yk_tune_keys keys = {0};
  for (size_t i = 0; i < sizeof stream / sizeof stream[0]; i++) {
    yk_spec spec = stream[i];
    yk_tune_keys_capture(&keys, &spec);
    cr_assert(!memcmp(&spec, &stream[i], sizeof spec), "the capture changed spec %zu", i);
  }
  cr_assert_eq(keys.count, 3);
  cr_assert_eq(keys.dropped, 0);
  cr_assert(!memcmp(&keys.key[0], &stats, sizeof stats) && !memcmp(&keys.key[1], &dkdv, sizeof dkdv) &&
                !memcmp(&keys.key[2], &dq_out, sizeof dq_out),
            "keys out of launch order");

  yk_tune_keys many = {0};
  for (int i = 0; i <= YK_TUNE_KEYS_MAX; i++) {
    yk_spec spec = rms_norm_key(1024 * (i + 1));
    yk_tune_keys_capture(&many, &spec);
  }
  cr_assert_eq(many.count, YK_TUNE_KEYS_MAX);
  cr_assert_eq(many.dropped, 1, "a kernel past the list is counted, so the sweep can refuse the op");
  cr_assert_eq(many.key[YK_TUNE_KEYS_MAX - 1].v[HIDDEN], 1024 * YK_TUNE_KEYS_MAX);
}

/* Each kernel of the backward has a space of its own; the row kernels vary warpgroups alone, and
 * decode's merge is left to its default on purpose (tune_space.c says why). */
Test(tune_space, each_backward_kernel_has_its_own_space) {
  yk_ctx *ctx = ts_cpu_ctx();
  char label[128];
  const yk_spec stats = hopper_key(YK_BACKWARD_PART_STATS), dkdv = hopper_key(YK_BACKWARD_PART_DKDV);
  yk_tune_key_label(&dkdv, label, sizeof label);
  cr_assert_str_eq(label, "attention_backward_sm90 part=dkdv");
  const yk_spec norm = rms_norm_key(4096);
  yk_tune_key_label(&norm, label, sizeof label);
  cr_assert_str_eq(label, "rms_norm");
  cr_assert(yk_tune_space_known(stats.op));
  cr_assert(yk_tune_space_known(yk_registry_op(yk_registry_find("attention_backward"))));
  cr_assert(!yk_tune_space_known(yk_registry_op(yk_registry_find("merge_attention_states"))));

  yk_tune_config *configs;
  int count, rejected;
  cr_assert_eq(yk_tune_space(ctx, &stats, NULL, 0, &configs, &count, &rejected), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(count, 2, "stats: warpgroups 2 (the default) and 1, got %d", count);
  cr_assert_str_eq(configs[0].text, "warpgroups=2,tile=128,stages=2,tma=1,dq_sum=block");
  cr_assert_str_eq(configs[1].text, "warpgroups=1,tile=128,stages=2,tma=1,dq_sum=block");
  free(configs);

  cr_assert_eq(yk_tune_space(ctx, &dkdv, NULL, 0, &configs, &count, &rejected), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_gt(count, 4);
  int seen_sums = 0;
  for (int i = 0; i < count; i++) {
    char why[256];
    yk_spec spec = configs[i].spec;
    cr_assert_eq(yk_spec_check(&spec, why, sizeof why), 0, "%s: %s", configs[i].text, why);
    cr_assert_eq(field(&spec, "part"), YK_BACKWARD_PART_DKDV);
    cr_assert_eq(field(&spec, "atomic_dq"), 1, "the key's fields are never varied");
    seen_sums |= 1 << field(&spec, "dq_sum");
  }
  cr_assert_eq(seen_sums, 7, "block, behind and warpgroup are each swept");
  free(configs);

  yk_spec dq;
  yk_spec_init(&dq, yk_registry_op(yk_registry_find("attention_backward")), YK_BF16);
  dq.v[yk_tune_field_index(dq.op, "head_dim")] = 128, dq.v[yk_tune_field_index(dq.op, "part")] = YK_BACKWARD_PART_DQ;
  dq.v[yk_tune_field_index(dq.op, "causal")] = 1, dq.v[yk_tune_field_index(dq.op, "ragged")] = 0;
  cr_assert_eq(yk_tune_space(ctx, &dq, NULL, 0, &configs, &count, &rejected), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_gt(count, 4);
  for (int i = 0; i < count; i++) cr_assert_eq(field(&configs[i].spec, "d_split"), 1, "%s", configs[i].text);
  free(configs);
  yk_ctx_destroy(ctx);
}

static yk_tune_record part_record(const yk_spec *key, const char *config, int is_default, double ms) {
  yk_tune_record r = record(&gpu_a, 4096, config, is_default, ms);
  snprintf(r.op, sizeof r.op, "attention_backward");
  yk_tune_key_format(key, r.spec, sizeof r.spec);
  snprintf(r.shape, sizeof r.shape, "B1 S4096 q32 kv8 d128 causal");
  r.bytes = 0, r.flops = 1e12;
  return r;
}

/* Records of the three kernels of one call at one shape: each key has its own winner, and the
 * runtime applies each to its own kernel only. */
Test(tune_table, each_kernel_of_a_call_gets_its_own_winner) {
  yk_ctx *ctx = ts_cpu_ctx();
  const yk_spec stats = hopper_key(YK_BACKWARD_PART_STATS), dkdv = hopper_key(YK_BACKWARD_PART_DKDV),
                dq_out = hopper_key(YK_BACKWARD_PART_DQ_OUT);
  yk_tune_db db = {0};
  put(ctx, &db, part_record(&stats, "warpgroups=2,tile=128,stages=2,tma=1", 1, 1.0));
  put(ctx, &db, part_record(&stats, "warpgroups=1,tile=128,stages=2,tma=1", 0, 0.9));
  put(ctx, &db, part_record(&dkdv, "warpgroups=2,tile=64,stages=3,tma=1", 1, 1.0));
  put(ctx, &db, part_record(&dkdv, "warpgroups=2,tile=64,stages=2,tma=0", 0, 0.8));
  put(ctx, &db, part_record(&dkdv, "warpgroups=1,tile=64,stages=2,tma=1", 0, 1.2));
  put(ctx, &db, part_record(&dq_out, "warpgroups=2,tile=128,stages=2,tma=1", 1, 1.0));
  put(ctx, &db, part_record(&dq_out, "warpgroups=1,tile=128,stages=2,tma=1", 0, 1.5));
  cr_assert_eq(yk_tune_table_build(ctx, &db, &gpu_a, &ctx->tune), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(ctx->tune->keys, 3);

  yk_spec s = stats, d = dkdv, o = dq_out;
  yk_spec_finish(ctx, &s, 4096), yk_spec_finish(ctx, &d, 4096), yk_spec_finish(ctx, &o, 4096);
  cr_assert_eq(field(&s, "warpgroups"), 1, "stats' winner");
  cr_assert_eq(field(&d, "warpgroups"), 2);
  cr_assert_eq(field(&d, "stages"), 2, "dk/dv's winner");
  cr_assert_eq(field(&d, "tma"), 0);
  cr_assert_eq(field(&o, "warpgroups"), 2, "dq_out's default stays: its other configuration was slower");

  /* the deterministic pair's keys (no atomic_dq) were never tuned: their defaults */
  yk_spec det, det_default;
  yk_attention_backward_sm90_spec(&det, YK_BF16, 128, YK_BACKWARD_PART_DKDV, 1, 0, 0);
  det_default = det;
  yk_spec_finish(ctx, &det, 4096);
  det_default.op->complete(&det_default);
  cr_assert(!memcmp(&det, &det_default, sizeof det), "another key's winner applied");
  yk_tune_table_free(ctx->tune);
  ctx->tune = NULL;
  yk_tune_db_free(&db);
  yk_ctx_destroy(ctx);
}

/* The spec a launch completes from key with config's values. */
static yk_spec completed(const yk_spec *key, const char *config) {
  int32_t values[YK_SPEC_MAX_FIELDS];
  char why[256];
  cr_assert_eq(yk_tune_config_parse(key->op, config, values, why, sizeof why), 0, "%s: %s", config, why);
  yk_spec spec = *key;
  for (int i = 0; i < YK_SPEC_MAX_FIELDS; i++)
    if (values[i] != YK_UNSET) spec.v[i] = values[i];
  spec.op->complete(&spec);
  return spec;
}

static int loaded(yk_ctx *ctx, const yk_spec *spec) {
  yk_kernel_key key;
  memset(&key, 0, sizeof key);
  key.spec = *spec;
  memcpy(key.target, spec->op->arch_specific_sm ? ctx->target_arch_specific : ctx->target, sizeof key.target);
  return yk_kernel_find(&ctx->cache, &key, yk_kernel_key_hash(&key)) != NULL;
}

/* One backward call, causal, at B1 x seq and llama-3-8b's heads, on ctx. */
static void run_backward(yk_ctx *ctx, int64_t seq) {
  const int64_t qd[4] = {1, seq, 32, 128}, kd[4] = {1, seq, 8, 128}, ld[3] = {1, 32, seq};
  yh_tensor q, k, v, out, lse, dout, dq, dk, dv;
  cr_assert(!yh_tensor_init(&q, ctx, YK_BF16, 4, qd, NULL, 1) && !yh_tensor_init(&k, ctx, YK_BF16, 4, kd, NULL, 1) &&
            !yh_tensor_init(&v, ctx, YK_BF16, 4, kd, NULL, 1) && !yh_tensor_init(&out, ctx, YK_BF16, 4, qd, NULL, 1) &&
            !yh_tensor_init(&lse, ctx, YK_F32, 3, ld, NULL, 1) &&
            !yh_tensor_init(&dout, ctx, YK_BF16, 4, qd, NULL, 1) &&
            !yh_tensor_init(&dq, ctx, YK_BF16, 4, qd, NULL, 1) && !yh_tensor_init(&dk, ctx, YK_BF16, 4, kd, NULL, 1) &&
            !yh_tensor_init(&dv, ctx, YK_BF16, 4, kd, NULL, 1));
  yh_rng rng = {7};
  yh_fill_uniform(&q, &rng, -1, 1), yh_fill_uniform(&k, &rng, -1, 1), yh_fill_uniform(&v, &rng, -1, 1);
  yh_fill_uniform(&dout, &rng, -1, 1);
  yk_attention_params p = {0};
  p.causal = 1;
  cr_assert_eq(yk_flash_attention_forward(ctx, &q.dl, &k.dl, &v.dl, &p, &out.dl, &lse.dl, NULL), YK_OK, "%s",
               yk_ctx_last_error(ctx));
  cr_assert_eq(yk_flash_attention_backward(ctx, &dout.dl, &q.dl, &k.dl, &v.dl, &out.dl, &lse.dl, &p, &dq.dl, &dk.dl,
                                           &dv.dl, NULL),
               YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(yh_sync(ctx), 0, "the backward failed");
  yh_tensor *all[] = {&q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv};
  for (int i = 0; i < 9; i++) yh_tensor_free(all[i]);
}

/* The backward's sweep end to end on two small shapes (one checked on a separate case of 1024
 * tokens, one on its first sequences): records for every kernel the call launches, in launch
 * order, each with a checked default; then a context whose database makes another configuration
 * win on each kernel that has one loads exactly those kernels for the call, and the defaults of
 * the others. */
Test(tune_sweep, attention_backward_sweeps_every_kernel_end_to_end) {
  yk_ctx *ctx = ts_gpu_ctx();
  TS_REQUIRE_GPU(ctx);
  /* a few configurations a kernel, on either set of kernels (a field of the other op is ignored) */
  static const char *const lists[] = {"warpgroups=1,2", "tile=64",    "stages=2",  "tma=1",
                                      "block_m=64",     "block_n=64", "d_split=1", "in_regs=0,1"};
  yk_tune_values values[8];
  char why[256];
  for (int i = 0; i < 8; i++) cr_assert_eq(yk_tune_values_parse(lists[i], &values[i], why, sizeof why), 0, "%s", why);
  yk_tune_db db = {0};
  yk_tune_options o = {.ops = "attention_backward",
                       .shapes = "2048,8x512",
                       .dtype = YK_BF16,
                       .jobs = 0, /* the online CPUs: a dozen Hopper kernels to compile */
                       .budget_ms = 20,
                       .values = values,
                       .value_count = 8};
  yk_tune_summary s;
  cr_assert_eq(yk_tune_run(ctx, &db, &o, &s), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_eq(s.shapes, 2);
  const int kernels = s.kernels / 2, hopper = kernels == 3;
  cr_assert(kernels == 2 || kernels == 3, "%d kernels a call", kernels);
  cr_assert_eq(s.swept_count, s.kernels);
  cr_assert_eq(s.wrong, 0, "every configuration must match the CPU fallback");
  cr_assert_eq(s.timed + s.compile_failed + s.launch_failed + s.wrong, s.configs);
  cr_assert_eq(db.count, s.configs, "every configuration is recorded");
  static const char *const hopper_parts[] = {"part=stats", "part=dkdv", "part=dq_out"}, *const pair[] = {"part=dq",
                                                                                                         "part=dkdv"};

  yk_tune_identity id;
  yk_tune_identity_of(ctx, &id);
  yk_tune_db pinned = {0};
  for (int i = 0; i < db.count; i++) put(ctx, &pinned, db.records[i]);
  yk_spec keys[3];
  char expected[3][128];
  int moved = 0;
  for (int i = 0; i < kernels; i++) {
    const yk_tune_swept *e = &s.swept[i]; /* the first shape's (2048), in launch order */
    cr_assert_eq(e->bucket, 2048);
    char label[128];
    cr_assert_eq(yk_tune_key_parse(e->spec, &keys[i], why, sizeof why), 0, "%s", why);
    yk_tune_key_label(&keys[i], label, sizeof label);
    cr_assert(strstr(label, hopper ? hopper_parts[i] : pair[i]), "kernel %d is %s", i, label);
    const yk_tune_record *group[64], *def = NULL, *other = NULL;
    int n = 0;
    for (int j = 0; j < db.count && n < 64; j++)
      if (!strcmp(db.records[j].spec, e->spec) && db.records[j].bucket == e->bucket) group[n++] = &db.records[j];
    const yk_tune_record *best = yk_tune_winner(group, n, &def);
    cr_assert_not_null(best, "%s: no checked default", label);
    double fastest = def->ms;
    for (int j = 0; j < n; j++) {
      if (group[j]->status != YK_TUNE_OK) continue;
      if (group[j]->ms < fastest) fastest = group[j]->ms;
      if (!other && !group[j]->is_default) other = group[j];
    }
    snprintf(expected[i], sizeof expected[i], "%s", other ? other->config : def->config);
    if (!other) continue;
    yk_tune_record faster = *other; /* twice as fast as any: the winner */
    faster.ms = fastest / 2;
    put(ctx, &pinned, faster);
    moved++;
  }
  cr_assert_gt(moved, 0, "no kernel had a configuration besides its default");

  /* a context of its own, whose memory cache holds only what its call loads; the sweep's disk
   * cache saves it compiling them again */
  yk_ctx_options fo;
  yk_ctx_options_init(&fo);
  fo.device = YK_DEVICE_CUDA;
  fo.cache_dir = ctx->cache.disk.dir;
  yk_ctx *fresh = NULL;
  cr_assert_eq(yk_ctx_create(&fo, &fresh), YK_OK, "%s", yk_ctx_last_error(NULL));
  yk_tune_table *table = NULL;
  cr_assert_eq(yk_tune_table_build(fresh, &pinned, &id, &table), YK_OK, "%s", yk_ctx_last_error(fresh));
  yk_tune_table_free(fresh->tune); /* what it read at creation, if YK_TUNE_DB names a file */
  fresh->tune = table;
  run_backward(fresh, 2048);
  for (int i = 0; i < kernels; i++) {
    const yk_spec want = completed(&keys[i], expected[i]);
    char text[512];
    yk_spec_format(&want, text, sizeof text);
    cr_assert(loaded(fresh, &want), "the call did not load the tuned %s", text);
    yk_spec def = keys[i];
    def.op->complete(&def);
    yk_spec_format(&def, text, sizeof text);
    if (memcmp(&def, &want, sizeof def)) cr_assert(!loaded(fresh, &def), "the call loaded the default %s", text);
  }
  yk_tune_table_free(fresh->tune);
  fresh->tune = NULL;
  yk_ctx_destroy(fresh);
  yk_tune_summary_free(&s);
  yk_tune_db_free(&db), yk_tune_db_free(&pinned);
  yk_ctx_destroy(ctx);
}
