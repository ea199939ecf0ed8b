/* native.c - the tcp and unix inputs: clients write msgpack event maps back
 * to back over one connection. Each connection is a source: when an output
 * it feeds is full and blocks, the connection stops reading until there is
 * room. Bad bytes close only the connection that sent them, with one log
 * line naming the peer, the input and the byte offset. The listener, the
 * connection count and the stop are worker/framed.c's. */
#include <stdlib.h>
#include <string.h>

#include "framed.h"
#include "plugins.h"
#include "tls.h"

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
  struct sl_codec_walk walk; /* the event still arriving, walked so far */
  int ack_deferred;   /* an ack waits for the one the peer has not read */
  int eof;            /* the peer finished sending: kept for its acks */
};

/* Ack mode: tell the client how many of its events are accepted (queued in
 * memory, or in a disk buffer's file as its fsync policy promises). One
 * msgpack integer, the running count since the connection opened. A count
 * goes out only once sl_worker_durable says so: a disk that cannot write
 * holds the ack back, it never acks what it may lose. */
static void refused(struct native_conn *nc);
static void send_ack(struct native_conn *nc);

/* An ack was written: send the count that came meanwhile, if any; a conn
 * kept for its acks (cb_eof) closes once the last is out. */
static void on_ack_written(struct sl_conn *c, int status, void *arg) {
  struct native_conn *nc = sl_conn_proto(c);
  (void)arg;
  if (sl_conn_is_closing(c))
    return;
  if (status != 0) {
    if (nc->eof) /* nothing more to read or write */
      sl_conn_close(c);
    return;
  }
  if (nc->ack_deferred) {
    nc->ack_deferred = 0;
    send_ack(nc);
  }
  sl_framed_close_if_drained(nc->src.input->data, nc->conn);
}

/* Write the count nc->durable. */
static void write_ack(struct native_conn *nc) {
  struct sl_buf b;
  sl_buf_init(&b);
  if (sl_codec_put_uint(&b, nc->durable) == 0 &&
      sl_conn_write(nc->conn, &b, on_ack_written, NULL) == 0)
    nc->acked = nc->durable;
  sl_buf_close(&b);
}

static void send_ack(struct native_conn *nc) {
  int rc;
  if (!nc->ack || nc->accepted == nc->acked || sl_conn_is_closing(nc->conn) ||
      nc->wait.waiting)
    return;
  if (nc->src.refused_later) { /* workers > 1: found after its submit */
    refused(nc);
    return;
  }
  if (sl_conn_write_queue_size(nc->conn) > 0) {
    /* the peer does not read its acks (yet): one count waits, not one
     * per read, or a peer that never reads them grows our memory without
     * bound; on_ack_written sends the latest */
    nc->ack_deferred = 1;
    return;
  }
  nc->durable = nc->accepted;
  rc = sl_worker_durable(nc->src.w, &nc->wait);
  if (rc == SL_EIO) {
    nc->src.refused_output = nc->wait.refused_output;
    refused(nc); /* the producer resends from its last ack */
    return;
  }
  if (rc != 0)
    return; /* on_durable sends it */
  write_ack(nc);
}

