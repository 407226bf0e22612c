/* The tuner over a call of several kernels, the attention backward: its case at a model's heads,
 * each kernel's own space and winner, the keys a call captures, and (on a GPU) a sweep end to end. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/attention.h"
#include "runtime/context.h"
#include "runtime/launch.h"
#include "tests/support.h"
#include "tests/tune_support.h"
#include "tune/tune_case.h"
#include "tune/tune_context.h"
#include "tune/tune_key.h"
#include "tune/tune_select.h"
#include "tune/tune_space.h"
#include "tune/tune_sweep.h"
#include "tune/tune_table.h"

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
