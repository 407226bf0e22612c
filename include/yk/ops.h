/* The ops. Every op takes DLPack tensors (so torch, CuPy, JAX and numpy arrays cross without a
 * copy), runs on the GPU when its tensors live on the context's CUDA device and on the CPU
 * fallback when they live in host memory, and returns a status.
 *
 * Tensors: dtype float32, float16 or bfloat16 (lanes 1) unless an op says otherwise; all float
 * tensors of one call share a dtype; the last dimension must be contiguous (stride 1); leading
 * dimensions may be strided. strides == NULL means compact row-major. byte_offset is honoured.
 * Arithmetic is float32 whatever the storage type; results are rounded once, to nearest even.
 *
 * stream: a CUstream (NULL: the legacy default stream). GPU calls are asynchronous on it; CPU
 * calls complete before they return and ignore it.
 *
 * On failure nothing has been written and nothing launched. */
#ifndef YK_OPS_H
#define YK_OPS_H

#include <dlpack/dlpack.h>

#include "yk/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out = x / sqrt(mean(x^2) + eps) * weight, per row.
 * x, out: [..., hidden] (out may be x itself); weight: [hidden]. */
YK_API yk_status yk_rms_norm(yk_ctx *ctx, const DLTensor *x, const DLTensor *weight, float eps, DLTensor *out,
                             void *stream);

/* In place, as vLLM and FlashInfer do: residual += x (rounded to the dtype), then
 * x = rms_norm(residual) * weight. x, residual: [..., hidden]; weight: [hidden]. */
YK_API yk_status yk_fused_add_rms_norm(yk_ctx *ctx, DLTensor *x, DLTensor *residual, const DLTensor *weight, float eps,
                                       void *stream);

typedef enum yk_rope_style {
  YK_ROPE_NEOX = 0, /* rotate halves: pairs (i, i + rotary_dim/2) */
  YK_ROPE_GPTJ = 1  /* interleaved: pairs (2i, 2i + 1) */
} yk_rope_style;

/* Rotary position embedding of q and k, in place, in one launch.
 * q: [tokens, q_heads, head_dim]; k: [tokens, kv_heads, head_dim] or NULL;
 * cos_sin_cache: [max_position, rotary_dim], cos in the first half of a row and sin in the
 *   second (vLLM's layout), float32 or the dtype of q; rotary_dim <= head_dim, even;
 *   dimensions past rotary_dim are left as they are;
 * positions: [tokens], int32 or int64, each in [0, max_position). The CPU path rejects a
 *   position out of range before writing; the GPU path cannot see the values before it runs and
 *   leaves such a token unrotated rather than read outside the cache. */
YK_API yk_status yk_rope(yk_ctx *ctx, DLTensor *q, DLTensor *k, const DLTensor *cos_sin_cache,
                         const DLTensor *positions, yk_rope_style style, void *stream);

/* Gated activations: x: [..., 2*d] = [gate | up]; out: [..., d] = act(gate) * up. */
YK_API yk_status yk_silu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream);
YK_API yk_status yk_gelu_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream);      /* erf form */
YK_API yk_status yk_gelu_tanh_and_mul(yk_ctx *ctx, const DLTensor *x, DLTensor *out, void *stream); /* tanh form */

#ifdef __cplusplus
}
#endif
#endif
