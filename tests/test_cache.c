/* The kernel cache: memory and disk hits, every kind of damaged entry, concurrency across threads
 * and processes, read-only and unwritable directories, untrusted directories and entries, pruning. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/disk_cache.h"
#include "tests/support.h"

#define SPEC "rms_norm:dtype=bf16,hidden=1024"
#define SPEC2 "act_and_mul:dtype=f16,d=2048"

typedef struct {
  char text[16384];
  int count;
  pthread_mutex_t lock;
} log_capture;

static void capture(void *user, yk_log_level level, const char *message) {
  log_capture *c = user;
  (void)level;
  pthread_mutex_lock(&c->lock);
  size_t used = strlen(c->text);
  snprintf(c->text + used, sizeof c->text - used, "%s\n", message);
  c->count++;
  pthread_mutex_unlock(&c->lock);
}

static yk_ctx *cache_ctx(const char *dir, const char *read_path, log_capture *log) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_dir = dir;
  o.cache_path = read_path ? read_path : "";
  if (log) {
    memset(log->text, 0, sizeof log->text);
    log->count = 0;
    pthread_mutex_init(&log->lock, NULL);
    o.log = capture;
    o.log_user = log;
  }
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK, "%s", yk_ctx_last_error(NULL));
  return ctx;
}

static int compile(yk_ctx *ctx, const char *spec) {
  int compiled = -1;
  cr_assert_eq(yk_spec_compile(ctx, spec, "sm_90", &compiled), YK_OK, "%s", yk_ctx_last_error(ctx));
  return compiled;
}

typedef struct {
  char path[1024];
  int count, invalid, read_only, other_version, other_not_valid;
  char problem[128];
} listing;

static void remember(void *user, const yk_cache_entry *e) {
  listing *l = user;
  snprintf(l->path, sizeof l->path, "%s", e->path);
  snprintf(l->problem, sizeof l->problem, "%s", e->problem);
  l->read_only += e->read_only;
  l->other_version += e->other_version;
  l->other_not_valid += e->other_version && !e->valid && e->problem[0];
}

static listing list(yk_ctx *ctx, int verify) {
  listing l = {0};
  cr_assert_eq(yk_cache_list(ctx, verify, remember, &l, &l.count, &l.invalid), YK_OK, "%s", yk_ctx_last_error(ctx));
  return l;
}

static int files_matching(const char *dir, const char *needle) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, needle) != NULL;
  if (d) closedir(d);
  return n;
}

Test(cache, miss_then_disk_hit_then_memory_hit) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "hit");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(a, SPEC), 1, "first compile must run NVRTC");
  cr_assert_eq(compile(a, SPEC), 0, "second must hit memory");
  yk_ctx *b = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(b, SPEC), 0, "a new context must hit the disk");
  listing l = list(b, 1);
  cr_assert_eq(l.count, 1);
  cr_assert_eq(l.invalid, 0);
  cr_assert_eq(files_matching(dir, ".tmp-"), 0, "temporary file left behind");
  yk_ctx_destroy(a), yk_ctx_destroy(b);
}

typedef enum { FLIP_PAYLOAD, FLIP_HEADER, TRUNCATE, FOREIGN, EMPTY, TRAILING, CORRUPTION_KINDS } corruption;
static const char *const corruption_names[] = {"flip payload", "flip header", "truncate",
                                               "foreign",      "empty",       "trailing"};
static const char *const expected_problem[] = {
    "payload checksum mismatch",     "header checksum mismatch", "truncated",
    "not a yaie-kernels cache file", "truncated header",         "trailing bytes"};

static void damage(const char *path, corruption kind) {
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  FILE *f = fopen(path, kind == FOREIGN || kind == EMPTY ? "wb" : "r+b");
  cr_assert_not_null(f);
  if (kind == FLIP_PAYLOAD || kind == FLIP_HEADER) {
    long at = kind == FLIP_PAYLOAD ? (long)st.st_size - 40 : 20;
    fseek(f, at, SEEK_SET);
    int c = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(c ^ 0x5a, f);
  } else if (kind == TRUNCATE) {
    cr_assert_eq(ftruncate(fileno(f), st.st_size / 2), 0);
  } else if (kind == FOREIGN) {
    fputs("#!/bin/sh\necho this is not a cache entry, but it is long enough to be read as a header\n", f);
  } else if (kind == TRAILING) {
    fseek(f, 0, SEEK_END);
    fputs("extra", f);
  }
  fclose(f);
}

Test(cache, damaged_entries_are_misses_and_get_rewritten) {
  for (int kind = 0; kind < CORRUPTION_KINDS; kind++) {
    char dir[512];
    ts_temp_dir(dir, sizeof dir, "damaged");
    yk_ctx *a = cache_ctx(dir, NULL, NULL);
    cr_assert_eq(compile(a, SPEC), 1);
    listing before = list(a, 1);
    yk_ctx_destroy(a);
    damage(before.path, (corruption)kind);

    yk_ctx *checker = cache_ctx(dir, NULL, NULL);
    listing damaged = list(checker, 1);
    yk_ctx_destroy(checker);
    cr_assert_eq(damaged.invalid, 1, "%s: verify did not flag the entry", corruption_names[kind]);
    cr_assert(strstr(damaged.problem, expected_problem[kind]), "%s: problem '%s', expected '%s'",
              corruption_names[kind], damaged.problem, expected_problem[kind]);

    log_capture log;
    yk_ctx *b = cache_ctx(dir, NULL, &log);
    cr_assert_eq(compile(b, SPEC), 1, "%s: damaged entry was used", corruption_names[kind]);
    cr_assert(strstr(log.text, expected_problem[kind]) && strstr(log.text, "recompiling"), "%s: warning was '%s'",
              corruption_names[kind], log.text);
    listing after = list(b, 1);
    cr_assert_eq(after.count, 1);
    cr_assert_eq(after.invalid, 0, "%s: entry not rewritten whole", corruption_names[kind]);
    yk_ctx_destroy(b);
  }
}

typedef struct {
  yk_ctx *ctx;
  int compiled;
  yk_status status;
} thread_result;

static void *compile_thread(void *p) {
  thread_result *r = p;
  r->status = yk_spec_compile(r->ctx, SPEC2, "sm_90", &r->compiled);
  return NULL;
}

/* Several threads ask for one missing kernel: one compiles, the rest wait and share it. */
Test(cache, threads_asking_for_one_kernel_compile_it_once) {
  yk_ctx_options o;
  yk_ctx_options_init(&o);
  o.device = YK_DEVICE_CPU;
  o.cache_memory_only = 1;
  yk_ctx *ctx;
  cr_assert_eq(yk_ctx_create(&o, &ctx), YK_OK);
  enum { THREADS = 8 };
  pthread_t threads[THREADS];
  thread_result results[THREADS];
  for (int i = 0; i < THREADS; i++) {
    results[i] = (thread_result){ctx, -1, YK_ERR_INTERNAL};
    cr_assert_eq(pthread_create(&threads[i], NULL, compile_thread, &results[i]), 0);
  }
  int compiled = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(threads[i], NULL);
    cr_assert_eq(results[i].status, YK_OK);
    compiled += results[i].compiled;
  }
  cr_assert_eq(compiled, 1, "%d threads ran NVRTC for one kernel", compiled);
  yk_ctx_destroy(ctx);
}

