/* worker_metrics.c - the worker's own metrics in its registry: per input
 * (events, bytes, connections, HTTP answers), per listener of an input,
 * route rate limits and sluice.emit drops. Collect callbacks walk the live
 * input list at each scrape, so inputs that come and go need no
 * registration of their own. Owns nothing. */
#include <stdio.h>

#include "http.h"
#include "rules.h"
#include "worker.h"

/* A per-input family and how to read it. */
struct input_metric {
  struct sl_metric m; /* first: the registry hands back &m */
  uint64_t (*get)(const struct sl_input *in);
};

static uint64_t in_events(const struct sl_input *in) {
  return in->stats.events_in;
}
static uint64_t in_bytes(const struct sl_input *in) {
  return in->stats.bytes_in;
}
static uint64_t in_bad(const struct sl_input *in) {
  return in->stats.bad_input;
}
static uint64_t in_abandoned(const struct sl_input *in) {
  return in->stats.abandoned;
}
static uint64_t in_malformed(const struct sl_input *in) {
  return in->stats.malformed;
}
static uint64_t in_dropped(const struct sl_input *in) {
  return in->stats.dropped;
}
static uint64_t in_conns_total(const struct sl_input *in) {
  return in->stats.http ? in->stats.http->stats.connections_total
                        : in->stats.connections_total;
}
static uint64_t in_conns_open(const struct sl_input *in) {
  return in->stats.http ? sl_listener_open(&in->stats.http->listener)
                        : in->stats.connections_open;
}

#define C SL_METRIC_COUNTER
#define G SL_METRIC_GAUGE
static const struct input_metric input_metrics[] = {
    {{"sluice_input_events_total", "Events read by an input.", C,
      {"input", NULL}}, in_events},
    {{"sluice_input_bytes_total", "Bytes of events read by an input.", C,
      {"input", NULL}}, in_bytes},
    {{"sluice_input_bad_total",
      "Malformed inputs refused: a closed connection or a refused batch.", C,
      {"input", NULL}}, in_bad},
    {{"sluice_input_abandoned_total", "Held events dropped by a forced stop.",
      C, {"input", NULL}}, in_abandoned},
    {{"sluice_input_malformed_total",
      "Messages that did not parse, kept raw or dead-lettered (syslog).", C,
      {"input", NULL}}, in_malformed},
    {{"sluice_input_dropped_total",
      "Events an input lost because its sender cannot wait (udp datagrams "
      "while an output blocks).", C, {"input", NULL}}, in_dropped},
    {{"sluice_input_connections_total", "Connections accepted.", C,
      {"input", NULL}}, in_conns_total},
    {{"sluice_input_connections_open", "Connections open now.", G,
      {"input", NULL}}, in_conns_open},
};

static const struct sl_metric m_http_requests = {
    "sluice_http_requests_total",
    "HTTP responses of an http input, by status code.", C, {"input", "code",
                                                            NULL}};
static const struct sl_metric m_http_timeouts = {
    "sluice_http_timeouts_total",
    "HTTP connections cut off because a request head or body did not arrive "
    "in time.", C, {"input", NULL}};
const struct sl_metric sl_worker_listener_open = {
    "sluice_listener_connections_open",
    "Connections open now, per listener (inputs and admin).", G,
    {"listener", "type", NULL}};
const struct sl_metric sl_worker_listener_refused = {
    "sluice_listener_connections_refused_total",
    "Connections refused or closed early: over max_connections, near the fd "
    "limit, to keep partial input under max_pending_bytes, or quiet ones "
    "closed to admit a new one at max_connections (idle), or a failed TLS "
    "handshake (tls).", C,
    {"listener", "type", "reason", NULL}};
const struct sl_metric sl_worker_listener_timed_out = {
    "sluice_listener_connections_timed_out_total",
    "Connections closed by a deadline: idle, a partial event or an HTTP head "
    "or body not in time.", C, {"listener", "type", NULL}};
static const struct sl_metric m_route_limited = {
    "sluice_route_rate_limited_total",
    "Events over a route's rate_limit: waited for a token (block, spill) or "
    "dropped (drop policies). route is the index in routes.", C,
    {"route", "result", NULL}};
static const struct sl_metric m_unrouted = {
    "sluice_events_unrouted_total",
    "Events no rule and no route decided (dropped, or sent to the unrouted "
    "output), by input and rule set version (the last 4 versions).", C,
    {"input", "version", NULL}};
static const struct sl_metric m_emit_dropped = {
    "sluice_emit_dropped_total",
    "Emitted events dropped because the target queue was full.", C, {0}};
#undef C
#undef G

static void collect_input(struct sl_metric_out *out, const struct sl_metric *m,
                          void *data) {
  const struct input_metric *im = (const struct input_metric *)m;
  const struct sl_worker *w = data;
  int i;
  for (i = 0; i < w->ninputs; i++) {
    const char *v[] = {w->inputs[i].cfg->name};
    sl_metric_put_u64(out, v, im->get(&w->inputs[i]));
  }
}

