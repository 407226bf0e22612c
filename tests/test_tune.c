/* The tuner: the database's format and file, the runtime's table and lookup, the configuration
 * space, compile failures, and (on a GPU) a sweep end to end. A call of several kernels (the
 * backward) is tests/test_tune_backward.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/launch.h"
#include "tests/support.h"
#include "tests/tune_support.h"
#include "tune/tune_case.h"
#include "tune/tune_context.h"
#include "tune/tune_json.h"
#include "tune/tune_key.h"
#include "tune/tune_select.h"
#include "tune/tune_space.h"
#include "tune/tune_sweep.h"
#include "tune/tune_table.h"

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

static const yk_tune_identity gpu_b = {"Test GPU B", "sm_80", 12040, "12.4", "0.1.0"};

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
