/* metrics.h - fixed-bucket histograms and the Prometheus text rendering
 * of a worker's counters. Counters live in the structs of the modules that
 * count (no registry, no locks); this module only reads them. */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stdint.h>

#include "buf.h"

#define SL_HIST_BUCKETS 14

/* Upper bounds in seconds, shared by every histogram. */
extern const double sl_histogram_bounds[SL_HIST_BUCKETS];

struct sl_histogram {
  uint64_t buckets[SL_HIST_BUCKETS + 1]; /* the last is +Inf */
  uint64_t count;
  double sum;
};

static inline void sl_histogram_observe(struct sl_histogram *h,
                                        double seconds) {
  int i = 0;
  while (i < SL_HIST_BUCKETS && seconds > sl_histogram_bounds[i])
    i++;
  h->buckets[i]++;
  h->count++;
  h->sum += seconds;
}

struct sl_worker;

/* Render every metric of w (inputs, outputs, queues, drops, rules, HTTP,
 * tap, process) as Prometheus text exposition 0.0.4, appended to out.
 * Returns 0 or SL_ENOMEM. Reads /proc; call from the loop thread. */
int sl_metrics_render(const struct sl_worker *w, struct sl_buf *out);

#endif
