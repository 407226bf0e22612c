/* The on-disk kernel cache: one file per entry, named by its key, <dir>/<32 hex digits>.ykc.
 *
 *   offset  size  field
 *        0     8  magic "YKCACHE\0"
 *        8     4  format version (YK_GEN_FORMAT_VERSION), little-endian like every number here
 *       12     4  header size (80)
 *       16    16  key
 *       32     8  PTX bytes (with its NUL)
 *       40     8  cubin bytes (0 for PTX-only targets)
 *       48     8  metadata bytes (text "name=value" lines, with a NUL)
 *       56     8  XXH3-64 of the payload (PTX, cubin, metadata, in that order)
 *       64     8  XXH3-64 of bytes 0..63
 *       72     8  reserved, zero
 *       80        payload
 *
 * Entries are written to a temporary file in the same directory and renamed into place, so a
 * reader sees a whole entry or none; no fsync, because a torn file after a crash fails its
 * checksum and is a miss. Anything that does not check out is a miss, never a crash. */
#ifndef YK_CACHE_DISK_CACHE_H
#define YK_CACHE_DISK_CACHE_H

#include <limits.h>
#include <stdint.h>

#include "runtime/compile.h"
#include "yk/jit.h"

#define YK_CACHE_READ_DIRS_MAX 8
#define YK_CACHE_HEADER_BYTES 80
#define YK_CACHE_SUFFIX ".ykc"

typedef struct yk_disk_cache {
  char dir[PATH_MAX];                               /* the writable (main) directory; "" when memory-only */
  int writable;                                     /* 0 when dir is read-only for us: entries are still read from it */
  char read_dirs[YK_CACHE_READ_DIRS_MAX][PATH_MAX]; /* YK_CACHE_PATH, searched after dir */
  int read_dir_count;
  char read_path[1024]; /* read_dirs joined with ':', for yk_ctx_get_info */
  uint64_t max_bytes;   /* YK_CACHE_MAX_SIZE: pruned to this after each store; 0: no bound */
} yk_disk_cache;

/* Resolves the directories from options and the environment, creates the main one if needed,
 * and drops (with a warning) any directory that is not trusted. Never fails: the worst case is a
 * memory-only cache. */
void yk_disk_cache_init(yk_ctx *ctx, yk_disk_cache *disk, const yk_ctx_options *options);

/* 0 and a filled binary on a hit; nonzero on a miss (no file, or one that does not check out, which
 * is reported through a warning). */
int yk_disk_cache_load(yk_ctx *ctx, const yk_disk_cache *disk, const uint8_t key[16], yk_binary *out);

/* Writes an entry, then prunes to max_bytes where set; failures are warned about once and otherwise
 * ignored (the kernel is in memory). */
void yk_disk_cache_store(yk_ctx *ctx, const yk_disk_cache *disk, const yk_binary *b);

/* 1 if name is an entry's file name (32 hex digits and the suffix), with its key; else 0. */
int yk_disk_cache_entry_key(const char *name, uint8_t key[16]);

/* 1 if name is a store's temporary file (yk_disk_cache_store: ".<hex>.tmp-XXXXXX"). */
int yk_disk_cache_is_temp_name(const char *name);

/* NULL if the entry file at path is sound (header, sizes, metadata; not the payload's checksum),
 * else its problem: yk_disk_cache_other_version itself for a sound header of another format
 * version (another library's entry, not a damaged one). */
const char *yk_disk_cache_check(const char *path);
extern const char yk_disk_cache_other_version[];

/* 1 if an entry with this problem (NULL: none) is damaged, of no use to any library: every problem
 * but another format version's. Listing counts these, pruning removes them. */
static inline int yk_disk_cache_damaged(const char *problem) {
  return problem && problem != yk_disk_cache_other_version;
}

/* Removes from the writable directory, with drop_damaged, every damaged entry (another format
 * version's are another library's, and are aged and sized like the rest: reading each entry's
 * header is the only I/O beyond the directory's listing, which the store's size bound does
 * without, since a damaged entry is rewritten when next asked for); every entry unused for more
 * than max_age_s seconds (0: no age bound); then the least recently used until the rest take at
 * most max_bytes (0: no size bound); and temporary files older than an hour. Counts may be NULL;
 * on failure why says the first problem (the rest is still done, except out of memory, which
 * removes no entry). Used: stored, or loaded from disk (disk_prune.c). */
yk_status yk_disk_cache_prune(const yk_disk_cache *disk, uint64_t max_bytes, int64_t max_age_s, int drop_damaged,
                              int *removed, uint64_t *kept_bytes, char *why, size_t why_size);

/* Sizes as YK_CACHE_MAX_SIZE and yk cache prune take them: bytes, or with K, M, G or T (powers of
 * 1024; "KiB", "kB" and "K" alike); 0 if parsed. */
int yk_disk_cache_parse_size(const char *text, uint64_t *bytes);

#endif
