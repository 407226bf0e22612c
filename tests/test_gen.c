/* The generator: specs parse, validate and print canonically; generated source and keys are
 * deterministic; every spec of the default matrix compiles to PTX and cubin with no spills. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/generate.h"
#include "tests/support.h"

static yk_ctx *jit_ctx(const char *dir) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_dir = dir;
  o.cache_memory_only = dir == NULL;
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  return ctx;
}

Test(gen, canonical_form_fills_defaults_and_round_trips) {
  yk_ctx *ctx = jit_ctx(NULL);
  char *a, *b;
  cr_assert_eq(yk_spec_canonical(ctx, "rms_norm:hidden=4096,dtype=bf16", &a), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_str_eq(a, "rms_norm:dtype=bf16,hidden=4096,vec=8,threads=256,fused_add=0,row_in_regs=1");
  cr_assert_eq(yk_spec_canonical(ctx, a, &b), YK_OK);
  cr_assert_str_eq(a, b);
  yk_free(a), yk_free(b);
  cr_assert_eq(yk_spec_canonical(ctx, "rope:dtype=f16,head_dim=80,rot_dim=48,style=gptj,pos_type=int32", &a), YK_OK,
               "%s", yk_ctx_last_error(ctx));
  cr_assert_str_eq(a,
                   "rope:dtype=f16,head_dim=80,rot_dim=48,style=gptj,vec=8,threads=128,cache_type=f16,pos_type=int32");
  yk_free(a);
  cr_assert_eq(yk_spec_canonical(ctx, "act_and_mul:dtype=f32,d=14337,act=gelu_tanh", &a), YK_OK);
  cr_assert_str_eq(a, "act_and_mul:dtype=f32,d=14337,vec=1,threads=256,items=1,act=gelu_tanh");
  yk_free(a);
  /* fused: two row vectors a thread too; decode: swizzled tiles only where rows are whole lines,
   * 8 one-warp teams of 2 stages for paged keys with a split */
  cr_assert_eq(yk_spec_canonical(ctx, "rms_norm:dtype=bf16,hidden=4096,fused_add=1", &a), YK_OK);
  cr_assert_str_eq(a, "rms_norm:dtype=bf16,hidden=4096,vec=8,threads=256,fused_add=1,row_in_regs=1");
  yk_free(a);
  const char *decode[][2] = {
      {"attention_decode:dtype=bf16,head_dim=128", "swizzle=1"},
      {"attention_decode:dtype=bf16,head_dim=96", "swizzle=0"},
      {"attention_decode:dtype=f16,head_dim=80,split=1", "swizzle=0"},
      {"attention_decode:dtype=bf16,head_dim=128,split=1,paged=1", "warps=8,d_split=1,stages=2"},
      {"attention_decode:dtype=bf16,head_dim=128,split=1", "warps=4,d_split=1,stages=3"},
      {"attention_decode:dtype=bf16,head_dim=256,split=1,paged=2", "warps=8,d_split=2,stages=3"},
      /* evict-first K and V with a split, but not 4 or more stages deep (ptxas miscompiles them) */
      {"attention_decode:dtype=bf16,head_dim=128,split=1", "kv_hint=evict_first"},
      {"attention_decode:dtype=bf16,head_dim=128,split=1,stages=4", "kv_hint=none"}};
  for (int i = 0; i < 8; i++) {
    cr_assert_eq(yk_spec_canonical(ctx, decode[i][0], &a), YK_OK, "%s", yk_ctx_last_error(ctx));
    cr_assert(strstr(a, decode[i][1]), "%s: %s", decode[i][0], a);
    yk_free(a);
  }
  yk_ctx_destroy(ctx);
}