static void collect_unrouted(struct sl_metric_out *out,
                             const struct sl_metric *m, void *data) {
  const struct sl_worker *w = data;
  uint64_t version = w->rules ? sl_rules_stats(w->rules)->version : 0;
  int i, k;
  (void)m;
  for (i = 0; i < w->ninputs; i++) {
    const struct sl_input_stats *st = &w->inputs[i].stats;
    char num[24];
    const char *v[] = {w->inputs[i].cfg->name, num};
    int cur = (int)(version % SL_UNROUTED_VERSIONS);
    for (k = 0; k < SL_UNROUTED_VERSIONS; k++)
      if (st->unrouted[k] || k == cur) { /* the live version's, even 0 */
        uint64_t n = st->unrouted_version[k] == version || k != cur
                         ? st->unrouted[k] : 0;
        snprintf(num, sizeof(num), "%llu",
                 (unsigned long long)(k == cur ? version
                                               : st->unrouted_version[k]));
        sl_metric_put_u64(out, v, n);
      }
  }
}

static void collect_http(struct sl_metric_out *out, const struct sl_metric *m,
                         void *data) {
  const struct sl_worker *w = data;
  int i, code;
  for (i = 0; i < w->ninputs; i++) {
    const struct sl_http_server *s = w->inputs[i].stats.http;
    char num[8];
    const char *v[] = {w->inputs[i].cfg->name, num};
    if (s == NULL)
      continue;
    if (m == &m_http_timeouts) {
      sl_metric_put_u64(out, v, s->stats.timeouts);
      continue;
    }
    for (code = 100; code < 600; code++)
      if (s->stats.responses[code]) {
        snprintf(num, sizeof(num), "%d", code);
        sl_metric_put_u64(out, v, s->stats.responses[code]);
      }
  }
}

static const struct sl_listener *input_listener(const struct sl_input *in) {
  return in->stats.http ? &in->stats.http->listener : in->stats.listener;
}

static void collect_listeners(struct sl_metric_out *out,
                              const struct sl_metric *m, void *data) {
  static const char *const reasons[] = {"limit", "fds", "memory", "idle",
                                        "tls"};
  const struct sl_worker *w = data;
  int i;
  for (i = 0; i < w->ninputs; i++) {
    const struct sl_input *in = &w->inputs[i];
    const struct sl_listener *l = input_listener(in);
    const struct sl_listener_stats *ls;
    const char *v[] = {in->cfg->name, in->cfg->type, NULL};
    uint64_t refused[5];
    int k;
    if (l == NULL)
      continue;
    ls = sl_listener_stats(l);
    if (m == &sl_worker_listener_open) {
      sl_metric_put_u64(out, v, sl_listener_open(l));
    } else if (m == &sl_worker_listener_timed_out) {
      sl_metric_put_u64(out, v, ls->timed_out);
    } else {
      refused[0] = ls->refused_limit;
      refused[1] = ls->refused_fds;
      refused[2] = ls->shed_memory +
                   (in->stats.http ? in->stats.http->stats.shed_memory : 0);
      refused[3] = ls->displaced;
      refused[4] = ls->refused_tls;
      for (k = 0; k < 5; k++) {
        v[2] = reasons[k];
        sl_metric_put_u64(out, v, refused[k]);
      }
    }
  }
}

static void collect_routes(struct sl_metric_out *out, const struct sl_metric *m,
                           void *data) {
  const struct sl_worker *w = data;
  int i;
  for (i = 0; w->route_limits && i < w->cfg->router.nroutes; i++) {
    char num[16];
    const char *v[] = {num, "waited"};
    if (!w->cfg->router.routes[i].rate)
      continue;
    snprintf(num, sizeof(num), "%d", i + 1);
    sl_metric_put_u64(out, v, w->route_limits[i].waited);
    v[1] = "dropped";
    sl_metric_put_u64(out, v, w->route_limits[i].dropped);
  }
}

int sl_worker_metrics(struct sl_worker *w) {
  struct sl_metric_registry *r = w->metrics;
  size_t i;
  int rc = 0;
  for (i = 0; rc == 0 && i < sizeof(input_metrics) / sizeof(*input_metrics);
       i++)
    rc = sl_metric_add(r, &input_metrics[i].m, collect_input, w);
  if (rc == 0)
    rc = sl_metric_add(r, &m_http_requests, collect_http, w);
  if (rc == 0)
    rc = sl_metric_add(r, &m_http_timeouts, collect_http, w);
  if (rc == 0)
    rc = sl_metric_add(r, &sl_worker_listener_open, collect_listeners, w);
  if (rc == 0)
    rc = sl_metric_add(r, &sl_worker_listener_refused, collect_listeners, w);
  if (rc == 0)
    rc = sl_metric_add(r, &sl_worker_listener_timed_out, collect_listeners, w);
  if (rc == 0 && w->route_limits)
    rc = sl_metric_add(r, &m_route_limited, collect_routes, w);
  if (rc == 0)
    rc = sl_metric_add_u64(r, &m_emit_dropped, NULL, &w->stats.emit_dropped,
                           w);
  if (rc == 0)
    rc = sl_metric_add(r, &m_unrouted, collect_unrouted, w);
  return rc;
}