/* Processes warming one directory at once leave only whole, valid entries and no temporaries. */
Test(cache, processes_warming_one_directory_leave_valid_entries, .timeout = 300) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "procs");
  enum { PROCESSES = 4 };
  pid_t pids[PROCESSES];
  for (int i = 0; i < PROCESSES; i++) {
    pids[i] = fork();
    cr_assert_geq(pids[i], 0);
    if (pids[i] == 0) {
      yk_ctx_options o;
      yk_ctx_options_init(&o);
      o.device = YK_DEVICE_CPU;
      o.cache_dir = dir;
      yk_ctx *ctx;
      if (yk_ctx_create(&o, &ctx) != YK_OK) _exit(2);
      yk_warm_options w = {.archs = "sm_90", .ops = "rms_norm,rope", .dtypes = "bf16", .jobs = 1};
      _exit(yk_warm(ctx, &w, NULL) == YK_OK ? 0 : 1);
    }
  }
  for (int i = 0; i < PROCESSES; i++) {
    int status;
    waitpid(pids[i], &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "warming process %d failed", i);
  }
  yk_ctx *ctx = cache_ctx(dir, NULL, NULL);
  yk_warm_options w = {.archs = "sm_90", .ops = "rms_norm,rope", .dtypes = "bf16"};
  yk_warm_result r;
  cr_assert_eq(yk_warm(ctx, &w, &r), YK_OK);
  cr_assert_eq(r.cached, r.total, "after the race, %d of %d were not in the cache", r.total - r.cached, r.total);
  listing l = list(ctx, 1);
  cr_assert_eq(l.count, r.total);
  cr_assert_eq(l.invalid, 0);
  cr_assert_eq(files_matching(dir, ".tmp-"), 0, "temporary files left behind");
  yk_ctx_destroy(ctx);
}

