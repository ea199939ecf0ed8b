/* failmalloc.c - an LD_PRELOAD fault injector for the out-of-memory paths:
 * malloc, calloc, realloc, strdup and strndup called from the sluice binary
 * itself return NULL when the environment says so. Calls from libraries
 * (libc, libuv, LuaJIT internals, OpenSSL) always succeed, so a failure
 * lands on a check the engine wrote, or on the missing check.
 *
 * Built as $(BUILD)/tools/failmalloc.so (not sanitized: ASan replaces
 * malloc). Environment, all optional; with none set nothing fails:
 *   FAILMALLOC_DELAY_MS=T     fail nothing for T ms after the process started
 *   FAILMALLOC_DURATION_MS=D  then fail only for D ms (0: for ever)
 *   FAILMALLOC_AFTER=N        skip the first N eligible calls of the window
 *   FAILMALLOC_EVERY=K        fail every K-th eligible call (default 1)
 *   FAILMALLOC_PROB=P         or fail each with probability P (0..1) ...
 *   FAILMALLOC_SEED=S         ... drawn from seed S (default 1)
 *   FAILMALLOC_MAX=M          fail at most M calls in all (0: no limit)
 *   FAILMALLOC_LOG=PATH       append one line per failure: the caller's
 *                             offset in the binary (feed to addr2line -e)
 *   FAILMALLOC_CALLERS=A,B    only calls from these offsets (hex, as logged)
 * A call is eligible when it comes from the main executable and falls in
 * the window. Thread-safe: counters are atomics, nothing here allocates. */
#include <fcntl.h>
#include <link.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);

static uintptr_t exe_lo[8], exe_hi[8], exe_base;
static int exe_n;
static int active;                 /* any FAILMALLOC_* knob set */
static uint64_t start_ns, delay_ns, duration_ns;
static uint64_t after, every = 1, max_fail, seed = 1;
static double prob = -1;
static int log_fd = -1;
static _Atomic uint64_t eligible, failed;
static uintptr_t callers[32];
static int ncallers;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
  const char *s = getenv(name);
  if (!s || !*s) return dflt;
  active = 1;
  return strtoull(s, NULL, 10);
}

/* The first object dl_iterate_phdr reports is the executable. */
static int on_object(struct dl_phdr_info *info, size_t size, void *arg) {
  for (int i = 0; i < info->dlpi_phnum && exe_n < 8; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    exe_lo[exe_n] = info->dlpi_addr + ph->p_vaddr;
    exe_hi[exe_n] = exe_lo[exe_n] + ph->p_memsz;
    exe_n++;
  }
  exe_base = info->dlpi_addr;
  return 1;
}

__attribute__((constructor)) static void setup(void) {
  start_ns = now_ns();
  delay_ns = env_u64("FAILMALLOC_DELAY_MS", 0) * 1000000u;
  duration_ns = env_u64("FAILMALLOC_DURATION_MS", 0) * 1000000u;
  after = env_u64("FAILMALLOC_AFTER", 0);
  every = env_u64("FAILMALLOC_EVERY", 1);
  if (every == 0) every = 1;
  max_fail = env_u64("FAILMALLOC_MAX", 0);
  seed = env_u64("FAILMALLOC_SEED", 1);
  const char *p = getenv("FAILMALLOC_PROB");
  if (p && *p) {
    prob = strtod(p, NULL);
    active = 1;
  }
  const char *list = getenv("FAILMALLOC_CALLERS");
  while (list && *list && ncallers < 32) {
    char *end;
    callers[ncallers++] = (uintptr_t)strtoull(list, &end, 16);
    active = 1;
    list = *end == ',' ? end + 1 : NULL;
  }
  const char *log = getenv("FAILMALLOC_LOG");
  if (log && *log)
    log_fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  dl_iterate_phdr(on_object, NULL);
}

static uint64_t mix(uint64_t x) { /* splitmix64 */
  x += 0x9e3779b97f4a7c15u;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  return x ^ (x >> 31);
}

static void note(uintptr_t caller, const char *fn, size_t n) {
  if (log_fd < 0) return;
  char line[96];
  int len = snprintf(line, sizeof line, "%s 0x%lx %zu\n", fn,
                     (unsigned long)(caller - exe_base), n);
  if (len > 0 && write(log_fd, line, (size_t)len) < 0) return;
}

static int should_fail(uintptr_t caller, const char *fn, size_t n) {
  if (!active || !exe_n) return 0;
  int mine = 0;
  for (int i = 0; i < exe_n; i++)
    if (caller >= exe_lo[i] && caller < exe_hi[i]) mine = 1;
  if (!mine) return 0;
  if (ncallers) {
    int listed = 0;
    for (int i = 0; i < ncallers; i++)
      if (caller - exe_base == callers[i]) listed = 1;
    if (!listed) return 0;
  }
  uint64_t t = now_ns() - start_ns;
  if (t < delay_ns) return 0;
  if (duration_ns && t >= delay_ns + duration_ns) return 0;
  uint64_t k = atomic_fetch_add(&eligible, 1);
  if (k < after) return 0;
  k -= after;
  int fail;
  if (prob >= 0)
    fail = (double)(mix(k ^ (seed << 32)) >> 11) / 9007199254740992.0 < prob;
  else
    fail = k % every == 0;
  if (!fail) return 0;
  if (max_fail && atomic_fetch_add(&failed, 1) >= max_fail) return 0;
  note(caller, fn, n);
  return 1;
}

#define CALLER ((uintptr_t)__builtin_return_address(0))

void *malloc(size_t n) {
  if (should_fail(CALLER, "malloc", n)) return NULL;
  return __libc_malloc(n);
}

void *calloc(size_t n, size_t size) {
  if (should_fail(CALLER, "calloc", n * size)) return NULL;
  return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n) {
  if (n && should_fail(CALLER, "realloc", n)) return NULL;
  return __libc_realloc(p, n);
}

char *strdup(const char *s) {
  size_t n = strlen(s) + 1;
  if (should_fail(CALLER, "strdup", n)) return NULL;
  char *d = __libc_malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

char *strndup(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  if (should_fail(CALLER, "strndup", n + 1)) return NULL;
  char *d = __libc_malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}
