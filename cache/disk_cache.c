#include "cache/disk_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "gen/generate.h"
#include "runtime/context.h"
#include "runtime/error.h"

static const char magic[8] = {'Y', 'K', 'C', 'A', 'C', 'H', 'E', '\0'};
const char yk_disk_cache_other_version[] = "written by another format version";
#define ENTRY_BYTES_MAX (1ull << 30) /* a sanity bound on one entry's payload */

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint64_t get_u64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* ---- trust ---- */

/* A directory or file is trusted when we or root own it and nobody else can write it: a planted
 * cubin would run on the GPU as the caller. */
static const char *untrusted_reason(const struct stat *st) {
  if (st->st_uid != geteuid() && st->st_uid != 0) return "owned by another user";
  if (st->st_mode & (S_IWGRP | S_IWOTH)) return "writable by other users";
  return NULL;
}

/* ---- directories ---- */

static int make_dirs(const char *path) {
  char buf[PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return ENAMETOOLONG;
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) && errno != EEXIST) return errno;
    *p = '/';
  }
  if (mkdir(buf, 0755) == 0) {
    chmod(buf, 0755); /* a umask of 002 must not leave our cache group-writable, hence untrusted */
    return 0;
  }
  return errno == EEXIST ? 0 : errno;
}

static void default_dir(char *out, size_t size) {
  const char *env = getenv("YK_CACHE_DIR");
  const char *xdg = getenv("XDG_CACHE_HOME");
  const char *home = getenv("HOME");
  out[0] = '\0';
  if (env && env[0])
    snprintf(out, size, "%s", env);
  else if (xdg && xdg[0] == '/')
    snprintf(out, size, "%s/yk", xdg);
  else if (home && home[0])
    snprintf(out, size, "%s/.cache/yk", home);
}

/* Checks a directory that exists; 0 if usable. */
static int check_dir(yk_ctx *ctx, const char *dir, const char *role) {
  struct stat st;
  if (stat(dir, &st)) {
    yk_warn(ctx, "kernel cache: %s %s: %s; not used", role, dir, strerror(errno));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    yk_warn(ctx, "kernel cache: %s %s is not a directory; not used", role, dir);
    return 1;
  }
  const char *why = untrusted_reason(&st);
  if (why) {
    yk_warn(ctx, "kernel cache: %s %s is %s; not trusted, not used", role, dir, why);
    return 1;
  }
  return 0;
}

void yk_disk_cache_init(yk_ctx *ctx, yk_disk_cache *disk, const yk_ctx_options *options) {
  memset(disk, 0, sizeof *disk);
  const char *mode = getenv("YK_CACHE");
  int memory_only = options->cache_memory_only || (mode && strcmp(mode, "memory") == 0);

  if (!memory_only) {
    if (options->cache_dir && options->cache_dir[0])
      snprintf(disk->dir, sizeof disk->dir, "%s", options->cache_dir);
    else
      default_dir(disk->dir, sizeof disk->dir);
    if (!disk->dir[0]) {
      yk_warn(ctx, "kernel cache: no HOME, XDG_CACHE_HOME or YK_CACHE_DIR; keeping kernels in memory only");
    } else {
      int err = make_dirs(disk->dir);
      if (err) {
        yk_warn(ctx, "kernel cache: cannot create %s: %s; keeping kernels in memory only", disk->dir, strerror(err));
        disk->dir[0] = '\0';
      } else if (check_dir(ctx, disk->dir, "directory")) {
        disk->dir[0] = '\0';
      } else if (faccessat(AT_FDCWD, disk->dir, W_OK | X_OK, AT_EACCESS)) { /* effective ids, as writes use */
        /* Read what is there, write nothing: the one warning an unwritable directory gets. */
        if (yk_warn_first(ctx, YK_WARN_CACHE_UNWRITABLE))
          yk_warn(ctx, "kernel cache: %s is not writable; new kernels are kept in memory only", disk->dir);
      } else {
        disk->writable = 1;
      }
    }
  }

  const char *max_size = getenv("YK_CACHE_MAX_SIZE");
  if (disk->writable && max_size && max_size[0] && yk_disk_cache_parse_size(max_size, &disk->max_bytes))
    yk_warn(ctx, "kernel cache: YK_CACHE_MAX_SIZE=%s is not a size (bytes, or with K, M, G or T); no bound", max_size);

  const char *path = options->cache_path ? options->cache_path : getenv("YK_CACHE_PATH");
  if (memory_only || !path) return;
  char buf[8192];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
    if (!dir[0]) continue;
    if (disk->read_dir_count == YK_CACHE_READ_DIRS_MAX) {
      yk_warn(ctx, "kernel cache: YK_CACHE_PATH has more than %d directories; %s and later ignored",
              YK_CACHE_READ_DIRS_MAX, dir);
      break;
    }
    if (check_dir(ctx, dir, "read-only directory")) continue;
    snprintf(disk->read_dirs[disk->read_dir_count++], PATH_MAX, "%s", dir);
    size_t used = strlen(disk->read_path);
    snprintf(disk->read_path + used, sizeof disk->read_path - used, "%s%s", used ? ":" : "", dir);
  }
}

