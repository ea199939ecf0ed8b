/* metrics.h - the Prometheus text rendering of a worker's counters.
 * Counters live in the structs of the modules that count (no registry, no
 * locks); this module only reads them. Histograms are core/histogram.h. */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stdint.h>

#include "buf.h"
#include "histogram.h"

struct sl_worker;

/* Render every metric of w (inputs, outputs, queues, drops, rules, HTTP,
 * tap, process) as Prometheus text exposition 0.0.4, appended to out.
 * Returns 0 or SL_ENOMEM. Reads /proc; call from the loop thread. */
int sl_metrics_render(const struct sl_worker *w, struct sl_buf *out);

#endif
