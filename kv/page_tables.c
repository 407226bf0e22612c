/* The page tables paged attention reads, written into the caller's host arrays: vLLM's dense
 * block_tables + context_lens, and FlashInfer's CSR kv_indptr + kv_indices + kv_last_page_len.
 * Everything is checked before the first write. */
#include "kv/kv_cache.h"
#include "runtime/error.h"

/* Every listed sequence on the device; their most and total blocks. */
static yk_status measure(yk_kv_cache *c, const char *op, const int64_t *seqs, int64_t num_seqs, int64_t *max_blocks,
                         int64_t *total_blocks) {
  if (num_seqs < 0)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: num_seqs %lld is negative", op, (long long)num_seqs);
  if (num_seqs > 0 && !seqs) return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: seqs is NULL", op);
  int64_t most = 0, total = 0;
  for (int64_t i = 0; i < num_seqs; i++) {
    yk_kv_seq *s;
    yk_status st = yk_kv_seq_lookup(c, op, seqs[i], &s);
    if (st != YK_OK) return st;
    if (s->swapped_out)
      return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: sequence %lld (entry %lld) is swapped out", op,
                      (long long)seqs[i], (long long)i);
    if (s->block_count > most) most = s->block_count;
    total += s->block_count;
  }
  if (max_blocks) *max_blocks = most;
  if (total_blocks) *total_blocks = total;
  return YK_OK;
}

yk_status yk_kv_cache_table_sizes(yk_kv_cache *c, const int64_t *seqs, int64_t num_seqs, int64_t *max_blocks,
                                  int64_t *total_blocks) {
  return c ? measure(c, "yk_kv_cache_table_sizes", seqs, num_seqs, max_blocks, total_blocks) : YK_ERR_INVALID_ARGUMENT;
}

/* The live sequence of an id measure() has accepted. */
static const yk_kv_seq *seq_of(const yk_kv_cache *c, int64_t id) { return &c->seqs[(uint64_t)id & 0xffffffffu]; }

yk_status yk_kv_cache_block_tables(yk_kv_cache *c, const int64_t *seqs, int64_t num_seqs, int32_t *block_tables,
                                   int64_t max_blocks, int32_t *context_lens) {
  const char *op = "yk_kv_cache_block_tables";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  int64_t most;
  yk_status st = measure(c, op, seqs, num_seqs, &most, NULL);
  if (st != YK_OK) return st;
  if (num_seqs > 0 && (!block_tables || !context_lens))
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: block_tables or context_lens is NULL", op);
  if (max_blocks < 0 || most > max_blocks)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: a sequence has %lld blocks, more than max_blocks %lld", op,
                    (long long)most, (long long)max_blocks);
  for (int64_t i = 0; i < num_seqs; i++) {
    const yk_kv_seq *s = seq_of(c, seqs[i]);
    int32_t *row = block_tables + i * max_blocks;
    for (int64_t j = 0; j < s->block_count; j++) row[j] = s->blocks[j];
    for (int64_t j = s->block_count; j < max_blocks; j++) row[j] = 0;
    context_lens[i] = (int32_t)s->tokens;
  }
  return YK_OK;
}

yk_status yk_kv_cache_csr(yk_kv_cache *c, const int64_t *seqs, int64_t num_seqs, int32_t *kv_indptr,
                          int32_t *kv_indices, int64_t capacity, int32_t *kv_last_page_len) {
  const char *op = "yk_kv_cache_csr";
  if (!c) return YK_ERR_INVALID_ARGUMENT;
  int64_t total;
  yk_status st = measure(c, op, seqs, num_seqs, NULL, &total);
  if (st != YK_OK) return st;
  if (!kv_indptr || (num_seqs > 0 && !kv_last_page_len) || (total > 0 && !kv_indices))
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: kv_indptr, kv_indices or kv_last_page_len is NULL", op);
  if (total > capacity)
    return yk_error(c->ctx, YK_ERR_INVALID_ARGUMENT, "%s: the sequences have %lld blocks, more than capacity %lld", op,
                    (long long)total, (long long)capacity);
  if (total > INT32_MAX)
    return yk_error(c->ctx, YK_ERR_UNSUPPORTED, "%s: %lld blocks overflow int32 kv_indptr", op, (long long)total);
  const int64_t page = c->config.page_size;
  int64_t at = 0;
  kv_indptr[0] = 0;
  for (int64_t i = 0; i < num_seqs; i++) {
    const yk_kv_seq *s = seq_of(c, seqs[i]);
    for (int64_t j = 0; j < s->block_count; j++) kv_indices[at++] = s->blocks[j];
    kv_indptr[i + 1] = (int32_t)at;
    kv_last_page_len[i] = s->tokens ? (int32_t)((s->tokens - 1) % page + 1) : 0;
  }
  return YK_OK;
}
