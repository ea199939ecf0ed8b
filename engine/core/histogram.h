/* histogram.h - fixed-bucket latency histograms: the one set of bucket
 * bounds every histogram shares, observing a sample, and rendering one
 * series as Prometheus text. A histogram lives in the struct of the
 * module that observes; the registry (metric.h) renders it. */
#ifndef SL_HISTOGRAM_H
#define SL_HISTOGRAM_H

#include <stdint.h>

#include "buf.h"

#define SL_HIST_BUCKETS 20

/* Upper bounds in seconds, shared by every histogram. */
extern const double sl_histogram_bounds[SL_HIST_BUCKETS];

struct sl_histogram {
  uint64_t buckets[SL_HIST_BUCKETS + 1]; /* the last is +Inf */
  uint64_t count;
  double sum;
};

static inline void sl_histogram_observe(struct sl_histogram *h,
                                        double seconds) {
  /* the first bound not below the sample (past the last: +Inf), by
   * halves: an output observes every event it delivers */
  int lo = 0, hi = SL_HIST_BUCKETS;
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (seconds > sl_histogram_bounds[mid])
      lo = mid + 1;
    else
      hi = mid;
  }
  h->buckets[lo]++;
  h->count++;
  h->sum += seconds;
}

/* Append the _bucket, _sum and _count lines of one series of histogram
 * name, labels being the label text inside the braces without the le
 * label (already escaped; "" for none). Returns 0 or SL_ENOMEM (out may
 * then hold part of the series). */
int sl_histogram_render(struct sl_buf *out, const char *name,
                        const char *labels, const struct sl_histogram *h);

#endif