static void on_durable(struct sl_durable *d) {
  struct native_conn *nc = container_of(d, struct native_conn, wait);
  if (sl_conn_is_closing(nc->conn))
    return;
  if (d->failed || nc->src.refused_later) { /* workers > 1 */
    if (d->failed)
      nc->src.refused_output = d->refused_output;
    refused(nc);
    return;
  }
  write_ack(nc);
  send_ack(nc); /* what was accepted meanwhile */
  /* draining: its last ack is out */
  sl_framed_close_if_drained(nc->src.input->data, nc->conn);
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

/* workers > 1: a worker's result of this connection was refused, maybe
 * after its last read (acks or none, it must not read on unseen) */
static void on_refused_later(struct sl_source *s) {
  refused(container_of(s, struct native_conn, src));
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

/* On a TLS conn whose peer showed a certificate (peer: its identity, or
 * NULL), the event carries the peer's identity in the sluice-peer header
 * for rules (replacing one the producer may have set). Takes ev; NULL
 * when out of memory. */
static struct sl_event *with_peer(struct sl_event *ev, const char *peer) {
  struct sl_event *out;
  if (peer == NULL || ev == NULL)
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
  sl_framed_close_if_drained(s->input->data, nc->conn);
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
  uint32_t since = 0;
  struct sl_codec_error err;
  struct sl_event_view v;
  struct sl_event *ev;
  /* one clock reading per read: events of one batch share their time */
  int64_t now = sl_now_ns();
  uint64_t mono = sl_mono_ns();
  /* the handshake is over before any data: one identity per read */
  const char *peer = sl_conn_peer_identity(c);
  int rc;

  while (pos < len) {
    /* one walk measures and parses an event; at the end of the bytes, or
     * on anything wrong, the two steps below give the exact answer */
    /* an event that came in part is walked on from where it ended, so
     * one trickled in many reads is walked once */
    if (sl_likely(nc->first_seen) && nc->walk.pos == 0 &&
        sl_codec_parse_stream(data + pos, len - pos, max, &used, &v) == 0)
      goto parsed;
    rc = sl_codec_skip_walk(data + pos, len - pos, max, &used, &err,
                            &nc->walk);
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
  parsed:
    ev = with_peer(sl_event_from_view_at(&w->idgen, &v, 1, now, mono),
                   peer);
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
    if (sl_unlikely(++since % SL_OUTPUT_HOLD_EVENTS == 0))
      sl_framed_read_some(&nc->src); /* a 64 KiB read: ~500 events */
  }
  sl_framed_read_done(&nc->src);
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
  sl_framed_partial(nc->src.input, c, status,
                    "event not complete within event_timeout_ms; partial "
                    "event discarded",
                    "connection closed inside an event; partial event "
                    "discarded");
  /* the producer finished sending and waits for acks a disk buffer's sync
   * holds back, or that it has not read yet (one written but not taken by
   * the kernel, the latest count deferred behind it): keep the conn until
   * they are out (on_durable, on_ack_written), then close it; closed at
   * once, the queued write was dropped and the producer got a stale count */
  if (status == 0 && sl_conn_buffered(c) == 0 &&
      (nc->wait.waiting || nc->ack_deferred ||
       sl_conn_pending_writes(c) > 0)) {
    nc->eof = 1;
    sl_conn_stop_reading(c);
  }
}

static void cb_close(struct sl_conn *c) {
  struct native_conn *nc = sl_conn_proto(c);
  struct sl_framed *f = nc->src.input->data;
  sl_worker_undurable(&nc->wait);
  sl_framed_closing(f, &nc->src);
  sl_framed_free(f, nc);
}

static const struct sl_conn_ops conn_ops = {
    .cb_data = cb_data,
    .cb_eof = cb_eof,
    .cb_close = cb_close,
};

static int on_accept(struct sl_framed *f, struct sl_conn *c) {
  struct native_conn *nc = calloc(1, sizeof(*nc));
  if (nc == NULL)
    return SL_ENOMEM;
  sl_source_init(&nc->src, f->in, on_resume);
  nc->src.on_refused_later = on_refused_later;
  nc->wait.on_durable = on_durable;
  nc->conn = c;
  sl_conn_set_ops(c, &conn_ops, nc);
  return 0;
}

static int is_drained(struct sl_conn *c) {
  struct native_conn *nc = sl_conn_proto(c);
  return nc->src.held == NULL && !nc->wait.waiting &&
         (!nc->eof || (!nc->ack_deferred && sl_conn_pending_writes(c) == 0));
}

static void on_free(struct sl_framed *f) { free(f); }

static const struct sl_framed_ops framed_ops = {
    .cb_accept = on_accept,
    .cb_drained = is_drained,
    .cb_free = on_free,
};

static int cb_start(struct sl_input *in, char *err, size_t errlen) {
  struct sl_framed *f = calloc(1, sizeof(*f));
  if (f == NULL)
    return SL_ENOMEM;
  sl_framed_init(f, in, &framed_ops);
  /* on failure cb_stop still runs and frees f */
  return sl_framed_listen(f,
                          strcmp(in->cfg->type, "unix") == 0 ? SL_ENDPOINT_UNIX
                                                             : SL_ENDPOINT_TCP,
                          (size_t)in->w->cfg->max_event_bytes + 65536, err,
                          errlen);
}

static const struct sl_input_ops ops = {
    .cb_start = cb_start,
    .cb_drain = sl_framed_drain,
    .cb_busy = sl_framed_busy,
    .cb_stop = sl_framed_stop,
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
    {0}};

static const struct sl_config_key unix_keys[] = {
    {.name = "listen", .type = SL_KEY_SOCKET,
     .doc = "the socket path to accept msgpack event streams on",
     .flags = SL_KEY_REQUIRED, SL_KEY_FIELD(IN, listen)},
    NATIVE_KEYS,
    {0}};

const struct sl_plugin sl_input_tcp = {
    .config = {.kind = SL_PLUGIN_INPUT, .type = "tcp",
               .doc = "msgpack events over TCP",
               .keys = tcp_keys},
    .input = &ops,
};

const struct sl_plugin sl_input_unix = {
    .config = {.kind = SL_PLUGIN_INPUT, .type = "unix",
               .doc = "msgpack events over a unix socket",
               .keys = unix_keys},
    .input = &ops,
};