/* A shipped cache in YK_CACHE_PATH is read after the main directory and never written. */
Test(cache, read_only_path_is_searched_after_the_directory) {
  char shipped[512], mine[512];
  ts_temp_dir(shipped, sizeof shipped, "shipped");
  ts_temp_dir(mine, sizeof mine, "mine");
  yk_ctx *a = cache_ctx(shipped, NULL, NULL);
  cr_assert_eq(compile(a, SPEC), 1);
  yk_ctx_destroy(a);
  yk_ctx *b = cache_ctx(mine, shipped, NULL);
  cr_assert_eq(compile(b, SPEC), 0, "entry in the read-only path not found");
  cr_assert_eq(files_matching(mine, ".ykc"), 0, "a hit in the read-only path was copied into the directory");
  listing l = list(b, 0);
  cr_assert_eq(l.count, 1);
  cr_assert_eq(l.read_only, 1);
  int removed = -1;
  cr_assert_eq(yk_cache_clear(b, &removed), YK_OK);
  cr_assert_eq(files_matching(shipped, ".ykc"), 1, "clear touched the read-only path");
  yk_ctx_destroy(b);
}

/* A directory that cannot be created: memory only, one warning, kernels still compile. */
Test(cache, uncreatable_directory_falls_back_to_memory) {
  char dir[512], file[600], bad[700];
  ts_temp_dir(dir, sizeof dir, "uncreatable");
  snprintf(file, sizeof file, "%s/a-file", dir);
  fclose(fopen(file, "w"));
  snprintf(bad, sizeof bad, "%s/cache", file);
  log_capture log;
  yk_ctx *ctx = cache_ctx(bad, NULL, &log);
  cr_assert_eq(log.count, 1, "warnings: %s", log.text);
  cr_assert(strstr(log.text, "memory only"), "warning was '%s'", log.text);
  cr_assert_eq(compile(ctx, SPEC), 1);
  cr_assert_eq(compile(ctx, SPEC), 0);
  cr_assert_eq(compile(ctx, SPEC2), 1);
  cr_assert_eq(log.count, 1, "more warnings: %s", log.text);
  yk_ctx_info info;
  yk_ctx_get_info(ctx, &info);
  cr_assert_str_eq(info.cache_dir, "");
  yk_ctx_destroy(ctx);
}

/* A directory we may read but not write: its entries are used, new kernels stay in memory, and
 * the context warns once. As root, write permission is dropped by running as nobody. */
Test(cache, unwritable_directory_is_read_and_warned_about_once) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "unwritable");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(a, SPEC), 1);
  yk_ctx_destroy(a);
  if (geteuid() == 0) {
    cr_assert_eq(chmod(dir, 0755), 0);
    cr_assert_eq(seteuid(65534), 0, "cannot drop to nobody");
  } else {
    cr_assert_eq(chmod(dir, 0555), 0);
  }
  log_capture log;
  yk_ctx *b = cache_ctx(dir, NULL, &log);
  cr_assert_eq(compile(b, SPEC), 0, "existing entry not read");
  cr_assert_eq(compile(b, SPEC2), 1);
  cr_assert_eq(log.count, 1, "warnings: %s", log.text);
  cr_assert(strstr(log.text, "not writable"), "warning was '%s'", log.text);
  yk_ctx_destroy(b);
  if (geteuid() != 0 && getuid() == 0) cr_assert_eq(seteuid(0), 0);
  chmod(dir, 0755);
  cr_assert_eq(files_matching(dir, ".ykc"), 1, "a kernel was written to a read-only directory");
}

