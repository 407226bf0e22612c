/* What paged attention's calls share (gen/paged_attention.c): a call's caches and page table,
 * checked, and the paged prefill under another call's name (the cascade's prefix,
 * gen/cascade_attention.c). */
#ifndef YK_GEN_PAGED_ATTENTION_H
#define YK_GEN_PAGED_ATTENTION_H

#include "gen/attention.h"

/* The caches and the table of a call, checked. */
typedef struct yk_paged_keys {
  yk_view k, v;
  int64_t num_blocks, page_size, kv_heads, head_dim;
  yk_attn_operand k_rows, v_rows; /* the caches at block 0: seq_stride within a page, block_stride */
  int form;                       /* 1: block table, 2: CSR */
  int64_t batch;
  int host_readable; /* the table's values were read and checked here */
  int64_t max_len;   /* the longest sequence, where host_readable; else the caller's bound (or 0) */
  int64_t total_len; /* the batch's keys where host_readable; else a bound (CSR: its pages) or 0 */
  yk_page_map map;   /* the table's pointers (host ones for the CPU path) */
  yk_page_table_args table;
  float k_scale, v_scale; /* float8 caches' (1 for others) */
} yk_paged_keys;

/* The caches: [num_blocks, page_size, kv_heads, head_dim] (NHD) or [.., kv_heads, page_size, ..]
 * (HND), any block stride. Fills pk from them. */
yk_status yk_paged_check_caches(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, yk_paged_keys *pk);

/* The page table (a block table or CSR) against the caches pk holds; its values too where the host
 * can read them (on_device: the call runs on the GPU). */
yk_status yk_paged_check_table(yk_ctx *ctx, const char *op, const yk_paged_kv *kv, int on_device, yk_paged_keys *pk);

/* Everything a paged call reads, checked; out (like q) and lse (or NULL) too. decode: q is one token
 * a sequence. */
yk_status yk_paged_check(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                         const yk_attention_params *params, int decode, const DLTensor *out, const DLTensor *lse,
                         yk_paged_keys *pk, yk_attention_problem *pr, yk_view *ov, yk_view *lv);

/* yk_paged_attention_prefill as op. decode_kernel: whether a few queries a sequence may take the
 * decode kernel (a cascade's prefix past CASCADE_DECODE_ROWS keeps to the prefill kernel's chunks). */
yk_status yk_paged_prefill_as(yk_ctx *ctx, const char *op, const DLTensor *q, const yk_paged_kv *kv,
                              const yk_attention_params *params, int decode_kernel, DLTensor *out, DLTensor *lse,
                              void *stream);

#endif