Test(gen, invalid_specs_are_refused_with_reasons) {
  yk_ctx *ctx = jit_ctx(NULL);
  static const struct {
    const char *spec, *needle;
  } bad[] = {
      {"nope:dtype=bf16", "no op named 'nope'"},
      {"rms_norm:dtype=bf16", "field hidden is required"},
      {"rms_norm:hidden=64", "field dtype is required"},
      {"rms_norm:dtype=bf17,hidden=64", "unknown dtype 'bf17'"},
      {"rms_norm:dtype=bf16,hidden=0", "hidden must be in [1, 16777216]"},
      {"rms_norm:dtype=bf16,hidden=64,vec=3", "vec must be a power of two"},
      {"rms_norm:dtype=bf16,hidden=64,vec=16", "vec must be in [1, 8]"},
      {"rms_norm:dtype=f32,hidden=64,vec=8", "wider than 16 bytes"},
      {"rms_norm:dtype=bf16,hidden=60,vec=8", "not a multiple of vec 8"},
      {"rms_norm:dtype=bf16,hidden=64,threads=48", "threads 48 is not a multiple of 32"},
      {"rms_norm:dtype=bf16,hidden=1048576,threads=1024,row_in_regs=1", "more than fit in registers"},
      {"act_and_mul:dtype=bf16,d=14336,items=8,threads=1024", "more than fit in registers"},
      {"rope:dtype=bf16,head_dim=128,threads=1024", "more than fit in registers"},
      {"rms_norm:dtype=bf16,hidden=64,colour=red", "has no field 'colour'"},
      {"rms_norm:dtype=bf16,hidden=64,hidden=32", "given twice"},
      {"rms_norm:dtype=bf16,hidden=sixty", "'sixty' is not a valid value"},
      {"rms_norm:dtype=bf16,hidden", "not name=value"},
      {"rope:dtype=bf16,head_dim=64,rot_dim=80", "exceeds head_dim"},
      {"rope:dtype=bf16,head_dim=64,style=gptj,vec=1", "gptj needs vec >= 2"},
      {"rope:dtype=bf16,head_dim=12,rot_dim=12,vec=4", "does not divide"},
      {"act_and_mul:dtype=bf16,d=64,act=relu", "'relu' is not a valid value"},
      {"attention_decode:dtype=bf16,head_dim=96,swizzle=1", "swizzled tiles need head_dim a multiple of 64"},
      {"attention_decode:dtype=bf16,head_dim=128,split=1,stages=4,kv_hint=evict_first",
       "kv_hint evict_first takes at most 3 stages"},
      {"attention_decode:dtype=bf16,head_dim=128,paged=1,kv_float8=1,queries=1,row_tiles=8,kv_hint=evict_first",
       "which ptxas miscompiles"},
      {"attention_decode:dtype=bf16,head_dim=128,queries=3", "queries"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *out = (char *)0x1;
    yk_status st = yk_spec_canonical(ctx, bad[i].spec, &out);
    ts_assert_rejected(ctx, st, YK_ERR_INVALID_ARGUMENT, bad[i].needle);
    cr_assert_eq(out, (char *)0x1, "output written on failure");
  }
  ts_assert_rejected(ctx, yk_spec_canonical(ctx, NULL, NULL), YK_ERR_INVALID_ARGUMENT, "canonical is NULL");
  yk_ctx_destroy(ctx);
}

Test(gen, source_and_key_are_deterministic) {
  yk_ctx *a = jit_ctx(NULL), *b = jit_ctx(NULL);
  const char *spec = "rms_norm:dtype=f16,hidden=5120,fused_add=1";
  char *sa, *sb, ka[33], kb[33], kc[33], kd[33];
  cr_assert_eq(yk_spec_source(a, spec, &sa), YK_OK);
  cr_assert_eq(yk_spec_source(b, spec, &sb), YK_OK);
  cr_assert_str_eq(sa, sb, "same spec, different source");
  cr_assert(strstr(sa, "constexpr int HIDDEN = 5120;") && strstr(sa, "constexpr int FUSED_ADD = 1;"),
            "spec constants missing from the preamble");
  cr_assert(strstr(sa, "#line 1 \"rms_norm.cu\""), "template not marked for error messages");
  /* constants an op's C side gives its template beside the fields: the Hopper prefill's register split */
  char *hopper;
  cr_assert_eq(yk_spec_source(a, "attention_prefill_sm90:dtype=bf16,head_dim=128", &hopper), YK_OK);
  cr_assert(strstr(hopper, "constexpr int PRODUCER_REGS = 40;") && strstr(hopper, "constexpr int CONSUMER_REGS = 232;"),
            "the op's constants are missing from the preamble");
  yk_free(hopper);
  cr_assert_eq(yk_spec_key(a, spec, "sm_90", ka), YK_OK, "%s", yk_ctx_last_error(a));
  cr_assert_eq(yk_spec_key(b, spec, "sm_90", kb), YK_OK);
  cr_assert_str_eq(ka, kb);
  cr_assert_eq(yk_spec_key(a, spec, "sm_80", kc), YK_OK);
  cr_assert_eq(yk_spec_key(a, "rms_norm:dtype=f16,hidden=5120,fused_add=0", "sm_90", kd), YK_OK);
  cr_assert_str_neq(ka, kc, "target not in the key");
  cr_assert_str_neq(ka, kd, "spec not in the key");
  cr_assert_eq(strlen(ka), 32);
  ts_assert_rejected(a, yk_spec_key(a, spec, "sm_91", kc), YK_ERR_UNSUPPORTED, "does not build sm_91");
  ts_assert_rejected(a, yk_spec_key(a, spec, "gfx90a", kc), YK_ERR_INVALID_ARGUMENT, "is not a target");
  yk_free(sa), yk_free(sb);
  yk_ctx_destroy(a), yk_ctx_destroy(b);
}

Test(gen, ops_are_registered_with_fields) {
  cr_assert_geq(yk_op_count(), 3);
  int found = 0;
  for (int i = 0; i < yk_op_count(); i++) {
    cr_assert_not_null(yk_op_name(i));
    cr_assert_not_null(yk_op_summary(i));
    cr_assert_gt(yk_op_field_count(i), 0);
    for (int f = 0; f < yk_op_field_count(i); f++) cr_assert_not_null(yk_op_field(i, f)->name);
    found += strcmp(yk_op_name(i), "rms_norm") == 0 || strcmp(yk_op_name(i), "rope") == 0 ||
             strcmp(yk_op_name(i), "act_and_mul") == 0;
  }
  cr_assert_eq(found, 3);
  cr_assert_null(yk_op_name(-1));
  cr_assert_null(yk_op_field(0, 99));
}

typedef struct {
  int entries, bad;
} matrix_stats;

static void check_entry(void *user, const yk_cache_entry *e) {
  matrix_stats *s = user;
  s->entries++;
  const int spills = e->spill_store_bytes != 0 || e->spill_load_bytes != 0 || e->stack_bytes != 0;
  if (!e->valid || spills || e->ptx_bytes == 0 || e->cubin_bytes == 0 || e->registers <= 0) {
    s->bad++;
    cr_log_error("%s %s: valid=%d ptx=%llu cubin=%llu registers=%d spills %d/%d stack %d %s", e->spec, e->arch,
                 e->valid, (unsigned long long)e->ptx_bytes, (unsigned long long)e->cubin_bytes, e->registers,
                 e->spill_store_bytes, e->spill_load_bytes, e->stack_bytes, e->problem);
  }
}

/* The cache holds exactly `count` entries and every one passes check_entry; what names them. */
static void assert_entries_clean(yk_ctx *ctx, int count, const char *what) {
  matrix_stats s = {0};
  int entries, invalid;
  cr_assert_eq(yk_cache_list(ctx, 1, check_entry, &s, &entries, &invalid), YK_OK);
  cr_assert_eq(entries, count, "%s: %d entries, %d compiled", what, entries, count);
  cr_assert_eq(invalid, 0, "%s: %d invalid entries", what, invalid);
  cr_assert_eq(s.bad, 0, "%d %s spill, lack a binary or failed verification", s.bad, what);
}

/* The default matrix, every dtype, for sm_80 and sm_90: each entry has PTX, a cubin, registers
 * reported, and no spill or stack bytes. NVRTC needs no GPU, so this runs in CI. Under
 * AddressSanitizer one arch: the release run checks both, and there the matrix is for the warm
 * path's own code, while NVRTC's allocations through the sanitizer's allocator took 490 s of the
 * 600 for both (2 vCPUs, session 30). */
#ifdef __SANITIZE_ADDRESS__
#define MATRIX_ARCHS "sm_90"
#else
#define MATRIX_ARCHS "sm_80,sm_90"
#endif
Test(gen, default_matrix_compiles_without_spills, .timeout = 600) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "matrix");
  yk_ctx *ctx = jit_ctx(dir);
  yk_warm_options o = {.archs = MATRIX_ARCHS, .dtypes = "f32,f16,bf16"};
  yk_warm_result r;
  cr_assert_eq(yk_warm(ctx, &o, &r), YK_OK, "%s", yk_ctx_last_error(ctx));
  cr_assert_gt(r.total, 50);
  cr_assert_eq(r.compiled, r.total, "fresh directory, yet %d of %d were cached", r.cached, r.total);
  assert_entries_clean(ctx, r.total, "warm matrix entries");
  yk_ctx_destroy(ctx);
}

