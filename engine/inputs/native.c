/* native.c - the tcp and unix inputs: clients write msgpack event maps back
 * to back over one connection. Each connection is a source: when an output
 * it feeds is full and blocks, the connection stops reading until there is
 * room. Bad bytes close only the connection that sent them, with one log
 * line naming the peer, the input and the byte offset. Owns its listener
 * and, through it, its connections. */
#include <stdlib.h>
#include <string.h>

#include "worker.h"
#include "plugins.h"
#include "tls.h"

struct native_in {
  struct sl_input *in;
  struct sl_listener listener;
  struct sl_tls *tls;   /* tls = {...}: its context; NULL: plain */
  int listener_closed;
  int stopping;
  uint32_t live; /* conns not yet freed (nconns drops at close start) */
};

struct native_conn {
  struct sl_source src;
  struct sl_conn *conn;
  int first_seen;     /* the first object was looked at (hello or event) */
  int ack;            /* the client asked for acks */
  int sluice_peer;    /* it sent the hello: SL_EVENT_HEADROOM applies */
  uint64_t accepted;  /* events in the pipeline (queued everywhere) */
  uint64_t acked;     /* the count last sent back */
  uint64_t durable;   /* the count sl_worker_durable is asked about */
  struct sl_durable wait; /* waiting for the disk buffers to hold them */
};

/* Ack mode: tell the client how many of its events are accepted (queued in
 * memory, or in a disk buffer's file as its fsync policy promises). One
 * msgpack integer, the running count since the connection opened. A count
 * goes out only once sl_worker_durable says so: a disk that cannot write
 * holds the ack back, it never acks what it may lose. */
static void refused(struct native_conn *nc);

static void send_ack(struct native_conn *nc) {
  struct sl_buf b;
  int rc;
  if (!nc->ack || nc->accepted == nc->acked || sl_conn_is_closing(nc->conn) ||
      nc->wait.waiting)
    return;
  nc->durable = nc->accepted;
  rc = sl_worker_durable(nc->src.w, &nc->wait);
  if (rc == SL_EIO) {
    nc->src.refused_output = nc->wait.refused_output;
    refused(nc); /* the producer resends from its last ack */
    return;
  }
  if (rc != 0)
    return; /* on_durable sends it */
  sl_buf_init(&b);
  if (sl_codec_put_uint(&b, nc->durable) == 0 &&
      sl_conn_write(nc->conn, &b, NULL, NULL) == 0)
    nc->acked = nc->durable;
  sl_buf_close(&b);
}

static void on_durable(struct sl_durable *d) {
  struct native_conn *nc = container_of(d, struct native_conn, wait);
  struct sl_buf b;
  if (sl_conn_is_closing(nc->conn))
    return;
  sl_buf_init(&b);
  if (sl_codec_put_uint(&b, nc->durable) == 0 &&
      sl_conn_write(nc->conn, &b, NULL, NULL) == 0)
    nc->acked = nc->durable;
  sl_buf_close(&b);
  send_ack(nc); /* what was accepted meanwhile */
  if (sl_conn_read_stopped(nc->conn) && nc->src.held == NULL &&
      !nc->wait.waiting)
    sl_conn_close(nc->conn); /* draining: its last ack is out */
}

/* A disk buffer refused the event (or could not write events already
 * taken): none of it may count as accepted. The connection closes without
 * a further ack; the producer resends from its last ack. Counted by the
 * disk buffer (sluice_disk_buffer_refused_total). */
static void refused(struct native_conn *nc) {
  struct sl_input *in = nc->src.input;
  struct sl_worker *w = in->w;
  char why[256];
  uint64_t suppressed = 0;
  if (sl_conn_is_closing(nc->conn))
    return;
  if (sl_log_allow(&w->bad_input_log, &suppressed)) {
    sl_worker_refusal(w, nc->src.refused_output, why, sizeof(why));
    sl_log(SL_LOG_WARN, "event refused; closing connection",
           SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(nc->conn)),
           SL_U("accepted", nc->accepted), SL_S("error", why),
           SL_U("suppressed", suppressed), SL_END);
  }
  /* what was acked stands; the rest the producer sends again (it may
   * arrive twice), rather than waiting on a disk that may stay full */
  sl_conn_close(nc->conn);
}

