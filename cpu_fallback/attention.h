/* Attention on the CPU: the shapes and operands its calls take, the forward (the prefill's and the
 * decode's fallback, attention.c), and the float64 references the tests, the demo and the
 * benchmarks check against (attention_reference.c). The backward and the merge of partial
 * attentions have headers of their own. The maths and the layouts are the public ones
 * (include/yk/ops.h). */
#ifndef YK_CPU_ATTENTION_H
#define YK_CPU_ATTENTION_H

#include <stdint.h>

#include "cpu_fallback/parallel.h"

/* Keys and values in a paged KV cache: the page table in host memory, in vLLM's form (form 1:
 * indices = block_tables [batch][max_blocks], lens = context_lens) or FlashInfer's (form 2:
 * sequence b owns indices[indptr[b] .. indptr[b + 1]), lens = kv_last_page_len). Checked by the
 * caller: every length and block id is in range. */
typedef struct yk_page_map {
  int form;
  int64_t page_size, max_blocks;
  const int32_t *indices, *indptr, *lens;
} yk_page_map;

static inline int64_t yk_page_map_len(const yk_page_map *m, int64_t b) {
  if (m->form == 1) return m->lens[b];
  const int64_t n = m->indptr[b + 1] - m->indptr[b];
  return n > 0 ? (n - 1) * m->page_size + m->lens[b] : 0;
}

/* Block j of sequence b's table. */
static inline int64_t yk_page_map_block(const yk_page_map *m, int64_t b, int64_t j) {
  return m->form == 1 ? m->indices[b * m->max_blocks + j] : m->indices[m->indptr[b] + j];
}

/* The problem, independent of where the tensors live. */
typedef struct yk_attention_shape {
  int dtype; /* yk_dtype of q, k, v, out (and dout, dq, dk, dv) */
  int64_t batch, q_heads, kv_heads, head_dim;
  /* Ragged batches: [batch + 1] offsets into the token axis (host memory). Each may be NULL on its
   * own: then every sequence has seq_q queries (seq_k keys). A ragged decode batch has keys ragged
   * and one query a sequence. */
  const int32_t *cu_seqlens_q, *cu_seqlens_k;
  int64_t seq_q, seq_k;
  int causal; /* bottom-right: query i of a sequence sees keys j <= i + len_k - len_q */
  float scale;
  const yk_page_map *kv_pages; /* paged keys: their lengths come from the table (cu_seqlens_k NULL) */
  /* Forward only: k and v hold float8 e4m3 (a paged cache's), read as stored * k_scale (v_scale);
   * else they are dtype and the scales unused. */
  int kv_float8;
  float k_scale, v_scale;
} yk_attention_shape;

/* Where a tensor's rows are. Token s of sequence b, head h starts at
 *   data + elem_size * (b * batch_stride + (start_b + s) * seq_stride + h * head_stride)
 * with start_b = cu_seqlens[b] for ragged batches (batch_stride 0 then) and 0 for dense ones; the
 * head_dim elements of a row are contiguous. For lse (float32, one value a row) the same formula
 * gives the element itself. data NULL: an optional output that is not wanted. */
typedef struct yk_attn_operand {
  char *data;
  int64_t batch_stride, seq_stride, head_stride;
  /* Paged keys or values: token s of sequence b is in block pages(b, s / page_size) at offset
   * s % page_size: data + elem_size * (block * block_stride + offset * seq_stride + h * head_stride). */
  const yk_page_map *pages;
  int64_t block_stride;
} yk_attn_operand;

/* out (and lse, if wanted) for every query row. Rows that see no key (causal, len_q > len_k) get
 * out = 0 and lse = -inf. Tiled over keys with an online softmax in float32, parallel over
 * (sequence, kv head, the group's q heads in one or more chunks, query tile). Results do not
 * depend on the pool's thread count. */
void yk_cpu_attention_forward(yk_thread_pool *pool, const yk_attention_shape *shape, yk_attn_operand q,
                              yk_attn_operand k, yk_attn_operand v, yk_attn_operand out, yk_attn_operand lse);

/* A key or value row of n elements of kv_type (the dtype, or YK_E4M3) as the pool's build of the
 * tile kernels loads it: float8 as the values times 2^-8 (the kernels fold 2^8 into their scales,
 * so that the AVX2 build converts them through F16C), other types as their values. */
void yk_cpu_kv_row_floats(const yk_thread_pool *pool, int kv_type, const void *row, float *dst, int64_t n);

/* ---- float64 references on compact arrays ----
 * q, out, dout, dq: [total_q, q_heads, head_dim]; k, v, dk, dv: [total_k, kv_heads, head_dim];
 * lse: [q_heads, total_q]; total = batch * seq (dense) or cu_seqlens[batch] (ragged). The
 * straightforward softmax(q k^T * scale) v, materialising the scores, in double. */
void yk_reference_attention_forward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                    double *out, double *lse);
void yk_reference_attention_backward(const yk_attention_shape *shape, const double *q, const double *k, const double *v,
                                     const double *dout, double *dq, double *dk, double *dv);

#endif