/* Specs at the edges of each op's fields (the shapes the GPU tests reach: vector width 1, one
 * element, the widest rows, every enumerated choice) compile for sm_80 and sm_90 without spills.
 * Template errors that only some specialisations hit show up here, with no GPU. */
Test(gen, edge_specs_compile_without_spills, .timeout = 300) {
  static const char *const specs[] = {
      "rope:dtype=f32,head_dim=2,style=neox,vec=1,cache_type=f32,pos_type=int32",
      "rope:dtype=bf16,head_dim=2,style=gptj,vec=2,pos_type=int64",
      "rope:dtype=f16,head_dim=80,rot_dim=48,style=gptj,vec=8,cache_type=f32",
      "rope:dtype=bf16,head_dim=6,style=neox,vec=1,threads=32",
      "rope:dtype=f32,head_dim=512,style=gptj,vec=4,threads=1024,cache_type=bf16",
      "rope:dtype=bf16,head_dim=256,style=neox,threads=512",
      "rms_norm:dtype=f16,hidden=1,vec=1,threads=32",
      "rms_norm:dtype=f32,hidden=65536",
      "rms_norm:dtype=bf16,hidden=131072",
      "rms_norm:dtype=bf16,hidden=4097,vec=1,fused_add=1",
      "rms_norm:dtype=bf16,hidden=4096,row_in_regs=0,fused_add=1",
      "rms_norm:dtype=f16,hidden=32768,threads=1024,row_in_regs=1",
      "act_and_mul:dtype=bf16,d=1,vec=1,items=1,threads=32",
      "act_and_mul:dtype=f16,d=4099,vec=1,act=gelu",
      "act_and_mul:dtype=f32,d=65541,vec=1,act=gelu_tanh,threads=1024,items=8",
      "act_and_mul:dtype=bf16,d=14336,items=2,threads=1024,act=silu",
      "act_and_mul:dtype=bf16,d=14336,items=8,threads=256,act=silu",
      /* the decode's layouts and L2 hints (bench --decode --sweep pins each) */
      "attention_decode:dtype=bf16,head_dim=128,swizzle=0,kv_hint=prefetch128",
      "attention_decode:dtype=f16,head_dim=128,swizzle=1,kv_hint=prefetch256,split=1",
      "attention_decode:dtype=bf16,head_dim=256,swizzle=1,kv_hint=evict_first,split=1",
      "attention_decode:dtype=bf16,head_dim=64,swizzle=1,kv_hint=none,paged=1,page_size=16",
      "attention_decode:dtype=f16,head_dim=96,swizzle=0,kv_hint=evict_first,ragged=1",
      /* the backward's tiles a sweep would try beside the defaults */
      "attention_backward:dtype=bf16,head_dim=128,part=dkdv,block_n=64,stages=3",
      "attention_backward:dtype=bf16,head_dim=128,part=dq,block_m=64,in_regs=0,causal=1",
  };
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "edges");
  yk_ctx *ctx = jit_ctx(dir);
  for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++)
    for (int a = 0; a < 2; a++) {
      int compiled = 0;
      cr_assert_eq(yk_spec_compile(ctx, specs[i], a ? "sm_90" : "sm_80", &compiled), YK_OK, "%s: %s", specs[i],
                   yk_ctx_last_error(ctx));
    }
  assert_entries_clean(ctx, 2 * (int)(sizeof specs / sizeof specs[0]), "edge specs");
  yk_ctx_destroy(ctx);
}