/* Directories others can write, and entries others own or can write, could hold a planted cubin. */
Test(cache, untrusted_directories_and_entries_are_skipped) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "untrusted");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(a, SPEC), 1);
  listing l = list(a, 0);
  yk_ctx_destroy(a);

  cr_assert_eq(chmod(dir, 0777), 0);
  log_capture log;
  yk_ctx *b = cache_ctx(dir, NULL, &log);
  cr_assert(strstr(log.text, "writable by other users; not trusted"), "warning was '%s'", log.text);
  cr_assert_eq(compile(b, SPEC), 1, "an entry in an untrusted directory was used");
  yk_ctx_destroy(b);
  cr_assert_eq(chmod(dir, 0755), 0);

  cr_assert_eq(chmod(l.path, 0666), 0);
  yk_ctx *c = cache_ctx(dir, NULL, &log);
  cr_assert_eq(compile(c, SPEC), 1, "a world-writable entry was used");
  cr_assert(strstr(log.text, "writable by other users; ignoring it"), "warning was '%s'", log.text);
  yk_ctx_destroy(c);

  if (geteuid() == 0) {
    cr_assert_eq(chown(l.path, 65534, 65534), 0);
    yk_ctx *d = cache_ctx(dir, NULL, &log);
    cr_assert_eq(compile(d, SPEC), 1, "an entry owned by another user was used");
    cr_assert(strstr(log.text, "owned by another user"), "warning was '%s'", log.text);
    yk_ctx_destroy(d);
  } else {
    cr_log_warn("not root: the foreign-owner case needs chown and was not run");
  }
}

Test(cache, clear_and_memory_only) {
  char dir[512];
  ts_temp_dir(dir, sizeof dir, "clear");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  compile(a, SPEC), compile(a, SPEC2);
  int removed = 0;
  cr_assert_eq(yk_cache_clear(a, &removed), YK_OK);
  cr_assert_eq(removed, 2);
  cr_assert_eq(list(a, 0).count, 0);
  yk_ctx_destroy(a);

  setenv("YK_CACHE", "memory", 1);
  yk_ctx *b = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(b, SPEC), 1);
  cr_assert_eq(files_matching(dir, ".ykc"), 0, "YK_CACHE=memory wrote to disk");
  yk_ctx_destroy(b);
}

/* ---- pruning (cache/disk_prune.c) ---- */

#define SPEC3 "rms_norm:dtype=f16,hidden=4096"

typedef struct {
  char paths[8][1024];
  int count;
} path_set;

static void add_path(void *user, const yk_cache_entry *e) {
  path_set *s = user;
  if (s->count < 8 && !e->read_only) snprintf(s->paths[s->count++], sizeof s->paths[0], "%s", e->path);
}

/* Compiles spec and returns its entry's path (the one the listing did not have before). */
static void compile_into(yk_ctx *ctx, const char *spec, char *path, size_t size) {
  path_set before = {0}, after = {0};
  cr_assert_eq(yk_cache_list(ctx, 0, add_path, &before, NULL, NULL), YK_OK);
  cr_assert_eq(compile(ctx, spec), 1);
  cr_assert_eq(yk_cache_list(ctx, 0, add_path, &after, NULL, NULL), YK_OK);
  for (int i = 0; i < after.count; i++) {
    int known = 0;
    for (int j = 0; j < before.count; j++) known |= !strcmp(after.paths[i], before.paths[j]);
    if (!known) {
      snprintf(path, size, "%s", after.paths[i]);
      return;
    }
  }
  cr_assert_fail("no new entry for %s", spec);
}

