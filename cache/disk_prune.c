/* Bounding the disk cache: its entries never expire by themselves (a new template, NVRTC or library
 * version only adds keys), so an operator prunes by size and age, least recently used first, and
 * YK_CACHE_MAX_SIZE does it after every store. A load from disk marks its entry used (its mtime),
 * so the order is that of last use, across processes, with no index file to keep consistent.
 *
 * Safe beside other processes: an entry removed while another reads it is still read whole (the
 * open file outlives the name), one removed before it is opened is a miss and a recompile, and
 * two pruners removing the same name see ENOENT, which is not an error. */
#include "cache/disk_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/context.h"
#include "runtime/error.h"

/* A temporary file this old is left by a writer that died, not one still writing. */
#define STALE_TMP_SECONDS 3600

typedef struct {
  char name[48]; /* an entry's: 32 hex digits and the suffix */
  uint64_t bytes;
  int64_t used_ns; /* last store or load (mtime) */
  int bad;         /* damaged: of no use to any library, whatever the bound */
} prune_item;

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int by_last_use(const void *a, const void *b) {
  const prune_item *x = a, *y = b;
  if (x->used_ns != y->used_ns) return x->used_ns < y->used_ns ? -1 : 1;
  return strcmp(x->name, y->name); /* the same order on every run */
}

/* Removes dir/name; 1 if this call removed it, 0 if it was gone already, -1 (and errno) if not. */
static int remove_name(const char *dir, const char *name) {
  char path[PATH_MAX + 256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  if (unlink(path) == 0) return 1;
  return errno == ENOENT ? 0 : -1;
}

int yk_disk_cache_parse_size(const char *text, uint64_t *bytes) {
  if (!text || !text[0]) return 1;
  char *end;
  errno = 0;
  const double v = strtod(text, &end);
  if (errno || end == text || !(v >= 0)) return 1;
  double scale = 1;
  if (*end) {
    const char *units = "KMGT";
    const char *u = strchr(units, *end >= 'a' ? *end - 32 : *end);
    if (!u || !*u) return 1;
    for (const char *p = units; p <= u; p++) scale *= 1024;
    end++;
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return 1;
  }
  if (v * scale >= 18446744073709551615.0) return 1;
  *bytes = (uint64_t)(v * scale);
  return 0;
}

/* The first problem, into why; the status it is. */
#define FAIL(code, ...) (status == YK_OK ? (snprintf(why, why_size, __VA_ARGS__), status = (code)) : status)

yk_status yk_disk_cache_prune(const yk_disk_cache *disk, uint64_t max_bytes, int64_t max_age_s, int drop_damaged,
                              int *removed, uint64_t *kept_bytes, char *why, size_t why_size) {
  if (removed) *removed = 0;
  if (kept_bytes) *kept_bytes = 0;
  yk_status status = YK_OK;
  if (!disk->dir[0]) return YK_OK;
  DIR *d = opendir(disk->dir);
  if (!d) return errno == ENOENT ? YK_OK : FAIL(YK_ERR_IO, "cannot read %s: %s", disk->dir, strerror(errno));
  struct timespec now_ts;
  clock_gettime(CLOCK_REALTIME, &now_ts);
  const int64_t now = ns_of(now_ts);
  prune_item *items = NULL;
  size_t count = 0, capacity = 0;
  int gone = 0, out_of_memory = 0;
  for (struct dirent *de; (de = readdir(d));) {
    uint8_t key[16];
    const int tmp = yk_disk_cache_is_temp_name(de->d_name);
    if (!tmp && !yk_disk_cache_entry_key(de->d_name, key)) continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", disk->dir, de->d_name);
    struct stat st;
    if (lstat(path, &st)) continue; /* removed meanwhile */
    if (tmp) {
      const int r =
          now - ns_of(st.st_mtim) > (int64_t)STALE_TMP_SECONDS * 1000000000 ? remove_name(disk->dir, de->d_name) : 0;
      if (r < 0) FAIL(YK_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
      continue;
    }
    if (count == capacity) {
      const size_t grown = capacity ? 2 * capacity : 256;
      prune_item *more = realloc(items, grown * sizeof *items);
      if (!more) {
        out_of_memory = 1;
        break;
      }
      items = more, capacity = grown;
    }
    prune_item *it = &items[count++];
    memcpy(it->name, de->d_name, strlen(de->d_name) + 1); /* 36 bytes: yk_disk_cache_entry_key */
    it->bytes = (uint64_t)st.st_size;
    it->used_ns = ns_of(st.st_mtim);
    const char *problem = !S_ISREG(st.st_mode) ? "not a regular file" : drop_damaged ? yk_disk_cache_check(path) : NULL;
    it->bad = yk_disk_cache_damaged(problem); /* another version's stays for its library */
  }
  closedir(d);
  if (out_of_memory) { /* a partial listing would misjudge the oldest: remove no entry */
    free(items);
    snprintf(why, why_size, "pruning %s: out of memory; no entry removed", disk->dir);
    return YK_ERR_OUT_OF_MEMORY;
  }
  qsort(items, count, sizeof *items, by_last_use);
  uint64_t total = 0;
  for (size_t i = 0; i < count; i++) total += items[i].bytes;
  const int64_t oldest_kept = /* an age past the epoch's: nothing is that old */
      max_age_s > 0 && max_age_s < now / 1000000000 ? now - max_age_s * 1000000000 : INT64_MIN;
  for (size_t i = 0; i < count; i++) { /* oldest first: the bad, the too old, then past the size */
    const prune_item *it = &items[i];
    if (!it->bad && it->used_ns >= oldest_kept && (!max_bytes || total <= max_bytes)) continue;
    const int r = remove_name(disk->dir, it->name);
    if (r < 0) {
      FAIL(YK_ERR_IO, "cannot remove %s/%s: %s", disk->dir, it->name, strerror(errno));
      continue;
    }
    total -= it->bytes;
    if (r > 0) gone++;
  }
  free(items);
  if (removed) *removed = gone;
  if (kept_bytes) *kept_bytes = total;
  return status;
}

yk_status yk_cache_prune(yk_ctx *ctx, uint64_t max_bytes, int64_t max_age_s, int *removed, uint64_t *kept_bytes) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (removed) *removed = 0;
  if (kept_bytes) *kept_bytes = 0;
  if (max_age_s < 0)
    return yk_error(ctx, YK_ERR_INVALID_ARGUMENT, "cache prune: max_age_s %lld is negative", (long long)max_age_s);
  char why[PATH_MAX + 256];
  const yk_status status =
      yk_disk_cache_prune(&ctx->cache.disk, max_bytes, max_age_s, 1, removed, kept_bytes, why, sizeof why);
  return status == YK_OK ? YK_OK : yk_error(ctx, status, "cache prune: %s", why);
}