/* The Hopper prefill's producer loops as a sweep pins them, at head_dim 128 (whose O, S and P fill
 * the consumers' registers) with every mask and ragged path built in: tiles, stages, warpgroups,
 * pipelines 1 and 2, TMA loads and cp.async. A first TMA producer spilled 3.3 KB where its tail copy
 * was unrolled; nothing but this build shows that without a GPU. */
Test(gen, hopper_prefill_loops_compile_without_spills, .timeout = 300) {
  char dir[512], spec[256];
  ts_temp_dir(dir, sizeof dir, "sm90");
  yk_ctx *ctx = jit_ctx(dir);
  int count = 0;
  for (int block_n = 64; block_n <= 128; block_n *= 2)
    for (int warpgroups = 1; warpgroups <= 2; warpgroups++)
      for (int stages = 2; stages <= 3; stages++)
        for (int pipeline = 1; pipeline <= 2; pipeline++)
          for (int tma = 0; tma <= 1; tma++) {
            if ((pipeline == 2 && warpgroups == 1) || (!tma && (block_n == 64 || stages == 3)))
              continue; /* a rule; and cp.async's producer is older: its default tiles suffice */
            snprintf(spec, sizeof spec,
                     "attention_prefill_sm90:dtype=bf16,head_dim=128,block_n=%d,warpgroups=%d,stages=%d,causal=1,"
                     "ragged=1,pipeline=%d,tma=%d",
                     block_n, warpgroups, stages, pipeline, tma);
            int compiled = 0;
            cr_assert_eq(yk_spec_compile(ctx, spec, "sm_90", &compiled), YK_OK, "%s: %s", spec, yk_ctx_last_error(ctx));
            count++;
          }
  assert_entries_clean(ctx, count, "Hopper prefill configurations");
  yk_ctx_destroy(ctx);
}