/* Last used seconds_ago seconds ago, as a store or a disk load would leave it. */
static void set_age(const char *path, long seconds_ago) {
  struct timespec t[2];
  clock_gettime(CLOCK_REALTIME, &t[0]);
  t[0].tv_sec -= seconds_ago;
  t[1] = t[0];
  cr_assert_eq(utimensat(AT_FDCWD, path, t, 0), 0, "%s", path);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

static uint64_t file_bytes(const char *path) {
  struct stat st;
  cr_assert_eq(stat(path, &st), 0, "%s", path);
  return (uint64_t)st.st_size;
}

/* A disk load marks an entry used: the size bound then takes the entry used longest ago, not the
 * one stored first. */
Test(cache, prune_removes_least_recently_used_first) {
  char dir[512], p1[1024], p2[1024], p3[1024];
  ts_temp_dir(dir, sizeof dir, "prune-lru");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  compile_into(a, SPEC, p1, sizeof p1);
  compile_into(a, SPEC2, p2, sizeof p2);
  compile_into(a, SPEC3, p3, sizeof p3);
  yk_ctx_destroy(a);
  set_age(p1, 300), set_age(p2, 200), set_age(p3, 100);

  yk_ctx *b = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(compile(b, SPEC), 0, "the oldest entry must load from disk");
  const uint64_t keep = file_bytes(p1) + file_bytes(p3);
  int removed = -1;
  uint64_t kept = 0;
  cr_assert_eq(yk_cache_prune(b, keep, 0, &removed, &kept), YK_OK, "%s", yk_ctx_last_error(b));
  cr_assert_eq(removed, 1);
  cr_assert_eq(kept, keep);
  cr_assert(!exists(p2), "the least recently used entry stayed");
  cr_assert(exists(p1), "the entry just loaded from disk was removed");
  cr_assert(exists(p3));

  /* one byte under what is left: the older of the two goes; an unchanged bound removes nothing */
  cr_assert_eq(yk_cache_prune(b, keep - 1, 0, &removed, &kept), YK_OK);
  cr_assert_eq(removed, 1);
  cr_assert(exists(p1) && !exists(p3), "p3 (used 100 s ago) is older than p1 (just loaded)");
  cr_assert_eq(kept, file_bytes(p1));
  cr_assert_eq(yk_cache_prune(b, keep - 1, 0, &removed, &kept), YK_OK);
  cr_assert_eq(removed, 0);
  cr_assert_eq(yk_cache_prune(b, 1, 0, &removed, &kept), YK_OK);
  cr_assert(removed == 1 && kept == 0 && !exists(p1));
  cr_assert_eq(compile(b, SPEC), 0, "pruning must leave the kernels in memory alone");
  yk_ctx_destroy(b);
}

/* Age, entries that do not check out and temporary files a dead writer left go; a fresh
 * temporary file, files that are not entries and read-only directories stay. */
Test(cache, prune_by_age_and_soundness) {
  char dir[512], shipped[512], old[1024], fresh[1024], bad[1024], shipped_entry[1024];
  char stale_tmp[700], live_tmp[700], tune_db[700];
  ts_temp_dir(dir, sizeof dir, "prune-age");
  ts_temp_dir(shipped, sizeof shipped, "prune-shipped");
  yk_ctx *s = cache_ctx(shipped, NULL, NULL);
  compile_into(s, SPEC3, shipped_entry, sizeof shipped_entry);
  yk_ctx_destroy(s);
  set_age(shipped_entry, 30 * 86400);

  yk_ctx *a = cache_ctx(dir, shipped, NULL);
  compile_into(a, SPEC, old, sizeof old);
  compile_into(a, SPEC2, fresh, sizeof fresh);
  set_age(old, 3 * 86400);
  snprintf(bad, sizeof bad, "%s/%032x%s", dir, 7, ".ykc");
  FILE *f = fopen(bad, "wb");
  fputs("a file named like an entry, from another version or torn", f);
  fclose(f);
  char other[1024]; /* another library's entry: a sound header of another format version */
  snprintf(other, sizeof other, "%s/%032x%s", dir, 8, ".ykc");
  FILE *from = fopen(fresh, "rb"), *to = fopen(other, "wb");
  for (int c, at = 0; (c = fgetc(from)) != EOF; at++) fputc(at == 8 ? c + 1 : c, to); /* the version's low byte */
  fclose(from), fclose(to);
  set_age(other, 86400);
  snprintf(stale_tmp, sizeof stale_tmp, "%s/.0123.tmp-abcdef", dir);
  snprintf(live_tmp, sizeof live_tmp, "%s/.4567.tmp-ghijkl", dir);
  snprintf(tune_db, sizeof tune_db, "%s/tune.jsonl", dir);
  fclose(fopen(stale_tmp, "w")), fclose(fopen(live_tmp, "w")), fclose(fopen(tune_db, "w"));
  set_age(stale_tmp, 7200);

  /* listing: the other version's entry is named as such, and only the bad one counts as damaged */
  listing l = list(a, 1);
  cr_assert_eq(l.count, 5, "old, fresh, bad, other and the read-only one: %d", l.count);
  cr_assert_eq(l.invalid, 1, "another format version's entry counted as damaged");
  cr_assert(l.other_version == 1 && l.other_not_valid == 1, "the other version's entry must be flagged, not valid");

  int removed = -1;
  uint64_t kept = 0;
  cr_assert_eq(yk_cache_prune(a, 0, 0, &removed, &kept), YK_OK, "%s", yk_ctx_last_error(a));
  cr_assert_eq(removed, 1, "only the bad entry goes without a bound");
  cr_assert(!exists(bad) && exists(old) && exists(fresh));
  cr_assert(!exists(stale_tmp), "an hour-old temporary file stayed");
  cr_assert(exists(live_tmp), "a temporary file being written was removed");
  cr_assert(exists(tune_db), "a file that is not an entry was removed");
  cr_assert(exists(other), "another format version's entry is not damaged");
  cr_assert_eq(kept, file_bytes(old) + file_bytes(fresh) + file_bytes(other));

  cr_assert_eq(yk_cache_prune(a, 0, 2 * 86400, &removed, &kept), YK_OK);
  cr_assert_eq(removed, 1);
  cr_assert(!exists(old) && exists(fresh), "the entry unused for 3 days must go, the fresh one stay");
  cr_assert(exists(shipped_entry), "prune touched a read-only directory");
  cr_assert_eq(kept, file_bytes(fresh) + file_bytes(other));
  cr_assert_eq(yk_cache_prune(a, file_bytes(fresh), 0, &removed, &kept), YK_OK);
  cr_assert(removed == 1 && !exists(other) && exists(fresh), "the older entry goes first, whatever its version");
  yk_ctx_destroy(a);
}

/* YK_CACHE_MAX_SIZE prunes after every store; a value that is not a size is one warning, no bound. */
Test(cache, max_size_bounds_every_store) {
  char dir[512], p1[1024], p2[1024];
  ts_temp_dir(dir, sizeof dir, "prune-max");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  compile_into(a, SPEC, p1, sizeof p1);
  const uint64_t one = file_bytes(p1);
  yk_ctx_destroy(a);
  set_age(p1, 60);

  char bound[32];
  snprintf(bound, sizeof bound, "%llu", (unsigned long long)(one + one / 2));
  setenv("YK_CACHE_MAX_SIZE", bound, 1);
  log_capture log;
  yk_ctx *b = cache_ctx(dir, NULL, &log);
  compile_into(b, SPEC2, p2, sizeof p2);
  cr_assert(exists(p2) && !exists(p1), "a store past the bound must remove the older entry");
  cr_assert_eq(log.count, 0, "warnings: %s", log.text);
  yk_ctx_destroy(b);

  setenv("YK_CACHE_MAX_SIZE", "12 apples", 1);
  yk_ctx *c = cache_ctx(dir, NULL, &log);
  cr_assert_eq(log.count, 1, "warnings: %s", log.text);
  cr_assert(strstr(log.text, "YK_CACHE_MAX_SIZE=12 apples is not a size"), "warning was '%s'", log.text);
  cr_assert_eq(compile(c, SPEC), 1);
  cr_assert(exists(p2) && exists(p1), "no bound after a bad value");
  yk_ctx_destroy(c);
}

Test(cache, prune_bad_input_and_sizes) {
  cr_assert_eq(yk_cache_prune(NULL, 0, 0, NULL, NULL), YK_ERR_INVALID_ARGUMENT);
  char dir[512], p1[1024];
  ts_temp_dir(dir, sizeof dir, "prune-bad");
  yk_ctx *a = cache_ctx(dir, NULL, NULL);
  compile_into(a, SPEC, p1, sizeof p1);
  set_age(p1, 100 * 86400);
  int removed = 5;
  cr_assert_eq(yk_cache_prune(a, 0, -1, &removed, NULL), YK_ERR_INVALID_ARGUMENT);
  cr_assert(strstr(yk_ctx_last_error(a), "max_age_s -1 is negative"), "%s", yk_ctx_last_error(a));
  cr_assert_eq(removed, 0);
  cr_assert(exists(p1), "a refused prune removed an entry");
  yk_ctx_destroy(a);

  setenv("YK_CACHE", "memory", 1);
  yk_ctx *m = cache_ctx(dir, NULL, NULL);
  cr_assert_eq(yk_cache_prune(m, 1, 1, &removed, NULL), YK_OK);
  cr_assert_eq(removed, 0);
  cr_assert(exists(p1), "a memory-only context pruned the directory");
  yk_ctx_destroy(m);

  static const struct {
    const char *text;
    uint64_t bytes;
  } good[] = {{"0", 0}, {"1024", 1024}, {"1.5K", 1536}, {"2MiB", 2u << 20}, {"3gb", 3ull << 30}, {"1T", 1ull << 40}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    uint64_t v = 7;
    cr_assert_eq(yk_disk_cache_parse_size(good[i].text, &v), 0, "%s", good[i].text);
    cr_assert_eq(v, good[i].bytes, "%s: %llu", good[i].text, (unsigned long long)v);
  }
  static const char *const bad[] = {"", "-1", "1X", "K", "1KK", "nan", "inf", "1e30", "12 apples"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t v = 7;
    cr_assert_neq(yk_disk_cache_parse_size(bad[i], &v), 0, "'%s' parsed", bad[i]);
    cr_assert_eq(v, 7, "'%s' changed the result", bad[i]);
  }
}
