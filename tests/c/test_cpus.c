/* test_cpus.c - workers = "auto": the cgroup CPU quota read from fixture
 * trees in v2 (cpu.max), hybrid (v2 under unified/) and v1 (cpu,cpuacct
 * or cpu) layouts, the least over a cgroup and its ancestors, and what the
 * process may use now (real /proc and /sys). */
#include <math.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpus.h"
#include "test.h"

static char root[256];

/* mkdir -p of root/rel */
static void mkdirs(const char *rel) {
  char p[512];
  size_t i;
  snprintf(p, sizeof(p), "%s/%s", root, rel);
  for (i = strlen(root) + 1; p[i]; i++)
    if (p[i] == '/') {
      p[i] = '\0';
      mkdir(p, 0755);
      p[i] = '/';
    }
  mkdir(p, 0755);
}

static void put(const char *rel, const char *fmt, ...) {
  char p[512];
  va_list ap;
  FILE *f;
  snprintf(p, sizeof(p), "%s/%s", root, rel);
  f = fopen(p, "w");
  if (f == NULL)
    return;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

static double quota(const char *cgroup_lines) {
  char fs[300], file[300];
  snprintf(fs, sizeof(fs), "%s/fs", root);
  snprintf(file, sizeof(file), "%s/cgroup", root);
  put("cgroup", "%s", cgroup_lines);
  return sl_cpus_quota(fs, file);
}

static void cleanup(void) {
  char cmd[300];
  snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", root);
}

/* An empty fixture tree under a folder of this process's own, removed at
 * exit. */
static void fresh(void) {
  if (root[0] == '\0') {
    snprintf(root, sizeof(root), "/tmp/sl-test-cpus.%ld", (long)getpid());
    atexit(cleanup);
  } else {
    cleanup();
  }
  mkdir(root, 0755);
  mkdirs("fs");
}

TEST(cpus_v2_reads_cpu_max_of_the_cgroup_and_the_least_of_its_ancestors) {
  fresh();
  mkdirs("fs/kubepods/pod1/ctr");
  put("fs/cpu.max", "max 100000\n");
  put("fs/kubepods/cpu.max", "max 100000\n");
  put("fs/kubepods/pod1/cpu.max", "150000 100000\n"); /* a 1.5 CPU limit */
  put("fs/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  CHECK(fabs(quota("0::/kubepods/pod1/ctr\n") - 1.5) < 1e-9);
  put("fs/kubepods/pod1/ctr/cpu.max", "50000 100000\n");
  CHECK(fabs(quota("0::/kubepods/pod1/ctr\n") - 0.5) < 1e-9);
  put("fs/kubepods/pod1/ctr/cpu.max", "max 100000\n");
  put("fs/kubepods/pod1/cpu.max", "max 100000\n");
  CHECK(quota("0::/kubepods/pod1/ctr\n") < 0); /* none set */
}

TEST(cpus_a_cgroup_namespace_root_is_read_at_the_mount_root) {
  fresh();
  put("fs/cpu.max", "200000 100000\n");
  CHECK(fabs(quota("0::/\n") - 2.0) < 1e-9);
  /* a path not under this mount (no cgroup namespace): its root counts */
  CHECK(fabs(quota("0::/docker/abc\n") - 2.0) < 1e-9);
}

TEST(cpus_v1_reads_cfs_quota_over_period_in_either_mount_name) {
  fresh();
  mkdirs("fs/cpu,cpuacct/sys/app");
  put("fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  put("fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  put("fs/cpu,cpuacct/sys/app/cpu.cfs_quota_us", "25000\n");
  put("fs/cpu,cpuacct/sys/app/cpu.cfs_period_us", "50000\n");
  CHECK(fabs(quota("12:memory:/sys/app\n4:cpu,cpuacct:/sys/app\n") - 0.5) <
        1e-9);
  fresh();
  mkdirs("fs/cpu/sys");
  put("fs/cpu/sys/cpu.cfs_quota_us", "300000\n");
  put("fs/cpu/sys/cpu.cfs_period_us", "100000\n");
  CHECK(fabs(quota("2:cpuacct:/x\n1:cpu:/sys/app\n") - 3.0) < 1e-9);
  put("fs/cpu/sys/cpu.cfs_quota_us", "-1\n");
  CHECK(quota("1:cpu:/sys/app\n") < 0);
}

TEST(cpus_hybrid_reads_v2_under_unified) {
  fresh();
  mkdirs("fs/unified/app");
  put("fs/unified/app/cpu.max", "100000 100000\n");
  CHECK(fabs(quota("0::/app\n1:cpu:/\n") - 1.0) < 1e-9);
}

TEST(cpus_garbage_and_missing_files_mean_no_quota) {
  fresh();
  mkdirs("fs/a");
  put("fs/a/cpu.max", "lots\n");
  CHECK(quota("0::/a\n") < 0);
  put("fs/a/cpu.max", "0 100000\n");
  CHECK(quota("0::/a\n") < 0);
  CHECK(quota("no colon here\n:::\n0:\n") < 0);
  CHECK(quota("") < 0);
  CHECK(sl_cpus_quota("/nonexistent", "/nonexistent/cgroup") < 0);
}

/* cpu.max takes a quota up to 2^44 - 1 us over a period of 1 ms: some
 * 1.76e10 CPUs, no limit at all. It was cast to int (undefined; INT_MIN
 * on x86), taken as less than one CPU and rounded up to 1 worker. */
TEST(cpus_count_a_huge_quota_limits_nothing) {
  fresh();
  mkdirs("fs/a");
  put("fs/a/cpu.max", "17592186044415 1000\n");
  CHECK(quota("0::/a\n") > 1e10);
  CHECK_EQ(sl_cpus_count(8, 8, quota("0::/a\n")), 8);
  CHECK_EQ(sl_cpus_count(8, 4, 3e9), 4);
  CHECK_EQ(sl_cpus_count(8, 8, 1e300), 8);
  CHECK_EQ(sl_cpus_count(8, 8, 2.5), 3);
  CHECK_EQ(sl_cpus_count(8, 8, 0.25), 1);
  CHECK_EQ(sl_cpus_count(8, 8, -1), 8);
}

TEST(cpus_available_is_at_least_one_and_at_most_what_is_online) {
  struct sl_cpus c;
  sl_cpus_available(&c);
  CHECK(c.online >= 1);
  CHECK(c.allowed >= 1 && c.allowed <= c.online);
  CHECK(c.n >= 1 && c.n <= c.allowed);
  if (c.quota > 0)
    CHECK(c.n <= (int)ceil(c.quota));
}