/* Is this object the ack-mode hello {"sluice": 1, "ack": true}? */
static int is_hello(const uint8_t *p, size_t n, int *ack) {
  const uint8_t *v;
  size_t vlen, used;
  uint32_t count;
  if (sl_codec_read_map(p, n, &count, &used) != 0)
    return 0;
  if (sl_codec_map_find(p, n, "topic", 5, &v, &vlen) == 0 ||
      sl_codec_map_find(p, n, "sluice", 6, &v, &vlen) != 0)
    return 0;
  *ack = sl_codec_map_find(p, n, "ack", 3, &v, &vlen) == 0 &&
         sl_codec_is_true(v, vlen);
  return 1;
}

static void finish(struct native_in *ni);

/* On a TLS conn whose peer showed a certificate, the event carries the
 * peer's identity in the sluice-peer header for rules (replacing one the
 * producer may have set). Takes ev; NULL when out of memory. */
static struct sl_event *with_peer(struct sl_event *ev, struct sl_conn *c) {
  const char *peer = ev ? sl_conn_peer_identity(c) : NULL;
  struct sl_event *out;
  if (peer == NULL)
    return ev;
  out = sl_event_with_header(ev, "sluice-peer", peer, strlen(peer));
  sl_event_unref(ev);
  return out;
}

static void on_resume(struct sl_source *s) {
  struct native_conn *nc = container_of(s, struct native_conn, src);
  if (s->refused) {
    refused(nc);
    return;
  }
  nc->accepted++; /* the held event is in */
  sl_conn_resume(nc->conn);
  send_ack(nc);
  /* draining: once the buffered events are in, the conn has done its part */
  if (sl_conn_read_stopped(nc->conn) && nc->src.held == NULL &&
      !nc->wait.waiting)
    sl_conn_close(nc->conn);
}

static void bad_input(struct sl_conn *c, struct sl_input *in, size_t offset,
                      const char *why) {
  struct sl_worker *w = in->w;
  uint64_t suppressed = 0;
  in->stats.bad_input++;
  if (sl_log_allow(&w->bad_input_log, &suppressed))
    sl_log(SL_LOG_WARN, "bad input; closing connection",
           SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(c)),
           SL_U("offset", sl_conn_offset(c) + offset), SL_S("error", why),
           SL_U("suppressed", suppressed), SL_END);
  sl_conn_close(c);
}

static size_t cb_data(struct sl_conn *c, const uint8_t *data, size_t len) {
  struct native_conn *nc = sl_conn_proto(c);
  struct sl_input *in = nc->src.input;
  struct sl_worker *w = in->w;
  /* a sluice peer may send what grew on its way (SL_EVENT_HEADROOM) */
  uint32_t max = w->cfg->max_event_bytes +
                 (nc->sluice_peer ? SL_EVENT_HEADROOM : 0);
  size_t pos = 0, used;
  struct sl_codec_error err;
  struct sl_event_view v;
  struct sl_event *ev;
  /* one clock reading per read: events of one batch share their time */
  int64_t now = sl_now_ns();
  uint64_t mono = sl_mono_ns();
  int rc;

  while (pos < len) {
    rc = sl_codec_skip(data + pos, len - pos, max, &used, &err);
    if (rc == SL_EAGAIN) {
      if (len - pos > max) {
        bad_input(c, in, pos, "event larger than max_event_bytes");
        return pos;
      }
      break;
    }
    if (rc == SL_E2BIG) {
      char msg[200];
      snprintf(msg, sizeof(msg), "event larger than max_event_bytes (%u)",
               max);
      bad_input(c, in, pos, msg);
      return pos;
    }
    if (rc != 0) {
      bad_input(c, in, pos + err.offset, err.msg);
      return pos;
    }
    if (!nc->first_seen) {
      nc->first_seen = 1;
      if (is_hello(data + pos, used, &nc->ack)) {
        nc->sluice_peer = 1;
        max += SL_EVENT_HEADROOM;
        pos += used;
        continue;
      }
    }
    if (sl_codec_parse_measured(data + pos, used, &v, &err) != 0) {
      bad_input(c, in, pos + err.offset, err.msg);
      return pos;
    }
    ev = with_peer(sl_event_from_view_at(&w->idgen, &v, 1, now, mono),
                   c);
    if (ev == NULL) {
      bad_input(c, in, pos, "out of memory");
      return pos;
    }
    if (ev->len > w->cfg->max_event_bytes + SL_EVENT_HEADROOM) {
      /* what ingest added must not make it one no sluice peer takes */
      char msg[200];
      snprintf(msg, sizeof(msg), "event larger than max_event_bytes (%u) "
               "plus headroom once its id, time and traceparent are added",
               w->cfg->max_event_bytes);
      sl_event_unref(ev);
      bad_input(c, in, pos, msg);
      return pos;
    }
    pos += used;
    in->stats.events_in++;
    in->stats.bytes_in += used;
    rc = sl_worker_submit(&nc->src, ev);
    if (rc == SL_EAGAIN) {
      sl_conn_pause(c); /* on_resume reads on */
      break;
    }
    if (rc == SL_EIO) {
      refused(nc);
      return pos;
    }
    nc->accepted++;
  }
  send_ack(nc);
  return pos;
}

