/* histogram.c - the shared bucket bounds and the Prometheus rendering of
 * one histogram series. */
#include "histogram.h"

/* From a microsecond (a rule call) to 10 s (delivery through a retry or a
 * slow peer): past the top, only +Inf would say anything. */
const double sl_histogram_bounds[SL_HIST_BUCKETS] = {
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3,
    5e-3, 1e-2, 5e-2, 1e-1, 2.5e-1, 5e-1, 1,    2.5,    5,    10};

int sl_histogram_render(struct sl_buf *out, const char *name,
                        const char *labels, const struct sl_histogram *h) {
  unsigned long long cum = 0;
  const char *sep = labels[0] ? "," : ""; /* no labels: le alone */
  int k, rc = 0;
  for (k = 0; k < SL_HIST_BUCKETS && rc == 0; k++) {
    cum += h->buckets[k];
    rc = sl_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels,
                       sep, sl_histogram_bounds[k], cum);
  }
  cum += h->buckets[SL_HIST_BUCKETS];
  if (rc == 0)
    rc = sl_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels,
                       sep, cum);
  if (rc == 0)
    rc = sl_buf_printf(out, labels[0] ? "%s_sum{%s} %.9f\n%s_count{%s} %llu\n"
                                      : "%s_sum%s %.9f\n%s_count%s %llu\n",
                       name, labels, h->sum, name, labels,
                       (unsigned long long)h->count);
  return rc;
}
