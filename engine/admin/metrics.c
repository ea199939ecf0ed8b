/* metrics.c - the admin server's and the process's own metrics; see
 * metrics.h. Process figures come from /proc and getrusage at each scrape
 * (names as Prometheus client libraries use them). Owns the two /proc
 * descriptors it keeps open in struct sl_metrics_admin. */
#include "metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "http.h"
#include "worker.h"

#define C SL_METRIC_COUNTER
#define G SL_METRIC_GAUGE
static const struct sl_metric m_build_info = {
    "sluice_build_info", "The running version.", G, {"version", NULL}};
static const struct sl_metric m_requests = {
    "sluice_admin_requests_total", "Admin API responses by status code.", C,
    {"server", "code", NULL}};
static const struct sl_metric m_tap_clients = {
    "sluice_tap_clients", "Tap clients connected now.", G, {0}};
static const struct sl_metric m_tap_lines = {
    "sluice_tap_lines_total", "Tap lines sent to clients.", C, {0}};
static const struct sl_metric m_tap_dropped = {
    "sluice_tap_lines_dropped_total",
    "Tap lines dropped because a client's buffer was full.", C, {0}};
static const struct sl_metric m_rss = {
    "process_resident_memory_bytes", "Resident memory size in bytes.", G,
    {0}};
static const struct sl_metric m_cpu = {
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.", C, {0}};
static const struct sl_metric m_fds = {
    "process_open_fds", "Number of open file descriptors.", G, {0}};
static const struct sl_metric m_max_fds = {
    "process_max_fds", "Maximum number of open file descriptors.", G, {0}};
static const struct sl_metric m_start = {
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.", G, {0}};
#undef C
#undef G

static void collect_admin(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  static const char *const reasons[] = {"limit", "fds", "memory", "idle",
                                        "tls"};
  const struct sl_metrics_admin *a = data;
  const struct sl_listener_stats *ls = sl_listener_stats(&a->srv->listener);
  const uint64_t refused[] = {ls->refused_limit, ls->refused_fds,
                              ls->shed_memory, ls->displaced,
                              ls->refused_tls};
  const char *v[] = {"admin", "admin", NULL};
  char num[8];
  int k;
  if (m == &m_build_info) {
    v[0] = SL_VERSION;
    sl_metric_put_u64(out, v, 1);
  } else if (m == &m_tap_clients) {
    sl_metric_put_u64(out, NULL, a->stats->tap_clients);
  } else if (m == &sl_worker_listener_open) {
    sl_metric_put_u64(out, v, sl_listener_open(&a->srv->listener));
  } else if (m == &sl_worker_listener_timed_out) {
    sl_metric_put_u64(out, v, ls->timed_out);
  } else if (m == &sl_worker_listener_refused) {
    for (k = 0; k < 5; k++) {
      v[2] = reasons[k];
      sl_metric_put_u64(out, v, refused[k]);
    }
  } else { /* requests by code */
    v[1] = num;
    for (k = 100; k < 600; k++)
      if (a->srv->stats.responses[k]) {
        snprintf(num, sizeof(num), "%d", k);
        sl_metric_put_u64(out, v, a->srv->stats.responses[k]);
      }
  }
}

/* The process's open fds into *n: 0, or -1 when /proc cannot be read
 * (then no sample: a 0 would read as "nothing open" at the fd limit). */
static int open_fds(struct sl_metrics_admin *a, uint64_t *n) {
  struct dirent *d;
  uint64_t fds = 0;
  DIR *dir = a->fd_dir;
  if (dir)
    rewinddir(dir);
  else if ((dir = opendir("/proc/self/fd")) == NULL)
    return -1;
  while ((d = readdir(dir)) != NULL)
    if (d->d_name[0] != '.')
      fds++;
  if (dir != a->fd_dir) {
    closedir(dir);
    fds--; /* the folder's own descriptor, gone again */
  }
  *n = fds;
  return 0;
}

/* Resident pages into *pages: 0, or -1 (no sample) as above. */
static int resident_pages(struct sl_metrics_admin *a,
                          unsigned long long *pages) {
  char text[128];
  unsigned long long size;
  ssize_t n;
  int fd = a->statm_fd;
  if (fd < 0 && (fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)) < 0)
    return -1;
  n = pread(fd, text, sizeof(text) - 1, 0); /* offset 0: read anew */
  if (fd != a->statm_fd)
    close(fd);
  if (n <= 0)
    return -1;
  text[n] = '\0';
  return sscanf(text, "%llu %llu", &size, pages) == 2 ? 0 : -1;
}

static void collect_process(struct sl_metric_out *out,
                            const struct sl_metric *m, void *data) {
  struct sl_metrics_admin *a = data;
  unsigned long long rss = 0;
  uint64_t fds;
  struct rusage ru;
  struct rlimit rl;
  if (m == &m_rss) {
    if (resident_pages(a, &rss) == 0)
      sl_metric_put_u64(out, NULL, rss * (uint64_t)sysconf(_SC_PAGESIZE));
  } else if (m == &m_cpu) {
    getrusage(RUSAGE_SELF, &ru);
    sl_metric_put(out, NULL,
                  (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                      (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  } else if (m == &m_fds) {
    if (open_fds(a, &fds) == 0)
      sl_metric_put_u64(out, NULL, fds);
  } else if (m == &m_max_fds) {
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
      sl_metric_put_u64(out, NULL, (uint64_t)rl.rlim_cur);
  } else {
    sl_metric_put(out, NULL, (double)a->started_ns / 1e9);
  }
}

int sl_metrics_register(struct sl_metric_registry *r,
                        struct sl_metrics_admin *a) {
  static const struct sl_metric *const admin[] = {
      &m_build_info, &m_requests, &m_tap_clients,
      &sl_worker_listener_open, &sl_worker_listener_refused,
      &sl_worker_listener_timed_out};
  static const struct sl_metric *const process[] = {&m_rss, &m_cpu, &m_fds,
                                                    &m_max_fds, &m_start};
  size_t i;
  int rc = 0;
  if (!a->kept) { /* a failed open leaves the per-scrape way */
    a->fd_dir = opendir("/proc/self/fd");
    a->statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    a->kept = 1;
  }
  for (i = 0; rc == 0 && i < sizeof(admin) / sizeof(*admin); i++)
    rc = sl_metric_add(r, admin[i], collect_admin, a);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_tap_lines, NULL, &a->stats->tap_lines, a);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_tap_dropped, NULL, &a->stats->tap_dropped, a);
  for (i = 0; rc == 0 && i < sizeof(process) / sizeof(*process); i++)
    rc = sl_metric_add(r, process[i], collect_process, a);
  return rc;
}

void sl_metrics_close(struct sl_metrics_admin *a) {
  if (!a->kept)
    return;
  if (a->fd_dir)
    closedir(a->fd_dir);
  if (a->statm_fd >= 0)
    close(a->statm_fd);
  a->fd_dir = NULL;
  a->statm_fd = -1;
  a->kept = 0;
}