/* The Hopper prefill at head dim 256 (not routed yet: bench/NOTES.md item 95), in the forms a launch
 * and the GPU test would build: the default (TMA producer, two warpgroups of 64-key tiles, two
 * stages), causal and ragged; one warpgroup on three stages; the consumers in turn; the cp.async
 * producer over pages (16-byte chunks four rows a step: two swizzle bases a thread); no producer.
 * None spills. Tiles and depths that cannot fit are refused by name. */
Test(gen, hopper_prefill_head_dim_256_compiles_without_spills, .timeout = 300) {
  char dir[512], why[256];
  ts_temp_dir(dir, sizeof dir, "sm90-256");
  yk_ctx *ctx = jit_ctx(dir);
  static const char *const specs[] = {
      "attention_prefill_sm90:dtype=bf16,head_dim=256,causal=1,ragged=1",
      "attention_prefill_sm90:dtype=f16,head_dim=256,warpgroups=1",
      "attention_prefill_sm90:dtype=bf16,head_dim=256,pipeline=2",
      "attention_prefill_sm90:dtype=bf16,head_dim=256,causal=1,ragged=1,paged=block_table,page_size=16",
      "attention_prefill_sm90:dtype=bf16,head_dim=256,pipeline=0,tma=0",
  };
  enum { COUNT = sizeof specs / sizeof specs[0] };
  for (int i = 0; i < COUNT; i++) {
    int compiled = 0;
    cr_assert_eq(yk_spec_compile(ctx, specs[i], "sm_90", &compiled), YK_OK, "%s: %s", specs[i], yk_ctx_last_error(ctx));
  }
  yk_spec s;
  cr_assert_eq(yk_spec_parse("attention_prefill_sm90:dtype=bf16,head_dim=256", &s, why, sizeof why), 0, "%s", why);
  char text[256];
  yk_spec_format(&s, text, sizeof text);
  cr_assert(strstr(text, "block_n=64,warpgroups=2,stages=2,"), "default at 256: %s", text);
  cr_assert_neq(yk_spec_parse("attention_prefill_sm90:dtype=bf16,head_dim=256,block_n=128", &s, why, sizeof why), 0);
  cr_assert(strstr(why, "registers"), "%s", why);
  cr_assert_neq(yk_spec_parse("attention_prefill_sm90:dtype=bf16,head_dim=256,stages=3", &s, why, sizeof why), 0);
  cr_assert(strstr(why, "shared memory"), "%s", why);
  assert_entries_clean(ctx, COUNT, "head-dim-256 Hopper prefills");
  yk_ctx_destroy(ctx);
}