static void cb_eof(struct sl_conn *c, int status) {
  struct native_conn *nc = sl_conn_proto(c);
  if (status != 0 && status != UV_ECONNRESET)
    sl_log(SL_LOG_DEBUG, "connection error",
           SL_S("input", nc->src.input->cfg->name),
           SL_S("peer", sl_conn_peer(c)), SL_S("error", uv_strerror(status)),
           SL_END);
  if (sl_conn_buffered(c) > 0) {
    struct sl_input *in = nc->src.input;
    uint64_t suppressed = 0;
    in->stats.bad_input++;
    /* rate-limited: a flood of stalled connections must not flood the log */
    if (sl_log_allow(&in->w->bad_input_log, &suppressed))
      sl_log(SL_LOG_WARN,
             status == UV_ETIMEDOUT
                 ? "event not complete within event_timeout_ms; partial "
                   "event discarded"
                 : "connection closed inside an event; partial event "
                   "discarded",
             SL_S("input", in->cfg->name), SL_S("peer", sl_conn_peer(c)),
             SL_U("offset", sl_conn_offset(c)),
             SL_U("bytes", sl_conn_buffered(c)), SL_U("suppressed", suppressed),
             SL_END);
  }
}

static void cb_close(struct sl_conn *c) {
  struct native_conn *nc = sl_conn_proto(c);
  struct native_in *ni = nc->src.input->data;
  sl_worker_undurable(&nc->wait);
  sl_source_close(&nc->src);
  free(nc);
  ni->live--;
  ni->in->stats.connections_open--;
  if (ni->stopping && ni->live == 0 && ni->listener_closed)
    finish(ni);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_close = cb_close,
};

static void on_listener_closed(struct sl_listener *l);

static int on_accept(struct sl_listener *l, struct sl_conn *c) {
  struct native_in *ni = l->data;
  struct native_conn *nc = calloc(1, sizeof(*nc));
  if (nc == NULL)
    return SL_ENOMEM;
  sl_source_init(&nc->src, ni->in, on_resume);
  nc->wait.on_durable = on_durable;
  nc->conn = c;
  sl_conn_set_ops(c, &conn_ops, nc);
  ni->live++;
  ni->in->stats.connections_total++;
  ni->in->stats.connections_open++;
  return 0;
}

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct native_in *ni = calloc(1, sizeof(*ni));
  struct sl_endpoint ep;
  int rc;
  if (ni == NULL)
    return SL_ENOMEM;
  ni->in = in;
  in->data = ni;
  ni->listener.idle_ms = in->cfg->idle_timeout_ms; /* default 0: a quiet
                                                      producer is normal */
  ni->listener.partial_ms = in->cfg->event_timeout_ms;
  ni->listener.max_conns = in->cfg->max_connections;
  /* at the limit, a conn quiet longer than an event may take gives way */
  ni->listener.displace_ms = in->cfg->event_timeout_ms;
  ni->listener.max_pending = in->cfg->max_pending_bytes;
  ni->listener.fd_guard = 1;
  ni->listener.name = in->cfg->name;
  ni->listener.max_buffered = (size_t)in->w->cfg->max_event_bytes + 65536;
  ni->listener.on_closed = on_listener_closed;
  in->stats.listener = &ni->listener;
  if (in->cfg->tls.enabled &&
      (ni->tls = sl_tls_new(&in->cfg->tls, 1, in->cfg->listen, in->cfg->name,
                            err, errlen)) == NULL) {
    ni->listener_closed = 1; /* it never opened */
    return SL_EINVAL;
  }
  rc = sl_endpoint_init(&ep,
                        strcmp(in->cfg->type, "unix") == 0 ? SL_ENDPOINT_UNIX
                                                           : SL_ENDPOINT_TCP,
                        in->cfg->listen, NULL, 0);
  if (rc == 0)
    rc = sl_endpoint_set_tls(&ep, ni->tls);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", in->cfg->listen,
             uv_strerror(rc));
    ni->listener_closed = 1; /* it never opened */
    return rc;
  }
  rc = sl_listener_start(&ni->listener, &in->w->loop, &ep, on_accept, ni, err,
                         errlen);
  return rc; /* on failure cb_stop still runs and frees ni */
}

