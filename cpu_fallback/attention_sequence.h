/* A batch's sequences as the CPU attention walks them: where each one's queries and keys start,
 * how many there are, the longest. Shared by the tile kernels (attention_tiles.h, which also says
 * which keys a query sees) and the float64 references (attention_reference.c, which state the mask
 * themselves). */
#ifndef YK_CPU_ATTENTION_SEQUENCE_H
#define YK_CPU_ATTENTION_SEQUENCE_H

#include <stdint.h>

#include "cpu_fallback/attention.h"

/* One sequence of a batch: where its queries and keys start on the token axes and how many there
 * are. compact: start on a [total, heads, dim] array (the references) rather than on an operand,
 * whose dense batches step by batch_stride instead. */
typedef struct seq_span {
  int64_t q0, len_q, k0, len_k;
} seq_span;

static seq_span sequence(const yk_attention_shape *s, int64_t b, int compact) {
  seq_span g;
  if (s->cu_seqlens_q)
    g.q0 = s->cu_seqlens_q[b], g.len_q = s->cu_seqlens_q[b + 1] - s->cu_seqlens_q[b];
  else
    g.q0 = compact ? b * s->seq_q : 0, g.len_q = s->seq_q;
  if (s->kv_pages)
    g.k0 = 0, g.len_k = yk_page_map_len(s->kv_pages, b);
  else if (s->cu_seqlens_k)
    g.k0 = s->cu_seqlens_k[b], g.len_k = s->cu_seqlens_k[b + 1] - s->cu_seqlens_k[b];
  else
    g.k0 = compact ? b * s->seq_k : 0, g.len_k = s->seq_k;
  return g;
}

/* The longest sequence on the query (keys 0) or key (keys 1) axis: it sets how many tiles each
 * (sequence, head) gets in the task space; shorter sequences skip their extra tiles. */
static int64_t longest(const yk_attention_shape *s, int keys) {
  const int32_t *cu = keys ? s->cu_seqlens_k : s->cu_seqlens_q;
  int64_t most = 0;
  if (keys && s->kv_pages) {
    for (int64_t b = 0; b < s->batch; b++)
      if (yk_page_map_len(s->kv_pages, b) > most) most = yk_page_map_len(s->kv_pages, b);
    return most;
  }
  if (!cu) return keys ? s->seq_k : s->seq_q;
  for (int64_t b = 0; b < s->batch; b++)
    if (cu[b + 1] - cu[b] > most) most = cu[b + 1] - cu[b];
  return most;
}

#endif
