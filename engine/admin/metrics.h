/* metrics.h - the admin server's and the process's own metrics, added to
 * the worker's registry (core/metric.h) when the admin server starts.
 * /metrics itself renders the registry alone (sl_metric_render). */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <dirent.h>
#include <stdint.h>

#include "admin.h"
#include "metric.h"

struct sl_http_server;

/* What the admin's and the process's metrics read. Lives in the admin
 * server; its address is the data of every source added for it, so
 * sl_metric_remove(r, that address) takes them away. */
struct sl_metrics_admin {
  const struct sl_admin_stats *stats; /* the tap */
  const struct sl_http_server *srv;   /* requests by code, its listener */
  uint64_t started_ns;                /* the process's start, epoch */
  /* /proc/self/fd and /proc/self/statm, opened by sl_metrics_register and
   * kept until sl_metrics_close: at the fd limit, when the process's fd
   * count matters most, opening them for a scrape would fail */
  DIR *fd_dir;  /* NULL: opened per scrape */
  int statm_fd; /* -1: likewise */
  int kept;     /* the two above were set up */
};

/* Add to r: sluice_build_info; the admin server's requests by code, its
 * listener's connections (beside the inputs' in the sluice_listener_*
 * families) and the tap; the process's RSS, CPU, fds and start time.
 * 0 or SL_ENOMEM. */
int sl_metrics_register(struct sl_metric_registry *r,
                        struct sl_metrics_admin *a);

/* Close what sl_metrics_register kept open (after sl_metric_remove of a).
 * A no-op when it never ran. */
void sl_metrics_close(struct sl_metrics_admin *a);

#endif
