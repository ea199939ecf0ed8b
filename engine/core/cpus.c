/* cpus.c - how many CPUs this process may use; see cpus.h. */
#include "cpus.h"

#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The first line of path into buf (its newline cut); 0, or -1. */
static int read_line(const char *path, char *buf, size_t n) {
  FILE *f = fopen(path, "re");
  int ok;
  if (f == NULL)
    return -1;
  ok = fgets(buf, (int)n, f) != NULL;
  fclose(f);
  if (!ok)
    return -1;
  buf[strcspn(buf, "\n")] = '\0';
  return 0;
}

/* One cgroup folder's quota in CPUs, or -1: v2's "max 100000" / "50000
 * 100000", else v1's cfs_quota_us (-1: none) over cfs_period_us. */
static double dir_quota(const char *dir) {
  char path[4096], a[64], b[64];
  long long q, p;
  snprintf(path, sizeof(path), "%s/cpu.max", dir);
  if (read_line(path, a, sizeof(a)) == 0) {
    if (sscanf(a, "%lld %lld", &q, &p) == 2 && q > 0 && p > 0)
      return (double)q / (double)p;
    return -1; /* "max ..." */
  }
  snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", dir);
  if (read_line(path, a, sizeof(a)) != 0)
    return -1;
  snprintf(path, sizeof(path), "%s/cpu.cfs_period_us", dir);
  if (read_line(path, b, sizeof(b)) != 0)
    return -1;
  q = strtoll(a, NULL, 10);
  p = strtoll(b, NULL, 10);
  return q > 0 && p > 0 ? (double)q / (double)p : -1;
}

/* The least quota over base + path and its ancestors down to base. A
 * cgroup path that is not under this mount (a container that sees its own
 * cgroup at the mount's root, without a cgroup namespace) still reaches
 * base, where the container's limit is. */
static double walk(const char *base, const char *path, double best) {
  char dir[4096], *slash;
  size_t blen = strlen(base);
  double q;
  if (snprintf(dir, sizeof(dir), "%s%s", base, path) >= (int)sizeof(dir))
    return best;
  for (;;) {
    size_t len = strlen(dir);
    while (len > blen && dir[len - 1] == '/') /* "/" and trailing ones */
      dir[--len] = '\0';
    q = dir_quota(dir);
    if (q > 0 && (best < 0 || q < best))
      best = q;
    if (len <= blen)
      return best;
    slash = strrchr(dir + blen, '/');
    if (slash == NULL)
      *(dir + blen) = '\0';
    else
      *slash = '\0';
  }
}

/* Whether the comma list ctl names controller want. */
static int names(const char *ctl, const char *want) {
  size_t n = strlen(want);
  while (*ctl) {
    size_t k = strcspn(ctl, ",");
    if (k == n && strncmp(ctl, want, n) == 0)
      return 1;
    ctl += k + (ctl[k] == ',');
  }
  return 0;
}

double sl_cpus_quota(const char *root, const char *cgroup_file) {
  FILE *f = fopen(cgroup_file, "re");
  char line[4096], base[4096];
  double best = -1;
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f)) {
    char *ctl = strchr(line, ':'), *path;
    if (ctl == NULL || (path = strchr(ctl + 1, ':')) == NULL)
      continue;
    *path++ = '\0';
    ctl++;
    path[strcspn(path, "\n")] = '\0';
    if (path[0] != '/')
      continue;
    if (line[0] == '0' && line[1] == ':' && ctl[0] == '\0') { /* v2 */
      snprintf(base, sizeof(base), "%s", root);
      best = walk(base, path, best);
      snprintf(base, sizeof(base), "%s/unified", root); /* hybrid */
      best = walk(base, path, best);
    } else if (names(ctl, "cpu")) { /* v1: cpu, or cpu,cpuacct */
      snprintf(base, sizeof(base), "%s/%s", root, ctl);
      best = walk(base, path, best);
      if (strcmp(ctl, "cpu") != 0) {
        snprintf(base, sizeof(base), "%s/cpu", root);
        best = walk(base, path, best);
      }
    }
  }
  fclose(f);
  return best;
}

int sl_cpus_count(int online, int allowed, double quota) {
  int n = allowed < online ? allowed : online;
  /* compared as a double first: a quota past INT_MAX CPUs (cpu.max takes
   * up to 2^44 - 1 us per 1 ms) cast to int is undefined, INT_MIN on x86,
   * and gave 1 worker */
  if (quota > 0 && quota < (double)n)
    n = (int)ceil(quota - 1e-9); /* 1.5 CPUs: 2 threads; 0.5: 1 */
  return n < 1 ? 1 : n;
}

void sl_cpus_available(struct sl_cpus *c) {
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  c->online = online < 1 ? 1 : online > 4096 ? 4096 : (int)online;
  c->allowed = c->online;
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
    c->allowed = CPU_COUNT(&set);
  c->quota = sl_cpus_quota("/sys/fs/cgroup", "/proc/self/cgroup");
  c->n = sl_cpus_count(c->online, c->allowed, c->quota);
}
