#include "tune/tune_space.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/context.h"
#include "runtime/error.h"
#include "tune/tune_key.h"

/* Candidate values per op and field: around each default, within what the op's rules allow. The
 * grids of yk bench --sweep (bench/bench_sweep.c, bench_attention.c), which chose the defaults.
 * An op with no list here is never swept, though a swept call launches it: merge_attention_states
 * (after split decode) is launched with no problem size (the same merge serves paged and cascade
 * decode, whose rows are not the dense decode's batch x length), so the runtime would never look a
 * tuned entry up for it, and its one choice, rows a block, moves a kernel of a few microseconds. */
static const struct {
  const char *op, *field;
  int32_t values[8];
  int count;
} candidates[] = {
    {"rms_norm", "threads", {64, 128, 256, 512, 1024}, 5},
    {"rms_norm", "row_in_regs", {0, 1}, 2},
    {"rope", "threads", {32, 64, 128, 256, 512}, 5},
    {"act_and_mul", "threads", {64, 128, 256, 512, 1024}, 5},
    {"act_and_mul", "items", {1, 2, 4, 8}, 4},
    {"attention_prefill", "block_m", {64, 128}, 2},
    {"attention_prefill", "warps", {4, 8}, 2},
    {"attention_prefill", "block_n", {32, 64, 128}, 3},
    {"attention_prefill", "stages", {2, 3}, 2},
    {"attention_prefill", "q_in_regs", {0, 1}, 2},
    {"attention_prefill_sm90", "block_n", {64, 128}, 2},
    {"attention_prefill_sm90", "warpgroups", {1, 2, 3}, 3},
    {"attention_prefill_sm90", "stages", {2, 3}, 2},
    {"attention_prefill_sm90", "pipeline", {0, 1, 2}, 3},
    {"attention_prefill_sm90", "tma", {0, 1}, 2},
    {"attention_decode", "block_n", {16, 32, 64}, 3},
    {"attention_decode", "warps", {4, 8, 16}, 3},
    {"attention_decode", "stages", {2, 3, 4, 6}, 4},
    {"attention_decode", "kv_hint", {0, 3}, 2}, /* none, evict_first: which wins depends on the split */
    {"attention_backward", "block_m", {32, 64, 128}, 3},
    {"attention_backward", "block_n", {32, 64, 128}, 3},
    {"attention_backward", "d_split", {1, 2}, 2},
    {"attention_backward", "stages", {2, 3}, 2},
    {"attention_backward", "in_regs", {0, 1}, 2},
    /* the row kernels (part stats, dq_out) take warpgroups alone: the op completes the rest to one
     * value, so their other combinations are the default's */
    {"attention_backward_sm90", "warpgroups", {1, 2}, 2},
    {"attention_backward_sm90", "tile", {64, 128}, 2},
    {"attention_backward_sm90", "stages", {2, 3}, 2},
    {"attention_backward_sm90", "tma", {0, 1}, 2},
    {"attention_backward_sm90", "dq_sum", {0, 1, 2}, 3}, /* block, behind, warpgroup */
};

int yk_tune_space_known(const yk_op_def *op) {
  for (size_t c = 0; c < sizeof candidates / sizeof candidates[0]; c++)
    if (!strcmp(candidates[c].op, op->name)) return 1;
  return 0;
}

int yk_tune_values_parse(const char *text, yk_tune_values *v, char *why, size_t why_size) {
  memset(v, 0, sizeof *v);
  const char *eq = strchr(text, '=');
  if (!eq || eq == text || (size_t)(eq - text) >= sizeof v->field)
    return snprintf(why, why_size, "'%s' is not FIELD=V1,V2,...", text), 1;
  memcpy(v->field, text, (size_t)(eq - text));
  char buf[512], *save = NULL;
  snprintf(buf, sizeof buf, "%s", eq + 1);
  for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
    if (v->count == YK_TUNE_VALUES_MAX) return snprintf(why, why_size, "more than %d values", YK_TUNE_VALUES_MAX), 1;
    char *end;
    long value = strtol(item, &end, 10);
    if (end == item || *end || value <= INT32_MIN || value > INT32_MAX)
      return snprintf(why, why_size, "%s: '%s' is not a number", v->field, item), 1;
    v->values[v->count++] = (int32_t)value;
  }
  return v->count ? 0 : (snprintf(why, why_size, "%s: no values", v->field), 1);
}