/* ---- reading an entry ---- */

static int read_all(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = read(fd, (char *)buf + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return 1;
    done += (size_t)r;
  }
  return 0;
}

/* What a listing shows of an entry. */
typedef struct {
  uint64_t file_bytes, ptx_bytes, cubin_bytes;
  char *meta; /* malloc'd copy of the metadata text */
} entry_facts;

/* Reads and checks one file. With out == NULL only the header and metadata are read unless verify
 * asks for the payload checksum too. Returns NULL if sound, else the problem. On success with out,
 * the binary owns its buffers. facts (may be NULL) receives what a listing shows. */
static const char *read_entry(const char *path, const uint8_t *expect_key, int verify, yk_binary *out,
                              entry_facts *facts) {
  if (facts) *facts = (entry_facts){0};
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? "missing" : "cannot be opened";
  const char *problem = NULL;
  unsigned char *buf = NULL;
  struct stat st;
  unsigned char h[YK_CACHE_HEADER_BYTES];
  if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
    problem = "not a regular file";
    goto done;
  }
  if ((problem = untrusted_reason(&st))) goto done;
  if (facts) facts->file_bytes = (uint64_t)st.st_size;
  if ((uint64_t)st.st_size < YK_CACHE_HEADER_BYTES || read_all(fd, h, sizeof h)) {
    problem = "truncated header";
    goto done;
  }
  if (memcmp(h, magic, sizeof magic)) {
    problem = "not a yaie-kernels cache file";
    goto done;
  }
  if (get_u32(h + 8) != YK_GEN_FORMAT_VERSION || get_u32(h + 12) != YK_CACHE_HEADER_BYTES) {
    problem = yk_disk_cache_other_version;
    goto done;
  }
  if (get_u64(h + 64) != XXH3_64bits(h, 64)) {
    problem = "header checksum mismatch";
    goto done;
  }
  if (expect_key && memcmp(h + 16, expect_key, 16)) {
    problem = "holds another key";
    goto done;
  }
  uint64_t ptx = get_u64(h + 32), cubin = get_u64(h + 40), meta = get_u64(h + 48);
  if (facts) facts->ptx_bytes = ptx, facts->cubin_bytes = cubin;
  if (ptx > ENTRY_BYTES_MAX || cubin > ENTRY_BYTES_MAX || meta > ENTRY_BYTES_MAX || ptx == 0 || meta == 0) {
    problem = "implausible sizes";
    goto done;
  }
  uint64_t payload = ptx + cubin + meta;
  if ((uint64_t)st.st_size != YK_CACHE_HEADER_BYTES + payload) {
    problem = (uint64_t)st.st_size < YK_CACHE_HEADER_BYTES + payload ? "truncated" : "trailing bytes";
    goto done;
  }
  int whole = out || verify;
  size_t want = whole ? (size_t)payload : (size_t)meta;
  if (!(buf = malloc(want))) {
    problem = "out of memory";
    goto done;
  }
  if (!whole && lseek(fd, (off_t)(YK_CACHE_HEADER_BYTES + ptx + cubin), SEEK_SET) < 0) {
    problem = "cannot seek";
    goto done;
  }
  if (read_all(fd, buf, want)) {
    problem = "truncated";
    goto done;
  }
  if (whole && XXH3_64bits(buf, (size_t)payload) != get_u64(h + 56)) {
    problem = "payload checksum mismatch";
    goto done;
  }
  const unsigned char *meta_bytes = buf + (whole ? ptx + cubin : 0);
  if (meta_bytes[meta - 1] != '\0' || (whole && buf[ptx - 1] != '\0')) {
    problem = "unterminated text";
    goto done;
  }
  if (facts && !(facts->meta = strdup((const char *)meta_bytes))) {
    problem = "out of memory";
    goto done;
  }
  if (out) {
    memset(out, 0, sizeof *out);
    memcpy(out->key, h + 16, 16);
    out->ptx = malloc((size_t)ptx);
    out->cubin = cubin ? malloc((size_t)cubin) : NULL;
    out->meta = malloc((size_t)meta);
    if (!out->ptx || (cubin && !out->cubin) || !out->meta) {
      yk_binary_free(out);
      problem = "out of memory";
      goto done;
    }
    memcpy(out->ptx, buf, (size_t)ptx);
    if (cubin) memcpy(out->cubin, buf + ptx, (size_t)cubin);
    memcpy(out->meta, buf + ptx + cubin, (size_t)meta);
    out->ptx_size = (size_t)ptx;
    out->cubin_size = (size_t)cubin;
    out->meta_size = (size_t)meta;
    yk_binary_parse_meta(out);
  }
