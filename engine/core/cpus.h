/* cpus.h - how many CPUs this process may use (workers = "auto"): the
 * online CPUs, fewer when its affinity mask (taskset, a cpuset) or its
 * cgroup's CPU quota (cgroup v2 cpu.max, v1 cpu.cfs_quota_us: a container's
 * CPU limit) allows fewer. */
#ifndef SL_CPUS_H
#define SL_CPUS_H

struct sl_cpus {
  int online;   /* sysconf(_SC_NPROCESSORS_ONLN), at least 1 */
  int allowed;  /* CPUs in the affinity mask; online when unknown */
  double quota; /* CPUs' worth of time per period; -1: none set */
  int n;        /* the least of the three (a quota rounded up), >= 1 */
};

/* Fill *c for this process. */
void sl_cpus_available(struct sl_cpus *c);

/* The least of online, allowed and quota rounded up (none when quota
 * <= 0), at least 1: sl_cpus_available's n. */
int sl_cpus_count(int online, int allowed, double quota);

/* The CPU quota of the cgroup that cgroup_file (in /proc/self/cgroup's
 * format) names, under the cgroup file systems mounted at root
 * (/sys/fs/cgroup): the least quota / period over that cgroup and each
 * ancestor up to the mount's root, from v2's cpu.max or v1's
 * cpu.cfs_quota_us and cpu.cfs_period_us. -1 when none is set or none can
 * be read. For tests: any root and file. */
double sl_cpus_quota(const char *root, const char *cgroup_file);

#endif