/* One field the sweep varies and its values. */
typedef struct {
  int field;
  const int32_t *values;
  int count;
} axis;

/* The fields of key to vary: the caller's values first, then the op's lists. */
static yk_status axes_of(yk_ctx *ctx, const yk_spec *key, const yk_tune_values *values, int value_count, axis *axes,
                         int *count) {
  const yk_op_def *op = key->op;
  uint32_t varied = 0; /* each field once: the first list given for it */
  *count = 0;
  for (int i = 0; i < value_count; i++) {
    const int f = yk_tune_field_index(op, values[i].field);
    if (f < 0 || (varied & (1u << f))) continue; /* f < 0: a field of another op in the same sweep */
    if (key->v[f] != YK_UNSET)
      return yk_error(ctx, YK_ERR_INVALID_ARGUMENT,
                      "tune: %s's field %s is decided by the call (its tensors), not a choice to tune", op->name,
                      values[i].field);
    varied |= 1u << f;
    axes[(*count)++] = (axis){f, values[i].values, values[i].count};
  }
  for (size_t c = 0; c < sizeof candidates / sizeof candidates[0]; c++) {
    const int f = strcmp(candidates[c].op, op->name) ? -1 : yk_tune_field_index(op, candidates[c].field);
    if (f < 0 || (varied & (1u << f)) || key->v[f] != YK_UNSET) continue;
    varied |= 1u << f;
    axes[(*count)++] = (axis){f, candidates[c].values, candidates[c].count};
  }
  return YK_OK;
}

/* 0 if spec completes into one the op builds and the device can launch. */
static int usable(const yk_ctx *ctx, yk_spec *spec) {
  char why[256];
  if (yk_spec_check(spec, why, sizeof why)) return 0;
  const yk_op_def *op = spec->op;
  return !(ctx->device == YK_DEVICE_CUDA && op->dynamic_smem_bytes &&
           (int64_t)op->dynamic_smem_bytes(spec) > (int64_t)ctx->max_shared_per_block_optin);
}

yk_status yk_tune_space(yk_ctx *ctx, const yk_spec *key, const yk_tune_values *values, int value_count,
                        yk_tune_config **out, int *count, int *rejected) {
  *out = NULL, *count = 0, *rejected = 0;
  axis axes[YK_SPEC_MAX_FIELDS];
  int n_axes;
  yk_status st = axes_of(ctx, key, values, value_count, axes, &n_axes);
  if (st) return st;
  int combinations = 1;
  for (int a = 0; a < n_axes; a++) combinations *= axes[a].count;
  yk_tune_config *configs = malloc((size_t)(combinations + 1) * sizeof *configs);
  if (!configs) return yk_error(ctx, YK_ERR_OUT_OF_MEMORY, "tune: out of memory");
  int n = 0;
  for (int c = -1; c < combinations; c++) { /* -1: the default */
    yk_tune_config *cfg = &configs[n];
    memset(cfg, 0, sizeof *cfg);
    cfg->spec = *key;
    cfg->is_default = c < 0;
    for (int a = 0, rest = c; c >= 0 && a < n_axes; rest /= axes[a].count, a++)
      cfg->spec.v[axes[a].field] = axes[a].values[rest % axes[a].count];
    if (!usable(ctx, &cfg->spec)) {
      if (cfg->is_default) {
        char text[256];
        yk_tune_key_format(key, text, sizeof text);
        free(configs);
        return yk_error(ctx, YK_ERR_UNSUPPORTED, "tune: the default of %s does not fit this device", text);
      }
      (*rejected)++;
      continue;
    }
    yk_tune_config_format(&cfg->spec, key, cfg->text, sizeof cfg->text);
    int seen = 0; /* a combination equal to the default, or to another once completed */
    for (int i = 0; i < n && !seen; i++) seen = !strcmp(configs[i].text, cfg->text);
    n += !seen;
  }
  *out = configs, *count = n;
  return YK_OK;
}
