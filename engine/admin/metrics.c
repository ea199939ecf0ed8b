/* metrics.c - the Prometheus text exposition of a worker; see metrics.h.
 * Reads the counters where they live (inputs, outputs, queues, the rule
 * set, the HTTP servers, the admin tap) and the process's own figures from
 * /proc and getrusage. Every family is written whole, HELP and TYPE first,
 * so the text passes `promtool check metrics`. Owns nothing. */
#include "metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "admin.h"
#include "http.h"
#include "rules.h"
#include "worker.h"

#define U(v) ((unsigned long long)(v))

/* The text being written and the first failure, so that a line lost to a
 * failed allocation fails the whole rendering. */
struct out {
  struct sl_buf *b;
  int rc;
};

static void put(struct out *o, const char *fmt, ...) SL_PRINTF(2, 3);

static void put(struct out *o, const char *fmt, ...) {
  char line[1024];
  va_list ap;
  int n;
  if (o->rc)
    return;
  va_start(ap, fmt);
  n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof(line))
    o->rc = SL_E2BIG; /* no line here comes near: labels are short names */
  else
    o->rc = sl_buf_append(o->b, line, (size_t)n);
}

static void family(struct out *b, const char *name, const char *type,
                   const char *help) {
  put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per input of a counter read by get. */
static void per_input(struct out *b, const struct sl_worker *w,
                      const char *name, const char *type, const char *help,
                      uint64_t (*get)(const struct sl_input *in)) {
  int i;
  family(b, name, type, help);
  for (i = 0; i < w->ninputs; i++)
    put(b, "%s{input=\"%s\"} %llu\n", name, w->cfg->inputs[i].name,
                  U(get(&w->inputs[i])));
}

static void per_output(struct out *b, const struct sl_worker *w,
                       const char *name, const char *type, const char *help,
                       uint64_t (*get)(const struct sl_output *o)) {
  int i;
  family(b, name, type, help);
  for (i = 0; i < w->noutputs; i++)
    put(b, "%s{output=\"%s\"} %llu\n", name, w->outputs[i].cfg->name,
                  U(get(&w->outputs[i])));
}

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
static uint64_t in_conns_total(const struct sl_input *in) {
  return in->stats.http ? in->stats.http->stats.connections_total
                        : in->stats.connections_total;
}
static uint64_t in_conns_open(const struct sl_input *in) {
  return in->stats.http ? sl_listener_open(&in->stats.http->listener)
                        : in->stats.connections_open;
}
static uint64_t out_events(const struct sl_output *o) {
  return o->stats.events_out;
}
static uint64_t out_bytes(const struct sl_output *o) {
  return o->stats.bytes_out;
}
static uint64_t out_errors(const struct sl_output *o) {
  return o->stats.errors;
}
static uint64_t out_retries(const struct sl_output *o) {
  return o->stats.retries;
}
static uint64_t out_dead_lettered(const struct sl_output *o) {
  return o->stats.dead_lettered;
}
static uint64_t out_refused(const struct sl_output *o) {
  return o->stats.refused;
}
static uint64_t out_rate_limited(const struct sl_output *o) {
  return o->stats.rate_limited;
}
static uint64_t out_breaker_state(const struct sl_output *o) {
  return (uint64_t)o->stats.breaker_state;
}
static uint64_t out_breaker_opens(const struct sl_output *o) {
  return o->stats.breaker_opens;
}
static uint64_t out_healthy(const struct sl_output *o) {
  struct sl_output *m = (struct sl_output *)o; /* cb_healthy only reads */
  return !o->stopped && (o->ops->cb_healthy == NULL || o->ops->cb_healthy(m));
}
static uint64_t q_events(const struct sl_output *o) { return o->q.count; }
static uint64_t q_bytes(const struct sl_output *o) { return o->q.bytes; }
static uint64_t q_max_events(const struct sl_output *o) {
  return o->q.max_events;
}
static uint64_t q_max_bytes(const struct sl_output *o) {
  return o->q.max_bytes;
}

/* One family with a sample per output that has a disk buffer (disk or
 * spill); get reads it from the buffer and its spool's stats. */
static void per_disk_buffer(struct out *b, const struct sl_worker *w,
                            const char *name, const char *type,
                            const char *help,
                            uint64_t (*get)(const struct sl_buffer *buf,
                                            const struct sl_spool_stats *st)) {
  int i;
  family(b, name, type, help);
  for (i = 0; i < w->noutputs; i++) {
    struct sl_buffer *buf = (struct sl_buffer *)&w->outputs[i].buf;
    struct sl_spool_stats st;
    if (buf->mode == SL_BUFFER_MEMORY)
      continue;
    memset(&st, 0, sizeof(st));
    if (buf->spool_open)
      sl_spool_stats(&buf->spool, &st); /* only reads */
    put(b, "%s{output=\"%s\"} %llu\n", name, w->outputs[i].cfg->name,
        U(get(buf, &st)));
  }
}

static uint64_t db_events(const struct sl_buffer *b,
                          const struct sl_spool_stats *st) {
  (void)b;
  return st->records;
}
static uint64_t db_bytes(const struct sl_buffer *b,
                         const struct sl_spool_stats *st) {
  (void)b;
  return st->bytes;
}
static uint64_t db_segments(const struct sl_buffer *b,
                            const struct sl_spool_stats *st) {
  (void)b;
  return st->segments;
}
static uint64_t db_disk_bytes(const struct sl_buffer *b,
                              const struct sl_spool_stats *st) {
  (void)b;
  return st->disk_bytes;
}
static uint64_t db_max_bytes(const struct sl_buffer *b,
                             const struct sl_spool_stats *st) {
  (void)st;
  return b->spool.max_bytes;
}
static uint64_t db_quarantined_records(const struct sl_buffer *b,
                                       const struct sl_spool_stats *st) {
  return b->stats.lost_records + st->lost_records + b->stats.not_events;
}
static uint64_t db_quarantined_bytes(const struct sl_buffer *b,
                                     const struct sl_spool_stats *st) {
  (void)st;
  return b->stats.quarantined_bytes;
}
static uint64_t db_write_errors(const struct sl_buffer *b,
                                const struct sl_spool_stats *st) {
  (void)st;
  return b->stats.write_errors;
}
static uint64_t db_fsync_errors(const struct sl_buffer *b,
                                const struct sl_spool_stats *st) {
  (void)st;
  return b->stats.sync_errors;
}
static uint64_t db_refused(const struct sl_buffer *b,
                           const struct sl_spool_stats *st) {
  (void)st;
  return b->stats.refused;
}
static uint64_t db_failing(const struct sl_buffer *b,
                           const struct sl_spool_stats *st) {
  (void)st;
  return (uint64_t)b->failing;
}

static void disk_buffers(struct out *b, const struct sl_worker *w) {
  per_disk_buffer(b, w, "sluice_disk_buffer_backlog_events", "gauge",
                  "Events in an output's disk buffer not yet delivered.",
                  db_events);
  per_disk_buffer(b, w, "sluice_disk_buffer_backlog_bytes", "gauge",
                  "Bytes on disk of the events not yet delivered, framing "
                  "included.",
                  db_bytes);
  per_disk_buffer(b, w, "sluice_disk_buffer_segments", "gauge",
                  "Segment files of an output's disk buffer.", db_segments);
  per_disk_buffer(b, w, "sluice_disk_buffer_disk_bytes", "gauge",
                  "Bytes of an output's disk buffer segment files, delivered "
                  "parts not yet reclaimed included.",
                  db_disk_bytes);
  per_disk_buffer(b, w, "sluice_disk_buffer_capacity_bytes", "gauge",
                  "The disk buffer's max_bytes.", db_max_bytes);
  per_disk_buffer(b, w, "sluice_disk_buffer_quarantined_records_total",
                  "counter",
                  "Records found corrupt or lost (at start or while "
                  "reading) and skipped.",
                  db_quarantined_records);
  per_disk_buffer(b, w, "sluice_disk_buffer_quarantined_bytes_total",
                  "counter",
                  "Bytes moved to the disk buffer's quarantine/ folder.",
                  db_quarantined_bytes);
  per_disk_buffer(b, w, "sluice_disk_buffer_write_errors_total", "counter",
                  "Writes to the disk buffer that failed (disk full, no file "
                  "descriptors, I/O error).",
                  db_write_errors);
  per_disk_buffer(b, w, "sluice_disk_buffer_fsync_errors_total", "counter",
                  "fdatasync calls on the disk buffer that failed.",
                  db_fsync_errors);
  per_disk_buffer(b, w, "sluice_disk_buffer_refused_total", "counter",
                  "Events refused to the producer because the disk buffer "
                  "could not write them (drop policies; block waits).",
                  db_refused);
  per_disk_buffer(b, w, "sluice_disk_buffer_failing", "gauge",
                  "1 while the disk buffer's last write failed.", db_failing);
}

static void histogram(struct out *b, const char *name, const char *labels,
                      const struct sl_histogram *h) {
  if (b->rc == 0)
    b->rc = sl_histogram_render(b->b, name, labels, h);
}

static void http_codes(struct out *b, const char *label,
                       const struct sl_http_server *s) {
  int code;
  for (code = 100; code < 600; code++)
    if (s->stats.responses[code])
      put(b, "%s,code=\"%d\"} %llu\n", label, code,
                    U(s->stats.responses[code]));
}

static void process(struct out *b, const struct sl_worker *w) {
  unsigned long long pages = 0, rss = 0;
  struct rusage ru;
  struct rlimit rl;
  struct dirent *d;
  uint64_t fds = 0;
  FILE *f;
  DIR *dir;

  f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%llu %llu", &pages, &rss) != 2)
      rss = 0;
    fclose(f);
  }
  family(b, "process_resident_memory_bytes", "gauge",
         "Resident memory size in bytes.");
  put(b, "process_resident_memory_bytes %llu\n",
                rss * (unsigned long long)sysconf(_SC_PAGESIZE));
  getrusage(RUSAGE_SELF, &ru);
  family(b, "process_cpu_seconds_total", "counter",
         "Total user and system CPU time spent in seconds.");
  put(b, "process_cpu_seconds_total %.6f\n",
                (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  dir = opendir("/proc/self/fd");
  if (dir) {
    while ((d = readdir(dir)) != NULL)
      if (d->d_name[0] != '.')
        fds++;
    closedir(dir);
    fds--; /* the folder's own descriptor */
  }
  family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
  put(b, "process_open_fds %llu\n", U(fds));
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    family(b, "process_max_fds", "gauge",
           "Maximum number of open file descriptors.");
    put(b, "process_max_fds %llu\n", U(rl.rlim_cur));
  }
  family(b, "process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.");
  put(b, "process_start_time_seconds %.3f\n",
                (double)w->started_ns / 1e9);
}

/* Every listener (inputs and the admin server): open, refused by reason,
 * timed out. */
static const struct sl_listener *input_listener(const struct sl_input *in) {
  return in->stats.http ? &in->stats.http->listener : in->stats.listener;
}

static void listeners(struct out *b, const struct sl_worker *w,
                      const struct sl_http_server *admin) {
  static const char *const reasons[] = {"limit", "fds", "memory", "idle",
                                        "tls"};
  const struct sl_listener *l;
  int i, k, pass;
  for (pass = 0; pass < 3; pass++) {
    if (pass == 0)
      family(b, "sluice_listener_connections_open", "gauge",
             "Connections open now, per listener (inputs and admin).");
    else if (pass == 1)
      family(b, "sluice_listener_connections_refused_total", "counter",
             "Connections refused or closed early: over max_connections, "
             "near the fd limit, to keep partial input under "
             "max_pending_bytes, or quiet ones closed to admit a new one "
             "at max_connections (idle), or a failed TLS handshake (tls).");
    else
      family(b, "sluice_listener_connections_timed_out_total", "counter",
             "Connections closed by a deadline: idle, a partial event or "
             "an HTTP head or body not in time.");
    for (i = -1; i < w->ninputs; i++) {
      const char *name = i < 0 ? "admin" : w->cfg->inputs[i].name;
      const char *type = i < 0 ? "admin" : w->cfg->inputs[i].type;
      l = i < 0 ? (admin ? &admin->listener : NULL)
                : input_listener(&w->inputs[i]);
      if (l == NULL)
        continue;
      for (k = 0; k < (pass == 1 ? 5 : 1); k++) {
        const struct sl_listener_stats *ls = sl_listener_stats(l);
        uint64_t v = pass == 0 ? sl_listener_open(l)
                   : pass == 2 ? ls->timed_out
                   : k == 0    ? ls->refused_limit
                   : k == 1    ? ls->refused_fds
                   : k == 2    ? ls->shed_memory
                   : k == 3    ? ls->displaced
                               : ls->refused_tls;
        if (pass == 1 && k == 2 && i >= 0 && w->inputs[i].stats.http)
          v += w->inputs[i].stats.http->stats.shed_memory;
        if (pass == 1)
          put(b, "sluice_listener_connections_refused_total{listener=\"%s\","
                 "type=\"%s\",reason=\"%s\"} %llu\n",
              name, type, reasons[k], U(v));
        else
          put(b, "%s{listener=\"%s\",type=\"%s\"} %llu\n",
              pass == 0 ? "sluice_listener_connections_open"
                        : "sluice_listener_connections_timed_out_total",
              name, type, U(v));
      }
    }
  }
}

int sl_metrics_render(const struct sl_worker *w, struct sl_buf *text) {
  struct out o = {text, 0}, *out = &o;
  const struct sl_rules_stats *rs = w->rules ? sl_rules_stats(w->rules) : NULL;
  const struct sl_http_server *admin_http = w->admin ? sl_admin_http(w->admin)
                                                     : NULL;
  char labels[200];
  int i;

  family(out, "sluice_build_info", "gauge", "The running version.");
  put(out, "sluice_build_info{version=\"%s\"} 1\n", SL_VERSION);

  /* inputs */
  per_input(out, w, "sluice_input_events_total", "counter",
            "Events read by an input.", in_events);
  per_input(out, w, "sluice_input_bytes_total", "counter",
            "Bytes of events read by an input.", in_bytes);
  per_input(out, w, "sluice_input_bad_total", "counter",
            "Malformed inputs refused: a closed connection or a refused "
            "batch.",
            in_bad);
  per_input(out, w, "sluice_input_abandoned_total", "counter",
            "Held events dropped by a forced stop.", in_abandoned);
  per_input(out, w, "sluice_input_connections_total", "counter",
            "Connections accepted.", in_conns_total);
  per_input(out, w, "sluice_input_connections_open", "gauge",
            "Connections open now.", in_conns_open);
  family(out, "sluice_http_requests_total", "counter",
         "HTTP responses of an http input, by status code.");
  for (i = 0; i < w->ninputs; i++)
    if (w->inputs[i].stats.http) {
      snprintf(labels, sizeof(labels), "sluice_http_requests_total{input=\"%s\"",
               w->cfg->inputs[i].name);
      http_codes(out, labels, w->inputs[i].stats.http);
    }
  family(out, "sluice_http_timeouts_total", "counter",
         "HTTP connections cut off because a request head or body did not "
         "arrive in time.");
  for (i = 0; i < w->ninputs; i++)
    if (w->inputs[i].stats.http)
      put(out, "sluice_http_timeouts_total{input=\"%s\"} %llu\n",
                    w->cfg->inputs[i].name,
                    U(w->inputs[i].stats.http->stats.timeouts));

  listeners(out, w, admin_http);

  /* outputs and queues */
  per_output(out, w, "sluice_output_events_total", "counter",
             "Events delivered and confirmed by an output.", out_events);
  per_output(out, w, "sluice_output_bytes_total", "counter",
             "Bytes of events delivered by an output.", out_bytes);
  per_output(out, w, "sluice_output_errors_total", "counter",
             "Delivery failures (lost connections, write errors).",
             out_errors);
  per_output(out, w, "sluice_output_retries_total", "counter",
             "Failed delivery attempts after which the events stayed queued "
             "for another attempt.",
             out_retries);
  per_output(out, w, "sluice_output_dead_lettered_total", "counter",
             "Events that used up their retries and went to the dead-letter "
             "output.",
             out_dead_lettered);
  per_output(out, w, "sluice_output_refused_total", "counter",
             "Events the output could never send (larger than "
             "max_event_bytes) and no dead letter took: dropped.",
             out_refused);
  per_output(out, w, "sluice_output_rate_limited_total", "counter",
             "Events that had to wait for a rate_limit token.",
             out_rate_limited);
  if (w->route_limits) {
    int i;
    family(out, "sluice_route_rate_limited_total", "counter",
           "Events over a route's rate_limit: waited for a token (block, "
           "spill) or dropped (drop policies). route is the index in routes.");
    for (i = 0; i < w->cfg->router.nroutes; i++)
      if (w->cfg->router.routes[i].rate)
        put(out,
            "sluice_route_rate_limited_total{route=\"%d\",result=\"waited\"} "
            "%llu\n"
            "sluice_route_rate_limited_total{route=\"%d\",result=\"dropped\"} "
            "%llu\n",
            i + 1, U(w->route_limits[i].waited), i + 1,
            U(w->route_limits[i].dropped));
  }
  per_output(out, w, "sluice_output_breaker_state", "gauge",
             "Circuit breaker: 0 closed, 1 open (no attempts), 2 half-open "
             "(probing).",
             out_breaker_state);
  per_output(out, w, "sluice_output_breaker_opens_total", "counter",
             "Times the circuit breaker opened.", out_breaker_opens);
  per_output(out, w, "sluice_output_healthy", "gauge",
             "1 when the output can deliver now (connected, file open).",
             out_healthy);
  per_output(out, w, "sluice_queue_events", "gauge",
             "Events in an output's queue, in flight included.", q_events);
  per_output(out, w, "sluice_queue_bytes", "gauge",
             "Bytes of the events in an output's queue.", q_bytes);
  per_output(out, w, "sluice_queue_capacity_events", "gauge",
             "The most events an output's queue holds.", q_max_events);
  per_output(out, w, "sluice_queue_capacity_bytes", "gauge",
             "The most bytes an output's queue holds.", q_max_bytes);
  disk_buffers(out, w);
  family(out, "sluice_events_dropped_total", "counter",
         "Events dropped, by reason (and output for full queues).");
  for (i = 0; i < w->noutputs; i++) {
    const struct sl_output *o = &w->outputs[i];
    put(out,
                  "sluice_events_dropped_total{reason=\"queue_full_newest\","
                  "output=\"%s\"} %llu\n"
                  "sluice_events_dropped_total{reason=\"queue_full_oldest\","
                  "output=\"%s\"} %llu\n"
                  "sluice_events_dropped_total{reason=\"dedup\","
                  "output=\"%s\"} %llu\n",
                  o->cfg->name, U(o->q.dropped_newest), o->cfg->name,
                  U(o->q.dropped_oldest), o->cfg->name,
                  U(o->stats.dropped_dedup));
  }
  if (rs)
    put(out,
                  "sluice_events_dropped_total{reason=\"rule\"} %llu\n"
                  "sluice_events_dropped_total{reason=\"unrouted\"} %llu\n"
                  "sluice_events_dropped_total{reason=\"emit_unknown_output\"}"
                  " %llu\n",
                  U(rs->dropped), U(rs->unrouted), U(rs->emit_failed));
  family(out, "sluice_events_emitted_total", "counter",
         "Events rules emitted with sluice.emit.");
  put(out, "sluice_events_emitted_total %llu\n",
                U(rs ? rs->emitted : 0));
  family(out, "sluice_emit_dropped_total", "counter",
         "Emitted events dropped because the target queue was full.");
  put(out, "sluice_emit_dropped_total %llu\n",
                U(w->stats.emit_dropped));
  family(out, "sluice_events_dead_lettered_total", "counter",
         "Events a failing rule sent to the dead letter output.");
  put(out, "sluice_events_dead_lettered_total %llu\n",
                U(rs ? rs->dead_lettered : 0));
  family(out, "sluice_delivery_latency_seconds", "histogram",
         "Time from ingest to confirmed delivery.");
  for (i = 0; i < w->noutputs; i++) {
    snprintf(labels, sizeof(labels), "output=\"%s\"", w->outputs[i].cfg->name);
    histogram(out, "sluice_delivery_latency_seconds", labels,
              &w->outputs[i].stats.latency);
  }

  /* rules: calls, errors by kind, durations, reloads, version, counters */
  if (w->rules && out->rc == 0)
    out->rc = sl_rules_metrics(w->rules, text);

  /* admin */
  if (w->admin) {
    const struct sl_admin_stats *as = sl_admin_stats(w->admin);
    family(out, "sluice_admin_requests_total", "counter",
           "Admin API responses by status code.");
    if (admin_http)
      http_codes(out, "sluice_admin_requests_total{server=\"admin\"",
                 admin_http);
    family(out, "sluice_tap_clients", "gauge", "Tap clients connected now.");
    put(out, "sluice_tap_clients %u\n", as->tap_clients);
    family(out, "sluice_tap_lines_total", "counter",
           "Tap lines sent to clients.");
    put(out, "sluice_tap_lines_total %llu\n", U(as->tap_lines));
    family(out, "sluice_tap_lines_dropped_total", "counter",
           "Tap lines dropped because a client's buffer was full.");
    put(out, "sluice_tap_lines_dropped_total %llu\n",
                  U(as->tap_dropped));
  }

  process(out, w);
  return out->rc;
}
