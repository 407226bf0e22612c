/* yk_struct_size: the public structs' sizes by name, for bindings that copy their layouts. */
#include <string.h>

#include "yk/yk.h"

#define SIZE_OF(type)                                                                                                  \
  { #type, sizeof(type) }

static const struct {
  const char *name;
  size_t size;
} sizes[] = {
    SIZE_OF(yk_ctx_options),     SIZE_OF(yk_ctx_info),           SIZE_OF(yk_ctx_stats),
    SIZE_OF(yk_spec_field),      SIZE_OF(yk_warm_progress),      SIZE_OF(yk_warm_options),
    SIZE_OF(yk_warm_result),     SIZE_OF(yk_model_preset),       SIZE_OF(yk_cache_entry),
    SIZE_OF(yk_kv_cache_config), SIZE_OF(yk_kv_cache_info),      SIZE_OF(yk_kv_seq_info),
    SIZE_OF(yk_append_kv_index), SIZE_OF(yk_append_kv_rope),     SIZE_OF(yk_attention_params),
    SIZE_OF(yk_paged_kv),        SIZE_OF(yk_paged_plan_shape),   SIZE_OF(yk_pool_options),
    SIZE_OF(yk_pool_stats),      SIZE_OF(yk_prefix_cache_stats), SIZE_OF(yk_radix_page_owner),
    SIZE_OF(yk_radix_node),      SIZE_OF(yk_radix_match),        SIZE_OF(yk_radix_insert_result),
    SIZE_OF(yk_radix_stats),     SIZE_OF(yk_kv_scales),
};

size_t yk_struct_size(const char *name) {
  if (!name) return 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (!strcmp(sizes[i].name, name)) return sizes[i].size;
  return 0;
}