static void finish(struct native_in *ni) {
  struct sl_input *in = ni->in;
  in->data = NULL;
  in->stats.listener = NULL;
  sl_tls_free(ni->tls); /* conns still open keep their own reference */
  free(ni);
  sl_input_stopped(in);
}

static void on_listener_closed(struct sl_listener *l) {
  struct native_in *ni = l->data;
  ni->listener_closed = 1;
  if (ni->stopping && ni->live == 0)
    finish(ni);
}

static void cb_drain(struct sl_input *in) {
  struct native_in *ni = in->data;
  struct sl_conn *c, *next;
  if (ni == NULL)
    return;
  ni->listener.on_closed = on_listener_closed;
  sl_listener_stop(&ni->listener);
  for (c = sl_listener_next(&ni->listener, NULL); c; c = next) {
    struct native_conn *nc = sl_conn_proto(c);
    next = sl_listener_next(&ni->listener, c);
    sl_conn_stop_reading(c);
    if (nc->src.held == NULL && !nc->wait.waiting)
      sl_conn_close(c); /* what it sent is in; a partial event is not */
  }
}

static uint32_t cb_busy(struct sl_input *in) {
  struct native_in *ni = in->data;
  return ni ? ni->live : 0;
}

static void cb_stop(struct sl_input *in) {
  struct native_in *ni = in->data;
  if (ni == NULL) {
    sl_input_stopped(in);
    return;
  }
  ni->stopping = 1;
  ni->listener.on_closed = on_listener_closed;
  sl_listener_stop(&ni->listener);
  sl_listener_close_conns(&ni->listener);
  if (ni->listener_closed && ni->live == 0)
    finish(ni);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = cb_drain,
    .cb_busy = cb_busy,
    .cb_stop = cb_stop,
};

#define IN struct sl_input_config
/* what tcp and unix share; http declares its own (its defaults differ) */
#define NATIVE_KEYS                                                         \
  {.name = "idle_timeout_ms", .type = SL_KEY_UINT, .def = "0",              \
   .doc = "close a connection idle this long; 0: never (a quiet producer " \
          "is normal)",                                                     \
   .min = 100, .max = 86400000, SL_KEY_FIELD(IN, idle_timeout_ms)},        \
  {.name = "max_connections", .type = SL_KEY_UINT, .def = "1024",           \
   .doc = "connections open at once", .min = 1, .max = 1000000,            \
   SL_KEY_FIELD(IN, max_connections)},                                     \
  {.name = "event_timeout_ms", .type = SL_KEY_UINT, .def = "30000",         \
   .doc = "a begun event must be complete within this",                    \
   .flags = SL_KEY_TOLERATED, .min = 100, .max = 86400000,                 \
   SL_KEY_FIELD(IN, event_timeout_ms)},                                    \
  {.name = "max_pending_bytes", .type = SL_KEY_BYTES, .def = "64MiB",       \
   .doc = "partial events held over all connections", .min = 1,           \
   .max = 1ull << 40, SL_KEY_FIELD(IN, max_pending_bytes)}

static const struct sl_config_key tcp_keys[] = {
    {.name = "listen", .type = SL_KEY_ADDRESS,
     .doc = "\"host:port\" to accept msgpack event streams on",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(IN, listen)},
    NATIVE_KEYS,
    {.name = "tls", .type = SL_KEY_TLS,
     .doc = "serve TLS (mTLS with verify_peer); see the tls keys",
     SL_KEY_FIELD(IN, tls)},
    {NULL}};

static const struct sl_config_key unix_keys[] = {
    {.name = "listen", .type = SL_KEY_SOCKET,
     .doc = "the socket path to accept msgpack event streams on",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(IN, listen)},
    NATIVE_KEYS,
    {NULL}};

const struct sl_plugin sl_input_tcp = {
    .config = {SL_PLUGIN_INPUT, "tcp", "msgpack events over TCP", tcp_keys},
    .input = &ops,
};

const struct sl_plugin sl_input_unix = {
    .config = {SL_PLUGIN_INPUT, "unix", "msgpack events over a unix socket",
               unix_keys},
    .input = &ops,
};