done:
  if (problem && facts) {
    free(facts->meta);
    facts->meta = NULL;
  }
  free(buf);
  close(fd);
  return problem;
}

static void entry_path(char *path, size_t size, const char *dir, const uint8_t key[16]) {
  char hex[33];
  yk_key_to_hex(key, hex);
  snprintf(path, size, "%s/%s%s", dir, hex, YK_CACHE_SUFFIX);
}

const char *yk_disk_cache_check(const char *path) {
  const char *slash = strrchr(path, '/');
  uint8_t key[16];
  if (!yk_disk_cache_entry_key(slash ? slash + 1 : path, key)) return "not named by a key";
  return read_entry(path, key, 0, NULL, NULL);
}

int yk_disk_cache_load(yk_ctx *ctx, const yk_disk_cache *disk, const uint8_t key[16], yk_binary *out) {
  char path[PATH_MAX + 64];
  for (int i = -1; i < disk->read_dir_count; i++) {
    const char *dir = i < 0 ? disk->dir : disk->read_dirs[i];
    if (!dir[0]) continue;
    entry_path(path, sizeof path, dir, key);
    const char *problem = read_entry(path, key, 1, out, NULL);
    if (!problem) {
      if (i < 0 && disk->writable) utimensat(AT_FDCWD, path, NULL, 0); /* used now: pruning keeps it longest */
      return 0;
    }
    if (strcmp(problem, "missing") != 0)
      yk_warn(ctx, "kernel cache: %s is %s; ignoring it%s", path, problem, i < 0 ? " and recompiling" : "");
  }
  return 1;
}

/* ---- writing an entry ---- */

static int write_all(int fd, const void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t w = write(fd, (const char *)buf + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return 1;
    done += (size_t)w;
  }
  return 0;
}

void yk_disk_cache_store(yk_ctx *ctx, const yk_disk_cache *disk, const yk_binary *b) {
  if (!disk->dir[0] || !disk->writable) return;
  char hex[33], tmp[PATH_MAX + 64], path[PATH_MAX + 64];
  yk_key_to_hex(b->key, hex);
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp-XXXXXX", disk->dir, hex);
  entry_path(path, sizeof path, disk->dir, b->key);

  unsigned char h[YK_CACHE_HEADER_BYTES] = {0};
  memcpy(h, magic, sizeof magic);
  put_u32(h + 8, YK_GEN_FORMAT_VERSION);
  put_u32(h + 12, YK_CACHE_HEADER_BYTES);
  memcpy(h + 16, b->key, 16);
  put_u64(h + 32, b->ptx_size);
  put_u64(h + 40, b->cubin_size);
  put_u64(h + 48, b->meta_size);
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, b->ptx, b->ptx_size);
  if (b->cubin_size) XXH3_64bits_update(&state, b->cubin, b->cubin_size);
  XXH3_64bits_update(&state, b->meta, b->meta_size);
  put_u64(h + 56, XXH3_64bits_digest(&state));
  put_u64(h + 64, XXH3_64bits(h, 64));

  int fd = mkstemp(tmp);
  const char *failed = NULL;
  if (fd < 0) {
    failed = "cannot create a temporary file";
  } else {
    if (write_all(fd, h, sizeof h) || write_all(fd, b->ptx, b->ptx_size) ||
        (b->cubin_size && write_all(fd, b->cubin, b->cubin_size)) || write_all(fd, b->meta, b->meta_size))
      failed = "write failed";
    else if (fchmod(fd, 0644))
      failed = "chmod failed";
    if (close(fd) && !failed) failed = "close failed";
    if (!failed && rename(tmp, path)) failed = "rename failed";
    if (failed) unlink(tmp);
  }
  if (failed && yk_warn_first(ctx, YK_WARN_CACHE_WRITE_FAILED))
    yk_warn(ctx, "kernel cache: writing %s: %s (%s); kernels stay in memory", path, failed, strerror(errno));
  char why[PATH_MAX + 256];
  if (!failed && disk->max_bytes &&
      yk_disk_cache_prune(disk, disk->max_bytes, 0, 0, NULL, NULL, why, sizeof why) != YK_OK &&
      yk_warn_first(ctx, YK_WARN_CACHE_PRUNE_FAILED))
    yk_warn(ctx, "kernel cache: keeping %s within YK_CACHE_MAX_SIZE: %s", disk->dir, why);
}

