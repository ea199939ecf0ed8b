/* metric.h - the metrics registry and its Prometheus text exposition.
 * Modules register what they count; /metrics renders the registry alone,
 * never a module's structs. A registry belongs to one worker (one thread,
 * no locks). It owns its families and sources, never the counted values.
 *
 * How a module adds a metric:
 *   1. Declare the family once, static const, in the module's own file:
 *        static const struct sl_metric m_sent = {
 *            "sluice_foo_sent_total", "Frames sent by foo.",
 *            SL_METRIC_COUNTER, {"output", NULL}};
 *      Names follow Prometheus: counters end in _total, the unit is in the
 *      name (_seconds, _bytes). labels are the label names, NULL-ended.
 *   2. Register a source where the counted thing is set up, with the
 *      registry the owner hands down (struct sl_worker's metrics):
 *      - a value the module keeps (owned storage; read at each scrape):
 *          const char *v[] = {o->cfg->name};
 *          sl_metric_add_u64(reg, &m_sent, v, &foo->sent, foo);
 *        or sl_metric_add_hist for a struct sl_histogram;
 *      - or a collect callback that emits samples at each scrape, e.g. one
 *        per element of a live list (what comes and goes at runtime):
 *          sl_metric_add(reg, &m_sent, collect_sent, foo);
 *        where collect_sent calls sl_metric_put_u64(out, values, n) per
 *        sample, values holding one value per label name of the family.
 *   3. Unregister where it is torn down: sl_metric_remove(reg, foo) drops
 *      every source registered with that data pointer.
 * Several modules may add sources to the same name (same type): the family
 * is rendered once, HELP and TYPE from its first registration, then the
 * samples of every source in registration order. A family whose sources
 * all went stays (HELP and TYPE, no samples).
 *
 * Label values are escaped (\\, \", \n) and made valid UTF-8 (an
 * ill-formed sequence becomes U+FFFD) when rendered: any bytes are safe. */
#ifndef SL_METRIC_H
#define SL_METRIC_H

#include <stdint.h>

#include "buf.h"
#include "histogram.h"

#define SL_METRIC_MAX_LABELS 4

enum sl_metric_type {
  SL_METRIC_COUNTER,
  SL_METRIC_GAUGE,
  SL_METRIC_HISTOGRAM /* buckets: histogram.h's bounds, 1 us to 10 s */
};

/* A family as a module declares it. Must outlive its registrations (make
 * it static const). */
struct sl_metric {
  const char *name; /* [a-zA-Z_:][a-zA-Z0-9_:]* */
  const char *help; /* one line */
  enum sl_metric_type type;
  const char *labels[SL_METRIC_MAX_LABELS + 1]; /* names, NULL-ended */
};

struct sl_metric_registry;
struct sl_metric_out; /* what a collect callback writes samples to */

/* Emit the samples of family m (the one the source was added with) into
 * out. data is the pointer given to sl_metric_add. Must not add or remove
 * sources. */
typedef void (*sl_metric_collect_fn)(struct sl_metric_out *out,
                                     const struct sl_metric *m, void *data);

/* An empty registry; NULL when out of memory. _free(NULL) is a no-op. */
struct sl_metric_registry *sl_metric_registry_new(void);
void sl_metric_registry_free(struct sl_metric_registry *r);

/* Add a source of samples to family m->name: fn(out, m, data) at each
 * render. Returns 0; SL_EINVAL when a name or label name is not valid or
 * the family exists with another type (nothing added); SL_ENOMEM. */
int sl_metric_add(struct sl_metric_registry *r, const struct sl_metric *m,
                  sl_metric_collect_fn fn, void *data);

/* Add one series read from *value at each render (counter or gauge), or
 * from *h (histogram), with values[i] for m's label i (copied; ignored
 * when m has no labels). value and h must stay valid until
 * sl_metric_remove(r, owner). Returns as sl_metric_add. */
int sl_metric_add_u64(struct sl_metric_registry *r, const struct sl_metric *m,
                      const char *const *values, const uint64_t *value,
                      void *owner);
int sl_metric_add_hist(struct sl_metric_registry *r, const struct sl_metric *m,
                       const char *const *values, const struct sl_histogram *h,
                       void *owner);

/* Remove every source added with data (or owner) == data. NULL r is a
 * no-op. */
void sl_metric_remove(struct sl_metric_registry *r, const void *data);

/* Append every family as Prometheus text exposition 0.0.4 to text.
 * Returns 0 or SL_ENOMEM (text may then hold part of it). */
int sl_metric_render(const struct sl_metric_registry *r, struct sl_buf *text);

/* In a collect callback: one sample of the family being rendered, values
 * holding one value per label name (NULL when it has none). _extra adds
 * labels already rendered as `a="x",b="y"` (escaped, valid UTF-8; the
 * caller checked its names), e.g. a rule's own labels. */
void sl_metric_put_u64(struct sl_metric_out *out, const char *const *values,
                       uint64_t v);
void sl_metric_put(struct sl_metric_out *out, const char *const *values,
                   double v);
void sl_metric_put_extra(struct sl_metric_out *out, const char *const *values,
                         const char *extra, double v);
void sl_metric_put_hist(struct sl_metric_out *out, const char *const *values,
                        const struct sl_histogram *h);

/* Append s[0..n) as a label value's text: backslash, quote and newline
 * escaped, each ill-formed UTF-8 sequence as U+FFFD. 0 or SL_ENOMEM. */
int sl_metric_escape(struct sl_buf *out, const char *s, size_t n);

#endif
