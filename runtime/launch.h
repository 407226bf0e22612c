/* The one launch path: spec -> loaded kernel -> cuLaunchKernelEx. Short enough to read on one
 * screen; on a cache hit it takes no lock and allocates nothing. */
#ifndef YK_RUNTIME_LAUNCH_H
#define YK_RUNTIME_LAUNCH_H

#include "cache/kernel_cache.h"
#include "runtime/context.h"
#include "tune/tune_table.h"

/* Completes the spec an op built from its tensors (sizes, dtype, the vector width their alignment
 * allows) for a launch of problem_size: rows, tokens, batch x sequence, as the op's tuning records
 * count it (0: none to tune on, as for the ops no sweep covers). A sweep's override first, if one
 * is set; then this GPU's tuned values (tune/tune_table.h) for the fields both left unset, nearest
 * bucket to problem_size; then the op's defaults. Untuned, this is one untaken branch; tuned, a
 * hash lookup and no lock. */
static inline void yk_spec_finish(yk_ctx *ctx, yk_spec *spec, int64_t problem_size) {
  const yk_tune_entry *tuned = ctx->tune ? yk_tune_table_lookup(ctx->tune, spec, problem_size) : NULL;
  if (ctx->spec_override) {
    ctx->spec_override(ctx->spec_override_user, spec);
    if (tuned) tuned = yk_tune_entry_valid_with(ctx->tune, tuned, spec);
  }
  if (tuned) yk_tune_entry_apply(tuned, spec);
  spec->op->complete(spec);
}

/* The kernel for a complete spec on the context's device, loading it on first use. */
static inline yk_status yk_kernel_get(yk_ctx *ctx, const yk_spec *spec, yk_kernel **out) {
  yk_kernel_key key;
  key.spec = *spec;
  memcpy(key.target, spec->op->arch_specific_sm ? ctx->target_arch_specific : ctx->target, sizeof key.target);
  const uint64_t hash = yk_kernel_key_hash(&key);
  yk_kernel *k = yk_kernel_find(&ctx->cache, &key, hash);
  if (k && atomic_load_explicit(&k->state, memory_order_acquire) == YK_KERNEL_LOADED) {
    *out = k;
    return YK_OK;
  }
  return yk_kernel_obtain(ctx, &key, hash, YK_KERNEL_LOADED, out, NULL);
}

/* Launches k with the block shape and dynamic shared memory its spec gives on grid (x, y, z).
 * args: pointers to each kernel parameter, in order. */
yk_status yk_launch(yk_ctx *ctx, const yk_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z, void *stream,
                    void **args);

/* yk_launch for a kernel that begins with yk_wait_previous_grid() (prelude.cuh): on sm_90 it is
 * launched programmatically, so it is scheduled while the kernel before it on the stream finishes
 * (when that one calls yk_allow_next_grid) instead of after, hiding a launch's latency: the merge
 * after split-KV decode. Elsewhere a plain launch. */
yk_status yk_launch_early(yk_ctx *ctx, const yk_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                          void *stream, void **args);

#endif