/* ---- listing, verifying, clearing (yk/jit.h) ---- */

int yk_disk_cache_entry_key(const char *name, uint8_t key[16]) {
  if (strlen(name) != 32 + strlen(YK_CACHE_SUFFIX) || strcmp(name + 32, YK_CACHE_SUFFIX)) return 0;
  char hex[33];
  memcpy(hex, name, 32);
  hex[32] = '\0';
  return yk_key_from_hex(hex, key) == 0;
}

int yk_disk_cache_is_temp_name(const char *name) { return name[0] == '.' && strstr(name, ".tmp-") != NULL; }

static int list_dir(const char *dir, int read_only, int verify, void (*fn)(void *, const yk_cache_entry *), void *user,
                    int *entries, int *invalid) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : 1;
  struct dirent *de;
  while ((de = readdir(d))) {
    uint8_t key[16];
    if (!yk_disk_cache_entry_key(de->d_name, key)) continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    entry_facts facts;
    const char *problem = read_entry(path, key, verify, NULL, &facts);
    yk_binary meta_only = {.meta = facts.meta};
    yk_binary_parse_meta(&meta_only);
    char spec[512], target[32], kernel[96];
    yk_cache_entry e = {
        .path = path,
        .spec = yk_binary_meta_field(&meta_only, "spec", spec, sizeof spec),
        .arch = yk_binary_meta_field(&meta_only, "target", target, sizeof target),
        .kernel = yk_binary_meta_field(&meta_only, "kernel", kernel, sizeof kernel),
        .file_bytes = facts.file_bytes,
        .ptx_bytes = facts.ptx_bytes,
        .cubin_bytes = facts.cubin_bytes,
        .registers = meta_only.info.registers,
        .spill_store_bytes = meta_only.info.spill_store_bytes,
        .spill_load_bytes = meta_only.info.spill_load_bytes,
        .stack_bytes = meta_only.info.stack_bytes,
        .shared_bytes = meta_only.info.shared_bytes,
        .compile_ms = meta_only.info.compile_ms,
        .read_only = read_only,
        .valid = problem == NULL,
        .problem = problem ? problem : "",
        .other_version = problem == yk_disk_cache_other_version,
    };
    memcpy(e.key, de->d_name, 32); /* the key's hex digits (e.key[32] is 0 from the initializer) */
    free(meta_only.meta);
    if (entries) (*entries)++;
    if (yk_disk_cache_damaged(problem) && invalid) (*invalid)++;
    if (fn) fn(user, &e);
  }
  closedir(d);
  return 0;
}

yk_status yk_cache_list(yk_ctx *ctx, int verify, void (*fn)(void *, const yk_cache_entry *), void *user, int *entries,
                        int *invalid) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (entries) *entries = 0;
  if (invalid) *invalid = 0;
  const yk_disk_cache *disk = &ctx->cache.disk;
  if (disk->dir[0] && list_dir(disk->dir, 0, verify, fn, user, entries, invalid))
    return yk_error(ctx, YK_ERR_IO, "cannot read cache directory %s: %s", disk->dir, strerror(errno));
  for (int i = 0; i < disk->read_dir_count; i++)
    if (list_dir(disk->read_dirs[i], 1, verify, fn, user, entries, invalid))
      return yk_error(ctx, YK_ERR_IO, "cannot read cache directory %s: %s", disk->read_dirs[i], strerror(errno));
  return YK_OK;
}

yk_status yk_cache_clear(yk_ctx *ctx, int *removed) {
  if (!ctx) return YK_ERR_INVALID_ARGUMENT;
  if (removed) *removed = 0;
  const yk_disk_cache *disk = &ctx->cache.disk;
  if (!disk->dir[0]) return YK_OK;
  DIR *d = opendir(disk->dir);
  if (!d) return errno == ENOENT ? YK_OK : yk_error(ctx, YK_ERR_IO, "cannot read %s: %s", disk->dir, strerror(errno));
  struct dirent *de;
  yk_status status = YK_OK;
  while ((de = readdir(d))) {
    uint8_t key[16];
    const int stale_tmp = yk_disk_cache_is_temp_name(de->d_name);
    if (!stale_tmp && !yk_disk_cache_entry_key(de->d_name, key)) continue;
    char path[PATH_MAX + 256];
    snprintf(path, sizeof path, "%s/%s", disk->dir, de->d_name);
    if (unlink(path) == 0) {
      if (removed && !stale_tmp) (*removed)++;
    } else if (status == YK_OK) {
      status = yk_error(ctx, YK_ERR_IO, "cannot remove %s: %s", path, strerror(errno));
    }
  }
  closedir(d);
  return status;
}
